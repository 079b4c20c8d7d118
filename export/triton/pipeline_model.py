"""robustwrap's defended classifier as a Triton Python-backend model (the pipeline).

Copied as ``<name>/1/model.py`` by :func:`robustwrap.export.write_triton_bundle`; it runs inside
Triton's Python backend stub, whose interpreter must have torch, robustwrap and numpy < 2
(see ``robustwrap serve`` and the README's deployment section). The purification loop, the noise,
the mask and the vote run here, in robustwrap's own code
(:func:`robustwrap.export.engines.adapters.wrapper_over_runners`); the two networks are the
repository's classifier and denoiser models, called through BLS.

Inputs (batch first, ``max_batch_size`` > 0):
    images: (B, C, H, W) float32 in [0, 1].
    seed: optional (B, 1) int64 in [0, 2**63): image i's noise comes from seed i alone, as in
        ``RobustWrapper(..., seeds=)`` and ``load_bundle(...)(x, seeds=)``; the same seed gives the
        same answer whatever else is in the batch. Without it every image gets a fresh seed.
Outputs:
    probabilities: (B, K) float32, mean over the votes.
    labels: (B, 1) int64, by the configured vote rule.

A client mistake (values outside [0, 1], NaN, an empty batch, a bad seed) is answered with an
``INVALID_ARG`` error (HTTP 400) naming it; anything else with an ``INTERNAL`` error (HTTP 500)
naming the exception; the stub never dies on a request.
"""

import json
import os
import secrets

import torch
import triton_python_backend_utils as pb_utils
from torch.utils import dlpack

from robustwrap.export.engines.adapters import wrapper_over_runners
from robustwrap.export.format import BundleInfo
from robustwrap.export.triton.environment import numpy_problem
from robustwrap.noise import SEED_LIMIT, check_seeds
from robustwrap.vote import vote_labels


class BlsRunner:
    """A component model called through BLS: ``runner({name: tensor}) -> [outputs]`` (the runner protocol).

    Calls of more than ``max_batch`` rows are split (the component model takes at most that many).
    """

    def __init__(self, model_name, input_names, output_names, max_batch):
        self.model_name = model_name
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.max_batch = max_batch

    def __call__(self, feeds):
        rows = next(iter(feeds.values())).shape[0]
        if rows <= self.max_batch:
            return self._call(feeds)
        parts = [self._call({name: value[i:i + self.max_batch] for name, value in feeds.items()})
                 for i in range(0, rows, self.max_batch)]
        return [torch.cat(chunks) for chunks in zip(*parts)]

    def _call(self, feeds):
        inputs = []
        for name in self.input_names:
            value = feeds[name].detach().float().contiguous()
            if value.dim() == 1:  # per-row scalars (t) are declared dims [1]
                value = value.reshape(-1, 1)
            inputs.append(pb_utils.Tensor.from_dlpack(name, dlpack.to_dlpack(value)))
        request = pb_utils.InferenceRequest(model_name=self.model_name, inputs=inputs,
                                            requested_output_names=self.output_names)
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"component model {self.model_name}: {response.error().message()}")
        return [dlpack.from_dlpack(pb_utils.get_output_tensor_by_name(response, name).to_dlpack()).clone()
                for name in self.output_names]


def read_seeds(request, batch):
    """The request's (B,) int64 seeds, or fresh ones; ValueError for a malformed seed input."""
    seed = pb_utils.get_input_tensor_by_name(request, "seed")
    if seed is None:
        return torch.tensor([secrets.randbelow(SEED_LIMIT) for _ in range(batch)], dtype=torch.int64)
    values = seed.as_numpy()
    if values.shape != (batch, 1):
        raise ValueError(f"seed must have shape ({batch}, 1) for {batch} images, got {values.shape}")
    return check_seeds(torch.from_numpy(values.reshape(-1)), batch)


class TritonPythonModel:
    def initialize(self, args):
        problem = numpy_problem()
        if problem:
            raise pb_utils.TritonModelException(problem)
        folder = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(folder, "serving.json")) as file:
            serving = json.load(file)
        with open(os.path.join(folder, "bundle.json")) as file:
            info = BundleInfo.from_dict(json.load(file), folder=folder, check_files=False)
        threads = serving.get("torch_threads")
        if threads:
            torch.set_num_threads(int(threads))  # this process only: the stub runs one model instance
        components = info.components
        classifier = BlsRunner(serving["classifier_model"], components["classifier"].input_names,
                               components["classifier"].output_names, serving["component_max_batch"])
        denoiser = BlsRunner(serving["denoiser_model"], components["denoiser"].input_names,
                             components["denoiser"].output_names, serving["component_max_batch"])
        self.wrapper = wrapper_over_runners(info, classifier, denoiser, serving.get("config_overrides"))

    def execute(self, requests):
        return [self.answer(request) for request in requests]

    def answer(self, request):
        """One request's response; errors become INVALID_ARG (client mistakes) or INTERNAL."""
        try:
            images = torch.from_numpy(pb_utils.get_input_tensor_by_name(request, "images").as_numpy().copy())
            self.wrapper.validate(images)
            seeds = read_seeds(request, images.shape[0])
            with torch.no_grad():
                probs = self.wrapper.vote_probabilities(images, seeds=seeds)
            labels = vote_labels(probs, self.wrapper.config.vote).reshape(-1, 1)
            outputs = [pb_utils.Tensor("probabilities", probs.mean(0).float().numpy()),
                       pb_utils.Tensor("labels", labels.numpy().astype("int64"))]
            return pb_utils.InferenceResponse(output_tensors=outputs)
        except (ValueError, TypeError) as error:
            return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(
                str(error), pb_utils.TritonError.INVALID_ARG))
        except Exception as error:  # never a dead stub: report it and keep serving
            return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(
                f"robustwrap pipeline failed: {type(error).__name__}: {error}", pb_utils.TritonError.INTERNAL))

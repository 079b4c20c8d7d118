"""robustwrap's defended classifier as a Triton Python-backend model (the pipeline).

Copied as ``<name>/1/model.py`` by :func:`robustwrap.export.write_triton_bundle`; it runs inside
Triton's Python backend stub, whose interpreter must have torch, robustwrap and numpy < 2
(see ``robustwrap serve`` and docs/serving.md). The purification loop, the noise,
the mask and the vote run here, in robustwrap's own code
(:func:`robustwrap.export.engines.adapters.wrapper_over_runners`); the two networks are the
repository's classifier and denoiser models, called through BLS, or, with inline components
(``serving.json``'s ``inline``), the bundle copied beside this file, run by ``load_bundle`` in
this process.

Inputs (batch first, ``max_batch_size`` > 0):
    images: (B, C, H, W) float32 in [0, 1].
    seed: optional (B, 1) int64 in [0, 2**63): image i's noise comes from seed i alone, as in
        ``RobustWrapper(...)(x, noise=Noise.seeded(seeds))`` and ``load_bundle(...)(x, noise=Noise.seeded(seeds))``; the same seed gives the
        same answer whatever else is in the batch. Without it every image gets a fresh seed.
Outputs:
    probabilities: (B, K) float32, mean over the votes.
    labels: (B, 1) int64, by the configured vote rule.

The requests of one execution (Triton's dynamic batcher groups them) run as one batch, in chunks of
``execution_batch`` images, and are split back: each image's answer is its seed's, whatever else
was batched with it. A client mistake (no ``images``, values outside [0, 1], NaN, an empty batch, a
bad seed) is answered with an ``INVALID_ARG`` error (HTTP 400) naming it, that request alone;
anything else with an ``INTERNAL`` error (HTTP 500) naming the exception; the stub never dies on a
request.
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
from robustwrap.noise import SEED_LIMIT, Noise, check_seeds
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
        inline = serving.get("inline")
        if threads or inline:  # this process only: the stub runs one model instance
            torch.set_num_threads(int(threads or 1))  # inline: the loop's own tensor work is small
        self.execution_batch = int(serving.get("execution_batch") or 8)
        if inline:  # the pipeline runs the bundle's engines itself: no component models, no BLS round trips
            from robustwrap.cpus import available_cpus
            from robustwrap.export import load_bundle

            engine_threads = inline.get("threads") or max(1, available_cpus() // int(serving.get("instances") or 1))
            if inline["engine"] == "aoti":  # AOT packages run on torch's own thread pool
                torch.set_num_threads(int(threads or engine_threads))
            self.wrapper = load_bundle(os.path.join(folder, "bundle"), inline["engine"], "cpu",
                                       serving.get("config_overrides"), precision=inline["precisions"],
                                       threads=engine_threads if inline["engine"] != "aoti" else None)
            return
        components = info.components
        classifier = BlsRunner(serving["classifier_model"], components["classifier"].input_names,
                               components["classifier"].output_names, serving["component_max_batch"])
        denoiser = BlsRunner(serving["denoiser_model"], components["denoiser"].input_names,
                             components["denoiser"].output_names, serving["component_max_batch"])
        self.wrapper = wrapper_over_runners(info, classifier, denoiser, serving.get("config_overrides"))

    def execute(self, requests):
        """Answer one execution's requests as one batch (exact: every image's noise is its own seed's).

        Each request is read and checked alone (a client mistake is that request's 400); the valid
        ones are concatenated, run in chunks of ``execution_batch`` images, and split back. A
        request whose client has gone (Triton's cancellation) is not computed.
        """
        responses = [None] * len(requests)
        accepted = []  # (position, images, seeds)
        for position, request in enumerate(requests):
            if cancelled(request):
                responses[position] = error_response("the request was cancelled", "CANCELLED")
                continue
            try:
                images = read_images(request)
                self.wrapper.validate(images)
                accepted.append((position, images, read_seeds(request, images.shape[0])))
            except (ValueError, TypeError) as error:
                responses[position] = error_response(str(error), "INVALID_ARG")
            except Exception as error:  # never a dead stub: report it and keep serving
                responses[position] = failure(error)
        if len(accepted) > 1:
            try:
                answers = self.answers(accepted)
            except Exception:  # one request's problem must not fail the others: each alone, below
                answers = None
            if answers is not None:
                for position, response in answers:
                    responses[position] = response
                return responses
        for item in accepted:
            try:
                responses[item[0]] = self.answers([item])[0][1]
            except ValueError as error:
                responses[item[0]] = error_response(str(error), "INVALID_ARG")
            except Exception as error:
                responses[item[0]] = failure(error)
        return responses

    def answers(self, accepted):
        """[(position, response)] for the accepted requests, computed as one batch and split back."""
        probs = self.vote_probabilities(torch.cat([images for _, images, _ in accepted]),
                                        torch.cat([seeds for _, _, seeds in accepted]))
        labels = vote_labels(probs, self.wrapper.config.vote).reshape(-1, 1)
        mean = probs.mean(0).float()
        answers, start = [], 0
        for position, images, _ in accepted:
            stop = start + images.shape[0]
            outputs = [pb_utils.Tensor("probabilities", mean[start:stop].numpy()),
                       pb_utils.Tensor("labels", labels[start:stop].numpy().astype("int64"))]
            answers.append((position, pb_utils.InferenceResponse(output_tensors=outputs)))
            start = stop
        return answers

    def vote_probabilities(self, images, seeds):
        """(S, B, K) for B images, ``execution_batch`` images at a time (per-image seeds: the split is exact)."""
        with torch.no_grad():
            parts = [self.wrapper.vote_probabilities(images[i:i + self.execution_batch],
                                                     noise=Noise.seeded(seeds[i:i + self.execution_batch]))
                     for i in range(0, images.shape[0], self.execution_batch)]
        return torch.cat(parts, dim=1)


def read_images(request):
    """The request's (B, C, H, W) images; ValueError naming the missing input."""
    images = pb_utils.get_input_tensor_by_name(request, "images")
    if images is None:
        raise ValueError("the request has no 'images' input: send images (B, C, H, W) float32 in [0, 1]")
    return torch.from_numpy(images.as_numpy().copy())


def cancelled(request):
    """Whether Triton knows the request's client has gone (Python backend 23.10 and later)."""
    check = getattr(request, "is_cancelled", None)
    return bool(check()) if check is not None else False


def failure(error):
    """An INTERNAL error response naming the exception."""
    return error_response(f"robustwrap pipeline failed: {type(error).__name__}: {error}", "INTERNAL")


def error_response(message, code):
    """An error response: INVALID_ARG (HTTP 400), CANCELLED or INTERNAL (HTTP 500)."""
    kind = getattr(pb_utils.TritonError, code, pb_utils.TritonError.INTERNAL)
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, kind))

"""One bundle graph served with ONNX Runtime, or OpenVINO, inside Triton's Python backend.

Copied as ``<name>/1/model.py`` beside the graph (``model.onnx``, or an int8 ``model.xml``) by
:func:`robustwrap.export.write_triton_bundle` with ``component_backend="python"``: for Triton
builds without the onnxruntime backend (PyTriton's server, CPU hosts). It needs only numpy < 2
and onnxruntime (or openvino, when config.pbtxt's ``engine`` parameter says so, compiled with
exactly its ``openvino_hint``) in the stub's interpreter. The requests Triton's dynamic batcher hands over in
one call are stacked along the batch axis and run as one ONNX Runtime call.

Inputs and outputs are the graph's own (batch first); an input declared with one more axis of
size 1 than the graph takes (per-row scalars such as the denoiser's ``t``, sent as (N, 1)) is
reshaped to the graph's rank.
"""

import json
import os

import numpy
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        if int(numpy.__version__.split(".")[0]) >= 2:
            raise pb_utils.TritonModelException(
                f"the Python backend stub's interpreter has numpy {numpy.__version__}: Triton 2.51's stub returns "
                "empty (zero-byte) outputs with numpy 2; install numpy<2 there (pip install 'robustwrap[serve]')")
        folder = os.path.join(args["model_repository"], args["model_version"])
        config = json.loads(args["model_config"])
        parameters = {key: value.get("string_value") for key, value in config.get("parameters", {}).items()}
        threads = parameters.get("intra_op_threads")
        if not threads:  # the CPUs the server may use (affinity, cgroup quota) over this model's instances
            from robustwrap.cpus import available_cpus

            instances = sum(int(group.get("count", 1)) for group in config.get("instance_group", [])) or 1
            threads = max(1, available_cpus() // instances)
        if parameters.get("engine") == "openvino":
            self.run = self._openvino(folder, parameters["openvino_hint"], threads)
            return
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        session = onnxruntime.InferenceSession(os.path.join(folder, "model.onnx"), sess_options=options,
                                               providers=["CPUExecutionProvider"])
        self.inputs = [(i.name, len(i.shape)) for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]
        self.run = lambda feeds: session.run(self.output_names, feeds)

    def _openvino(self, folder, hint, threads):
        """OpenVINO's compiled model as ``run(feeds) -> outputs`` (copied: OpenVINO reuses its buffers)."""
        import openvino

        name = "model.xml" if os.path.exists(os.path.join(folder, "model.xml")) else "model.onnx"
        properties = {"INFERENCE_PRECISION_HINT": hint, **({"INFERENCE_NUM_THREADS": int(threads)} if threads else {})}
        compiled = openvino.Core().compile_model(os.path.join(folder, name), "CPU", properties)
        ran = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if ran != hint:  # a CPU without bf16 units runs f32 when asked for bf16: refuse to serve it under that name
            raise RuntimeError(f"OpenVINO compiled {name} at {ran} when {hint} was asked for (a CPU without bf16 "
                               "units?): not served at another precision than the one written in config.pbtxt")
        request = compiled.create_infer_request()
        self.inputs = [(port.get_any_name(), len(port.get_partial_shape())) for port in compiled.inputs]
        self.output_names = [port.get_any_name() for port in compiled.outputs]

        def run(feeds):
            results = request.infer(feeds)
            return [results[port].copy() for port in compiled.outputs]

        return run

    def execute(self, requests):
        try:
            feeds, sizes = {}, []
            for name, rank in self.inputs:
                arrays = [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
                feeds[name] = numpy.concatenate([a.reshape(a.shape[:rank]) if a.ndim > rank else a for a in arrays])
                sizes = [a.shape[0] for a in arrays]
            outputs = self.run(feeds)
        except Exception as error:  # one failure answers every request of this call, the stub lives on
            message = pb_utils.TritonError(f"{type(error).__name__}: {error}", pb_utils.TritonError.INTERNAL)
            return [pb_utils.InferenceResponse(output_tensors=[], error=message) for _ in requests]
        responses, start = [], 0
        for size in sizes:
            tensors = [pb_utils.Tensor(name, numpy.ascontiguousarray(out[start:start + size]))
                       for name, out in zip(self.output_names, outputs)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses

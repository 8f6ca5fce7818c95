"""Benchmark only (benchmarks/gpu_serving.py, on a GPU machine): the GPU target's model.onnx in the
python backend of the tritonserver bundled in nvidia-pytriton, which has no onnxruntime backend.

It runs the graph that `adaudit export --target triton-gpu` writes with ONNX Runtime's TensorRT
execution provider (the options of that export's config.pbtxt, passed as the `ort_providers`
parameter) or its CUDA provider, on the instance's GPU. Production serves the same graph with
NVIDIA's tritonserver and its native onnxruntime backend, without this file. A provider that does
not start (TensorRT's libraries missing, no CUDA) fails the load instead of running on the CPU.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils

INPUTS = ("image_bytes", "input_ids", "attention_mask")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        providers = json.loads(config["parameters"]["ort_providers"]["string_value"])
        device = args["model_instance_device_id"]
        if hasattr(onnxruntime, "preload_dlls"):  # the CUDA and cuDNN libraries of the nvidia-* wheels
            onnxruntime.preload_dlls()
        chosen = [(name, {**options, "device_id": device}) for name, options in providers]
        graph = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = onnxruntime.InferenceSession(str(graph), providers=chosen)
        missing = [name for name, _ in chosen if name not in self.session.get_providers()]
        if missing:
            raise RuntimeError(f"ONNX Runtime could not start {', '.join(missing)} "
                               f"(available: {onnxruntime.get_available_providers()})")
        self.outputs = [output["name"] for output in config["output"]]

    def execute(self, requests):
        arrays = {name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests] for name in INPUTS}
        sizes = [len(array) for array in arrays["input_ids"]]
        results = self.session.run(self.outputs, {name: np.concatenate(arrays[name]) for name in INPUTS})
        responses, start = [], 0
        for size in sizes:
            tensors = [pb_utils.Tensor(name, value[start:start + size]) for name, value in zip(self.outputs, results)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses

    def finalize(self):
        self.session = None

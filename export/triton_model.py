"""Triton python-backend model: runs an adaudit model folder on Triton Inference Server.

`adaudit export` copies this file into every version of the model repository as `model.py`,
next to the model folder (`<version>/model/`: config.json, model.safetensors, vocab.txt).
Inputs are the tensors the gateway's preprocessing makes (the picture as uint8, normalised here,
as in training); outputs are one logits tensor per
audit task. Requests are batched by Triton's dynamic batcher; `execute` runs them as one
forward pass. A version whose files no longer match the checksums written at export is
refused at load. On a GPU instance the model runs in the dtype named by the `precision`
parameter (float16 or bfloat16); on CPU in float32, in eager PyTorch or, with the `engine`
parameter onnxruntime, on ONNX Runtime from the version's model.onnx. A GPU instance whose torch
sees no CUDA device (a CPU build of torch, no driver, a node without a GPU) fails to load with a
message saying so, rather than serve in float32 on the CPU at a fraction of the expected speed.
(`--target triton-gpu` serves without this file: Triton's own onnxruntime backend, export/onnx_gpu.py.)
"""

import json
import os
from pathlib import Path

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from adaudit.export.onnx_runtime import OnnxRuntimeAuditModel
from adaudit.export.repository import verify_checksums
from adaudit.models.configuration import AuditModelConfig
from adaudit.models.modeling import AuditModel
from adaudit.models.preprocessing import SERVED_INPUTS
from adaudit.models.serving import served_logits


def no_cuda_message(args: dict) -> str:
    """Why a KIND_GPU instance refuses to load on a torch without CUDA (Triton shows it as the load error)."""
    cuda = torch.version.cuda or "none (a CPU build)"
    return (f"model {args.get('model_name', '?')} instance {args.get('model_instance_name', '?')} is KIND_GPU, but "
            f"torch {torch.__version__} (CUDA {cuda}) sees no CUDA device: refusing to serve on the CPU in float32. "
            f"Run it on a GPU node with a CUDA build of torch (the python-backend variant of deploy/triton.Dockerfile), "
            f"export it without --gpu for KIND_CPU instances, or with --target triton-gpu for Triton's onnxruntime backend")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        version_folder = Path(args["model_repository"]) / args["model_version"]
        verify_checksums(version_folder)  # refuse files changed since export
        gpu = args.get("model_instance_kind") == "GPU"
        if gpu and not torch.cuda.is_available():
            raise RuntimeError(no_cuda_message(args))
        self.device = torch.device(f"cuda:{args['model_instance_device_id']}" if gpu else "cpu")
        parameters = config.get("parameters", {})
        precision = parameters.get("precision", {}).get("string_value", "float16")
        threads = int(parameters.get("threads", {}).get("string_value", "0") or 0)
        if threads > 0:  # several model processes on one CPU machine: share the cores instead of fighting
            torch.set_num_threads(threads)
        if parameters.get("cpu_priority", {}).get("string_value") == "idle" and not gpu:
            # a shadow on the primary's CPUs: only the time nothing else wants (threads made later inherit it)
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        self.dtype = getattr(torch, precision) if gpu else torch.float32
        self.tasks = list(AuditModelConfig.load(version_folder / "model").tasks)
        onnx_graph = version_folder / "model.onnx"  # absent in a version exported for GPU instances
        if parameters.get("engine", {}).get("string_value") == "onnxruntime" and not gpu and onnx_graph.is_file():
            # the same weights, exported (and checked) next to the folder at export time
            self.model = OnnxRuntimeAuditModel(onnx_graph, threads or None)
        else:
            self.model = AuditModel.from_pretrained(version_folder / "model").to(self.device, self.dtype).eval()

    def execute(self, requests):
        arrays = {name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests] for name in SERVED_INPUTS}
        sizes = [len(a) for a in arrays["input_ids"]]
        batch = {name: torch.from_numpy(np.concatenate(arrays[name])).to(self.device) for name in SERVED_INPUTS}
        logits = served_logits(self.model, **batch, dtype=self.dtype)  # normalised and trimmed as in training
        outputs = {task: logits[task].float().cpu().numpy() for task in self.tasks}
        responses, start = [], 0
        for size in sizes:
            tensors = [pb_utils.Tensor(task, outputs[task][start:start + size]) for task in self.tasks]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses

    def finalize(self):
        self.model = None

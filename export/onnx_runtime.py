"""The audit model as an ONNX graph, run by ONNX Runtime: the same weights with less per-operator cost.

At batch 1 the student's eager PyTorch forward is bound by the fixed cost of each of its ~900
operators, not by arithmetic (benchmarks/results/peers.md: about 19x the FLOPs floor). ONNX
Runtime runs the same graph with fused kernels and a few microseconds per node.

`export_onnx(model, inputs, path)` traces the model with torch.onnx (the TorchScript exporter;
batch and copy length stay dynamic) and checks that ONNX Runtime gives the same logits;
`OnnxRuntimeAuditModel(path)` runs it behind the model's own call signature, so evaluation and
latency code takes it as it takes an `AuditModel`. Needs `onnx` and `onnxruntime` (core
dependencies).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from adaudit.files import atomic_write_bytes
from adaudit.models.modeling import AuditModel, AuditOutput

INPUTS = ("pixel_values", "input_ids", "attention_mask")  # what the model takes, in its call order
OPSET = 17


class _Logits(nn.Module):
    """The model with plain tuple outputs (text-task logits, then picture-task logits), as ONNX needs."""

    def __init__(self, model: AuditModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, input_ids, attention_mask):
        output = self.model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
        return (*output.logits.values(), *output.image_logits.values())


def export_onnx(model: AuditModel, inputs: dict[str, torch.Tensor], path: Path, atol: float = 1e-4) -> Path:
    """Write `model` as ONNX to `path` (atomically) and check ONNX Runtime's logits against it on `inputs`."""
    import copy
    import io

    tasks, image_tasks = list(model.heads), list(model.image_heads)  # the order forward returns them in
    names = [f"logits.{t}" for t in tasks] + [f"image_logits.{t}" for t in image_tasks]
    buffer = io.BytesIO()
    dynamic = {"pixel_values": {0: "batch"}, "input_ids": {0: "batch", 1: "length"},
               "attention_mask": {0: "batch", 1: "length"}, **{name: {0: "batch"} for name in names}}
    traced = copy.deepcopy(model).eval()  # tracing leaves the traced modules computing otherwise afterwards
    with torch.no_grad():
        torch.onnx.export(_Logits(traced), tuple(inputs[name] for name in INPUTS), buffer, input_names=list(INPUTS),
                          output_names=names, dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    engine = OnnxRuntimeAuditModel(path)
    with torch.inference_mode():
        ours, theirs = engine(**inputs), model.eval()(**inputs)
    for task in tasks:
        torch.testing.assert_close(ours.logits[task], theirs.logits[task], atol=atol, rtol=atol)
    return path


def example_inputs(config, batch: int = 3) -> dict[str, torch.Tensor]:
    """Inputs of the shapes serving sends, for tracing and the logits check: random pictures, token
    ids inside the vocabulary, and copy of three lengths (padding included)."""
    generator = torch.Generator().manual_seed(0)
    length = config.max_text_length
    input_ids = torch.randint(5, config.vocab_size, (batch, length), generator=generator)
    attention_mask = torch.ones(batch, length, dtype=torch.int64)
    for row in range(1, batch):
        attention_mask[row, length - row * length // (batch + 1):] = 0
    return {"pixel_values": torch.randn(batch, 3, config.image_size, config.image_size, generator=generator),
            "input_ids": input_ids * attention_mask, "attention_mask": attention_mask}


class OnnxRuntimeAuditModel(nn.Module):
    """An exported audit model in an ONNX Runtime session, called like an AuditModel (no pooled state,
    no hidden states: what evaluation and serving read)."""

    def __init__(self, path: Path, threads: int | None = None):
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        self.threads, self.version = threads or torch.get_num_threads(), onnxruntime.__version__
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.names = [output.name for output in self.session.get_outputs()]

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> AuditOutput:
        feeds = {"pixel_values": np.ascontiguousarray(pixel_values.numpy(), dtype=np.float32),
                 "input_ids": input_ids.numpy().astype(np.int64, copy=False),
                 "attention_mask": attention_mask.numpy().astype(np.int64, copy=False)}
        outputs = dict(zip(self.names, self.session.run(None, feeds)))
        logits = {name.removeprefix("logits."): torch.from_numpy(value)
                  for name, value in outputs.items() if name.startswith("logits.")}
        image_logits = {name.removeprefix("image_logits."): torch.from_numpy(value)
                        for name, value in outputs.items() if name.startswith("image_logits.")}
        return AuditOutput(logits=logits, pooled=torch.empty(len(input_ids), 0), image_logits=image_logits)

"""The audit model as one standard ONNX graph for Triton's native onnxruntime backend on GPUs
(`adaudit export --target triton-gpu`; the config that serves it: repository.gpu_config_pbtxt).

The CPU graphs (onnx_runtime.py) are made for ONNX Runtime's CPU kernels: com.microsoft contrib
nodes, float32 `pixel_values`. TensorRT (through ONNX Runtime's TensorRT execution provider, or
trtexec) takes only the standard operators, so this graph is traced apart:

- default-domain operators only (opset 17: LayerNormalization is a standard node there), eager
  attention written out as MatMul / Softmax, none of adaudit's fusion passes;
- it takes what the gateway sends, named as Triton serves it (models/preprocessing.SERVED_INPUTS):
  the uint8 picture `image_bytes`, normalised inside the graph with the arithmetic of
  AuditProcessor.normalise (Cast, / 255, - mean, / std), and the padded copy; batch and copy length
  are dynamic. The copy is not trimmed to its longest row as models/serving.py does in PyTorch:
  trimming makes a shape depend on the data, which a TensorRT engine cannot take, and the padding
  mask already keeps the padded positions out of every real one (the check below compares with
  PyTorch's trimmed forward);
- one output per audit task, named by the task: what the gateway reads from any Triton model;
- float16-safe constants: the padding bias is traced as float32's lowest value (-3.4e38), which is
  -inf in float16, and a padded position then computes 0 * -inf = NaN under TensorRT's FP16 mode.
  The GPU graph uses -10000 instead, which softmax turns into exactly 0 in float32 and float16
  alike; any other constant outside float16's range is refused;
- every value inside the graph is named with a digest of the weights. ONNX Runtime's TensorRT
  engine cache identifies an engine by the graph's file name and its value names, not by its
  weights: two versions of one architecture (version 2 of a retrained student) would otherwise
  share one cached engine, and the new version would serve the old weights.

`check_gpu_graph` runs the graph in ONNX Runtime (its CPU execution provider here) against
PyTorch's served logits (models/serving.served_logits) on several batches and copy lengths and
raises `GpuGraphError` past the tolerance; export writes nothing then.
"""

from __future__ import annotations

import copy
import hashlib
import io
import warnings

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from adaudit.models.modeling import AuditModel
from adaudit.models.preprocessing import SERVED_INPUTS, AuditProcessor
from adaudit.models.serving import calibrated, served_logits

GPU_OPSET = 17
DEFAULT_DOMAINS = ("", "ai.onnx")
MASK_BIAS = -10000.0  # the padding bias in the GPU graph, finite in float16
FLOAT16_MAX = float(np.finfo(np.float16).max)
TOLERANCE = 1e-4  # the largest absolute logit difference to PyTorch that export accepts (float32, CPU)


class GpuGraphError(ValueError):
    """The GPU graph cannot be written: it differs from PyTorch or holds something TensorRT cannot take."""


class _ServedGraph(nn.Module):
    """The served forward as the graph computes it: uint8 picture in, one logits tensor per task out."""

    def __init__(self, model: AuditModel):
        super().__init__()
        self.model = model
        self.tasks = list(model.config.tasks)

    def forward(self, image_bytes, input_ids, attention_mask):
        pixel_values = AuditProcessor.normalise(image_bytes)  # the one normalisation, traced into the graph
        output = self.model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
        logits = calibrated(output.logits, self.model.config.temperatures)  # Triton serves the graph as it is
        return tuple(logits[task] for task in self.tasks)


def served_example(config, batch: int, length: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs as the gateway sends them: random uint8 pictures, token ids inside the vocabulary, copies
    padded to `length` (default: the model's text length), the first row full and the others shorter."""
    generator = torch.Generator().manual_seed(seed)
    length = length or config.max_text_length
    size = config.image_size
    attention_mask = torch.ones(batch, length, dtype=torch.int64)
    for row in range(1, batch):
        attention_mask[row, max(1, length - row * length // (batch + 1)):] = 0
    input_ids = torch.randint(5, config.vocab_size, (batch, length), generator=generator) * attention_mask
    return {"image_bytes": torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator),
            "input_ids": input_ids, "attention_mask": attention_mask}


def _float_constants(graph: onnx.GraphProto):
    """(holder, TensorProto) for every float tensor written into the graph: initializers, Constant and
    ConstantOfShape values."""
    for initializer in graph.initializer:
        yield initializer, initializer
    for node in graph.node:
        if node.op_type in ("Constant", "ConstantOfShape"):
            for attribute in node.attribute:
                if attribute.name == "value":
                    yield node, attribute.t


def _float16_safe(graph: onnx.GraphProto) -> int:
    """Replace float32's lowest value (the traced padding bias) by MASK_BIAS; refuse any other finite
    constant beyond float16's range. Returns how many tensors changed."""
    lowest = np.finfo(np.float32).min
    changed = 0
    for holder, tensor in _float_constants(graph):
        if tensor.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
            continue
        values = numpy_helper.to_array(tensor)
        beyond = np.isfinite(values) & (np.abs(values) > FLOAT16_MAX)
        if not beyond.any():
            continue
        if not np.all(values[beyond] <= lowest):
            name = getattr(holder, "name", "") or tensor.name
            raise GpuGraphError(f"constant {name!r} holds values beyond float16's range "
                                f"({values[beyond].ravel()[:3]}): TensorRT's FP16 mode would turn them into inf")
        fixed = np.where(beyond, np.asarray(MASK_BIAS, values.dtype), values)
        tensor.CopyFrom(numpy_helper.from_array(fixed.astype(values.dtype), tensor.name))
        changed += 1
    return changed


def weights_digest(graph: onnx.GraphProto) -> str:
    """sha256 over every constant of the graph (names and bytes), in graph order."""
    digest = hashlib.sha256()
    for holder, tensor in _float_constants(graph):
        digest.update(getattr(holder, "name", "").encode() + tensor.name.encode())
        digest.update(numpy_helper.to_array(tensor).tobytes())
    return digest.hexdigest()


def _stamp_values(graph: onnx.GraphProto, stamp: str) -> None:
    """Append `~stamp` to the name of every initializer and node output except the graph's outputs."""
    kept = {value.name for value in graph.input} | {value.name for value in graph.output} | {""}
    renamed = {initializer.name: f"{initializer.name}~{stamp}" for initializer in graph.initializer}
    renamed.update({output: f"{output}~{stamp}" for node in graph.node for output in node.output
                    if output not in kept})
    for initializer in graph.initializer:
        initializer.name = renamed[initializer.name]
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        node.output[:] = [renamed.get(name, name) for name in node.output]
    for value in graph.value_info:
        value.name = renamed.get(value.name, value.name)


def gpu_graph(model: AuditModel) -> onnx.ModelProto:
    """The traced GPU graph of `model` (checked by onnx.checker), not yet compared with PyTorch."""
    traced = copy.deepcopy(model).eval()  # tracing leaves the traced modules computing otherwise afterwards
    for tower in (traced.vision, traced.qformer, traced.text):
        tower.set_attn_implementation("eager")  # plain MatMul/Softmax (SDPA's export adds NaN guards)
    names = list(model.config.tasks)
    inputs = served_example(model.config, batch=2)
    dynamic = {"image_bytes": {0: "batch"}, "input_ids": {0: "batch", 1: "length"},
               "attention_mask": {0: "batch", 1: "length"}, **{name: {0: "batch"} for name in names}}
    buffer = io.BytesIO()
    # the TorchScript exporter warns about every Python branch on a tensor in the transformers blocks;
    # check_gpu_graph compares the logits with PyTorch's instead
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_ServedGraph(traced), tuple(inputs[name] for name in SERVED_INPUTS), buffer,
                          input_names=list(SERVED_INPUTS), output_names=names, dynamic_axes=dynamic,
                          opset_version=GPU_OPSET, dynamo=False)
    graph = onnx.load_from_string(buffer.getvalue())
    foreign = foreign_operators(graph)
    if foreign:
        raise GpuGraphError(f"the GPU graph has operators outside the standard domain: {', '.join(foreign)}")
    _float16_safe(graph.graph)
    _stamp_values(graph.graph, weights_digest(graph.graph)[:12])
    graph.doc_string = "adaudit audit model for Triton's onnxruntime backend (export --target triton-gpu)"
    onnx.checker.check_model(graph, full_check=True)
    return graph


def foreign_operators(graph: onnx.ModelProto) -> list[str]:
    """`domain::op_type` of every node outside the standard ONNX domain (none in a GPU graph)."""
    return sorted({f"{node.domain}::{node.op_type}" for node in graph.graph.node if node.domain not in DEFAULT_DOMAINS})


def check_cases(config) -> list[dict[str, torch.Tensor]]:
    """What export checks the graph on: three padded ads at the full copy length (what Triton sends),
    one ad at a shorter copy, and two at a length of one token."""
    return [served_example(config, batch=3), served_example(config, batch=1, length=max(1, config.max_text_length // 3), seed=1),
            served_example(config, batch=2, length=1, seed=2)]


def logit_differences(graph: onnx.ModelProto | bytes, model: AuditModel,
                      cases: list[dict[str, torch.Tensor]]) -> list[dict]:
    """For each case: its batch, copy length and the largest absolute difference between ONNX Runtime's
    logits (CPU execution provider) and PyTorch's served logits, per task."""
    import onnxruntime

    data = graph if isinstance(graph, bytes) else graph.SerializeToString()
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    model = model.eval()
    results = []
    for inputs in cases:
        ours = dict(zip(names, session.run(names, {name: inputs[name].numpy() for name in SERVED_INPUTS})))
        theirs = served_logits(model, **inputs)
        results.append({"batch": int(inputs["input_ids"].shape[0]), "length": int(inputs["input_ids"].shape[1]),
                        "max_abs_difference": {task: float(np.abs(ours[task] - theirs[task].float().numpy()).max())
                                               for task in model.config.tasks}})
    return results


def check_gpu_graph(graph: onnx.ModelProto | bytes, model: AuditModel, tolerance: float | None = None) -> dict:
    """Compare the graph's logits with PyTorch's on check_cases; raise GpuGraphError past `tolerance`
    (default TOLERANCE). Returns what was checked and the largest difference seen (written next to the
    graph at export)."""
    tolerance = TOLERANCE if tolerance is None else tolerance
    cases = logit_differences(graph, model, check_cases(model.config))
    worst = max(((value, task, case) for case in cases for task, value in case["max_abs_difference"].items()),
                key=lambda item: item[0])
    value, task, case = worst
    if not value <= tolerance:  # NaN fails too
        raise GpuGraphError(f"the GPU graph's {task} logits differ from PyTorch's by {value:.3g} (allowed "
                            f"{tolerance:g}) at batch {case['batch']}, copy length {case['length']}: nothing written")
    return {"max_abs_logit_difference": value, "tolerance": tolerance, "cases": cases}

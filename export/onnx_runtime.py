"""The audit model as ONNX graphs, run by ONNX Runtime: the same weights with less per-operator cost.

At batch 1 the student's eager PyTorch forward is bound by the fixed cost of each of its ~900
operators, not by arithmetic (benchmarks/results/physical_limit.md). ONNX Runtime runs the same
computation as a graph with fused kernels and a few microseconds per node.

`export_onnx(model, inputs, path)` traces the model with torch.onnx (the TorchScript exporter)
into two graphs, and checks that ONNX Runtime gives PyTorch's logits with each:

- `path`: any batch size, any copy length: what a batched Triton execution runs;
- `batch_one_path(path, length)` (`model.batch1.len24.onnx`, ...): the same weights specialised to
  one ad with its copy padded to `length` tokens, one graph per length of `length_buckets` (16, 24,
  32 and the model's longest copy). With every shape fixed, ONNX Runtime folds away all the shape
  arithmetic (Shape, Gather, Unsqueeze, Concat, Where) that a dynamic batch or length keeps at run
  time: 188 nodes against 289 for one ad with its length free, and 0.84 against 1.09 ms for the
  student on the 2-core AMD EPYC. The copy's padding is masked, so the logits are the same. Like
  a TensorRT optimisation profile, the engine picks the graph by the batch and length it is given.

Both graphs then go through ONNX Runtime's transformer fusions (`onnxruntime.transformers`:
LayerNorm + residual into SkipLayerNormalization, bias + GELU into BiasGelu). On the 2-core
AMD EPYC the batch-1 graph and these fusions took the student's batch-1 latency from 2.34 ms to
1.38 ms, timed alone, before the length was fixed too.

`OnnxRuntimeAuditModel(path)` runs them behind the model's own call signature, so evaluation and
latency code takes it as it takes an `AuditModel`. Needs `onnx` and `onnxruntime` (core
dependencies).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from adaudit.files import atomic_write_bytes
from adaudit.models.modeling import AuditModel, AuditOutput

INPUTS = ("pixel_values", "input_ids", "attention_mask")  # what the model takes, in its call order
OPSET = 17
LENGTH_BUCKETS = (16, 24, 32)  # copy lengths of the batch-1 graphs, beside the model's longest copy
# Batch-1 graphs pay where the fixed cost per operator dominates: small models. Each holds its own copy of
# the weights, so a larger model (a teacher) gets none and runs one ad on the any-batch graph.
BATCH_ONE_MAX_PARAMETERS = 20_000_000
BATCH_ONE_NAME = re.compile(r"\.batch1\.len(\d+)\.onnx$")


class _Logits(nn.Module):
    """The model with plain tuple outputs (text-task logits, then picture-task logits), as ONNX needs."""

    def __init__(self, model: AuditModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, input_ids, attention_mask):
        output = self.model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
        return (*output.logits.values(), *output.image_logits.values())


def length_buckets(max_text_length: int) -> tuple[int, ...]:
    """The copy lengths a model's batch-1 graphs are specialised to: every copy pads to the next one."""
    return tuple(sorted({min(length, max_text_length) for length in LENGTH_BUCKETS} | {max_text_length}))


def batch_one_path(path: Path, length: int) -> Path:
    """Where the batch-1 graph for copies of `length` tokens is: model.onnx -> model.batch1.len24.onnx."""
    path = Path(path)
    return path.with_name(f"{path.name.removesuffix('.onnx')}.batch1.len{length}.onnx")


def _graph(model: AuditModel, inputs: dict[str, torch.Tensor], dynamic_shapes: bool) -> bytes:
    """The traced, fused ONNX graph of `model`: batch and copy length dynamic, or both fixed to `inputs`'."""
    import copy
    import io
    import logging

    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    names = output_names(model)
    batch, length = ({0: "batch"}, {1: "length"}) if dynamic_shapes else ({}, {})
    dynamic = {"pixel_values": dict(batch), "input_ids": {**batch, **length},
               "attention_mask": {**batch, **length}, **{name: dict(batch) for name in names}}
    traced = copy.deepcopy(model).eval()  # tracing leaves the traced modules computing otherwise afterwards
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(_Logits(traced), tuple(inputs[name] for name in INPUTS), buffer, input_names=list(INPUTS),
                          output_names=names, dynamic_axes={k: v for k, v in dynamic.items() if v},
                          opset_version=OPSET, dynamo=False)
    quiet = logging.getLogger("onnxruntime.transformers")  # its fusion passes log every pattern they try
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        fused = optimize_model(onnx.load_from_string(buffer.getvalue()), model_type="bert")
    finally:
        quiet.setLevel(level)
    return fused.model.SerializeToString()


def output_names(model: AuditModel) -> list[str]:
    return [f"logits.{t}" for t in model.heads] + [f"image_logits.{t}" for t in model.image_heads]


def export_onnx(model: AuditModel, inputs: dict[str, torch.Tensor], path: Path, atol: float = 1e-4) -> Path:
    """Write `model` as ONNX to `path` (any batch, any length) and the batch-1 graphs beside it (one per
    length bucket), atomically, and check ONNX Runtime's logits against PyTorch's: on `inputs` with the
    any-batch graph, and on one ad of each bucket's length with that bucket's graph, its copy a token
    shorter than the bucket so that the padding is exercised."""
    path = Path(path)
    model = model.eval()
    for stale in batch_one_graphs(path).values():  # an earlier model's, in a reused folder
        stale.unlink()
    atomic_write_bytes(path, _graph(model, inputs, dynamic_shapes=True))
    one = {k: v[:1] for k, v in inputs.items()}
    buckets = length_buckets(model.config.max_text_length) if model.num_parameters() <= BATCH_ONE_MAX_PARAMETERS else ()
    for length in buckets:
        padded = {**one, "input_ids": _pad(one["input_ids"], length), "attention_mask": _pad(one["attention_mask"], length)}
        atomic_write_bytes(batch_one_path(path, length), _graph(model, padded, dynamic_shapes=False))
    engine = OnnxRuntimeAuditModel(path)
    with torch.inference_mode():
        checks = [(engine(**inputs), model(**inputs))]
        for length in buckets:
            ad = {**one, "input_ids": _pad(one["input_ids"], length - 1, fill=5),
                  "attention_mask": torch.ones(1, length - 1, dtype=torch.int64)}
            checks.append((engine(**ad), model(**ad)))
    for ours, theirs in checks:
        for task in model.heads:
            torch.testing.assert_close(ours.logits[task], theirs.logits[task], atol=atol, rtol=atol)
    return path


def batch_one_graphs(path: Path) -> dict[int, Path]:
    """The batch-1 graphs written beside the graph at `path`, by copy length."""
    path = Path(path)
    stem = path.name.removesuffix(".onnx")
    graphs = {}
    for graph in path.parent.glob(f"{stem}.batch1.len*.onnx"):
        match = BATCH_ONE_NAME.search(graph.name)
        if match and graph.name == batch_one_path(path, int(match.group(1))).name:
            graphs[int(match.group(1))] = graph
    return graphs


def _pad(tensor: torch.Tensor, length: int, fill: int = 0) -> torch.Tensor:
    """`tensor` (batch, copy length) cut or padded with `fill` to `length` columns."""
    if tensor.shape[1] >= length:
        return tensor[:, :length]
    return torch.cat([tensor, tensor.new_full((tensor.shape[0], length - tensor.shape[1]), fill)], dim=1)


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
    """An exported audit model in ONNX Runtime sessions, called like an AuditModel (no pooled state,
    no hidden states: what evaluation and serving read). One ad runs the batch-1 graph of the shortest
    length bucket its copy fits, padded to it, when the export wrote those graphs next to `path`; more
    ads run the graph at `path`."""

    def __init__(self, path: Path, threads: int | None = None, batch_one: bool = True, spinning: bool = True):
        """`batch_one` False: every batch on the any-batch graph (to measure what the batch-1 graphs buy);
        `spinning` False: no batch-1 session's idle workers spin (see `session`)."""
        super().__init__()
        import onnxruntime

        self.threads, self.version = threads or torch.get_num_threads(), onnxruntime.__version__

        def session(graph: Path, spinning: bool = True):
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
            # idle worker threads spin for a while before they sleep: that wins microseconds per operator on
            # one ad, and steals a core from a neighbour when two sessions share the machine
            options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
            return onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])

        graphs = batch_one_graphs(path)
        # one ad: a session per copy length, shortest first (each holds the weights: a student's few MB)
        self.single = {length: session(graphs[length], spinning) for length in sorted(graphs)} if batch_one else {}
        self.session = session(path, spinning=not self.single)  # with batch-1 graphs: larger batches only
        self.names = [output.name for output in self.session.get_outputs()]

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> AuditOutput:
        feeds = {"pixel_values": np.ascontiguousarray(pixel_values.numpy(), dtype=np.float32),
                 "input_ids": input_ids.numpy().astype(np.int64, copy=False),
                 "attention_mask": attention_mask.numpy().astype(np.int64, copy=False)}
        session = self.session
        if len(input_ids) == 1:
            length = next((bucket for bucket in self.single if bucket >= input_ids.shape[1]), None)
            if length is not None:
                session = self.single[length]
                feeds["input_ids"], feeds["attention_mask"] = (
                    np.pad(feeds[name], ((0, 0), (0, length - input_ids.shape[1]))) for name in ("input_ids", "attention_mask"))
        outputs = dict(zip(self.names, session.run(self.names, feeds)))
        logits = {name.removeprefix("logits."): torch.from_numpy(value)
                  for name, value in outputs.items() if name.startswith("logits.")}
        image_logits = {name.removeprefix("image_logits."): torch.from_numpy(value)
                        for name, value in outputs.items() if name.startswith("image_logits.")}
        return AuditOutput(logits=logits, pooled=torch.empty(len(input_ids), 0), image_logits=image_logits)

"""The audit model as ONNX graphs, run by ONNX Runtime: the same weights with less per-operator cost.

At batch 1 a small student's eager PyTorch forward is bound by the fixed cost of each of its
hundreds of operators, not by arithmetic (benchmarks/results/physical_limit.md). ONNX Runtime runs
the same computation as a graph with fused kernels and a few microseconds per node.

`export_onnx(model, inputs, path)` traces the model with torch.onnx (the TorchScript exporter)
into two graphs, and checks that ONNX Runtime gives PyTorch's logits with each:

- `path`: any batch size, any copy length: what a batched Triton execution runs;
- `batch_one_path(path)` (`model.batch1.onnx`): the same weights specialised to one ad (the copy
  length stays free). With the batch dimension fixed, ONNX Runtime folds away the shape
  arithmetic that a dynamic batch keeps at run time, a large part of the graph's nodes. Like a
  TensorRT optimisation profile, the engine picks the graph by the batch it is given.

Both graphs are traced with eager attention (plain MatMul and Softmax nodes), then go through
adaudit's own passes (export/onnx_graph.py: constant Reshape targets, each attention fused into
one node) and ONNX Runtime's transformer fusions (`onnxruntime.transformers`: LayerNorm + residual
into SkipLayerNormalization, bias + GELU into BiasGelu). What each step bought is measured in
docs/serving.md and benchmarks/results/physical_limit.md. Only a model of up to
BATCH_ONE_MAX_PARAMETERS gets the batch-1 graph; with the passes it is still faster on one ad than
the any-batch graph.

Tried and left out: fixing the copy length too, one batch-1 graph per length bucket, every shape
constant. At one length it was faster, but over ads whose lengths vary, switching between the
buckets' sessions (each with its own thread pool and copy of the weights) cost more than the
folding saved; one fixed-length graph with every copy padded to the model's text length came out
within the machine's noise of the any-batch graph (figures: docs/serving.md).

`OnnxRuntimeAuditModel(path)` runs them behind the model's own call signature, so evaluation and
latency code takes it as it takes an `AuditModel`. Needs `onnx` and `onnxruntime` (core
dependencies).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from adaudit.core.files import atomic_write_bytes
from adaudit.models.modeling import AuditModel, AuditOutput

INPUTS = ("pixel_values", "input_ids", "attention_mask")  # what the model takes, in its call order
OPSET = 17
BATCH_ONE_SUFFIX = ".batch1.onnx"
# The batch-1 graph pays where the fixed cost per operator dominates: small models. It holds its own copy of
# the weights, so a larger model (a teacher) gets none and runs one ad on the any-batch graph.
BATCH_ONE_MAX_PARAMETERS = 20_000_000
TEMPERATURES_KEY = "adaudit.temperatures"  # graph metadata: the config's served temperatures, as JSON


class _Logits(nn.Module):
    """The model with plain tuple outputs (text-task logits, then picture-task logits), as ONNX needs."""

    def __init__(self, model: AuditModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, input_ids, attention_mask):
        output = self.model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
        return (*output.logits.values(), *output.image_logits.values())


def batch_one_path(path: Path) -> Path:
    """Where the batch-1 graph of the graph at `path` is: model.onnx -> model.batch1.onnx."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".onnx") + BATCH_ONE_SUFFIX)


def _graph(model: AuditModel, inputs: dict[str, torch.Tensor], batch_dynamic: bool) -> bytes:
    """The traced, fused ONNX graph of `model` (its copy length dynamic; its batch too when asked)."""
    import copy
    import io
    import logging
    import warnings

    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    from .onnx_graph import constant_reshape_targets, fuse_attention

    names = output_names(model)
    batch = {0: "batch"} if batch_dynamic else {}
    dynamic = {"pixel_values": dict(batch), "input_ids": {**batch, 1: "length"},
               "attention_mask": {**batch, 1: "length"}, **{name: dict(batch) for name in names}}
    traced = copy.deepcopy(model).eval()  # tracing leaves the traced modules computing otherwise afterwards
    for tower in (traced.vision, traced.qformer, traced.text):
        # written out as plain MatMul/Softmax nodes, the attention is what fuse_attention recognises (SDPA's
        # export adds NaN guards)
        tower.set_attn_implementation("eager")
    buffer = io.BytesIO()
    # tracing warns about every Python branch on a tensor in the transformers blocks and about the legacy
    # exporter; export_onnx checks the graph's logits against PyTorch's instead, so they are silenced here
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Logits(traced), tuple(inputs[name] for name in INPUTS), buffer, input_names=list(INPUTS),
                          output_names=names, dynamic_axes={k: v for k, v in dynamic.items() if v},
                          opset_version=OPSET, dynamo=False)
    graph = onnx.load_from_string(buffer.getvalue())
    constant_reshape_targets(graph)
    fuse_attention(graph)
    quiet = logging.getLogger("onnxruntime.transformers")  # its fusion passes log every pattern they try
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        fused = optimize_model(graph, model_type="bert")  # LayerNorm, GELU and bias fusions
    finally:
        quiet.setLevel(level)
    # the graph computes raw logits, like the model's forward; the served temperatures travel with it, read
    # back by OnnxRuntimeAuditModel for models/serving.served_logits to divide by
    entry = fused.model.metadata_props.add()
    entry.key, entry.value = TEMPERATURES_KEY, json.dumps(model.config.temperatures)
    return fused.model.SerializeToString()


def output_names(model: AuditModel) -> list[str]:
    return [f"logits.{t}" for t in model.heads] + [f"image_logits.{t}" for t in model.image_heads]


def export_onnx(model: AuditModel, inputs: dict[str, torch.Tensor], path: Path, atol: float = 1e-4) -> Path:
    """Write `model` as ONNX to `path` (any batch) and `batch_one_path(path)` (one ad), atomically, and
    check ONNX Runtime's logits against PyTorch's on `inputs` (the batch-1 graph on each of its rows)."""
    path = Path(path)
    batch_one = batch_one_path(path)
    atomic_write_bytes(path, _graph(model, inputs, batch_dynamic=True))
    batch_one.unlink(missing_ok=True)  # an earlier model's, in a reused folder
    if model.num_parameters() <= BATCH_ONE_MAX_PARAMETERS:
        atomic_write_bytes(batch_one, _graph(model, {k: v[:1] for k, v in inputs.items()}, batch_dynamic=False))
    engine = OnnxRuntimeAuditModel(path)
    with torch.inference_mode():
        ours, theirs = engine(**inputs), model.eval()(**inputs)
        rows = [engine(**{k: v[i:i + 1] for k, v in inputs.items()}) for i in range(len(inputs["input_ids"]))]
    for task in model.heads:
        torch.testing.assert_close(ours.logits[task], theirs.logits[task], atol=atol, rtol=atol)
        torch.testing.assert_close(torch.cat([row.logits[task] for row in rows]), theirs.logits[task],
                                   atol=atol, rtol=atol)
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
    """An exported audit model in ONNX Runtime sessions, called like an AuditModel (no pooled state,
    no hidden states: what evaluation and serving read). One ad runs the batch-1 graph when the
    export wrote one next to `path`; more run the graph at `path`."""

    def __init__(self, path: Path, threads: int | None = None, batch_one: bool = True):
        """`batch_one` False: every batch on the any-batch graph (to measure what the batch-1 graph buys)."""
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

        single = batch_one_path(path)
        self.single = session(single) if batch_one and single.is_file() else None
        self.session = session(path, spinning=self.single is None)  # with a batch-1 graph: larger batches only
        self.names = [output.name for output in self.session.get_outputs()]
        # what served_logits divides by (a graph exported before calibration carries none: every task at 1.0)
        self.temperatures = json.loads(self.session.get_modelmeta().custom_metadata_map.get(TEMPERATURES_KEY, "{}"))

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> AuditOutput:
        feeds = {"pixel_values": np.ascontiguousarray(pixel_values.numpy(), dtype=np.float32),
                 "input_ids": input_ids.numpy().astype(np.int64, copy=False),
                 "attention_mask": attention_mask.numpy().astype(np.int64, copy=False)}
        session = self.single if self.single is not None and len(input_ids) == 1 else self.session
        outputs = dict(zip(self.names, session.run(self.names, feeds)))
        logits = {name.removeprefix("logits."): torch.from_numpy(value)
                  for name, value in outputs.items() if name.startswith("logits.")}
        image_logits = {name.removeprefix("image_logits."): torch.from_numpy(value)
                        for name, value in outputs.items() if name.startswith("image_logits.")}
        return AuditOutput(logits=logits, pooled=torch.empty(len(input_ids), 0), image_logits=image_logits)

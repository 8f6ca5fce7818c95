"""Passes over a traced ONNX graph of the audit model, before ONNX Runtime's own fusions see it.

torch.onnx writes every `view` in the transformers blocks as shape arithmetic (Shape, Gather,
Unsqueeze, Concat) feeding a Reshape, and every attention as a dozen plain nodes, each with its
fixed cost (at batch 1 that cost, not arithmetic, sets a small student's latency). ONNX Runtime's transformer optimizer
(`onnxruntime.transformers`) fuses only BERT's attention, and only where the attention width equals
the hidden size, which pruning heads breaks. Two small passes, each a step that finds, checks and
rewrites:

- `constant_reshape_targets`: each Reshape's target becomes a constant, 0 where a dimension is
  copied from the input (the batch, the copy length) and -1 for the one it infers. The shape
  arithmetic is then dead and `prune_unused` drops it.
- `fuse_attention`: Q K^T * scale (+ mask) -> Softmax -> . V, with the reshapes and transposes
  around it, becomes one com.microsoft `Attention` node (query, key and value projected from the
  same input: their weights packed into one matrix) or `MultiHeadAttention` (the Q-Former's
  cross-attention to the picture); an additive mask becomes the node's attention bias, as given,
  wherever the padding is. An attention that reads only constants (the Q-Former's self-attention
  over its learned queries, at batch 1) is left for ONNX Runtime to fold into a constant.

Both keep the graph's results (export_onnx checks the logits against PyTorch's).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

MICROSOFT = "com.microsoft"


def _dimensions(value: onnx.ValueInfoProto) -> list[int | str | None]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param if d.HasField("dim_param") else None
            for d in value.type.tensor_type.shape.dim]


def _reshape_target(source: list, result: list) -> list[int] | None:
    """The constant Reshape target that turns a tensor of dims `source` into one of dims `result`
    (ints and symbols), or None when it cannot be written with one -1."""
    if None in source or None in result or 0 in source or 0 in result:
        return None  # a literal 0 in a target means "copy": not for empty tensors
    if any(result.count(d) > source.count(d) for d in result if isinstance(d, str) and d in source):
        return None  # a symbol used twice: which one copies is ambiguous
    unmatched = list(source)
    for dimension in result:
        if isinstance(dimension, str) and dimension in unmatched:
            unmatched.remove(dimension)
    unknown = {d for d in result if isinstance(d, str) and d not in source}
    if len(unknown) == 1 and sum(d in unknown for d in result) == 1 and all(isinstance(d, int) for d in unmatched):
        # a symbol the inference made up for a -1 (the head count of a `view(..., -1, head_dim)`)
        known, total = int(np.prod([d for d in result if isinstance(d, int)])), int(np.prod(unmatched))
        if total % known:
            return None
        result = [total // known if d in unknown else d for d in result]
    target = [d if isinstance(d, int) else 0 if i < len(source) and source[i] == d else -1
              for i, d in enumerate(result)]
    return target if target.count(-1) <= 1 else None


def _constant(name: str, value: np.ndarray) -> onnx.NodeProto:
    """A Constant node for a shape: not an initializer, which ONNX Runtime's optimizer hands over as
    external data that its shape inference cannot read."""
    return helper.make_node("Constant", [], [name], name=name, value=numpy_helper.from_array(value))


def constant_reshape_targets(model: onnx.ModelProto) -> int:
    """Give every Reshape whose target is computed at run time a constant target; returns how many."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    graph = inferred.graph
    dims = {v.name: _dimensions(v) for v in [*graph.value_info, *graph.input, *graph.output]}
    constants = {i.name for i in model.graph.initializer} | {
        n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    nodes, changed = [], 0
    for node in model.graph.node:
        allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)
        if node.op_type == "Reshape" and not allowzero and node.input[1] not in constants and node.input[0] in dims \
                and node.output[0] in dims:
            target = _reshape_target(dims[node.input[0]], dims[node.output[0]])
            if target is not None:
                name = node.output[0] + "/constant_target"
                nodes.append(_constant(name, np.array(target, np.int64)))
                node.input[1] = name
                changed += 1
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    prune_unused(model)
    return changed


def prune_unused(model: onnx.ModelProto) -> None:
    """Drop the nodes and initializers that no graph output depends on."""
    graph = model.graph
    needed = {output.name for output in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(output in needed for output in node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)


class _Graph:
    """Who produces and who reads each value, and the constants' values."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.producer = {output: node for node in graph.node for output in node.output}
        self.readers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        for output in graph.output:
            self.readers.setdefault(output.name, []).append(None)
        self.constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute[0].name == "value":
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            elif node.op_type == "Identity" and node.input[0] in self.constants:  # the exporter's shared copies
                self.constants[node.output[0]] = self.constants[node.input[0]]
        # values that change with the graph's inputs (everything else ONNX Runtime folds to constants)
        self.varying = {i.name for i in graph.input}
        for node in graph.node:
            if any(name in self.varying for name in node.input):
                self.varying.update(node.output)

    def parent(self, value: str, op_type: str):
        node = self.producer.get(value)
        return node if node is not None and node.op_type == op_type else None

    def only_reader(self, value: str, op_type: str):
        readers = self.readers.get(value, [])
        return readers[0] if len(readers) == 1 and readers[0] is not None and readers[0].op_type == op_type else None

    def perm(self, node) -> list[int]:
        return [list(a.ints) for a in node.attribute if a.name == "perm"][0]

    def projection(self, value: str):
        """(input, weight, bias) when `value` is Add(MatMul(input, constant weight), constant bias)."""
        add = self.parent(value, "Add")
        if add is None:
            return None
        for bias, product in (add.input, reversed(add.input)):
            matmul = self.parent(product, "MatMul")
            if matmul is not None and bias in self.constants and matmul.input[1] in self.constants:
                return matmul.input[0], self.constants[matmul.input[1]], self.constants[bias]
        return None


def _attention(graph: _Graph, softmax) -> tuple[list, dict] | None:
    """The nodes of one attention ending at `softmax`'s product with V, and what replaces them."""
    if [a.i for a in softmax.attribute if a.name == "axis"] not in ([], [-1], [3]):
        return None  # a softmax over the last axis (the keys) only; opset 13+ defaults to it
    scaled, bias = softmax.input[0], ""
    mask = graph.parent(scaled, "Add")
    if mask is not None:  # an additive mask (the copy's padding): handed to the fused node as its attention bias
        products = [name for name in mask.input if graph.parent(name, "Mul") is not None
                    and graph.parent(graph.parent(name, "Mul").input[0], "MatMul") is not None]
        if len(products) != 1:
            return None
        scaled, bias = products[0], next(name for name in mask.input if name != products[0])
    scale = graph.parent(scaled, "Mul")
    if scale is None or scale.input[1] not in graph.constants or graph.constants[scale.input[1]].size != 1:
        return None
    scores = graph.parent(scale.input[0], "MatMul")
    if scores is None:
        return None
    query_heads, key_heads = graph.parent(scores.input[0], "Transpose"), graph.parent(scores.input[1], "Transpose")
    if query_heads is None or key_heads is None or graph.perm(query_heads) != [0, 2, 1, 3] \
            or graph.perm(key_heads) != [0, 2, 3, 1]:
        return None
    mixed = graph.only_reader(softmax.output[0], "MatMul")
    if mixed is None or mixed.input[0] != softmax.output[0]:
        return None
    value_heads = graph.parent(mixed.input[1], "Transpose")
    if value_heads is None or graph.perm(value_heads) != [0, 2, 1, 3]:
        return None
    split = [graph.parent(t.input[0], "Reshape") for t in (query_heads, key_heads, value_heads)]
    merge_heads = graph.only_reader(mixed.output[0], "Transpose")
    merge = graph.only_reader(merge_heads.output[0], "Reshape") if merge_heads is not None else None
    if None in split or merge is None or graph.perm(merge_heads) != [0, 2, 1, 3]:
        return None
    # the head count: the third dimension of the splits' targets (a traced `view` may write -1 in some); query,
    # key and value must agree (not multi-query attention)
    targets = [graph.constants.get(r.input[1]) for r in split]
    if any(t is None or len(t) != 4 for t in targets):
        return None
    counts = {int(t[2]) for t in targets if t[2] > 0}
    if len(counts) != 1:
        return None
    inner = [scale, scores, query_heads, key_heads, value_heads, *split, *([mask] if mask is not None else [])]
    if any(len(graph.readers.get(node.output[0], [])) != 1 for node in inner):
        return None
    query, key, value = (reshape.input[0] for reshape in split)
    if not any(name in graph.varying for name in (query, key, value)):
        return None  # constants only: ONNX Runtime folds it away
    heads, factor = counts.pop(), float(graph.constants[scale.input[1]].reshape(()))
    nodes = [*inner, softmax, mixed, merge_heads, merge]
    projections = [graph.projection(name) for name in (query, key, value)]
    if None not in projections and len({source for source, _, _ in projections}) == 1 \
            and len({w.shape[1] for _, w, _ in projections}) == 1 and projections[0][1].shape[1] % heads == 0:
        # self-attention: one node projects the input to query, key and value with the three weights packed
        return nodes, {"source": projections[0][0], "heads": heads, "scale": factor, "mask": bias,
                       "weight": np.concatenate([w for _, w, _ in projections], axis=1),
                       "bias": np.concatenate([b for _, _, b in projections]), "output": merge.output[0]}
    return nodes, {"query": query, "key": key, "value": value, "heads": heads, "scale": factor, "mask": bias,
                   "output": merge.output[0]}


def fuse_attention(model: onnx.ModelProto) -> int:
    """Replace each attention with one Attention or MultiHeadAttention node; returns how many. A mask of
    another shape than (batch or 1, 1, length, length) would fail in ONNX Runtime, and so export_onnx's check."""
    graph = _Graph(model)
    replaced, replacement = set(), {}
    for softmax in [n for n in model.graph.node if n.op_type == "Softmax"]:
        found = _attention(graph, softmax)
        if found is None:
            continue
        nodes, plan = found
        name = softmax.name + "/fused"
        if "source" in plan:
            weight, bias = name + "/qkv_weight", name + "/qkv_bias"
            model.graph.initializer.extend([numpy_helper.from_array(plan["weight"], weight),
                                            numpy_helper.from_array(plan["bias"], bias)])
            # inputs: input, packed weights and bias, mask index, past state, attention bias
            inputs = [plan["source"], weight, bias, "", "", plan["mask"]]
            fused = helper.make_node("Attention", inputs if plan["mask"] else inputs[:3], [plan["output"]],
                                     name=name, domain=MICROSOFT, num_heads=plan["heads"], scale=plan["scale"])
        else:
            # inputs: query, key, value, projection bias, key padding mask, attention bias
            inputs = [plan["query"], plan["key"], plan["value"], "", "", plan["mask"]]
            fused = helper.make_node("MultiHeadAttention", inputs if plan["mask"] else inputs[:3], [plan["output"]],
                                     name=name, domain=MICROSOFT, num_heads=plan["heads"], scale=plan["scale"])
        replaced.update(id(node) for node in nodes)
        replacement[id(nodes[-1])] = fused
    if not replacement:
        return 0
    kept = [replacement.get(id(node), node) for node in model.graph.node
            if id(node) not in replaced or id(node) in replacement]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    if not any(opset.domain == MICROSOFT for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MICROSOFT, 1))
    prune_unused(model)  # the separate projections' MatMul and Add, now read by nobody
    return len(replacement)


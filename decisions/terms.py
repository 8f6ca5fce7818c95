"""Term lists matched in one pass over normalised copy, with offsets in the copy as sent.

Advertisers dodge a list of banned words by writing them in full-width forms (`ＮＯ．１`, `１００％`)
or in traditional characters (`國家級`), so the copy and the terms are both normalised the same way
before matching: Unicode NFKC (full-width -> half-width, compatibility forms), lower case, then
OpenCC traditional -> simplified. One Aho-Corasick automaton (pyahocorasick) holds every term of
every list, so the copy is scanned once however many terms there are.

A hit must point at the characters the advertiser wrote, not at the normalised text: NFKC can turn
one character into several (`㈱` -> `(株)`) and OpenCC's phrase conversion may change a length, so
normalisation keeps, for every normalised character, the span of original characters it came from
(`Normalised.spans`). A hit's `start`/`end` (end exclusive) are offsets in the original copy.

Allow terms are exceptions: a block or review hit that lies inside an allow hit (`第一` inside the
allowed `第一次`) is dropped. Allow hits are still reported, so a caller sees why.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import ahocorasick
import opencc

LISTS = ("block", "review", "allow")
MAX_LIST_BYTES = 1024 * 1024  # a term list at or over this size (UTF-8) is refused: a mistake, not a list
MAX_TERM_CHARS = 64
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2064\ufeff]")


class TermListError(ValueError):
    """A term list that cannot be used; the message names the list and the line."""


@dataclass(frozen=True)
class TermHit:
    term: str  # the term as the list spells it
    list: str  # block, review or allow
    start: int  # offsets in the original copy, end exclusive
    end: int

    def as_dict(self) -> dict:
        return {"term": self.term, "list": self.list, "start": self.start, "end": self.end}


@dataclass(frozen=True)
class Normalised:
    text: str
    spans: tuple[tuple[int, int], ...]  # per character of `text`: the (start, end) in the original it came from


@lru_cache(maxsize=1)
def _converter() -> opencc.OpenCC:
    return opencc.OpenCC("t2s")


def _segments(text: str):
    """(start, end) of each character with the combining marks that follow it: NFKC composes within a
    segment, never across two, so normalising segment by segment equals normalising the whole."""
    start = 0
    for index in range(1, len(text) + 1):
        if index == len(text) or not unicodedata.combining(text[index]):
            yield start, index
            start = index


def normalise(text: str) -> Normalised:
    """NFKC, lower case, traditional -> simplified; with each output character's original span."""
    characters, spans = [], []
    for start, end in _segments(text):
        for character in unicodedata.normalize("NFKC", text[start:end]).lower():
            characters.append(character)
            spans.append((start, end))
    folded = "".join(characters)
    simplified = _converter().convert(folded)
    if len(simplified) != len(folded):  # a phrase changed length: convert character by character instead
        pieces, widened = [], []
        for character, span in zip(folded, spans):
            converted = _converter().convert(character)
            pieces.append(converted)
            widened.extend([span] * len(converted))
        simplified, spans = "".join(pieces), widened
    return Normalised(simplified, tuple(spans))


def check_terms(terms: list[str], where: str) -> list[str]:
    """The terms, stripped; TermListError naming `where` and the line for an empty list, an oversized one,
    a term with control characters or an over-long term."""
    size = sum(len(term.encode("utf-8")) + 1 for term in terms)
    if size >= MAX_LIST_BYTES:
        raise TermListError(f"{where}: the list is {size} bytes; a term list must stay under {MAX_LIST_BYTES}")
    cleaned = []
    for number, term in enumerate(terms, start=1):
        if not isinstance(term, str):
            raise TermListError(f"{where}: line {number}: a term must be text, got {type(term).__name__}")
        found = CONTROL.search(term.strip("\r\n"))
        if found:
            raise TermListError(f"{where}: line {number}: the term holds the control character "
                                f"U+{ord(found.group()):04X}")
        term = term.strip()
        if not term or term.startswith("#"):  # blank lines and comments
            continue
        if len(term) > MAX_TERM_CHARS:
            raise TermListError(f"{where}: line {number}: the term has {len(term)} characters; at most "
                                f"{MAX_TERM_CHARS}")
        cleaned.append(term)
    if not cleaned:
        raise TermListError(f"{where}: the list is empty (leave the list out of the policy instead)")
    return cleaned


def read_term_file(path, where: str) -> list[str]:
    """One term a line (`#` starts a comment line); checked as `check_terms`, the size before reading."""
    size = path.stat().st_size
    if size >= MAX_LIST_BYTES:
        raise TermListError(f"{where}: {path.name} is {size} bytes; a term list must stay under {MAX_LIST_BYTES}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise TermListError(f"{where}: {path.name} is not UTF-8 (byte {error.start})") from None
    return check_terms(text.split("\n"), f"{where} ({path.name})")


class TermMatcher:
    """Every list's terms in one automaton; `find(copy)` scans the copy once."""

    def __init__(self, lists: dict[str, list[str]]):
        self.automaton = ahocorasick.Automaton()
        self.lists = {name: list(terms) for name, terms in lists.items()}  # as given (a fitted policy copies them)
        self.sizes = {name: len(terms) for name, terms in lists.items()}
        entries: dict[str, list[tuple[str, str]]] = {}
        for name in LISTS:
            for term in lists.get(name, []):
                key = normalise(term).text
                if key:
                    entries.setdefault(key, []).append((name, term))
        for key, owners in entries.items():
            self.automaton.add_word(key, (len(key), tuple(owners)))
        self.empty = not entries
        if not self.empty:
            self.automaton.make_automaton()

    def find(self, copy: str) -> list[TermHit]:
        """Hits in the copy (allow hits included), ordered by start; block/review hits inside an allow hit
        are dropped."""
        if self.empty or not copy:
            return []
        normalised = normalise(copy)
        found: list[tuple[int, int, str, str]] = []  # normalised start, end (exclusive), list, term
        for last, (length, owners) in self.automaton.iter(normalised.text):
            for name, term in owners:
                found.append((last - length + 1, last + 1, name, term))
        allowed = [(start, end) for start, end, name, _ in found if name == "allow"]
        hits = []
        for start, end, name, term in sorted(found):
            if name != "allow" and any(a <= start and end <= b for a, b in allowed):
                continue
            hits.append(TermHit(term, name, normalised.spans[start][0], normalised.spans[end - 1][1]))
        return hits

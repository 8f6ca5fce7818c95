"""A character-level Chinese tokenizer that works offline.

The vocabulary is generated, not downloaded: the special tokens, printable ASCII (with
WordPiece "##" continuations for letters and digits), common full-width punctuation and
every character of the GB2312 set (6,763 hanzi plus symbols). transformers' BERT
tokenizer (backed by the `tokenizers` library) splits Chinese into single characters,
so each hanzi is one token. The vocabulary file is saved in every model folder, so a
model and its tokenizer always travel together.
"""

from pathlib import Path

from transformers import BertTokenizer
from transformers.models.bert.tokenization_bert import load_vocab

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
FULL_WIDTH_PUNCTUATION = "，。！？；：、“”‘’（）《》【】…—·￥％"
VOCABULARY_FILE = "vocab.txt"


def gb2312_characters() -> list[str]:
    """Every character of GB2312 rows 0xA1-0xF7, in code order."""
    characters = []
    for high in range(0xA1, 0xF8):
        for low in range(0xA1, 0xFF):
            try:
                character = bytes((high, low)).decode("gb2312")
            except UnicodeDecodeError:
                continue
            characters.append(character)
    return characters


def build_vocabulary() -> list[str]:
    tokens = list(SPECIAL_TOKENS)
    ascii_printable = [chr(c) for c in range(0x21, 0x7F)]
    tokens += ascii_printable
    tokens += ["##" + c for c in ascii_printable if c.isalnum()]
    tokens += list(FULL_WIDTH_PUNCTUATION)
    tokens += gb2312_characters()
    seen: set[str] = set()
    return [t for t in tokens if not (t in seen or seen.add(t))]


def write_vocabulary(folder: Path) -> Path:
    path = Path(folder) / VOCABULARY_FILE
    path.write_text("\n".join(build_vocabulary()) + "\n", encoding="utf-8")
    return path


def make_tokenizer(vocabulary: list[str] | None = None) -> BertTokenizer:
    """A WordPiece tokenizer over `vocabulary` (default: the generated one)."""
    vocabulary = vocabulary or build_vocabulary()
    return BertTokenizer(vocab={token: index for index, token in enumerate(vocabulary)},
                         do_lower_case=True, tokenize_chinese_chars=True)


def load_tokenizer(folder: Path) -> BertTokenizer:
    """The tokenizer saved in a model folder (its vocab.txt)."""
    path = Path(folder) / VOCABULARY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: not a model folder")
    return make_tokenizer(list(load_vocab(str(path))))

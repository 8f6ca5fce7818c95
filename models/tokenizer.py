"""The model's tokenizer: a generated character-level Chinese WordPiece, or a saved tokenizer.json.

The vocabulary is generated, not downloaded: the special tokens, printable ASCII (with
WordPiece "##" continuations for letters and digits), common full-width punctuation and
every character of the GB2312 set (6,763 hanzi plus symbols). transformers' BERT
tokenizer (backed by the `tokenizers` library) splits Chinese into single characters,
so each hanzi is one token. The vocabulary file is saved in every model folder, so a
model and its tokenizer always travel together.

A model built from pretrained weights (models/pretrained.py) brings its own tokenizer instead,
for example XLM-R's SentencePiece (Unigram) `tokenizer.json`: such a folder holds
`tokenizer.json` (with transformers' `tokenizer_config.json`) and no `vocab.txt`, and
`load_tokenizer` returns a `PreTrainedTokenizerFast` for it.
"""

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import BertTokenizer, PreTrainedTokenizerFast
from transformers.models.bert.tokenization_bert import load_vocab

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
FULL_WIDTH_PUNCTUATION = "，。！？；：、“”‘’（）《》【】…—·￥％"
VOCABULARY_FILE = "vocab.txt"
TOKENIZER_FILE = "tokenizer.json"


def gb2312_characters(common_only: bool = False) -> list[str]:
    """Every character of GB2312 rows 0xA1-0xF7 (symbols and hanzi), in code order. `common_only`: the rows
    a Chinese ad is written in: punctuation, numerals, full-width ASCII (0xA1-0xA3) and the 3,755 common
    hanzi (level 1, 0xB0-0xD7); not kana, Greek, Cyrillic, phonetic, box drawing or the 3,008 rare hanzi."""
    rows = [*range(0xA1, 0xA4), *range(0xB0, 0xD8)] if common_only else range(0xA1, 0xF8)
    characters = []
    for high in rows:
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


def fast_tokenizer(vocabulary: list[str] | None = None) -> PreTrainedTokenizerFast:
    """`make_tokenizer`'s WordPiece as a `tokenizers` one (what a tokenizer.json holds): same ids, same splits
    (lower case, accents stripped, every CJK character a word of its own)."""
    vocabulary = vocabulary or build_vocabulary()
    ids = {token: index for index, token in enumerate(vocabulary)}
    backend = Tokenizer(models.WordPiece(ids, unk_token="[UNK]", max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                    lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    backend.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


# Triton's config.pbtxt says which tokenizer a model takes, so a gateway can refuse to feed it the wrong ids
TOKENIZER_PARAMETER = "tokenizer"
GENERATED_TOKENIZER = "generated"  # the generated vocab.txt, which the gateway can rebuild itself


def tokenizer_kind(folder: Path) -> str:
    """"generated" for a folder with the generated vocabulary, else the name of the file it brings."""
    return TOKENIZER_FILE if (Path(folder) / TOKENIZER_FILE).is_file() else GENERATED_TOKENIZER


def has_tokenizer(folder: Path) -> bool:
    return any((Path(folder) / name).is_file() for name in (TOKENIZER_FILE, VOCABULARY_FILE))


def save_tokenizer(folder: Path, tokenizer: PreTrainedTokenizerFast | None = None) -> None:
    """Write the tokenizer into a model folder: `tokenizer`'s files, or (None) the generated vocab.txt."""
    if tokenizer is None:
        write_vocabulary(folder)
    else:
        tokenizer.save_pretrained(str(folder))


def load_tokenizer(folder: Path):
    """The tokenizer saved in a model folder: its tokenizer.json if there is one, else its vocab.txt."""
    folder = Path(folder)
    if (folder / TOKENIZER_FILE).is_file():
        return PreTrainedTokenizerFast.from_pretrained(str(folder))
    path = folder / VOCABULARY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: not a model folder")
    return make_tokenizer(list(load_vocab(str(path))))


def saved_tokenizer(folder: Path) -> PreTrainedTokenizerFast | None:
    """What `save_tokenizer` needs to write this folder's tokenizer again (None: the generated vocabulary)."""
    return load_tokenizer(folder) if (Path(folder) / TOKENIZER_FILE).is_file() else None

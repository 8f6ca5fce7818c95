"""Turning an ad (a PIL image and its copy) into the model's input tensors.

One implementation, used by training, evaluation, benchmarks and the gateway, so that every
path feeds the model exactly the same numbers.

The copy is tokenised by the tokenizer's `tokenizers` backend directly, with its padding and
truncation set once to the model's text length: the same ids as calling the transformers
tokenizer with padding="max_length" and truncation (tests/test_model.py checks it), without the
per-call cost of transformers' argument handling and BatchEncoding, which is most of the
gateway's tokenising time for one ad.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tokenizers import Tokenizer

from .configuration import AuditModelConfig
from .tokenizer import load_tokenizer, make_tokenizer

IMAGE_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGE_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
# What a served model takes (Triton's inputs, in Triton's type names): the picture resized but not yet
# normalised, as uint8, a quarter of float32's bytes on the wire; the model's server normalises it
SERVED_INPUTS = {"image_bytes": "UINT8", "input_ids": "INT64", "attention_mask": "INT64"}
PARALLEL_TOKENISING_FROM = 64  # copies per call: above it, the tokenizer's own thread pool


def padded_encoder(tokenizer, length: int) -> Tokenizer:
    """A copy of `tokenizer`'s `tokenizers` backend that cuts and pads every copy to `length` tokens
    (special tokens included), on the right, with the tokenizer's own pad token."""
    encoder = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    encoder.enable_truncation(length)
    encoder.enable_padding(length=length, pad_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token,
                           direction="right")
    return encoder


def decode_picture(image: Image.Image, size: int | None) -> Image.Image:
    """Decode an opened picture the one way training, evaluation and the gateway all use, so they
    feed the model the same pixels:

    - a JPEG decodes at 1/2, 1/4 or 1/8 scale as long as both sides stay at least `size` (the
      model's image size; None: full size). The resize to `size` follows anyway, and a large
      picture then decodes in a fraction of the time;
    - the picture is turned upright by its EXIF orientation (a phone photo saved sideways);
    - the result is RGB.

    Decoding errors (a truncated or corrupt file) propagate to the caller."""
    if size is not None:
        image.draft("RGB", (size, size))
    image.load()
    ImageOps.exif_transpose(image, in_place=True)
    return image if image.mode == "RGB" else image.convert("RGB")


IMAGE_FITS = ("squash", "letterbox")
# the config.pbtxt parameter carrying an exported model's image fit: the gateway fits pictures before Triton
# sees them, so it must fit them as the model was trained (export/repository.py, service/backends.py)
IMAGE_FIT_PARAMETER = "image_fit"
# letterbox padding: the normalisation mean, so padded pixels enter the model as zeros
LETTERBOX_RGB = tuple(round(255 * channel) for channel in IMAGE_MEAN.flatten().tolist())


def fit_picture(image: Image.Image, size: int, fit: str = "squash") -> np.ndarray:
    """uint8 (size, size, 3) of an RGB picture. "squash" resizes it to a square whatever its aspect (a 3:1
    banner's photo and glyphs come out three times narrower); "letterbox" resizes its long side to `size`,
    keeping the aspect, and centres it on LETTERBOX_RGB, so shapes stay as drawn and nothing is cut off
    (a crop could cut a violation off), at the cost of resolution on long banners. A square is the same
    under both."""
    if fit == "squash" or image.width == image.height:
        return np.asarray(image.resize((size, size), Image.BILINEAR))
    if fit != "letterbox":
        raise ValueError(f"unknown image fit {fit!r}; fits: {', '.join(IMAGE_FITS)}")
    ratio = size / max(image.size)
    width, height = max(1, round(image.width * ratio)), max(1, round(image.height * ratio))
    canvas = Image.new("RGB", (size, size), LETTERBOX_RGB)
    canvas.paste(image.resize((width, height), Image.BILINEAR), ((size - width) // 2, (size - height) // 2))
    return np.asarray(canvas)


class AuditProcessor:
    def __init__(self, config: AuditModelConfig, tokenizer=None):
        self.image_size = config.image_size
        self.image_fit = config.image_fit
        self.max_text_length = config.max_text_length
        self.tokenizer = tokenizer or make_tokenizer()
        self._encoder = padded_encoder(self.tokenizer, self.max_text_length)

    @classmethod
    def from_folder(cls, config: AuditModelConfig, model_folder: Path) -> "AuditProcessor":
        return cls(config, load_tokenizer(model_folder))

    def image_array(self, images: list[Image.Image]) -> np.ndarray:
        """uint8 (batch, 3, size, size), in numpy only: what the gateway sends (no torch call per ad); each
        picture fitted to the square as the model's config says (`fit_picture`)."""
        arrays = [fit_picture(image if image.mode == "RGB" else image.convert("RGB"), self.image_size, self.image_fit)
                  for image in images]
        return np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2))

    def image_bytes(self, images: list[Image.Image]) -> torch.Tensor:
        """uint8 (batch, 3, size, size): compact enough to keep a whole data set in memory."""
        return torch.from_numpy(self.image_array(images))

    @staticmethod
    def normalise(image_bytes: torch.Tensor) -> torch.Tensor:
        """uint8 (batch, 3, size, size) -> the float32 pixel_values the model takes."""
        device = image_bytes.device  # a GPU instance normalises on its GPU
        return (image_bytes.float() / 255.0 - IMAGE_MEAN.to(device)) / IMAGE_STD.to(device)

    def text_arrays(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask), int64 (batch, max_text_length): [CLS] copy [SEP], cut or padded."""
        # encode_batch hands the copies to a thread pool: on a serving batch (at most a few dozen ads) that
        # costs more CPU than it saves, and the gateway shares its cores with Triton; a data set's thousands
        # of copies gain from it
        many = len(texts) > PARALLEL_TOKENISING_FROM
        encodings = self._encoder.encode_batch(texts) if many else [self._encoder.encode(text) for text in texts]
        input_ids = np.array([encoding.ids for encoding in encodings], dtype=np.int64).reshape(len(texts), -1)
        attention_mask = np.array([encoding.attention_mask for encoding in encodings],
                                  dtype=np.int64).reshape(len(texts), -1)
        return input_ids, attention_mask

    def texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """`text_arrays` as torch tensors (sharing their memory)."""
        input_ids, attention_mask = self.text_arrays(texts)
        return torch.from_numpy(input_ids), torch.from_numpy(attention_mask)

    def __call__(self, images: list[Image.Image], texts: list[str]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = self.texts(texts)
        return {"pixel_values": self.normalise(self.image_bytes(images)),
                "input_ids": input_ids, "attention_mask": attention_mask}

"""Bad input stops here: image bytes and copy become a decoded, checked `Ad`, or a 4xx `ApiError`.

Image: at most `max_image_bytes`; only PNG, JPEG, WebP, GIF and BMP are opened (no EPS, TIFF,
...: less decoder surface); the header's width x height is checked against `max_image_pixels`
*before* any pixel is decoded, so a decompression bomb (a small file declaring a huge image)
costs nothing; then the pixels are decoded fully, so a truncated or corrupt file fails here and
not later in the model. Text: valid UTF-8 (no lone surrogates), not empty or only whitespace,
at most `max_text_chars` characters.

Runs in a worker thread (`asyncio.to_thread`): decoding a large JPEG takes tens of ms. One small ad
with no other audit in flight is decoded on the event loop instead (gateway.py, `Gateway.inline`).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from adaudit.models.preprocessing import decode_picture

from .errors import bad_request, too_large, unprocessable

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
# what does not count as copy: whitespace, control characters (C0, DEL, C1) and invisible format characters
CONTROL_OR_SPACE = re.compile(r"[\s\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2064\ufeff]+")


@dataclass(frozen=True)
class Limits:
    max_image_bytes: int
    max_image_pixels: int
    max_text_chars: int


@dataclass
class RawAd:
    """What a request carried, not yet checked: image bytes, the copy (str from JSON, bytes from a form)."""

    image: bytes
    text: str | bytes
    ad_id: str | None = None
    policy: str | None = None  # the audit policy the request named (None: the gateway's default)
    explain: bool = False  # whether the answer carries `evidence` (service/evidence.py)


@dataclass
class Ad:
    image: Image.Image  # decoded, RGB
    text: str
    ad_id: str | None = None
    source: RawAd | None = None  # the bytes it came from (a shadow model of another shape decodes them again)
    decoded_for: int | None = None  # the image size its JPEG was decoded for (None: full size)


def check_text(text: str | bytes, limits: Limits, field: str = "text") -> str:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as error:
            raise bad_request("text_not_utf8", f"{field} is not valid UTF-8 (byte 0x{text[error.start]:02x} "
                              f"at position {error.start})") from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request("text_not_utf8", f"{field} is not valid UTF-8 (it holds a lone surrogate)") from None
    if not CONTROL_OR_SPACE.sub("", text):
        raise bad_request("text_empty", f"{field} is empty or only whitespace and control characters")
    if len(text) > limits.max_text_chars:
        raise unprocessable("text_too_long", f"{field} has {len(text)} characters; the maximum is "
                            f"{limits.max_text_chars}")
    return text


def decode_image(data: bytes, limits: Limits, field: str = "image", size: int | None = None) -> Image.Image:
    """`size`: the image size of the model the ad goes to (None: full size); a JPEG may then decode at a
    reduced scale, turned upright by its EXIF orientation, as in training (models.preprocessing.decode_picture)."""
    if not data:
        raise bad_request("image_empty", f"{field} is empty")
    if len(data) > limits.max_image_bytes:
        raise too_large("image_too_large", f"{field} is {len(data)} bytes; the limit is {limits.max_image_bytes}")
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)  # reads the header only
    except Image.DecompressionBombError as error:
        raise too_large("decompression_bomb", f"{field} declares too many pixels: {error}") from None
    except UnidentifiedImageError:
        raise bad_request("not_an_image", f"{field} is not a {', '.join(IMAGE_FORMATS)} image") from None
    except Exception as error:  # a malformed header can raise nearly anything inside Pillow
        raise bad_request("corrupt_image", f"{field} has a corrupt header: {error}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise bad_request("corrupt_image", f"{field} has no pixels ({width}x{height})")
    if width * height > limits.max_image_pixels:
        raise too_large("decompression_bomb", f"{field} is {width}x{height} = {width * height} pixels; "
                        f"the limit is {limits.max_image_pixels} (decompression bomb?)")
    try:
        return decode_picture(image, size)
    except Exception as error:  # OSError "image file is truncated", SyntaxError, struct.error, ...
        raise bad_request("corrupt_image", f"{field} is truncated or corrupt: {error}") from None


def decode_ads(raw: list[RawAd], limits: Limits, sizes: list[int | None] | None = None) -> list[Ad]:
    """Every ad checked; the first problem raises, naming the batch item when there are several.
    `sizes`: per ad, the image size of the model it goes to (None: decode at full size)."""
    ads = []
    for index, item in enumerate(raw):
        prefix = f"items[{index}]." if len(raw) > 1 else ""
        size = sizes[index] if sizes is not None else None
        text = check_text(item.text, limits, prefix + "text")
        ads.append(Ad(decode_image(item.image, limits, prefix + "image", size), text, item.ad_id, item, size))
    return ads

"""One picture pipeline for training and serving: a large JPEG decodes at a reduced scale, never below
the model's image size, and the data loader and the gateway's intake give the model the same pixels."""

import io

import numpy as np
from PIL import Image

from adaudit.data.dataset import load_image
from adaudit.models.configuration import preset
from adaudit.models.preprocessing import AuditProcessor
from adaudit.service.intake import Limits, decode_image

LIMITS = Limits(max_image_bytes=5_000_000, max_image_pixels=4_000_000, max_text_chars=100)


def picture(width: int, height: int, image_format: str) -> bytes:
    rows = np.linspace(0, 255, height, dtype=np.uint8)[:, None, None]
    columns = np.linspace(255, 0, width, dtype=np.uint8)[None, :, None]
    array = np.concatenate([np.broadcast_to(rows, (height, width, 1)), np.broadcast_to(columns, (height, width, 1)),
                            np.full((height, width, 1), 90, np.uint8)], axis=2)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, image_format)
    return buffer.getvalue()


def test_a_large_jpeg_decodes_reduced_but_never_below_the_model_size():
    data = picture(1000, 700, "JPEG")
    assert decode_image(data, LIMITS).size == (1000, 700)  # no size: the full picture
    reduced = decode_image(data, LIMITS, size=96)
    assert reduced.mode == "RGB" and reduced.size == (250, 175)  # 1/4: 1/8 would leave 88 rows, under 96
    assert decode_image(picture(128, 128, "JPEG"), LIMITS, size=96).size == (128, 128)  # 1/2 would be under 96
    assert decode_image(picture(1000, 700, "PNG"), LIMITS, size=96).size == (1000, 700)  # only JPEG scales


def test_training_and_the_gateway_feed_the_model_the_same_pixels(tmp_path):
    processor = AuditProcessor(preset("tiny", vocab_size=100))
    size = processor.image_size
    data = picture(1200, 900, "JPEG")
    path = tmp_path / "ad.jpg"
    path.write_bytes(data)
    trained_on = load_image(path, size)
    served = decode_image(data, LIMITS, size=size)
    assert trained_on.size == served.size and trained_on.size[0] < 1200
    assert np.array_equal(np.asarray(trained_on), np.asarray(served))
    assert np.array_equal(processor.image_array([trained_on]), processor.image_array([served]))
    full = processor.image_array([decode_image(data, LIMITS)]).astype(float)
    assert np.abs(processor.image_array([served]).astype(float) - full).mean() < 2.0  # close to a full decode

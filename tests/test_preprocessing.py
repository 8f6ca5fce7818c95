"""One picture pipeline for training and serving: a large JPEG decodes at a reduced scale, never below
the model's image size, and the data loader and the gateway's intake give the model the same pixels."""

import io

import numpy as np
from PIL import Image

from adaudit.data.dataset import load_image
from adaudit.training.presets import preset_config
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
    processor = AuditProcessor(preset_config("tiny", vocab_size=100))
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


def test_the_gateway_decodes_each_ad_for_its_own_model_and_again_on_a_fallback(tmp_path):
    """A batch split between a primary (32 px) and a canary (128 px): each ad gets the pixels it would get
    alone, and an ad decoded for the canary is decoded again when the primary answers it instead."""
    from adaudit.models.labels import TASKS
    from adaudit.service.backends import make_backend
    from adaudit.service.decision_log import DecisionLog
    from adaudit.service.encoding import ModelSpec
    from adaudit.service.gateway import Gateway
    from adaudit.service.intake import RawAd
    from adaudit.service.metrics import GatewayMetrics
    from adaudit.service.policy import Target
    from adaudit.service.settings import GatewaySettings

    settings = GatewaySettings(backend="embedded", model_dir=tmp_path, database_url="sqlite://",
                               max_image_bytes=LIMITS.max_image_bytes, max_image_pixels=LIMITS.max_image_pixels)
    gateway = Gateway(settings, make_backend(settings), DecisionLog("sqlite://"), GatewayMetrics())
    tasks = {task: tuple(names) for task, names in TASKS.items()}
    small, large = ModelSpec("student", "1", 32, 16, tasks), ModelSpec("teacher", "1", 128, 16, tasks)
    primary, canary = Target("primary", "student", None), Target("canary", "teacher", None)
    raw = [RawAd(picture(1200, 900, "JPEG"), "限时特价"), RawAd(picture(1200, 900, "JPEG"), "全网最低价")]

    alone, _ = gateway._decode_and_encode(raw[:1], {primary: [0]}, {primary: small})
    mixed, prepared = gateway._decode_and_encode(raw, {primary: [0], canary: [1]}, {primary: small, canary: large})
    assert mixed[0].image.size == alone[0].image.size == (150, 113)  # 1/8 for 32 px
    assert mixed[1].image.size == (300, 225)  # 1/4 for 128 px: 1/8 would leave 113 rows
    assert np.array_equal(prepared[primary][small.input_key]["image_bytes"],
                          gateway.encoder.encode(alone, small)["image_bytes"])
    fallback = gateway._encode_for([mixed[1]], small)["image_bytes"]  # the canary failed: the primary answers
    again, _ = gateway._decode_and_encode(raw[1:], {primary: [0]}, {primary: small})
    assert np.array_equal(fallback, gateway.encoder.encode(again, small)["image_bytes"])


def test_a_picture_saved_sideways_is_turned_upright_in_training_and_serving(tmp_path):
    upright = Image.open(io.BytesIO(picture(300, 200, "PNG"))).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the stored pixels must be turned 90 degrees clockwise to view
    buffer = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buffer, "JPEG", exif=exif, quality=95)  # stored sideways
    path = tmp_path / "sideways.jpg"
    path.write_bytes(buffer.getvalue())
    served, trained_on = decode_image(buffer.getvalue(), LIMITS), load_image(path)
    assert served.size == trained_on.size == (300, 200)  # as a viewer shows it, not the stored 200x300
    assert np.array_equal(np.asarray(served), np.asarray(trained_on))
    assert np.abs(np.asarray(served).astype(float) - np.asarray(upright).astype(float)).mean() < 8  # JPEG noise only

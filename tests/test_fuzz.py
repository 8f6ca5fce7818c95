"""Hostile input: fuzzing the decoding paths (hypothesis), the whole API (schemathesis), and crafted attacks.

Property everywhere: bad input is a 4xx `ApiError` (or a 4xx JSON answer), never another
exception, a 5xx, or a hang. The decoding functions of service/intake.py and service/bodies.py
are fuzzed directly with random and mutated images, copy and bodies; schemathesis generates
requests from the gateway's own OpenAPI document and sends them over real HTTP to the gateway
on a loopback port (embedded backend, tiny models); the crafted cases are decompression bombs,
huge dimensions, malformed multipart and deeply nested JSON.
"""

from __future__ import annotations

import io
import json
import struct
import zlib

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st
from loopback import ServerThread
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from test_service import COPY, b64, model_dir, png, png_declaring, settings  # noqa: F401 (fixture)

from adaudit.service.app import create_app
from adaudit.service.bodies import parse_json, parse_multipart
from adaudit.service.errors import ApiError
from adaudit.service.intake import Limits, check_text, decode_image

LIMITS = Limits(max_image_bytes=100_000, max_image_pixels=1_000_000, max_text_chars=50)
FUZZ = hypothesis_settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), database=None)


def sample_images() -> list[bytes]:
    samples = []
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP"):
        buffer = io.BytesIO()
        Image.new("RGB", (24, 16), (200, 30, 60)).save(buffer, fmt)
        samples.append(buffer.getvalue())
    return samples


SAMPLES = sample_images()


@st.composite
def mutated_images(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(0, 8))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    if draw(st.booleans()):
        position = draw(st.integers(0, len(data)))
        data[position:position] = draw(st.binary(max_size=64))
    return bytes(data)


def four_hundred(call, *args):
    """Run `call`; an ApiError must be a 4xx. Returns the result or None."""
    try:
        return call(*args)
    except ApiError as error:
        assert 400 <= error.status < 500 and error.message, (error.status, error.kind)
        return None


@FUZZ
@given(st.one_of(st.binary(max_size=4096), mutated_images()))
def test_image_decoding_never_fails_but_with_a_4xx(data):
    image = four_hundred(decode_image, data, LIMITS)
    if image is not None:
        assert image.mode == "RGB" and image.width * image.height <= LIMITS.max_image_pixels


@FUZZ
@given(st.one_of(st.text(max_size=80), st.binary(max_size=240)))
def test_text_checking_never_fails_but_with_a_4xx(value):
    text = four_hundred(check_text, value, LIMITS)
    if text is not None:
        assert text.strip() and len(text) <= LIMITS.max_text_chars
        text.encode("utf-8")


PART = st.builds(lambda name, headers, body: b"--b0undary\r\n" + b"Content-Disposition: form-data; name=\"" + name
                 + b"\"" + headers + b"\r\n\r\n" + body + b"\r\n",
                 st.sampled_from([b"image", b"text", b"ad_id", b"", b"x\"y", "字".encode()]),
                 st.sampled_from([b"", b"; filename=\"a.png\"", b"\r\nContent-Type: image/png", b"\r\nX: \xff\xfe"]),
                 st.binary(max_size=64))


@FUZZ
@given(st.one_of(st.binary(max_size=1024),
                 st.builds(lambda parts, end: b"".join(parts) + end, st.lists(PART, max_size=4),
                           st.sampled_from([b"--b0undary--\r\n", b"--b0undary", b"", b"--other--\r\n"]))),
       st.sampled_from(["multipart/form-data; boundary=b0undary", "multipart/form-data", "multipart/form-data; "
                        "boundary=", "multipart/form-data; boundary=\"b0undary\""]))
def test_multipart_parsing_never_fails_but_with_a_4xx(body, content_type):
    parts = four_hundred(parse_multipart, body, content_type)
    if parts is not None:
        assert all(isinstance(part.data, bytearray) for part in parts.values())


@FUZZ
@given(st.one_of(st.binary(max_size=512), st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                                                        lambda inner: st.lists(inner) | st.dictionaries(st.text(),
                                                                                                         inner),
                                                        max_leaves=20).map(lambda v: json.dumps(v).encode()),
                 st.integers(1, 200_000).map(lambda depth: b"[" * depth + b"]" * depth)))
def test_json_parsing_never_fails_but_with_a_4xx(body):
    four_hundred(parse_json, body)


# --- crafted attacks through HTTP -------------------------------------------------------------
def gif_declaring(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("P", (2, 2)).save(buffer, "GIF")
    data = bytearray(buffer.getvalue())
    data[6:10] = struct.pack("<HH", width, height)  # logical screen
    image = data.index(b"\x2c")  # image descriptor
    data[image + 5:image + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def bmp_declaring(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buffer, "BMP")
    data = bytearray(buffer.getvalue())
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def jpeg_declaring(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    frame = data.index(b"\xff\xc0")  # start of frame: length, precision, height, width
    data[frame + 5:frame + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png_with_text_bomb() -> bytes:
    """A valid small PNG with a zTXt chunk that inflates to 64 MB."""
    data = png((8, 8))
    payload = b"Comment\x00\x00" + zlib.compress(b"\x00" * (64 << 20), 9)
    chunk = struct.pack(">I", len(payload)) + b"zTXt" + payload + struct.pack(">I", zlib.crc32(b"zTXt" + payload))
    return data[:33] + chunk + data[33:]  # after the signature and IHDR


BOMBS = {
    "png 60000 x 60000": (png_declaring(60000, 60000), 413),
    "png 1 x 30,000,000": (png_declaring(1, 30_000_000), 413),
    "png 2^31 - 1 wide": (png_declaring(2**31 - 1, 1), 413),
    "gif 65535 x 65535": (gif_declaring(65535, 65535), 413),
    "bmp 30000 x 30000": (bmp_declaring(30000, 30000), 413),
    "bmp negative height": (bmp_declaring(4, -2**31), None),
    "jpeg 65500 x 65500": (jpeg_declaring(65500, 65500), 413),
    "png zTXt inflating to 64 MB": (png_with_text_bomb(), None),
}


@pytest.fixture(scope="module")
def client(model_dir, tmp_path_factory):  # noqa: F811
    values = settings(model_dir, tmp_path_factory.mktemp("fuzz"))
    with TestClient(create_app(values)) as test_client:
        yield test_client


def assert_json_4xx(answer, status=None):
    assert 400 <= answer.status_code < 500, answer.text
    assert status is None or answer.status_code == status, answer.text
    assert answer.json()["error"] and answer.json()["kind"]


@pytest.mark.parametrize("case", list(BOMBS))
def test_decompression_bombs_and_huge_dimensions(client, case):
    data, status = BOMBS[case]
    assert_json_4xx(client.post("/v1/audits", json={"image_base64": b64(data), "text": COPY}), status)
    form = client.post("/v1/audits", files={"image": ("ad", data, "image/png")}, data={"text": COPY})
    assert_json_4xx(form, status)


MULTIPART = "multipart/form-data; boundary=XyZ"
MALFORMED = {
    "no boundary": (b"--XyZ\r\n\r\n", "multipart/form-data"),
    "empty boundary": (b"--\r\n", "multipart/form-data; boundary="),
    "other boundary": (b"--AbC\r\nContent-Disposition: form-data; name=\"text\"\r\n\r\nhi\r\n--AbC--\r\n", MULTIPART),
    "part without a name": (b"--XyZ\r\nContent-Disposition: form-data\r\n\r\nhi\r\n--XyZ--\r\n", MULTIPART),
    "no headers end": (b"--XyZ\r\nContent-Disposition: form-data; name=\"text\"" + b"a" * 5000, MULTIPART),
    "unterminated": (b"--XyZ\r\nContent-Disposition: form-data; name=\"text\"\r\n\r\nhi", MULTIPART),
    "garbage": (bytes(range(256)) * 20, MULTIPART),
    "repeated field": (b"--XyZ\r\nContent-Disposition: form-data; name=\"text\"\r\n\r\na\r\n--XyZ\r\n"
                       b"Content-Disposition: form-data; name=\"text\"\r\n\r\nb\r\n--XyZ--\r\n", MULTIPART),
    "header line of 64 KB": (b"--XyZ\r\nX-Pad: " + b"p" * 65536 + b"\r\n\r\nhi\r\n--XyZ--\r\n", MULTIPART),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_multipart(client, case):
    body, content_type = MALFORMED[case]
    assert_json_4xx(client.post("/v1/audits", content=body, headers={"content-type": content_type}))


NESTED = {
    "array 100,000 deep": b"[" * 100_000 + b"]" * 100_000,
    "object 50,000 deep": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "image_base64 as a 500-deep array": b'{"text": "x", "image_base64": ' + b"[" * 500 + b"]" * 500 + b"}",
    "batch items 900 deep": b'{"items": ' + b"[" * 900 + b"]" * 900 + b"}",
}


@pytest.mark.parametrize("case", list(NESTED))
def test_deeply_nested_json(client, case):
    for route in ("/v1/audits", "/v1/audits:batch"):
        answer = client.post(route, content=NESTED[case], headers={"content-type": "application/json"})
        assert_json_4xx(answer)
    feedback = client.post("/v1/audits/abc/feedback", content=NESTED[case], headers={"content-type": "application/json"})
    assert_json_4xx(feedback)


# --- schemathesis: requests generated from the OpenAPI document, over loopback HTTP -----------
@pytest.fixture(scope="module")
def api_schema(model_dir, tmp_path_factory):  # noqa: F811
    values = settings(model_dir, tmp_path_factory.mktemp("schemathesis"), max_in_flight=1000)
    with ServerThread(create_app(values)) as server:
        yield schemathesis.openapi.from_url(f"{server.url}/openapi.json")


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_generated_requests_never_get_a_server_error(api_schema, mode):
    """Every operation of the OpenAPI document, valid (positive) and schema-violating (negative) requests."""
    seen = []

    @hypothesis_settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(api_schema.as_strategy(generation_mode=mode))
    def check(case):
        response = case.call(timeout=30)
        case.validate_response(response, checks=[not_a_server_error])
        seen.append((case.operation.label, response.status_code))
        if response.status_code >= 400:
            content_type = response.headers.get("content-type") or [""]
            assert content_type[0].startswith("application/json"), response.text

    check()
    operations = {label for label, _ in seen}
    every = {result.ok().label for result in api_schema.get_all_operations()}
    with_inputs = {label for label in every if label.split()[1].startswith("/v1/")}
    assert operations == (every if mode == GenerationMode.POSITIVE else with_inputs), operations

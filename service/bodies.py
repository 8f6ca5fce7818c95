"""Reading request bodies: the size limit, the content type, JSON and multipart, as raw ads.

The body is read here, not by FastAPI's parameter machinery, because `POST /v1/audits` takes
two content types on one route and because the size limit must hold while reading: a
`Content-Length` over `body_limit` is refused before a byte is read, and a chunked body is cut
off as soon as it passes the limit (413). Multipart is parsed with python-multipart directly
(Starlette's form parser would silently decode non-UTF-8 fields as Latin-1; here a form field
stays bytes and `intake.check_text` refuses it).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field

from fastapi import Request
from pydantic import ValidationError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from .errors import ApiError, bad_request, too_large, unprocessable, validation_message
from .intake import RawAd
from .schemas import AuditRequest, BatchRequest, storable_problem


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise bad_request("invalid_request", "Content-Length is not a number")
        if int(declared) > limit:
            raise too_large("body_too_large", f"the body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large("body_too_large", f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def unsupported(got: str, expected: str) -> ApiError:
    return ApiError(415, "unsupported_media_type", f"Content-Type {got or '(none)'} is not accepted; send {expected}")


def parse_json(body: bytes):
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise bad_request("body_not_utf8", f"the JSON body is not valid UTF-8 (position {error.start})") from None
    except json.JSONDecodeError as error:
        raise bad_request("invalid_json", f"the body is not valid JSON: {error.msg} at line {error.lineno} "
                          f"column {error.colno}") from None
    except RecursionError:  # `[[[[...` thousands deep: the parser's recursion limit, not a server error
        raise bad_request("invalid_json", "the JSON body is nested too deeply") from None


def image_from_base64(value: str, field: str, max_image_bytes: int) -> bytes:
    if value.startswith("data:"):
        value = value.partition(",")[2]
    value = "".join(value.split())  # line-wrapped base64 (the `base64` tool's output) is fine
    if len(value) > (max_image_bytes + 2) // 3 * 4 + 4:
        raise too_large("image_too_large", f"{field} is over the image limit of {max_image_bytes} bytes")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("invalid_base64", f"{field} is not valid base64") from None


def validated(model, data, what: str):
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise unprocessable("invalid_request", f"{what}: {validation_message(error)}") from None


def audit_from_json(data, max_image_bytes: int, prefix: str = "") -> RawAd:
    request = validated(AuditRequest, data, "the audit request")
    image = image_from_base64(request.image_base64, f"{prefix}image_base64", max_image_bytes)
    return RawAd(image, request.text, request.ad_id, request.policy, request.explain)


def batch_from_json(data, max_batch: int, max_image_bytes: int) -> list[RawAd]:
    if isinstance(data, list):
        data = {"items": data}
    if isinstance(data, dict) and isinstance(data.get("items"), list) and len(data["items"]) > max_batch:
        raise too_large("batch_too_large", f"the batch has {len(data['items'])} ads; the limit is {max_batch}")
    batch = validated(BatchRequest, data, "the batch")
    if not batch.items:
        raise unprocessable("batch_empty", "the batch has no ads")
    return [RawAd(image_from_base64(item.image_base64, f"items[{i}].image_base64", max_image_bytes),
                  item.text, item.ad_id, item.policy, item.explain) for i, item in enumerate(batch.items)]


@dataclass
class Part:
    name: str = ""
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)


def parse_multipart(body: bytes, content_type: str) -> dict[str, Part]:
    """Every part of a multipart/form-data body by name (a repeated name is refused)."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise bad_request("invalid_multipart", "multipart/form-data without a boundary")
    parts: list[Part] = []
    header: dict[str, bytes] = {"field": b"", "value": b""}
    headers: dict[bytes, bytes] = {}

    def header_end():
        headers[header["field"].lower()] = header["value"]
        header["field"] = header["value"] = b""

    def headers_finished():
        _, disposition = parse_options_header(headers.get(b"content-disposition", b"").decode("latin-1"))
        if b"name" not in disposition:
            raise bad_request("invalid_multipart", "a form part has no name")
        filename = disposition.get(b"filename")
        parts[-1].name = disposition[b"name"].decode("utf-8", "replace")
        parts[-1].filename = filename.decode("utf-8", "replace") if filename is not None else None
        headers.clear()

    callbacks = {
        "on_part_begin": lambda: parts.append(Part()),
        "on_part_data": lambda data, start, end: parts[-1].data.extend(data[start:end]),
        "on_header_field": lambda data, start, end: header.__setitem__("field", header["field"] + data[start:end]),
        "on_header_value": lambda data, start, end: header.__setitem__("value", header["value"] + data[start:end]),
        "on_header_end": header_end,
        "on_headers_finished": headers_finished,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except FormParserError as error:
        raise bad_request("invalid_multipart", f"the multipart body is malformed: {error}") from None
    named: dict[str, Part] = {}
    for part in parts:
        if part.name in named:
            raise bad_request("invalid_multipart", f"the form field {part.name!r} is repeated")
        named[part.name] = part
    return named


def audit_from_multipart(body: bytes, content_type: str) -> RawAd:
    parts = parse_multipart(body, content_type)
    unknown = sorted(set(parts) - {"image", "text", "ad_id", "policy", "explain"})
    if unknown:
        raise unprocessable("invalid_request", f"unknown form fields {unknown}; expected image, text, ad_id, policy, "
                            "explain")
    for name in ("image", "text"):
        if name not in parts:
            raise unprocessable("invalid_request", f"the form has no {name!r} field")
    ad_id = None
    if "ad_id" in parts:
        try:
            ad_id = bytes(parts["ad_id"].data).decode("utf-8").strip() or None
        except UnicodeDecodeError:
            raise bad_request("invalid_request", "ad_id is not valid UTF-8") from None
        if ad_id is not None and len(ad_id) > 128:
            raise unprocessable("invalid_request", "ad_id is longer than 128 characters")
        problem = storable_problem(ad_id) if ad_id is not None else None
        if problem:
            raise unprocessable("invalid_request", f"ad_id {problem}")
    policy = bytes(parts["policy"].data).decode("utf-8", "replace").strip() or None if "policy" in parts else None
    explain = form_flag(bytes(parts["explain"].data), "explain") if "explain" in parts else False
    return RawAd(bytes(parts["image"].data), bytes(parts["text"].data), ad_id, policy, explain)


FORM_TRUE, FORM_FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off", ""}


def form_flag(value: bytes, name: str) -> bool:
    """A form field read as a boolean the way pydantic reads a JSON one; anything else is a 422 naming it."""
    text = value.decode("utf-8", "replace").strip().lower()
    if text not in FORM_TRUE | FORM_FALSE:
        raise unprocessable("invalid_request", f"{name} must be true or false, not {text[:20]!r}")
    return text in FORM_TRUE

"""Every error leaves the gateway as JSON `{"error": message, "kind": kind}` with a 4xx or 503.

`ApiError` is what the gateway's own code raises: the status, a short machine-readable kind
(also the `kind` label of `adaudit_errors_total`) and a message naming the problem. The
handlers installed by `install_error_handlers` turn it, FastAPI's validation errors and
Starlette's HTTP errors (404 route, 405 method) into that shape. Anything unexpected is caught by
`middleware.GatewayMiddleware`, logged with its traceback and answered 503 (`internal`).
"""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(Exception):
    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers


def bad_request(kind: str, message: str) -> ApiError:
    return ApiError(400, kind, message)


def too_large(kind: str, message: str) -> ApiError:
    return ApiError(413, kind, message)


def unprocessable(kind: str, message: str) -> ApiError:
    return ApiError(422, kind, message)


def error_body(kind: str, message: str) -> bytes:
    """The JSON of an error answered below FastAPI, by an ASGI middleware (the in-flight limit, the last-resort
    guard), where no handler runs."""
    return json.dumps({"error": message, "kind": kind}).encode()


def error_response(status: int, kind: str, message: str, request: Request | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    if request is not None:
        request.state.error_kind = kind
        metrics = getattr(request.app.state, "metrics", None)
        if metrics is not None:
            metrics.errors.labels(kind).inc()
    headers = {"Retry-After": "1", **(headers or {})} if status in (429, 503) else headers
    return JSONResponse({"error": message, "kind": kind}, status_code=status, headers=headers)


def validation_message(error: RequestValidationError | Exception, whole: str = "body") -> str:
    """`field.path: problem; ...` from a pydantic / FastAPI validation error; `whole` names a problem of
    the whole object (a model validator's), "" for none (the settings on the command line)."""
    errors = error.errors() if hasattr(error, "errors") else []
    parts = []
    for item in errors[:5]:
        location = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
        message = item.get("msg", "invalid").removeprefix("Value error, ")  # pydantic's prefix for a validator's own
        where = location or whole
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts) or str(error)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError):
        return error_response(error.status, error.kind, error.message, request, error.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError):
        return error_response(422, "invalid_request", validation_message(error), request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        status = error.status_code if 400 <= error.status_code < 500 else 503
        return error_response(status, kind, str(error.detail), request)

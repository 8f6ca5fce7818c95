"""The one ASGI middleware: in-flight gauge, request latency histogram, and the last-resort guard.

Pure ASGI (no BaseHTTPMiddleware) so it adds no task per request. The route
label is the route's template (`/v1/audits/{request_id}`), never the raw path, so label
cardinality stays bounded; unmatched paths are labelled `unmatched`. The model label is what
the handler put in `request.state.model` (empty for routes that run no model). The outcome is
`ok`, `client_error` (4xx), `unavailable` (503) or `error`.

An exception that escapes every handler is answered here as a 503 JSON error (never a 500,
never a traceback to the client) and logged once.
"""

from __future__ import annotations

import logging
import time

from .errors import error_body

log = logging.getLogger("adaudit.service")


def outcome_of(status: int) -> str:
    if status < 400:
        return "ok"
    if status == 503:
        return "unavailable"
    if status < 500:
        return "client_error"
    return "error"


class GatewayMiddleware:
    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [0]

        async def send_and_watch(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_and_watch)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            self.metrics.errors.labels("internal").inc()
            if status[0] == 0:
                status[0] = 503
                body = error_body("internal", "the gateway failed to answer; it has been logged, retry later")
                await send({"type": "http.response.start", "status": 503,
                            "headers": [(b"content-type", b"application/json"), (b"retry-after", b"1")]})
                await send({"type": "http.response.body", "body": body})
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            state = scope.get("state") or {}
            self.metrics.request_latency.labels(
                getattr(route, "path", "unmatched"), state.get("model", ""), outcome_of(status[0] or 503),
            ).observe(time.perf_counter() - started)

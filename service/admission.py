"""Overload protection: at most `max_in_flight` `/v1` requests are served at once; the rest get a fast 503.

A pure ASGI middleware in front of the routes. A `/v1` request that arrives while `max_in_flight`
are being served is answered at once with 503 `overloaded`, `Retry-After: 1` and a JSON error,
before its body is read (uvicorn discards the unread body and keeps the connection), so a burst
never builds a queue inside the gateway: accepted requests keep their latency, memory stays
bounded by `max_in_flight` bodies, and clients (or a load balancer) retry elsewhere or later.
Health, readiness, metrics and the docs are never limited: a probe must see an overloaded pod as
alive. Shed requests are counted in `adaudit_errors_total{kind="overloaded"}`.
"""

from __future__ import annotations

from .errors import error_body

OVERLOADED = error_body("overloaded", "the gateway is at its limit of requests in flight; retry after the "
                        "Retry-After seconds")
HEADERS = [(b"content-type", b"application/json"), (b"retry-after", b"1"),
           (b"content-length", str(len(OVERLOADED)).encode())]


class AdmissionLimit:
    def __init__(self, app, limit: int, metrics, prefix: str = "/v1/"):
        self.app, self.limit, self.metrics, self.prefix = app, limit, metrics, prefix
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            self.metrics.errors.labels("overloaded").inc()
            await send({"type": "http.response.start", "status": 503, "headers": HEADERS})
            await send({"type": "http.response.body", "body": OVERLOADED})
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

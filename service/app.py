"""`create_app(settings) -> FastAPI`: the audit gateway, assembled.

Routers (routes_audits, routes_reviews, routes_ops; every `/v1` route behind the API-key and
rate-limit dependency of security.py), the JSON error handlers, the middleware (metrics
outermost, then the in-flight limit of admission.py, then CORS only when `cors_origins` is set),
and a lifespan that builds the `Gateway` (backends from settings, decision log, shadow workers)
at start and closes it at stop; each target (primary, canary, shadow) talks to its own Triton
where `canary_triton_url` or `shadow_triton_url` names one (one backend per distinct address).
At start the decision log's schema is upgraded (SQLite: this gateway is its only writer) or
checked (a shared server database: no pod runs DDL, `adaudit db upgrade` does; /readyz answers 503
while the schema is behind; `database_migrate_on_start`). On SIGTERM uvicorn stops accepting
connections and lets the requests in flight finish (each writes its decision before it answers);
then the lifespan drains the shadow queue for up to `shutdown_drain_s` and closes the backends
and the log. Run one uvicorn worker per process and one process per pod (see metrics.py):
`adaudit serve`, or `uvicorn` with `factory=True`.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from .admission import AdmissionLimit
from .backends import make_backend
from .decision_log import DecisionLog
from .errors import install_error_handlers
from .gateway import Gateway, backends_by_target
from .metrics import GatewayMetrics
from .middleware import GatewayMiddleware
from .routes_audits import router as audits_router
from .routes_ops import router as ops_router
from .routes_policies import router as policies_router
from .routes_reviews import router as reviews_router
from .security import Guard, authenticate
from .settings import GatewaySettings

DESCRIPTION = """Audits ads (an image and Chinese copy): approve or reject, the violation and the
ad's attributes. The primary model answers; a canary fraction is answered by another model
(sticky per `ad_id`); a shadow fraction is mirrored to the full model for comparison. Every
error is JSON `{"error": ..., "kind": ...}`."""
DOCS_STATIC = "/static-offline-docs"  # swagger-ui's and redoc's files (the fastapi-offline package)
CONSOLE = Path(__file__).parent / "console"  # the reviewer console's HTML, JS and CSS


# what the docs pages and the console may load: the gateway's own files only (redoc's bundle would fetch its
# logo from a CDN; the policy stops that before any request). Swagger's and redoc's pages start with an
# inline script, and redoc runs a web worker from a blob; the console has no inline script.
DOCS_POLICY = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
               "script-src 'self' 'unsafe-inline'; worker-src 'self' blob:; object-src 'none'")
CONSOLE_POLICY = ("default-src 'self'; img-src 'self' blob:; style-src 'self'; script-src 'self'; "
                  "object-src 'none'; frame-ancestors 'none'")


class LocalOnly:
    """Pure ASGI: a Content-Security-Policy on the docs pages and the console, so a browser loads nothing for
    them from anywhere but the gateway (the console shows advertisers' copy: no script of theirs may run)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" else ""
        policy = CONSOLE_POLICY if path.startswith("/console") else DOCS_POLICY if path in ("/docs", "/redoc") \
            else None
        if policy is None:
            return await self.app(scope, receive, send)

        async def with_policy(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"content-security-policy", policy.encode())]}
            await send(message)

        await self.app(scope, receive, with_policy)


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    metrics = GatewayMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # the schema: upgraded at start where this gateway is the only writer, else only checked (readiness)
        decision_log = DecisionLog(settings.database_url, lock_timeout_s=settings.request_timeout_s,
                                   pool_size=settings.database_pool_size,
                                   max_overflow=settings.database_max_overflow,
                                   migrate=settings.migrates_on_start())
        # one backend per distinct Triton address: the primary's, the canary's, the shadow's (by default all one)
        backends = backends_by_target(settings, make_backend)
        gateway = Gateway(settings, backends["primary"], decision_log, metrics, backends=backends)
        await gateway.start()
        app.state.gateway = gateway
        try:
            yield
        finally:
            app.state.gateway = None
            await gateway.stop()

    # /docs and /redoc load swagger-ui and redoc from fastapi-offline's package files, served by the gateway
    # under /static-offline-docs: FastAPI's default pages fetch them from a CDN, blank without internet
    app = FastAPIOffline(title="adaudit audit gateway", version="1", description=DESCRIPTION, lifespan=lifespan,
                         static_url=DOCS_STATIC)
    app.state.settings, app.state.metrics, app.state.gateway = settings, metrics, None
    app.state.guard = Guard(settings)
    install_error_handlers(app)
    app.include_router(audits_router, dependencies=[Depends(authenticate)])
    app.include_router(reviews_router, dependencies=[Depends(authenticate)])
    app.include_router(policies_router, dependencies=[Depends(authenticate)])
    app.include_router(ops_router)
    # the reviewer console: static files, no build step; its API calls carry the reviewer's key (docs/console.md)
    app.mount("/console", StaticFiles(directory=CONSOLE, html=True), name="console")
    if settings.cors_origins:  # off by default: browsers may not call the gateway from other origins
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"])
    app.add_middleware(LocalOnly)
    app.add_middleware(AdmissionLimit, limit=settings.max_in_flight, metrics=metrics)
    app.add_middleware(GatewayMiddleware, metrics=metrics)
    return app

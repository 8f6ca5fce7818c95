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

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

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

    app = FastAPI(title="adaudit audit gateway", version="1", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings, app.state.metrics, app.state.gateway = settings, metrics, None
    app.state.guard = Guard(settings)
    install_error_handlers(app)
    app.include_router(audits_router, dependencies=[Depends(authenticate)])
    app.include_router(reviews_router, dependencies=[Depends(authenticate)])
    app.include_router(policies_router, dependencies=[Depends(authenticate)])
    app.include_router(ops_router)
    if settings.cors_origins:  # off by default: browsers may not call the gateway from other origins
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"])
    app.add_middleware(AdmissionLimit, limit=settings.max_in_flight, metrics=metrics)
    app.add_middleware(GatewayMiddleware, metrics=metrics)
    return app

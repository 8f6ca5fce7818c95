"""`create_app(settings) -> FastAPI`: the audit gateway, assembled.

Routers (routes_audits, routes_reviews, routes_ops), the JSON error handlers, the metrics
middleware, and a lifespan that builds the `Gateway` (backend from settings, decision log,
shadow workers) at start and closes it at stop. Run one uvicorn worker per process and one
process per pod (see metrics.py): `uvicorn` with `factory=True` or `adaudit serve`.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from .backends import make_backend
from .decision_log import DecisionLog
from .errors import install_error_handlers
from .gateway import Gateway
from .metrics import GatewayMetrics
from .middleware import GatewayMiddleware
from .routes_audits import router as audits_router
from .routes_ops import router as ops_router
from .routes_reviews import router as reviews_router
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
        gateway = Gateway(settings, make_backend(settings), DecisionLog(settings.database_url), metrics)
        await gateway.start()
        app.state.gateway = gateway
        try:
            yield
        finally:
            app.state.gateway = None
            await gateway.stop()

    app = FastAPI(title="adaudit audit gateway", version="1", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings, app.state.metrics, app.state.gateway = settings, metrics, None
    install_error_handlers(app)
    app.include_router(audits_router)
    app.include_router(reviews_router)
    app.include_router(ops_router)
    app.add_middleware(GatewayMiddleware, metrics=metrics)
    return app

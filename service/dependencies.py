"""FastAPI dependencies: the per-app objects the routes need, and the decision-log call wrapper.

The gateway (backend, policy, decision log, shadow mirror) is built in the app's lifespan and
kept on `app.state`; routes receive it through `Depends(get_gateway)`, so tests and the CLI
build apps with different settings side by side. The dependencies are `async def` although they
never wait: FastAPI runs a plain `def` dependency in a worker thread, a thread hop per request.
"""

from __future__ import annotations

import asyncio

from fastapi import Request
from sqlalchemy.exc import SQLAlchemyError

from .errors import ApiError
from .gateway import Gateway
from .metrics import GatewayMetrics


async def get_gateway(request: Request) -> Gateway:
    gateway = getattr(request.app.state, "gateway", None)
    if gateway is None:
        raise ApiError(503, "starting", "the gateway is starting; retry shortly")
    return gateway


async def get_metrics(request: Request) -> GatewayMetrics:
    return request.app.state.metrics


async def in_log(call, *args):
    """Run a decision-log method in a worker thread; a database failure is a 503, not a 500."""
    try:
        return await asyncio.to_thread(call, *args)
    except SQLAlchemyError as error:
        raise ApiError(503, "decision_log_unavailable",
                       f"the decision log is unavailable: {type(error).__name__}") from None

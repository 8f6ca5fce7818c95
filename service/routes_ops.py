"""Operations: `/healthz` (the process answers), `/readyz` (the backend is reachable, the
primary model ready and the decision log's schema usable: 200, else 503; canary and shadow
readiness are reported, not required: each target's model, version, Triton address and problem
under `targets`, since each may be on its own Triton), `/metrics` (Prometheus text format, this
process's registry)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .backends import BackendError
from .dependencies import get_gateway
from .gateway import Gateway
from .schemas import Readiness, TargetReadiness

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness")
async def healthz():
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}}, summary="Readiness")
async def readyz(gateway: Gateway = Depends(get_gateway)):
    policy = gateway.policy
    configured = [t for t in (policy.primary, policy.canary, policy.shadow) if t is not None]
    targets = {}  # one check per model and version on each backend
    for target in configured:
        targets.setdefault((target.model, target.version, id(gateway.backends[target.arm])), target)
    # each model checked at once (each check waits at most about a second on a hung backend), and the schema
    schema, *checks = await asyncio.gather(schema_problem(gateway), *(servable(gateway, target)
                                                                       for target in targets.values()))
    found = dict(zip(targets, checks))
    models, arms = {}, {}
    for target in configured:
        problem = found[(target.model, target.version, id(gateway.backends[target.arm]))]
        models[target.model] = models.get(target.model, True) and problem is None
        arms[target.arm] = TargetReadiness(model=target.model, version=target.version,
                                           location=backend_location(gateway, target.arm), ready=problem is None,
                                           problem=problem)
    for model, ready in models.items():
        gateway.metrics.backend_ready.labels(model).set(1 if ready else 0)
    primary, own = policy.primary.model, arms["primary"]  # the primary target itself (a canary version aside)
    ready = own.ready and schema is None
    reasons = [f"primary model {primary} is not ready: {own.problem}"] if not own.ready else []
    message = (f"primary model {primary} is ready on {gateway.backend.name} ({backend_location(gateway)})" if ready else
               "; ".join(reasons + ([schema] if schema else [])))
    body = Readiness(ready=ready, backend=gateway.backend.name, primary_model=primary, models=models, message=message,
                     targets=arms)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


def backend_location(gateway: Gateway, arm: str = "primary") -> str:
    """Where target `arm`'s backend is: its Triton's address, or the embedded backend's model folder."""
    if gateway.backends[arm].name == "triton":
        return gateway.settings.triton_urls()[arm]
    return str(gateway.settings.model_dir)


async def schema_problem(gateway: Gateway) -> str | None:
    """Why the decision log's schema cannot be used (behind this code's: `adaudit db upgrade`), or None. Once
    usable it is not asked again; until then each probe checks the database (in a worker thread)."""
    if gateway.log.schema_problem is None:
        return None
    return await asyncio.to_thread(gateway.log.check_schema)


async def servable(gateway: Gateway, target) -> str | None:
    """Why the gateway cannot audit ads on `target` now, or None: the backend has the model loaded, and
    the gateway can prepare its inputs (its spec: inputs, label space, tokenizer)."""
    backend = gateway.backends[target.arm]
    if not await backend.ready(target.model, target.version):
        return f"{backend.name} at {backend_location(gateway, target.arm)} is unreachable or has not loaded it"
    try:
        await gateway.spec(target.model, target.version, target.arm)
    except BackendError as error:
        return error.message
    return None


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request):
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

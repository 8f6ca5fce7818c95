"""Operations: `/healthz` (the process answers), `/readyz` (the backend is reachable and the
primary model ready: 200, else 503; canary and shadow readiness are reported, not required),
`/metrics` (Prometheus text format, this process's registry)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .dependencies import get_gateway
from .gateway import Gateway
from .schemas import Readiness

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness")
async def healthz():
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}}, summary="Readiness")
async def readyz(gateway: Gateway = Depends(get_gateway)):
    policy = gateway.policy
    targets = [t for t in (policy.primary, policy.canary, policy.shadow) if t is not None]
    models = {}
    for target in targets:
        models[target.model] = models.get(target.model, True) and await gateway.backend.ready(target.model,
                                                                                              target.version)
        gateway.metrics.backend_ready.labels(target.model).set(1 if models[target.model] else 0)
    ready = models[policy.primary.model]
    where = gateway.settings.triton_url if gateway.backend.name == "triton" else gateway.settings.model_dir
    message = (f"primary model {policy.primary.model} is ready on {gateway.backend.name} ({where})" if ready else
               f"primary model {policy.primary.model} is not ready: {gateway.backend.name} at {where} is "
               "unreachable or has not loaded it")
    body = Readiness(ready=ready, backend=gateway.backend.name, primary_model=policy.primary.model,
                     models=models, message=message)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request):
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

"""Review read-outs: reviewed accuracy per model (feedback joined with decisions) and the shadow
disagreements waiting for a human look."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from .dependencies import get_gateway, in_log
from .gateway import Gateway
from .schemas import AccuracyRow, Disagreement

router = APIRouter(prefix="/v1", tags=["reviews"])


@router.get("/reviews/accuracy", response_model=list[AccuracyRow],
            summary="Reviewed accuracy per model, version and task")
async def reviewed_accuracy(gateway: Gateway = Depends(get_gateway)):
    return await in_log(gateway.log.accuracy)


@router.get("/shadow/disagreements", response_model=list[Disagreement],
            summary="The latest ads where the shadow model disagreed with the answer")
async def shadow_disagreements(limit: int = Query(50, ge=1, le=1000), gateway: Gateway = Depends(get_gateway)):
    return await in_log(gateway.log.disagreements, limit)

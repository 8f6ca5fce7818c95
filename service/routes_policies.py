"""`/v1/policies`: the audit policies the gateway decides with, and their reload without a restart.

`GET /v1/policies` lists them (name, version, thresholds, term list sizes, which is the default).
`POST /v1/policies/reload` reads the policy folder again (after an operator edited a YAML or a term
list): all or nothing, so a broken file answers 422 `policy_invalid` naming the file and key, and the
policies that were serving keep serving. Reloading is an operator's action: with `policy_admins` set,
only those API key names may do it (403 for others).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from adaudit.decisions.policy import PolicyError

from .dependencies import get_gateway
from .errors import ApiError, unprocessable
from .gateway import Gateway
from .schemas import ErrorBody, PolicyList
from .security import ANONYMOUS

router = APIRouter(prefix="/v1", tags=["policies"])


def policy_list(gateway: Gateway) -> dict:
    policies = gateway.policies
    return {"default": policies.default,
            "policies": [{**loaded.summary(), "default": name == policies.default}
                         for name, loaded in sorted(policies.loaded.items())]}


@router.get("/policies", response_model=PolicyList, summary="The audit policies a request may name")
async def list_policies(gateway: Gateway = Depends(get_gateway)):
    return policy_list(gateway)


@router.post("/policies/reload", response_model=PolicyList, summary="Read the policy folder again",
             responses={403: {"model": ErrorBody}, 422: {"model": ErrorBody, "description": "a policy or term "
                        "list is invalid; the running policies keep serving"}})
async def reload_policies(request: Request, gateway: Gateway = Depends(get_gateway)):
    admins = gateway.settings.policy_admins
    caller = getattr(request.state, "caller", ANONYMOUS)
    if admins and caller not in admins:
        raise ApiError(403, "forbidden", f"caller {caller} may not reload policies (policy_admins)")
    try:
        await gateway.policies.reload()
    except PolicyError as error:
        raise unprocessable("policy_invalid", f"the policies were not reloaded, the running ones keep serving: "
                            f"{error}") from None
    return policy_list(gateway)

"""/v1/sys: health, seal status, init, unseal (public) and key rotation (admin)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from jitvault.api.deps import CallerDep, NodeDep, SourceDep
from jitvault.api.schemas import InitIn, InitOut, UnsealIn
from jitvault.domain import Sensitive
from jitvault.services import keys, system

public = APIRouter(prefix="/v1/sys", tags=["sys"])
router = APIRouter(prefix="/v1/sys", tags=["sys"])


@public.get("/health")
def health(node: NodeDep) -> JSONResponse:
    """200 when unsealed and ready, 503 when sealed or uninitialized."""
    status = node.vault.status()
    body = {
        "status": "ok" if not status.as_dict()["sealed"] else status.state.value,
        **status.as_dict(),
    }
    return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)


@public.get("/seal-status")
def seal_status(node: NodeDep) -> dict[str, Any]:
    return node.vault.status().as_dict()


@public.post("/init", response_model=InitOut)
def init(body: InitIn, node: NodeDep) -> InitOut:
    """Initialize an empty node (first caller only), returning the admin token and shares."""
    result = system.initialize(node, body.admin, body.shares, body.threshold)
    return InitOut(
        admin=result.admin_name,
        admin_token=result.admin_token.reveal(),
        shares=[s.reveal() for s in result.shares],
    )


@public.post("/unseal")
def unseal(body: UnsealIn, node: NodeDep) -> dict[str, Any]:
    status = node.vault.submit_share(Sensitive(body.share.get_secret_value()))
    return status.as_dict()


@router.post("/rotate-key")
def rotate_key(caller: CallerDep, node: NodeDep, source: SourceDep) -> dict[str, object]:
    return keys.rotate_key(node, caller, source).as_dict()


@router.get("/rekey-status")
def rekey_status(caller: CallerDep, node: NodeDep) -> dict[str, object]:
    return keys.rekey_status(node, caller).as_dict()

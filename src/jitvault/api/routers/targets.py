"""/v1/targets and their accounts. Responses carry metadata only, never a secret."""

from __future__ import annotations

from fastapi import APIRouter, status

from jitvault.api.deps import CallerDep, NodeDep, SourceDep
from jitvault.api.schemas import (
    AccountIn,
    AccountOut,
    SecretIn,
    TargetIn,
    TargetOut,
    TargetUpdateIn,
)
from jitvault.services import rotation, targets

router = APIRouter(prefix="/v1", tags=["targets"])


@router.post("/targets", response_model=TargetOut, status_code=status.HTTP_201_CREATED)
def add_target(body: TargetIn, caller: CallerDep, node: NodeDep, source: SourceDep) -> TargetOut:
    target = targets.add_target(
        node,
        caller,
        body.name,
        body.kind,
        body.options,
        body.admin_user,
        body.admin_secret(),
        source,
        body.labels,
    )
    return TargetOut.of(target)


@router.get("/targets", response_model=list[TargetOut])
def list_targets(caller: CallerDep, node: NodeDep) -> list[TargetOut]:
    return [TargetOut.of(t) for t in targets.list_targets(node, caller)]


@router.get("/targets/{name}", response_model=TargetOut)
def get_target(name: str, caller: CallerDep, node: NodeDep) -> TargetOut:
    return TargetOut.of(targets.get_target(node, caller, name))


@router.patch("/targets/{name}", response_model=TargetOut)
def update_target(
    name: str, body: TargetUpdateIn, caller: CallerDep, node: NodeDep, source: SourceDep
) -> TargetOut:
    target = targets.update_target(
        node,
        caller,
        name,
        body.options,
        body.labels,
        body.admin_user,
        body.admin_secret(),
        source,
    )
    return TargetOut.of(target)


@router.post(
    "/targets/{name}/accounts", response_model=AccountOut, status_code=status.HTTP_201_CREATED
)
def add_account(
    name: str, body: AccountIn, caller: CallerDep, node: NodeDep, source: SourceDep
) -> AccountOut:
    account = targets.add_account(
        node, caller, name, body.username, body.mode, body.secret(), source
    )
    return AccountOut.of(account)


@router.get("/targets/{name}/accounts", response_model=list[AccountOut])
def list_target_accounts(name: str, caller: CallerDep, node: NodeDep) -> list[AccountOut]:
    return [AccountOut.of(a) for a in targets.list_accounts(node, caller, name)]


@router.get("/targets/{name}/accounts/{username}", response_model=AccountOut)
def get_account(name: str, username: str, caller: CallerDep, node: NodeDep) -> AccountOut:
    return AccountOut.of(targets.get_account(node, caller, name, username))


@router.put("/targets/{name}/accounts/{username}/secret", response_model=AccountOut)
def set_account_secret(
    name: str, username: str, body: SecretIn, caller: CallerDep, node: NodeDep, source: SourceDep
) -> AccountOut:
    return AccountOut.of(
        targets.set_account_secret(node, caller, name, username, body.secret(), source)
    )


@router.get("/accounts", response_model=list[AccountOut])
def list_accounts(caller: CallerDep, node: NodeDep) -> list[AccountOut]:
    return [AccountOut.of(a) for a in targets.list_accounts(node, caller)]


@router.post("/targets/{name}/accounts/{username}/rotate")
def rotate_account(
    name: str, username: str, caller: CallerDep, node: NodeDep, source: SourceDep
) -> dict[str, object]:
    result = rotation.rotate_now(node, caller, f"{name}/{username}", source)
    return {
        "account": result.account,
        "rotated": result.rotated,
        "reconciled": result.reconciled.value,
    }


@router.post("/targets/{name}/accounts/{username}/verify")
def verify_account(name: str, username: str, caller: CallerDep, node: NodeDep) -> dict[str, object]:
    ok = rotation.verify_now(node, caller, f"{name}/{username}")
    return {"account": f"{name}/{username}", "ok": ok}

"""/v1/targets/{name}/templates: account templates of ephemeral grants."""

from __future__ import annotations

from fastapi import APIRouter, status

from jitvault.api.deps import CallerDep, NodeDep, SourceDep
from jitvault.api.schemas import TemplateIn, TemplateOut
from jitvault.services import templates

router = APIRouter(prefix="/v1", tags=["templates"])


@router.post(
    "/targets/{target}/templates", response_model=TemplateOut, status_code=status.HTTP_201_CREATED
)
def add_template(
    target: str, body: TemplateIn, caller: CallerDep, node: NodeDep, source: SourceDep
) -> TemplateOut:
    made = templates.add_template(
        node,
        caller,
        target,
        body.name,
        body.mode,
        tuple(body.grant_roles),
        body.on_drop,
        body.reassign_to,
        source,
    )
    return TemplateOut.of(made)


@router.get("/templates", response_model=list[TemplateOut])
def list_all_templates(caller: CallerDep, node: NodeDep) -> list[TemplateOut]:
    return [TemplateOut.of(t) for t in templates.list_templates(node, caller)]


@router.get("/targets/{target}/templates", response_model=list[TemplateOut])
def list_templates(target: str, caller: CallerDep, node: NodeDep) -> list[TemplateOut]:
    return [TemplateOut.of(t) for t in templates.list_templates(node, caller, target)]


@router.get("/targets/{target}/templates/{name}", response_model=TemplateOut)
def get_template(target: str, name: str, caller: CallerDep, node: NodeDep) -> TemplateOut:
    return TemplateOut.of(templates.get_template(node, caller, target, name))


@router.delete("/targets/{target}/templates/{name}", response_model=TemplateOut)
def remove_template(
    target: str, name: str, caller: CallerDep, node: NodeDep, source: SourceDep
) -> TemplateOut:
    return TemplateOut.of(templates.remove_template(node, caller, target, name, source))

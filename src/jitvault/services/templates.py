"""Account templates: how ephemeral accounts are made (admins only; audited)."""

from __future__ import annotations

from jitvault.audit import Action, AuditEvent
from jitvault.domain import Permission, Principal, Template, authorize, validate_template
from jitvault.services.node import Node
from jitvault.storage import repositories as repo
from jitvault.storage import templates as store


def add_template(
    node: Node,
    actor: Principal,
    target_name: str,
    name: str,
    mode: str = "ephemeral",
    grant_roles: tuple[str, ...] = (),
    on_drop: str = "drop_owned",
    reassign_to: str | None = None,
    source: str = "",
) -> Template:
    """Store a template; its names are checked as identifiers on the target (63 bytes)."""
    authorize(actor, Permission.TEMPLATE_MANAGE)
    validate_template(name, mode, grant_roles, on_drop, reassign_to)
    with node.write() as tx:
        target = repo.target_get(tx.conn, target_name)
        template = store.template_add(
            tx.conn, target, name, mode, grant_roles, on_drop, reassign_to
        )
        tx.emit(
            AuditEvent(
                Action.TEMPLATE_CREATED,
                actor=actor.name,
                subject=f"template:{target_name}/{name}",
                source=source,
                details=template.snapshot(),
            )
        )
        return template


def list_templates(node: Node, actor: Principal, target_name: str | None = None) -> list[Template]:
    authorize(actor, Permission.TEMPLATE_READ)
    with node.read() as conn:
        if target_name is not None:
            repo.target_get(conn, target_name)
        return store.template_list(conn, target_name)


def get_template(node: Node, actor: Principal, target_name: str, name: str) -> Template:
    authorize(actor, Permission.TEMPLATE_READ)
    with node.read() as conn:
        return store.template_get(conn, target_name, name)


def remove_template(
    node: Node, actor: Principal, target_name: str, name: str, source: str = ""
) -> Template:
    """Remove a template. Grants made from it keep their own copy, so their accounts are still
    dropped as the template said when they were made."""
    authorize(actor, Permission.TEMPLATE_MANAGE)
    with node.write() as tx:
        template = store.template_get(tx.conn, target_name, name)
        store.template_remove(tx.conn, template)
        tx.emit(
            AuditEvent(
                Action.TEMPLATE_REMOVED,
                actor=actor.name,
                subject=f"template:{target_name}/{name}",
                source=source,
                details=template.snapshot(),
            )
        )
        return template


__all__ = ["add_template", "get_template", "list_templates", "remove_template"]

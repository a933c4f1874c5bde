"""Account templates (ephemeral accounts) of targets."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, Row, delete, insert, select
from sqlalchemy.exc import IntegrityError

from jitvault.domain import Target, Template
from jitvault.errors import Conflict, NotFound
from jitvault.storage import tables as t
from jitvault.storage.repositories import aware, now

_T = t.account_templates


def _template(row: Row[Any]) -> Template:
    return Template(
        id=row.id,
        target=row.target_name,
        name=row.name,
        mode=row.mode,
        grant_roles=tuple(json.loads(row.grant_roles)),
        on_drop=row.on_drop,
        reassign_to=row.reassign_to,
        created_at=aware(row.created_at),
    )


def _query() -> Any:
    return select(_T, t.targets.c.name.label("target_name")).join(
        t.targets, t.targets.c.id == _T.c.target_id
    )


def template_add(
    conn: Connection,
    target: Target,
    name: str,
    mode: str,
    grant_roles: tuple[str, ...],
    on_drop: str,
    reassign_to: str | None,
) -> Template:
    try:
        conn.execute(
            insert(_T).values(
                target_id=target.id,
                name=name,
                mode=mode,
                grant_roles=json.dumps(list(grant_roles)),
                on_drop=on_drop,
                reassign_to=reassign_to,
                created_at=now(),
            )
        )
    except IntegrityError:
        raise Conflict(
            f"template {target.name}/{name} already exists",
            hint="remove it first ('jitvault template remove'); live grants keep their copy",
        ) from None
    return template_get(conn, target.name, name)


def template_get(conn: Connection, target_name: str, name: str) -> Template:
    row = conn.execute(_query().where(t.targets.c.name == target_name, _T.c.name == name)).first()
    if row is None:
        raise NotFound(
            f"template {target_name}/{name} does not exist",
            hint=f"see 'jitvault template list {target_name}'",
        )
    return _template(row)


def template_list(conn: Connection, target_name: str | None = None) -> list[Template]:
    q = _query()
    if target_name is not None:
        q = q.where(t.targets.c.name == target_name)
    return [_template(r) for r in conn.execute(q.order_by(t.targets.c.name, _T.c.name))]


def template_remove(conn: Connection, template: Template) -> None:
    conn.execute(delete(_T).where(_T.c.id == template.id))


__all__ = ["template_add", "template_get", "template_list", "template_remove"]

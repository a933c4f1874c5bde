"""/v1/audit: list, verify, export."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from jitvault.api.deps import CallerDep, NodeDep, SourceDep
from jitvault.domain import parse_duration
from jitvault.errors import ValidationError
from jitvault.services import audit_log

router = APIRouter(prefix="/v1/audit", tags=["audit"])


def _since(value: str | None) -> datetime | None:
    """``1h`` (relative) or an ISO 8601 time."""
    if not value:
        return None
    try:
        return datetime.now(UTC) - parse_duration(value)
    except ValidationError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(
            f"invalid --since {value!r}", hint="use a duration (1h, 7d) or an ISO 8601 time"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@router.get("/events")
def list_events(
    caller: CallerDep,
    node: NodeDep,
    since: str | None = None,
    after: int = 0,
    limit: int = Query(default=1000, ge=1, le=10000),
) -> list[dict[str, Any]]:
    return audit_log.list_events(node, caller, _since(since), limit, after)


@router.post("/verify")
def verify(caller: CallerDep, node: NodeDep, source: SourceDep) -> dict[str, Any]:
    return audit_log.verify(node, caller, source).as_dict()


@router.get("/export")
def export(
    caller: CallerDep,
    node: NodeDep,
    source: SourceDep,
    since: str | None = None,
    format: Literal["jsonl"] = "jsonl",
) -> StreamingResponse:
    lines = audit_log.export_jsonl(node, caller, _since(since), source)
    return StreamingResponse(lines, media_type="application/x-ndjson")

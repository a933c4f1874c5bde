"""/v1/sessions: proxy sessions and their recordings."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from jitvault.api.deps import CallerDep, NodeDep
from jitvault.services import sessions

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])


@router.get("")
def list_sessions(caller: CallerDep, node: NodeDep, live: bool = False) -> list[dict[str, Any]]:
    return sessions.list_sessions(node, caller, live)


@router.get("/{session_id}")
def show_session(session_id: int, caller: CallerDep, node: NodeDep) -> dict[str, Any]:
    return sessions.show_session(node, caller, session_id)


@router.get("/{session_id}/asciicast", response_class=PlainTextResponse)
def session_asciicast(
    session_id: int, caller: CallerDep, node: NodeDep, channel: int | None = None
) -> str:
    """The recorded terminal of a session, as an asciicast v2 file."""
    return sessions.session_asciicast(node, caller, session_id, channel)

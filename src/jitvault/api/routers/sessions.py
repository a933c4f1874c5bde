"""/v1/sessions: proxy sessions and their recordings."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from jitvault.api.deps import CallerDep, NodeDep
from jitvault.services import sessions

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])


@router.get("")
def list_sessions(caller: CallerDep, node: NodeDep, live: bool = False) -> list[dict[str, Any]]:
    return sessions.list_sessions(node, caller, live)


@router.get("/{session_id}")
def show_session(session_id: int, caller: CallerDep, node: NodeDep) -> dict[str, Any]:
    return sessions.show_session(node, caller, session_id)

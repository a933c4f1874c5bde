"""The background job runner: claim due jobs, run their handler, retry with backoff.

A job is claimed with a lease (``FOR UPDATE SKIP LOCKED`` on PostgreSQL): if its node dies,
the lease runs out and another node takes it over. Handlers must be idempotent. A job that keeps
failing is marked ``dead`` after ``max_attempts`` and audited; a plugin that cannot do the work
yet marks it ``unsupported`` (audited as a failure), never silently done.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from jitvault.audit import Action, AuditEvent, Outcome
from jitvault.domain import AccessKind
from jitvault.errors import JitvaultError
from jitvault.plugin_api import Unsupported
from jitvault.services import leases, notify, requests, rotation
from jitvault.services.node import Node
from jitvault.storage import repositories as repo
from jitvault.storage import workflow

log = logging.getLogger(__name__)

# long enough for a whole claimed batch (10 jobs x 15 s delivery timeout) with room to spare
LEASE = timedelta(minutes=10)
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


def _cleanup_grant(node: Node, payload: dict[str, Any]) -> None:
    """Take back what a grant gave, from the lease's own data (not today's configuration):
    revoke the role, drop the ephemeral account, or rotate the shared account and check it in
    (the next queued grant takes it only after the rotation committed)."""
    with node.read() as conn:
        grant = workflow.grant_get(conn, int(payload["grant_id"]))
    if grant.kind in (AccessKind.ROLE, AccessKind.EPHEMERAL):
        leases.take_back(node, grant)
        return
    with node.read() as conn:
        account = repo.account_get(conn, grant.target, grant.name)
    rotation.rotate(node, account, reason=f"grant {grant.id} ended")
    with node.write() as tx:
        requests.check_in(tx, grant.id, node.clock())


def _provision_grant(node: Node, payload: dict[str, Any]) -> None:
    leases.provision(node, int(payload["grant_id"]))


def _cleanup_dead(node: Node, payload: dict[str, Any], error: str) -> None:
    """Cleanup gave up: a shared account that could not be rotated must not be handed out.

    It is checked in (so that an operator's fix makes it usable again), but no queued grant
    takes it: the account is refused until an operator sets its secret."""
    with node.read() as conn:
        grant = workflow.grant_get(conn, int(payload["grant_id"]))
        if grant.kind != AccessKind.ACCOUNT:
            return
        account = repo.account_get(conn, grant.target, grant.name)
    rotation.mark_needs_operator(node, account, f"rotation after grant {grant.id} failed: {error}")
    with node.write() as tx:
        requests.check_in(tx, grant.id, node.clock(), promote=False)


HANDLERS: dict[str, Callable[[Node, dict[str, Any]], None]] = {
    "notify": notify.deliver,
    "grant.cleanup": _cleanup_grant,
    "grant.provision": _provision_grant,
}
#: what to do when a job of this kind is given up on
ON_DEAD: dict[str, Callable[[Node, dict[str, Any], str], None]] = {
    "grant.cleanup": _cleanup_dead,
}


def _backoff(node: Node, attempt: int) -> timedelta:
    cfg = node.settings.workflow
    return timedelta(seconds=min(cfg.job_backoff_base * 2 ** (attempt - 1), cfg.job_backoff_max))


def run_due_jobs(node: Node, limit: int = 10) -> int:
    """Claim and run up to ``limit`` due jobs; returns how many ran. (Asked first in a read:
    an idle pass takes no write lock.)"""
    at = node.clock()
    with node.read() as conn:
        if not workflow.job_due(conn, at):
            return 0
    with node.write() as tx:
        claimed = workflow.job_claim(tx.conn, WORKER_ID, at, LEASE, limit)
    for job in claimed:
        _run(node, job)
    return len(claimed)


def _run(node: Node, job: dict[str, Any]) -> None:
    handler = HANDLERS.get(job["kind"])
    try:
        if handler is None:
            raise Unsupported(f"no handler for job kind {job['kind']!r}")
        handler(node, job["payload"])
    except Unsupported as exc:
        _terminal(node, job, "unsupported", exc.message)
        return
    except Exception as exc:  # a failing job is retried, never fatal to the worker
        # Only the exception's type and our own messages: driver errors may carry secrets.
        error = exc.message if isinstance(exc, JitvaultError) else type(exc).__name__
        if job["attempt"] >= job["max_attempts"]:
            _terminal(node, job, "dead", error)
        else:
            with node.db.begin() as conn:
                workflow.job_retry(
                    conn, job["id"], node.clock() + _backoff(node, job["attempt"]), error
                )
            log.warning(
                "job %s (%s) failed, attempt %s/%s: %s",
                job["id"],
                job["kind"],
                job["attempt"],
                job["max_attempts"],
                error,
            )
        return
    with node.db.begin() as conn:
        workflow.job_finish(conn, job["id"], "done")


def _terminal(node: Node, job: dict[str, Any], state: str, error: str) -> None:
    log.error("job %s (%s) is %s: %s", job["id"], job["kind"], state, error)
    on_dead = ON_DEAD.get(job["kind"])
    if on_dead is not None:
        try:
            on_dead(node, job["payload"], error)
        except JitvaultError as exc:
            log.error("giving up on job %s: %s", job["id"], exc)
    with node.write() as tx:
        workflow.job_finish(tx.conn, job["id"], state, error)
        action = Action.GRANT_CLEANUP if job["kind"] == "grant.cleanup" else Action.JOB_DEAD
        tx.emit(
            AuditEvent(
                action,
                actor="system",
                subject=f"job:{job['id']}",
                outcome=Outcome.FAILURE,
                details={
                    "kind": job["kind"],
                    "state": state,
                    "error": error,
                    "attempts": job["attempt"],
                    "grant_id": job["payload"].get("grant_id"),
                },
            )
        )


__all__ = ["HANDLERS", "WORKER_ID", "run_due_jobs"]

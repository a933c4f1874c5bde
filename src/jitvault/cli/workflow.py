"""jitvault request / grant / policy: the just-in-time workflow."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from jitvault.cli.client import EXIT_INVALID, ApiClient, fail
from jitvault.cli.output import JsonOpt, line, note, show

request_app = typer.Typer(help="Ask for access, and decide on requests.", no_args_is_help=True)
grant_app = typer.Typer(help="Live grants: list, show, revoke.", no_args_is_help=True)
policy_app = typer.Typer(help="Approval policy as code (YAML).", no_args_is_help=True)

REQUEST_COLUMNS = ("id", "requester", "target", "kind", "name", "state", "approvals", "rule")
GRANT_COLUMNS = (
    "id",
    "request_id",
    "user",
    "target",
    "account",
    "login",
    "state",
    "time_left",
    "expires_at",
)

TargetOpt = typer.Option(..., "--target", "-t", help="Target name.")
AccountOpt = typer.Option(
    None,
    "--account",
    help="A shared (injected) account; with --role, your own account (your user name, the "
    "default; registered with mode elevation).",
)
RoleOpt = typer.Option(
    None, "--role", help="A role (SSH: a group) granted to your own account for the grant."
)
EphemeralOpt = typer.Option(
    None, "--ephemeral", help="A template: an account made for the grant, dropped at its end."
)
DurationOpt = typer.Option(..., "--duration", "-d", help="e.g. 30m, 1h, 2h30m")


def _left(seconds: int) -> str:
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _post_request_action(
    request_id: int, action: str, body: dict[str, Any] | None, as_json: bool
) -> None:
    """approve / deny / cancel: one POST, then the request as JSON or as one line."""
    r = ApiClient().request("POST", f"/v1/requests/{request_id}/{action}", json=body)
    if as_json:
        show(r, True)
    else:
        _request_line(r)


def _request_line(r: dict[str, Any]) -> None:
    state = r["state"]
    extra = ""
    if state == "pending":
        extra = f" ({len(r['approvals'])}/{r['required_approvals']} approvals)"
    elif r.get("queued"):
        until = datetime.fromisoformat(r["queued_until"]).astimezone(UTC)
        extra = (
            f" (grant {r['grant_id']}, queued: {r['target']}/{r['name']} is checked out; it"
            f" starts when checked in, or lapses at {until:%Y-%m-%d %H:%M UTC})"
        )
    elif r.get("grant_id"):
        extra = f" (grant {r['grant_id']})"
    line(f"request {r['id']}: {state}{extra}: {r['explanation']}")


@request_app.command("create")
def create(
    target: str = TargetOpt,
    account: str | None = AccountOpt,
    role: str | None = RoleOpt,
    ephemeral: str | None = EphemeralOpt,
    duration: str = DurationOpt,
    reason: str = typer.Option(..., "--reason", "-r", help="Why; policies may require a ticket."),
    start_at: datetime | None = typer.Option(
        None, "--start-at", help="Scheduled start (ISO 8601; UTC if no zone)."
    ),
    break_glass: bool = typer.Option(
        False, "--break-glass", help="Emergency access, where the policy allows it."
    ),
    end_on_disconnect: bool = typer.Option(
        False,
        "--end-on-disconnect",
        help="End the grant when its last session closes (then rotate, drop or revoke).",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """File an access request; the policy grants it, routes it to approvers, or denies it."""
    if start_at is not None and start_at.tzinfo is None:
        start_at = start_at.replace(tzinfo=UTC)
    body = {
        "target": target,
        "account": account,
        "role": role,
        "ephemeral": ephemeral,
        "duration": duration,
        "reason": reason,
        "break_glass": break_glass,
        "start_at": start_at.isoformat() if start_at else None,
        "end_on_disconnect": end_on_disconnect,
    }
    r = ApiClient().request("POST", "/v1/requests", json=body)
    if as_json:
        show(r, True)
    else:
        _request_line(r)
    if r["state"] == "denied":
        raise typer.Exit(4)


@request_app.command("list")
def list_(
    pending: bool = typer.Option(False, "--pending", help="Only what waits for your decision."),
    mine: bool = typer.Option(False, "--mine", help="Only your own requests."),
    review: bool = typer.Option(False, "--review", help="Break-glass grants awaiting review."),
    as_json: bool = JsonOpt,
) -> None:
    """List requests (yours; approvers and auditors see everyone's)."""
    rows = ApiClient().request(
        "GET", "/v1/requests", params={"pending": pending, "mine": mine, "review": review}
    )
    show(rows, as_json, REQUEST_COLUMNS)


@request_app.command("show")
def show_(request_id: int, as_json: bool = JsonOpt) -> None:
    """Show one request with its decision and approvals."""
    show(ApiClient().request("GET", f"/v1/requests/{request_id}"), as_json)


@request_app.command("approve")
def approve(
    request_id: int,
    comment: str = typer.Option("", "--comment", "-m"),
    as_json: bool = JsonOpt,
) -> None:
    """Approve a request (you count once; never your own)."""
    _post_request_action(request_id, "approve", {"comment": comment}, as_json)


@request_app.command("deny")
def deny(
    request_id: int,
    reason: str = typer.Option(..., "--reason", "-r"),
    as_json: bool = JsonOpt,
) -> None:
    """Deny a request."""
    _post_request_action(request_id, "deny", {"reason": reason}, as_json)


@request_app.command("cancel")
def cancel(request_id: int, as_json: bool = JsonOpt) -> None:
    """Withdraw your request before it starts."""
    _post_request_action(request_id, "cancel", None, as_json)


@request_app.command("review")
def review(
    request_id: int,
    comment: str = typer.Option("", "--comment", "-m"),
    as_json: bool = JsonOpt,
) -> None:
    """Close the mandatory review of a break-glass grant."""
    r = ApiClient().request("POST", f"/v1/requests/{request_id}/review", json={"comment": comment})
    if as_json:
        show(r, True)
    else:
        line(f"request {r['id']}: reviewed by {r['reviewed_by']}")


def connect(
    request_id: int,
    once: bool = typer.Option(False, "--once", help="A token that opens one connection only."),
    as_json: bool = JsonOpt,
) -> None:
    """Print how to connect with your live grant (a new session token as the password; on SSH,
    a key you registered with 'jitvault user key add' logs in without one)."""
    info = ApiClient().request("POST", f"/v1/requests/{request_id}/connect", json={"once": once})
    if as_json:
        show(info, True)
        return
    if info["protocol"] == "ssh":
        typer.echo(f"ssh -p {info['port']} {info['user']}@{info['host']}")
        typer.echo(f"password: {info['password']}")
    else:
        typer.echo(
            f'psql "host={info["host"]} port={info["port"]} dbname={info["dbname"]} '
            f'user={info["user"]} password={info["password"]} sslmode=require"'
        )
    note(
        f"token valid until {info['expires_at']}"
        + (" for one connection" if info["single_use"] else "")
        + "; the password is your session token, not the account's"
    )
    if info["protocol"] == "ssh":
        note(
            f"or, with an SSH key you registered ('jitvault user key add'): ssh -i KEY"
            f" -p {info['port']} {info['user']}@{info['host']} (no token needed)",
        )


@grant_app.command("list")
def grant_list(
    all_: bool = typer.Option(False, "--all", help="Include ended and revoked grants."),
    mine: bool = typer.Option(False, "--mine"),
    as_json: bool = JsonOpt,
) -> None:
    """Live grants with the time they have left."""
    rows = ApiClient().request("GET", "/v1/grants", params={"all": all_, "mine": mine})
    if as_json:
        show(rows, True)
        return
    for g in rows:
        g["time_left"] = _left(g["seconds_left"]) if g["seconds_left"] else "-"
    show(rows, False, GRANT_COLUMNS)


@grant_app.command("show")
def grant_show(grant_id: int, as_json: bool = JsonOpt) -> None:
    """Show one grant."""
    show(ApiClient().request("GET", f"/v1/grants/{grant_id}"), as_json)


@grant_app.command("revoke")
def grant_revoke(
    grant_id: int,
    reason: str = typer.Option(..., "--reason", "-r"),
    as_json: bool = JsonOpt,
) -> None:
    """Cut access now: the grant ends and its cleanup (rotate, drop, revoke) is queued."""
    g = ApiClient().request("POST", f"/v1/grants/{grant_id}/revoke", json={"reason": reason})
    if as_json:
        show(g, True)
    else:
        line(f"grant {g['id']}: {g['state']}")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}", EXIT_INVALID)


@policy_app.command("apply")
def policy_apply(path: Path, as_json: bool = JsonOpt) -> None:
    """Validate and apply a policy file; it becomes the next version."""
    result = ApiClient().request("PUT", "/v1/policies", json={"document": _read(path)})
    if as_json:
        show(result, True)
    elif result["changed"]:
        typer.echo(f"applied policy version {result['version']} ({result['rules']} rules)")
    else:
        typer.echo(f"unchanged: version {result['version']} is this document")


@policy_app.command("show")
def policy_show(as_json: bool = JsonOpt) -> None:
    """Print the active policy document."""
    data = ApiClient().request("GET", "/v1/policies")
    if as_json:
        show(data, True)
    elif data["version"] is None:
        note("no policy applied: every request is denied")
    else:
        note(f"# version {data['version']} sha256 {data['sha256']}")
        typer.echo(data["document"], nl=False)


@policy_app.command("test")
def policy_test(
    path: Path | None = typer.Argument(None, help="Policy file (default: the active policy)."),
    as_user: str = typer.Option(..., "--as", help="The requester."),
    target: str = TargetOpt,
    account: str | None = AccountOpt,
    role: str | None = RoleOpt,
    ephemeral: str | None = EphemeralOpt,
    duration: str = DurationOpt,
    reason: str = typer.Option("", "--reason", "-r"),
    at: datetime | None = typer.Option(None, "--at", help="Evaluate at this time (ISO 8601)."),
    break_glass: bool = typer.Option(False, "--break-glass"),
    as_json: bool = JsonOpt,
) -> None:
    """Show what a policy would decide for a request, and which rule decides it."""
    if at is not None and at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    body = {
        "document": _read(path) if path else None,
        "as_user": as_user,
        "target": target,
        "account": account,
        "role": role,
        "ephemeral": ephemeral,
        "duration": duration,
        "reason": reason,
        "at": at.isoformat() if at else None,
        "break_glass": break_glass,
    }
    d = ApiClient().request("POST", "/v1/policies/test", json=body)
    if as_json:
        show(d, True)
    else:
        line(f"{d['outcome']}: {d['explanation']}")
        line(f"rule: {d['rule'] or '(none: deny by default)'}")


__all__ = ["connect", "grant_app", "policy_app", "request_app"]

"""Session tokens and the opening of proxy sessions.

A session token is bound to one grant and is good only while that grant is live, for at most the
grant's ``max_connections`` concurrent sessions; a single-use token opens exactly one session,
however many clients race with it. Opening a session takes the grant's request row lock, the
same lock revoke and expiry take, so "revoke racing open" has one outcome: either the session
is refused, or it opens and the revoke that follows ends it (the proxy holding it cuts it).

An SSH client may instead prove it holds a key registered to the grant's user
(:func:`check_session_key` when it offers the key, :func:`open_session_with_key` once the proxy
has verified its signature); such a session obeys the same rules (:func:`_open_on_grant`: grant
live, request lock, max_connections, audit), and spends no token.

Every refusal looks the same to the client ("authentication failed"); the audit log says why.
"""

from __future__ import annotations

import hmac
import json
import secrets
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, NoReturn
from urllib.parse import quote

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from jitvault.audit import Action, AuditEvent, Outcome
from jitvault.crypto import (
    SESSION_TOKEN_PREFIX,
    issue_token,
    parse_token,
    secret_matches,
    ssh_fingerprint,
)
from jitvault.domain import (
    AccessKind,
    AccountStatus,
    Grant,
    Permission,
    Principal,
    RequestState,
    Sensitive,
    Target,
    allowed,
    authorize,
)
from jitvault.errors import AuthError, Conflict, Forbidden, JitvaultError, NotFound
from jitvault.plugin_api import Unsupported
from jitvault.plugin_api.scram import scram_verifier
from jitvault.services import grants, leases, policies, session_ends, targets
from jitvault.services.node import Node, Tx
from jitvault.storage import repositories as repo
from jitvault.storage import sealed, session_store, workflow
from jitvault.storage import ssh_keys as ssh_key_store
from jitvault.storage.repositories import aware
from jitvault.storage.tables import SESSION_CANCEL_KEY, SESSION_EVENT_DATA

_FAILED = "authentication failed"
#: recorded events' JSON (one encoder for every event: json.dumps with options builds one a call)
_EVENT_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)


class TooManySessions(Conflict):
    """The grant's max_connections are in use (PostgreSQL says 53300 to the client)."""

    code = "too_many_sessions"

    def __init__(self, grant_id: int, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.grant_id = grant_id


@dataclass(frozen=True)
class SessionTicket:
    """What a proxy needs once a client is in: the session, its grant and its deadline."""

    session_id: int
    token_id: str
    grant: Grant
    #: what its proxy logs in upstream with, read in the transaction that opened the session
    #: (None: :func:`proxy_material` reads it, after provisioning the grant, or says why not)
    material: ProxyMaterial | None = field(default=None, repr=False)


def issue_session_token(
    node: Node, actor: Principal, request_id: int, once: bool = False, source: str = ""
) -> tuple[Sensitive[str], Grant]:
    """A new session token for the caller's own live grant (printed once, stored as a hash)."""
    at = node.clock()
    with node.write() as tx:
        r = workflow.request_lock(tx.conn, request_id)
        if r.requester_id != actor.user_id:
            raise Forbidden("only the requester can connect with a grant")
        grant = workflow.grant_for_request(tx.conn, request_id)
        if grant is None or r.state not in (RequestState.ACTIVE, RequestState.APPROVED):
            raise Conflict(f"request {request_id} is {r.state.value}: it has no live grant")
        if grant.expires_at <= at:
            raise Conflict(f"the grant of request {request_id} has expired")
        issued = issue_token(SESSION_TOKEN_PREFIX)
        session_store.token_add(
            tx.conn,
            issued.token_id,
            grant.id,
            issued.secret_hash,
            scram_verifier(issued.token).reveal(),
            once,
            at,
        )
        tx.emit(
            AuditEvent(
                Action.SESSION_TOKEN_ISSUED,
                actor=actor.name,
                subject=f"grant:{grant.id}",
                source=source,
                details={"token_id": issued.token_id, "single_use": once},
            )
        )
    return issued.token, grant


def connect_info(
    node: Node, actor: Principal, request_id: int, once: bool = False, source: str = ""
) -> dict[str, Any]:
    """Where and how to connect with one's live grant: a new session token as the password.

    For PostgreSQL the connection user is ``<account>.<token id>`` (the account the session
    logs in as upstream: the shared, own or ephemeral one): a proxy reads the token id from it
    to run SCRAM with the token as the password (it must know which verifier to use before the
    client proves anything), so the token itself never crosses the wire.
    """
    token, grant = issue_session_token(node, actor, request_id, once, source)
    with node.read() as conn:
        target = repo.target_get(conn, grant.target)
    cfg = node.settings.server
    host = cfg.public_host or cfg.listen
    token_id = token.reveal().split("_")[1]
    common = {
        "protocol": target.kind,
        "host": host,
        "token_id": token_id,
        "single_use": once,
        "grant_id": grant.id,
        "expires_at": grant.expires_at.isoformat(),
    }
    if target.kind == "ssh":
        # SSH sends the password whole (inside the encrypted transport), so the user name
        # names the grant, not the token: ``ssh -p 2222 <account>.<grant id>@host``, the
        # account being the one the session logs in as (shared, own or ephemeral)
        return {
            **common,
            "port": cfg.ssh_proxy_port,
            "user": f"{grant.login}.{grant.id}",
            "password": token.reveal(),
        }
    user = f"{grant.login}.{token_id}"
    if target.kind != "postgres":
        raise Unsupported(f"{target.kind} targets have no session proxy yet")
    port, dbname = cfg.pg_proxy_port, str(target.options.get("dbname", "postgres"))
    password = token.reveal()
    uri = (
        f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/"
        f"{quote(dbname, safe='')}?sslmode=require"
    )
    return {
        **common,
        "port": port,
        "dbname": dbname,
        "user": user,
        "password": password,
        "uri": uri,
    }


def token_verifier(node: Node, token_id: str) -> Sensitive[str] | None:
    """The SCRAM verifier of a session token (None if there is no such token)."""
    with node.read() as conn:
        row = session_store.token_find(conn, token_id)
    return None if row is None else Sensitive(row.scram_verifier)


def open_session(
    node: Node, token: Sensitive[str], protocol: str, source: str = ""
) -> SessionTicket:
    """Check a token sent in full and record a live session; raises AuthError or
    TooManySessions."""
    parsed = parse_token(token)
    if parsed is None or parsed[0] != SESSION_TOKEN_PREFIX:
        _refuse(node, "token:-", "malformed token", protocol, source)
    secret = parsed[2]
    return _open(
        node, parsed[1], lambda row: secret_matches(secret, row.secret_hash), protocol, source
    )


def open_session_verified(
    node: Node, token_id: str, protocol: str, source: str = ""
) -> SessionTicket:
    """Record a live session for a token whose possession a SCRAM exchange proved."""
    return _open(node, token_id, lambda _row: True, protocol, source)


def _open(
    node: Node,
    token_id: str,
    proven: Callable[[Any], bool],
    protocol: str,
    source: str,
) -> SessionTicket:
    at = node.clock()
    refusal = "refused"
    with node.write() as tx:
        row = session_store.token_find(tx.conn, token_id)
        if row is None:
            refusal = "unknown token"
        elif not proven(row):
            refusal = "wrong token secret"
        else:
            grant = workflow.grant_get(tx.conn, row.grant_id)
            workflow.request_lock(tx.conn, grant.request_id)  # serializes with revoke
            grant = workflow.grant_get(tx.conn, row.grant_id)
            opened = _open_on_grant(
                tx, grant, at, protocol, source, token_id=token_id, single_use=row.single_use
            )
            if isinstance(opened, SessionTicket):
                return replace(opened, material=_material_at_open(node, tx.conn, grant))
            refusal = opened
    _refuse(node, f"token:{token_id}", refusal, protocol, source)


def _grant_refusal(grant: Grant, at: datetime) -> str | None:
    """Why no session of this grant may open now (None: it may)."""
    if grant.state != RequestState.ACTIVE:
        return f"grant is {grant.state.value}"
    if grant.expires_at <= at:
        return "grant has expired"
    return None


def _check_room(conn: Connection, grant: Grant) -> None:
    """Raise TooManySessions if the grant's max_connections are all in use."""
    if grant.max_connections is not None and (
        session_store.live_count(conn, grant.id) >= grant.max_connections
    ):
        raise TooManySessions(
            grant.id,
            f"this grant allows {grant.max_connections} concurrent connections",
            hint="close one first",
        )


def _open_on_grant(
    tx: Tx,
    grant: Grant,
    at: datetime,
    protocol: str,
    source: str,
    *,
    token_id: str = "",
    single_use: bool = False,
    ssh_key: str | None = None,
) -> SessionTicket | str:
    """With the grant's request row locked (``tx`` holds it): the rules every session obeys,
    however the client proved itself (grant live, a single-use token spent once,
    max_connections), then the session row and its audit. The ticket, or why not."""
    refusal = _grant_refusal(grant, at)
    if refusal is not None:
        return refusal
    if repo.user_get(tx.conn, grant.user).disabled:
        # disabling revokes the user's grants in its own transaction; this holds whatever else
        # sets the flag
        return "the grant's user is disabled"
    if single_use and not session_store.token_use(tx.conn, token_id, at):
        return "single-use token already used"
    _check_room(tx.conn, grant)
    session_id = session_store.session_add(
        tx.conn, grant.id, token_id, protocol, source, at, ssh_key_fingerprint=ssh_key
    )
    how = {"token_id": token_id} if ssh_key is None else {"ssh_key": ssh_key}
    tx.emit(
        AuditEvent(
            Action.SESSION_OPENED,
            actor=grant.user,
            subject=f"session:{session_id}",
            source=source,
            details={
                "grant_id": grant.id,
                **how,
                "protocol": protocol,
                "account": grant.name,
                "target": grant.target,
            },
        )
    )
    return SessionTicket(session_id, token_id, grant)


def _key_refusal(
    conn: Connection,
    fingerprint: str,
    account: str,
    grant_id: int,
    at: datetime,
    lock_key: bool = False,
) -> tuple[Grant | None, str | None]:
    """The grant, and why this registered key may not open a session of it as ``account``
    (None: it may, as far as the key, its owner and the grant go). ``lock_key``: hold the key's
    row until the transaction ends, so that a removal of the key, which ends the key's live
    sessions, comes wholly before or wholly after the session this opens."""
    try:
        grant = workflow.grant_get(conn, grant_id)
    except NotFound:
        return None, "no such grant"
    key = ssh_key_store.key_find(conn, fingerprint, lock=lock_key)
    if key is None:
        return grant, "unregistered ssh key"
    if key.disabled:
        return grant, "the ssh key's owner is disabled"
    if key.user_id != grant.user_id:
        return grant, "ssh key of another user than the grant's"
    if account != grant.login:
        return grant, "account does not match the grant"
    return grant, _grant_refusal(grant, at)


def check_session_key(
    node: Node,
    account: str,
    grant_id: int,
    public_key: bytes,
    protocol: str,
    source: str = "",
) -> None:
    """May the holder of this SSH public key (the wire-format blob) open a session of grant
    ``grant_id`` as ``account``? Only if the key is registered to the grant's user, who is not
    disabled, and the grant is live. Raises AuthError (audited; it says only "authentication
    failed").

    A proxy asks this before the client has proven it holds the private key (SSH offers a key
    before signing with it), so it only reads, and it does not look at max_connections: a full
    grant is said (TooManySessions) only to whoever proved the key, by
    :func:`open_session_with_key`, which opens the session once the signature is verified.
    """
    fingerprint = ssh_fingerprint(public_key)
    with node.read() as conn:
        grant, refusal = _key_refusal(conn, fingerprint, account, grant_id, node.clock())
    if refusal is None and grant is not None:
        return
    _refuse(node, f"ssh_key:{fingerprint}", refusal or "refused", protocol, source, grant_id)


def open_session_with_key(
    node: Node,
    account: str,
    grant_id: int,
    public_key: bytes,
    protocol: str,
    source: str = "",
) -> SessionTicket:
    """Record a live session of grant ``grant_id`` for a registered SSH key whose possession
    the proxy has verified (a signature over the SSH session). Every rule of
    :func:`check_session_key` is checked again, under the grant's lock. Same errors."""
    fingerprint = ssh_fingerprint(public_key)
    at = node.clock()
    with node.write() as tx:
        grant, refusal = _key_refusal(tx.conn, fingerprint, account, grant_id, at)
        if grant is not None:
            workflow.request_lock(tx.conn, grant.request_id)  # serializes with revoke
            grant, refusal = _key_refusal(
                tx.conn, fingerprint, account, grant_id, at, lock_key=True
            )
        if refusal is None and grant is not None:
            opened = _open_on_grant(tx, grant, at, protocol, source, ssh_key=fingerprint)
            if isinstance(opened, SessionTicket):
                return replace(opened, material=_material_at_open(node, tx.conn, grant))
            refusal = opened
    _refuse(node, f"ssh_key:{fingerprint}", refusal or "refused", protocol, source, grant_id)


def _refuse(
    node: Node,
    subject: str,
    reason: str,
    protocol: str,
    source: str,
    grant_id: int | None = None,
) -> NoReturn:
    """Audit why (in its own transaction), and tell the client only that it failed."""
    details: dict[str, Any] = {"reason": reason, "protocol": protocol}
    if grant_id is not None:
        details["grant_id"] = grant_id
    with node.write() as tx:
        tx.emit(
            AuditEvent(
                Action.SESSION_REFUSED,
                actor="anonymous",
                subject=subject,
                outcome=Outcome.DENIED,
                source=source,
                details=details,
            )
        )
    raise AuthError(_FAILED)


@dataclass(frozen=True)
class ProxyMaterial:
    """What a proxy needs to log a session in upstream and relay it."""

    target: Target
    account: str
    credential: Sensitive[str]
    allow_forwarding: bool


def proxy_material(node: Node, ticket: SessionTicket) -> ProxyMaterial:
    """The target, the account name and the credential a proxy logs in upstream with (just in
    time; sealed: 503): the shared account's vaulted secret, the requester's own account's
    (elevation), or the ephemeral account made for the grant (provisioned now if the grant's
    start job has not done it yet); and whether the grant's sessions may forward ports (its
    deciding policy rule's allow_forwarding). Read when the session opened where it could be
    (the ticket's ``material``)."""
    if ticket.material is not None:
        return ticket.material
    grant = leases.ensure_provisioned(node, ticket.grant)
    with node.read() as conn:
        return _material(node, conn, grant)


def _material(node: Node, conn: Connection, grant: Grant) -> ProxyMaterial:
    """:func:`proxy_material` of a provisioned grant, read in ``conn``."""
    target = repo.target_get(conn, grant.target)
    forwarding = policies.rule_allows_forwarding(conn, grant.request_id)
    if grant.kind == AccessKind.EPHEMERAL:
        secret = leases.lease_secret(node, grant, conn)
    else:
        account = repo.account_get(conn, grant.target, grant.login)
        if account.status == AccountStatus.NEEDS_OPERATOR:
            raise Conflict(f"account {grant.target}/{grant.login} needs an operator")
        secret = targets.account_secret(node, account, conn)
    if secret is None:
        raise Conflict(f"account {grant.target}/{grant.login} has no vaulted credential")
    return ProxyMaterial(target, grant.login, secret, forwarding)


def _material_at_open(node: Node, conn: Connection, grant: Grant) -> ProxyMaterial | None:
    """The material, read in the transaction that opens the session (no transaction of its
    own at login); None where the grant is still to be provisioned (which talks to the target:
    not while the grant's row is locked) or where the material cannot be handed out: the
    session is then committed as opened, and :func:`proxy_material` raises why, so that the
    proxy ends it again (an audited open and end, not a silent refusal)."""
    if leases.needs_provisioning(grant):
        return None
    try:
        return _material(node, conn, grant)
    except JitvaultError:
        return None


def record_event(node: Node, session_id: int, kind: str, data: dict[str, Any]) -> None:
    """Store one event of a session now, encrypted at rest and bound to its row."""
    record_events(node, [RecordedEvent(session_id, kind, node.clock(), data)])


@dataclass(frozen=True)
class RecordedEvent:
    """One event of a session, as the proxy's recording sink queued it."""

    session_id: int
    kind: str
    at: datetime
    data: dict[str, Any]


#: the ``kind`` of a session_events row holding a chunk: several events of one session, as one
#: JSON array of ``[microseconds after the row's ts, kind, data]`` entries, sealed once
CHUNK_KIND = "chunk"
#: the ``kind`` of a chunk row whose JSON array is compressed (zlib, level 1) before it is
#: sealed, the form :func:`record_chunks` writes: statements repeat, so a chunk of them shrinks
#: about ten times, and sealing and storing the smaller text costs less than compressing it
#: (bench/README.md, session 32). Rows of CHUNK_KIND, written before, are still read.
DEFLATED_CHUNK_KIND = "chunk.z"
#: how hard a chunk is compressed: level 1, the fastest (a higher one takes more CPU than the
#: smaller row saves)
_CHUNK_COMPRESSION = 1
#: a chunk entry of this kind holds, as its data, a list of ``query`` events' data of one time
#: (statements that arrived together, rendered by a relay: :func:`statements_entry`)
STATEMENTS_ENTRY = "queries"
_MICROSECOND = timedelta(microseconds=1)

#: one chunk to store: session id, its first event's time, its entries each as JSON text (see
#: CHUNK_KIND and :func:`chunk_entry`)
Chunk = tuple[int, datetime, list[str]]


def chunk_entry(offset_us: int, kind: str, data: dict[str, Any]) -> str:
    """One chunk entry's JSON text: ``[offset_us, kind, data]``."""
    return _EVENT_JSON.encode([offset_us, kind, data])


def statements_entry(offset_us: int, rendered: bytes) -> str:
    """The chunk entry of statements a relay rendered (the comma-separated JSON objects of
    :class:`~jitvault.plugin_api.RenderedStatements`): read back as one ``query`` event each.
    (ASCII by contract; read as Latin-1, which cannot fail, so that no batch is ever refused
    here.)"""
    return f'[{offset_us},"{STATEMENTS_ENTRY}",[{rendered.decode("latin-1")}]]'


def check_event_kind(kind: str) -> None:
    """Refuse an event kind the stored format keeps for itself (ValueError)."""
    if kind in (CHUNK_KIND, DEFLATED_CHUNK_KIND, STATEMENTS_ENTRY):
        raise ValueError(f"{kind!r} is not a kind an event may have")


def record_events(node: Node, events: Sequence[RecordedEvent]) -> None:
    """Store a batch of session events in one transaction, encrypted at rest: one chunk row
    per session (its events in the order given), as :func:`record_chunks` does."""
    chunks: dict[int, Chunk] = {}
    for e in events:
        check_event_kind(e.kind)
        chunk = chunks.get(e.session_id)
        if chunk is None:
            chunks[e.session_id] = chunk = (e.session_id, e.at, [])
        chunk[2].append(chunk_entry((e.at - chunk[1]) // _MICROSECOND, e.kind, e.data))
    record_chunks(node, list(chunks.values()))


def record_chunks(node: Node, chunks: Sequence[Chunk]) -> None:
    """Store chunks of session events in one transaction: one row each (kind
    DEFLATED_CHUNK_KIND, ts its first event's), its entries as one JSON array, compressed, then
    sealed once, bound to the row. What a batch of events costs is then one INSERT and one seal
    per session."""
    if not chunks:
        return
    payloads = [
        Sensitive(zlib.compress(("[" + ",".join(entries) + "]").encode(), _CHUNK_COMPRESSION))
        for _, _, entries in chunks
    ]
    with node.write() as tx:
        ids = session_store.reserve_event_ids(tx.conn, len(chunks))
        term, envelopes = sealed.seal_new(
            tx.conn, tx.keyring, SESSION_EVENT_DATA, list(zip(ids, payloads, strict=True))
        )
        session_store.events_insert(
            tx.conn,
            [
                (i, session_id, DEFLATED_CHUNK_KIND, at, envelope)
                for i, (session_id, at, _), envelope in zip(ids, chunks, envelopes, strict=True)
            ],
            term,
        )


def session_events(node: Node, session_id: int) -> list[dict[str, Any]]:
    """A session's recorded events, decrypted, in order (for ``jitvault session show``): chunk
    rows are expanded into their events; rows of one event each (written before chunks were)
    are read as they are. A statement whose duration was recorded has it in its data, as
    ``duration_ms``, and the time it was sent (see STATEMENTS_AGO). A run of a prepared
    statement (kind ``execute``, by its ``name``) is given the ``text`` that statement was last
    prepared with in the session, when it was recorded."""
    keyring = node.vault.keyring
    out: list[dict[str, Any]] = []
    waiting: deque[dict[str, Any]] = deque()  # statements whose duration has not come yet
    prepared: dict[str, str] = {}  # the session's prepared statements: name -> text
    with node.read() as conn:
        rows = session_store.events(conn, session_id)
    for row in rows:
        data = None
        if row.data is not None:
            plain = keyring.decrypt(row.data, sealed.context_for(SESSION_EVENT_DATA, row.id))
            text = plain.reveal()
            if row.kind == DEFLATED_CHUNK_KIND:  # authenticated: only record_chunks wrote it
                text = zlib.decompress(text)
            data = json.loads(text)
        row_ts = aware(row.ts)
        if row.kind not in (CHUNK_KIND, DEFLATED_CHUNK_KIND):
            out.append({"ts": row_ts, "kind": row.kind, "data": data})
            continue
        for offset, kind, event in data or ():
            ts = row_ts + offset * _MICROSECOND
            if kind == STATEMENTS_ENTRY:
                entry_ts = ts
                for each in event:
                    if STATEMENTS_DONE in each:
                        _statements_done(waiting, each[STATEMENTS_DONE])
                    elif STATEMENTS_AGO in each:
                        ts = _sent_at(entry_ts, each[STATEMENTS_AGO])
                    else:
                        _prepared(prepared, each)
                        out.append({"ts": ts, "kind": "query", "data": each})
                        waiting.append(each)
            else:
                out.append({"ts": ts, "kind": kind, "data": event})
                if kind == "query" and isinstance(event, dict):
                    _prepared(prepared, event)
                    waiting.append(event)
    return out


#: in a STATEMENTS_ENTRY, an object ``{"done": [n, microseconds]}``: the oldest ``n`` of the
#: session's statements without a duration ran that long (plugin_api.statements_done)
STATEMENTS_DONE = "done"


#: in a STATEMENTS_ENTRY, an object ``{"ago": microseconds}``: the statements after it (up to
#: the next one) were sent that long before the entry's time (a relay that hands statements
#: over late, as the native one does, stamps each client read so)
STATEMENTS_AGO = "ago"


def _sent_at(entry_ts: datetime, ago: Any) -> datetime:
    """The time of statements sent ``ago`` microseconds before their entry's time (the
    entry's own time where ``ago`` is not a form this code writes)."""
    if type(ago) is not int or ago < 0:
        return entry_ts
    return entry_ts - ago * _MICROSECOND


def _prepared(prepared: dict[str, str], statement: Any) -> None:
    """Keep a prepared statement's text as it is parsed (the unnamed statement's under ``""``,
    until a simple query drops it, as the server does); give a run of one (``execute``) the
    text it was prepared with."""
    if not isinstance(statement, dict):
        return
    kind = statement.get("kind")
    if kind == "simple":
        prepared.pop("", None)
        return
    name = statement.get("name", "" if kind == "extended" else None)
    if not isinstance(name, str):
        return
    if kind == "execute":
        if name in prepared:
            statement["text"] = prepared[name]
    elif isinstance(statement.get("text"), str):
        prepared[name] = statement["text"]


def _statements_done(waiting: deque[dict[str, Any]], done: Any) -> None:
    """Give the oldest statements still ``waiting`` the duration ``done`` reports (shown as
    ``duration_ms``)."""
    if not (isinstance(done, list) and len(done) == 2 and all(type(x) is int for x in done)):
        return  # not a form this code writes: no duration rather than a wrong one
    count, microseconds = done
    for _ in range(min(count, len(waiting))):
        waiting.popleft()["duration_ms"] = microseconds / 1000


def _view(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "grant_id": row.grant_id,
        "user": row.user_name,
        "target": row.target_name,
        "account": row.name,
        "protocol": row.protocol,
        # the registered SSH key it was opened with (None: a session token)
        "ssh_key": row.ssh_key_fingerprint,
        "source": row.source,
        "started_at": aware(row.started_at),
        "ended_at": aware(row.ended_at),
        "end_reason": row.end_reason,
    }


def list_sessions(node: Node, actor: Principal, live: bool = False) -> list[dict[str, Any]]:
    """Your own sessions; admins and auditors see everyone's."""
    mine = None if allowed(actor, Permission.SESSION_READ_ANY) else actor.user_id
    with node.read() as conn:
        return [_view(r) for r in session_store.session_rows(conn, mine, live)]


def show_session(node: Node, actor: Principal, session_id: int) -> dict[str, Any]:
    """One session with what it did (decrypted recording)."""
    with node.read() as conn:
        rows = [r for r in session_store.session_rows(conn, None) if r.id == session_id]
    if not rows:
        raise NotFound(f"session {session_id} does not exist", hint="see 'jitvault session list'")
    view = _view(rows[0])
    if view["user"] != actor.name:
        authorize(actor, Permission.SESSION_READ_ANY)
    view["events"] = session_events(node, session_id)
    return view


def asciicast_of(events: list[dict[str, Any]], channel: int | None = None) -> str:
    """The asciicast v2 file (header line, then one event per line) of a recorded terminal:
    ``channel``, or the session's first pty channel. Empty if the session recorded none."""
    headers = [e["data"] for e in events if e["kind"] == "asciicast_header" and e["data"]]
    if channel is None and headers:
        channel = headers[0]["channel"]
    header = next((h for h in headers if h["channel"] == channel), None)
    if header is None:
        return ""
    lines = [json.dumps({k: v for k, v in header.items() if k != "channel"})]
    for e in events:
        data = e["data"]
        if e["kind"] == "asciicast" and data and data.get("channel") == channel:
            lines.extend(json.dumps(event, ensure_ascii=False) for event in data["events"])
    return "\n".join(lines) + "\n"


def session_asciicast(
    node: Node, actor: Principal, session_id: int, channel: int | None = None
) -> str:
    """A session's recorded terminal as asciicast v2 (for ``jitvault session play``)."""
    view = show_session(node, actor, session_id)
    cast = asciicast_of(view["events"], channel)
    if not cast:
        raise NotFound(
            f"session {session_id} recorded no terminal"
            + (f" on channel {channel}" if channel is not None else ""),
            hint="only pty sessions (an interactive ssh shell) are recorded as a terminal;"
            " see 'jitvault session show'",
        )
    return cast


#: the end reason of a live session whose proxy node stopped saying it holds it
LOST_REASON = "lost: the proxy node holding it stopped (no heartbeat)"
#: lost sessions ended per worker pass at most
_LOST_BATCH = 100


def heartbeat(node: Node, session_ids: list[int]) -> None:
    """This node's proxies still hold these sessions (see :func:`end_lost_sessions`)."""
    if session_ids:
        with node.write() as tx:
            session_store.sessions_seen(tx.conn, session_ids, node.clock())


def end_lost_sessions(node: Node) -> int:
    """End the live sessions no node has said it holds for ``server.session_lost_seconds``:
    their proxy node crashed or was killed (a node stopping cleanly ends its own). Then they
    no longer count against ``max_connections``, nor show as live. Any node's worker may do
    it (ending is idempotent: one of them records the end). An ``--end-on-disconnect`` grant
    is not ended by this: its user did not disconnect. Returns how many were ended."""
    lost_after = timedelta(seconds=node.settings.server.session_lost_seconds)
    with node.read() as conn:
        lost = session_store.lost_sessions(conn, node.clock() - lost_after, _LOST_BATCH)
    return sum(close_session(node, sid, LOST_REASON, ends_grant=False) for sid in lost)


def ended_among(node: Node, session_ids: list[int]) -> dict[int, str]:
    with node.read() as conn:
        return session_store.ended_among(conn, session_ids)


#: the ids a client names in cancel requests: PostgreSQL's positive 32-bit process ids
CANCEL_ID_MAX = 2**31 - 1
#: draws of a free cancel id before giving up (a clash among live sessions is ~1 in 10^6)
_CANCEL_ID_DRAWS = 8


def add_cancel_key(node: Node, session_id: int, key: bytes, backend: Sensitive[bytes]) -> int:
    """Publish a live session's cancel key to every node: a cancel request naming the returned
    id and showing ``key`` reaches ``backend`` (the proxy's own description of the real
    backend, sealed at rest) until the session ends. The id is unique among sessions holding
    one; raises NotFound if the session has already ended."""
    sealed_key = Sensitive(
        json.dumps({"key": key.hex(), "backend": backend.reveal().hex()}).encode()
    )
    for _ in range(_CANCEL_ID_DRAWS):
        cancel_id = secrets.randbelow(CANCEL_ID_MAX) + 1
        try:
            with node.write() as tx:
                if session_store.cancel_id_taken(tx.conn, cancel_id):
                    continue
                if not session_store.cancel_id_set(tx.conn, session_id, cancel_id):
                    raise NotFound(f"session {session_id} has ended")
                sealed.seal_column(tx.conn, tx.keyring, SESSION_CANCEL_KEY, session_id, sealed_key)
            return cancel_id
        except IntegrityError:  # another node took the same id meanwhile
            continue
    raise Conflict("no free cancel id was found", hint="retry the login")


def cancel_backend(node: Node, cancel_id: int, key: bytes) -> Sensitive[bytes] | None:
    """Where a cancel request naming ``cancel_id`` with ``key`` goes: the backend its live
    session published, or None (no such live session, or the wrong key; not told apart)."""
    with node.read() as conn:
        session_id = session_store.cancel_id_session(conn, cancel_id)
        if session_id is None:
            return None
        opened = sealed.open_column(conn, node.vault.keyring, SESSION_CANCEL_KEY, session_id)
    if opened is None:
        return None
    stored = json.loads(opened.reveal())
    if not hmac.compare_digest(bytes.fromhex(stored["key"]), key):
        return None
    return Sensitive(bytes.fromhex(stored["backend"]))


def close_session(
    node: Node, session_id: int, reason: str = "client closed", ends_grant: bool = True
) -> bool:
    """Record that a session ended (idempotent); True if this call ended it.

    If its grant was made with ``--end-on-disconnect`` and this was its last live session, the
    grant ends too, in the same transaction (``ends_grant=False`` for a session that never got
    going, e.g. one whose credential could not be handed out).
    """
    at = node.clock()
    with node.write() as tx:
        grant_id = session_store.session_grant(tx.conn, session_id)
        grant = workflow.grant_get(tx.conn, grant_id) if grant_id is not None else None
        may_end = ends_grant and grant is not None and grant.end_on_disconnect
        if may_end:
            assert grant is not None
            # the request row before the session row: the order revoke takes them in
            workflow.request_lock(tx.conn, grant.request_id)
        ended = session_store.session_end(tx.conn, session_id, at, reason)
        if ended:
            session_ends.audit_ended(tx, [session_id], reason)
            if may_end:
                assert grant is not None
                grants.end_on_last_disconnect(node, tx, grant.id, session_id)
    return ended


__all__ = [
    "CANCEL_ID_MAX",
    "CHUNK_KIND",
    "DEFLATED_CHUNK_KIND",
    "LOST_REASON",
    "STATEMENTS_ENTRY",
    "Chunk",
    "ProxyMaterial",
    "RecordedEvent",
    "SessionTicket",
    "TooManySessions",
    "add_cancel_key",
    "asciicast_of",
    "cancel_backend",
    "check_event_kind",
    "check_session_key",
    "chunk_entry",
    "close_session",
    "connect_info",
    "end_lost_sessions",
    "ended_among",
    "heartbeat",
    "issue_session_token",
    "list_sessions",
    "open_session",
    "open_session_verified",
    "open_session_with_key",
    "proxy_material",
    "record_chunks",
    "record_event",
    "record_events",
    "session_asciicast",
    "session_events",
    "show_session",
    "statements_entry",
    "token_verifier",
]

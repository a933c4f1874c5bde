"""SCRAM-SHA-256 mechanics (plugins/jitvault_postgres/scram.py), sans-IO.

The RFC 7677 section 3 exchange pins both sides to the standard; the last tests compare what
we compute with what a real PostgreSQL stores (local server on 127.0.0.1:5432, trust auth).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from jitvault.domain import Sensitive
from jitvault.errors import AuthError, ValidationError
from jitvault.plugin_api.scram import (
    MAX_ITERATIONS,
    ClientKeyCache,
    ScramAuthFailed,
    ScramClient,
    ScramMalformed,
    ScramServer,
    ScramVerifier,
    keys_from_salted,
    md5_password,
    parse_verifier,
    salted_password,
    scram_verifier,
)
from tests.support import PG_HOST_DSN

# RFC 7677, section 3
RFC_PASSWORD = Sensitive("pencil")
RFC_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def rfc_client() -> ScramClient:
    return ScramClient(RFC_PASSWORD, username="user", nonce=RFC_CLIENT_NONCE)


def rfc_server() -> ScramServer:
    return ScramServer(scram_verifier(RFC_PASSWORD, RFC_SALT, 4096), nonce=RFC_SERVER_NONCE)


def verifier_for(password: str, iterations: int = 4096) -> Sensitive[str]:
    return scram_verifier(Sensitive(password), secrets.token_bytes(16), iterations)


# -- RFC 7677 vector -----------------------------------------------------------------------------


def test_client_reproduces_the_rfc_7677_exchange() -> None:
    client = rfc_client()
    assert client.first_message() == RFC_CLIENT_FIRST
    assert client.handle_server_first(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    client.verify_server_final(RFC_SERVER_FINAL)


def test_server_reproduces_the_rfc_7677_exchange() -> None:
    server = rfc_server()
    assert server.handle_client_first(RFC_CLIENT_FIRST) == RFC_SERVER_FIRST
    assert server.handle_client_final(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL


# -- client and server together ----------------------------------------------------------------


def test_client_and_server_agree_on_the_right_password() -> None:
    password = secrets.token_urlsafe(24)
    server = ScramServer(verifier_for(password))
    client = ScramClient(Sensitive(password))
    first = client.first_message()
    assert first.startswith(b"n,,n=,r=")  # what libpq sends: PostgreSQL ignores the SCRAM name
    final = client.handle_server_first(server.handle_client_first(first))
    client.verify_server_final(server.handle_client_final(final))


def test_server_accepts_a_parsed_verifier_and_a_plain_string() -> None:
    verifier = verifier_for("pw")
    for form in (verifier, verifier.reveal(), parse_verifier(verifier)):
        server, client = ScramServer(form), ScramClient(Sensitive("pw"))
        final = client.handle_server_first(server.handle_client_first(client.first_message()))
        client.verify_server_final(server.handle_client_final(final))


def test_each_exchange_uses_a_fresh_random_nonce() -> None:
    nonces = {ScramClient(Sensitive("pw")).first_message() for _ in range(20)}
    assert len(nonces) == 20
    verifier = verifier_for("pw")
    server_firsts = {ScramServer(verifier).handle_client_first(b"n,,n=,r=abc") for _ in range(20)}
    assert len(server_firsts) == 20


def test_wrong_password_is_refused_by_the_server() -> None:
    server = ScramServer(verifier_for("right"))
    client = ScramClient(Sensitive("wrong"))
    final = client.handle_server_first(server.handle_client_first(client.first_message()))
    with pytest.raises(ScramAuthFailed, match="wrong password"):
        server.handle_client_final(final)


def test_tampered_server_signature_is_refused_by_the_client() -> None:
    client = rfc_client()
    client.first_message()
    client.handle_server_first(RFC_SERVER_FIRST)
    forged = base64.b64encode(bytes(32)).decode()
    with pytest.raises(ScramAuthFailed, match="server signature"):
        client.verify_server_final(f"v={forged}".encode())


def test_server_that_does_not_know_the_verifier_is_refused_by_the_client() -> None:
    impostor = ScramServer(verifier_for("something else"))
    client = ScramClient(Sensitive("pw"))
    final = client.handle_server_first(impostor.handle_client_first(client.first_message()))
    # the impostor cannot verify the proof, so it can only make up a signature
    with pytest.raises(ScramAuthFailed):
        impostor.handle_client_final(final)
    with pytest.raises(ScramAuthFailed):
        client.verify_server_final(b"v=" + base64.b64encode(secrets.token_bytes(32)))


def test_server_error_in_server_final_is_refused_by_the_client() -> None:
    client = rfc_client()
    client.first_message()
    client.handle_server_first(RFC_SERVER_FIRST)
    with pytest.raises(ScramAuthFailed, match="invalid-proof"):
        client.verify_server_final(b"e=invalid-proof")


@pytest.mark.parametrize(
    "server_first",
    [
        b"r=someoneelsesnonce123,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  # not our nonce
        b"r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  # no server part
    ],
    ids=["foreign-nonce", "no-server-nonce"],
)
def test_client_refuses_a_server_nonce_that_does_not_extend_its_own(server_first: bytes) -> None:
    client = rfc_client()
    client.first_message()
    with pytest.raises(ScramAuthFailed, match="nonce"):
        client.handle_server_first(server_first)


def test_server_refuses_an_altered_nonce_in_client_final() -> None:
    server = rfc_server()
    server.handle_client_first(RFC_CLIENT_FIRST)
    altered = RFC_CLIENT_FINAL.replace(b"hNlF$k0", b"hNlF$k1")
    with pytest.raises(ScramAuthFailed, match="nonce"):
        server.handle_client_final(altered)


def test_server_refuses_a_replayed_client_final_from_an_earlier_exchange() -> None:
    # the RFC client-final is valid for the RFC server nonce only; a new exchange has another
    server = ScramServer(scram_verifier(RFC_PASSWORD, RFC_SALT, 4096))
    server.handle_client_first(RFC_CLIENT_FIRST)
    with pytest.raises(ScramAuthFailed, match="nonce"):
        server.handle_client_final(RFC_CLIENT_FINAL)


def test_server_refuses_a_proof_computed_over_a_different_auth_message() -> None:
    server = rfc_server()
    server.handle_client_first(b"n,,n=someone,r=rOprNGfwEbeRWgbNEkqO")  # not what was signed
    with pytest.raises(ScramAuthFailed, match="wrong password"):
        server.handle_client_final(RFC_CLIENT_FINAL)


# -- GS2 header and channel binding ---------------------------------------------------------------


def test_server_accepts_y_flag_and_requires_it_echoed_in_channel_binding() -> None:
    server = ScramServer(verifier_for("pw"), nonce="srv")
    server.handle_client_first(b"y,,n=,r=cli")
    ok = ScramServer(verifier_for("pw"), nonce="srv")
    ok.handle_client_first(b"y,,n=,r=cli")
    # c=biws claims "n,,": a downgrade of the flag the client sent first
    with pytest.raises(ScramAuthFailed, match="channel binding"):
        server.handle_client_final(b"c=biws,r=clisrv,p=" + base64.b64encode(bytes(32)))
    with pytest.raises(ScramAuthFailed, match="wrong password"):  # c=eSws passes the check
        ok.handle_client_final(b"c=eSws,r=clisrv,p=" + base64.b64encode(bytes(32)))


def test_y_flag_exchange_completes_with_the_right_password() -> None:
    password = Sensitive("pw")
    salt = secrets.token_bytes(16)
    server = ScramServer(scram_verifier(password, salt, 4096), nonce="srv")
    server_first = server.handle_client_first(b"y,,n=,r=cli")
    # a client that supports channel binding but was not offered it: gs2 "y,," throughout
    client = ScramClient(password, nonce="cli")
    client.first_message()
    final_n = client.handle_server_first(server_first)
    assert final_n.startswith(b"c=biws,")
    # recompute the proof as a "y" client would: the AuthMessage carries c=eSws
    salted = salted_password(password, salt, 4096)
    stored_key, _ = keys_from_salted(salted)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    without_proof = b"c=eSws,r=clisrv"
    auth = b"n=,r=cli," + server_first + b"," + without_proof
    signature = hmac.new(stored_key, auth, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    server.handle_client_final(without_proof + b",p=" + base64.b64encode(proof))


@pytest.mark.parametrize(
    ("client_first", "reason"),
    [
        (b"p=tls-server-end-point,,n=,r=abc", "channel binding is not offered"),
        (b"n,a=admin,n=,r=abc", "authorization identities"),
        (b"x,,n=,r=abc", "channel binding flag"),
        (b"n,,n=,r=abc,m=ext", "mandatory extension"),
        (b"n,,r=abc", "attributes"),
        (b"n,,n=,r=", "nonce"),
        (b"n,,n=,r=a b", "nonce"),
        (b"n,,", "malformed attribute"),
        (b"nope", "GS2 header"),
        (b"n,,n=\xff,r=abc", "UTF-8"),
    ],
)
def test_server_refuses_malformed_or_unsupported_client_first(
    client_first: bytes, reason: str
) -> None:
    with pytest.raises(ScramMalformed, match=reason):
        ScramServer(verifier_for("pw")).handle_client_first(client_first)


@pytest.mark.parametrize(
    "client_final",
    [
        b"c=biws,r=abcsrv",  # no proof
        b"c=biws,p=AAAA,r=abcsrv",  # out of order
        b"c=biws,r=abcsrv,p=!!!!",  # proof not base64
        b"c=biws,r=abcsrv,x=1,p=AAAA",  # unknown extension
    ],
)
def test_server_refuses_malformed_client_final(client_final: bytes) -> None:
    server = ScramServer(verifier_for("pw"), nonce="srv")
    server.handle_client_first(b"n,,n=,r=abc")
    with pytest.raises(ScramMalformed):
        server.handle_client_final(client_final)


def test_server_refuses_a_proof_of_the_wrong_length() -> None:
    server = ScramServer(verifier_for("pw"), nonce="srv")
    server.handle_client_first(b"n,,n=,r=abc")
    with pytest.raises(ScramAuthFailed, match="length"):
        server.handle_client_final(b"c=biws,r=abcsrv,p=" + base64.b64encode(bytes(31)))


@pytest.mark.parametrize(
    "server_first",
    [
        b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",
        b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i="
        + str(MAX_ITERATIONS + 1).encode(),
        b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1",
        b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999999999999999",
        b"r=rOprNGfwEbeRWgbNEkqOxyz,s=,i=4096",
        b"r=rOprNGfwEbeRWgbNEkqOxyz,s=***,i=4096",
        b"m=must,r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        b"r=rOprNGfwEbeRWgbNEkqOxyz,i=4096",
    ],
    ids=["i-zero", "i-too-big", "i-negative", "i-huge", "empty-salt", "bad-salt", "m-ext", "no-s"],
)
def test_client_refuses_malformed_server_first_before_any_pbkdf2(server_first: bytes) -> None:
    client = rfc_client()
    client.first_message()
    with pytest.raises(ScramMalformed):
        client.handle_server_first(server_first)


def test_calls_out_of_order_are_refused_on_both_sides() -> None:
    with pytest.raises(ScramMalformed):
        rfc_client().handle_server_first(RFC_SERVER_FIRST)
    with pytest.raises(ScramMalformed):
        rfc_client().verify_server_final(RFC_SERVER_FINAL)
    client = rfc_client()
    client.first_message()
    with pytest.raises(ScramMalformed):
        client.first_message()
    with pytest.raises(ScramMalformed):
        rfc_server().handle_client_final(RFC_CLIENT_FINAL)
    server = rfc_server()
    server.handle_client_first(RFC_CLIENT_FIRST)
    with pytest.raises(ScramMalformed):
        server.handle_client_first(RFC_CLIENT_FIRST)


def test_a_failed_server_exchange_cannot_be_retried_on_the_same_object() -> None:
    server = rfc_server()
    server.handle_client_first(RFC_CLIENT_FIRST)
    with pytest.raises(ScramAuthFailed):
        server.handle_client_final(RFC_CLIENT_FINAL.replace(b"p=dH", b"p=dG"))
    with pytest.raises(ScramMalformed):
        server.handle_client_final(RFC_CLIENT_FINAL)


def test_errors_fit_the_project_exception_tree_and_reprs_hide_keys() -> None:
    assert issubclass(ScramAuthFailed, AuthError)
    assert issubclass(ScramMalformed, ValidationError)
    parsed = parse_verifier(scram_verifier(RFC_PASSWORD, RFC_SALT, 4096))
    stored_b64 = base64.b64encode(parsed.stored_key).decode()
    assert stored_b64 not in repr(parsed)
    assert parsed.stored_key.hex() not in repr(parsed)
    assert "pencil" not in repr(rfc_client())


# -- verifiers -----------------------------------------------------------------------------------


def test_parse_verifier_reads_back_what_scram_verifier_wrote() -> None:
    parsed = parse_verifier(scram_verifier(RFC_PASSWORD, RFC_SALT, 4096))
    assert parsed.iterations == 4096
    assert parsed.salt == RFC_SALT
    assert isinstance(parsed, ScramVerifier)
    assert len(parsed.stored_key) == len(parsed.server_key) == 32


@pytest.mark.parametrize(
    "text",
    [
        "md5a3556571e93b0d20722ba62be61e8c2d",
        "SCRAM-SHA-1$4096:c2FsdA==$AAAA:AAAA",
        "SCRAM-SHA-256$4096:c2FsdA==$AAAA",
        "SCRAM-SHA-256$x:c2FsdA==$AAAA:AAAA",
        "SCRAM-SHA-256$0:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096:$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA",  # keys too short
        "SCRAM-SHA-256$4096:c2F*dA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$４０９６:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",  # noqa: RUF001
    ],
)
def test_parse_verifier_refuses_what_is_not_a_scram_sha_256_verifier(text: str) -> None:
    with pytest.raises(ScramMalformed):
        parse_verifier(text)


def test_md5_password_follows_the_documented_formula() -> None:
    # concat('md5', md5(concat(md5(concat(password, username)), random-salt)))
    inner = hashlib.md5(b"secretalice").hexdigest().encode()  # noqa: S324
    expected = b"md5" + hashlib.md5(inner + b"\x01\x02\x03\x04").hexdigest().encode()  # noqa: S324
    assert md5_password("alice", Sensitive("secret"), b"\x01\x02\x03\x04") == expected
    assert len(expected) == 35
    with pytest.raises(ScramMalformed):
        md5_password("alice", Sensitive("secret"), b"\x01")


# -- against a real PostgreSQL (local server, trust auth on loopback) ------------------------------


@pytest.fixture
def pg_superuser() -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    try:
        conn = psycopg.connect(f"{PG_HOST_DSN}/postgres", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"no local PostgreSQL at {PG_HOST_DSN}: {exc}")
    with conn:
        yield conn


def _stored_password(
    conn: psycopg.Connection[tuple[object, ...]], encryption: str, password: str
) -> tuple[str, str]:
    role = f"jvtest_scram_{secrets.token_hex(6)}"
    try:
        conn.execute(sql.SQL("SET password_encryption = {}").format(sql.Literal(encryption)))
        conn.execute(
            sql.SQL("CREATE ROLE {} PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
        row = conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)
        ).fetchone()
    finally:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        conn.execute("RESET password_encryption")
    assert row is not None
    assert isinstance(row[0], str)
    return role, row[0]


def test_scram_verifier_equals_what_postgresql_stores_for_the_same_salt_and_iterations(
    pg_superuser: psycopg.Connection[tuple[object, ...]],
) -> None:
    password = secrets.token_urlsafe(24)
    _, stored = _stored_password(pg_superuser, "scram-sha-256", password)
    parsed = parse_verifier(stored)
    ours = scram_verifier(Sensitive(password), parsed.salt, parsed.iterations)
    assert ours.reveal() == stored
    # and a server seeded with PostgreSQL's own verifier accepts our client
    server, client = ScramServer(stored), ScramClient(Sensitive(password))
    final = client.handle_server_first(server.handle_client_first(client.first_message()))
    client.verify_server_final(server.handle_client_final(final))


def test_md5_password_answers_from_what_postgresql_stores_as_md5(
    pg_superuser: psycopg.Connection[tuple[object, ...]],
) -> None:
    password = secrets.token_urlsafe(24)
    role, stored = _stored_password(pg_superuser, "md5", password)
    salt = secrets.token_bytes(4)
    # the server checks md5(stored-hash-hex + salt); our answer must match it
    expected = b"md5" + hashlib.md5(stored[3:].encode() + salt).hexdigest().encode()  # noqa: S324
    assert md5_password(role, Sensitive(password), salt) == expected


# -- the client's key cache ----------------------------------------------------------------------


def _login(client: ScramClient, server: ScramServer, cached_only: bool = False) -> bytes | None:
    """One exchange; the client's final message (None: ``cached_only`` and not cached)."""
    server_first = server.handle_client_first(client.first_message())
    final = (
        client.handle_server_first_cached(server_first)
        if cached_only
        else client.handle_server_first(server_first)
    )
    if final is not None:
        client.verify_server_final(server.handle_client_final(final))
    return final


def test_the_cache_derives_a_password_s_keys_once_per_salt_and_logins_still_prove_it() -> None:
    cache = ClientKeyCache()
    verifier = verifier_for("pw")
    for _ in range(3):
        _login(ScramClient(Sensitive("pw"), cache=cache), ScramServer(verifier))
    assert cache.derivations == 1
    # a new salt (the server's password set again) and a new password each derive anew
    _login(ScramClient(Sensitive("pw"), cache=cache), ScramServer(verifier_for("pw")))
    _login(ScramClient(Sensitive("new"), cache=cache), ScramServer(verifier_for("new")))
    assert cache.derivations == 3


def test_a_cached_key_never_logs_in_with_another_password_under_the_same_salt() -> None:
    cache = ClientKeyCache()
    salt = secrets.token_bytes(16)
    right = scram_verifier(Sensitive("right"), salt, 4096)
    _login(ScramClient(Sensitive("right"), cache=cache), ScramServer(right))
    # the server's salt and count are the same: only the password tells the entries apart
    client = ScramClient(Sensitive("wrong"), cache=cache)
    server = ScramServer(right)
    final = client.handle_server_first(server.handle_client_first(client.first_message()))
    with pytest.raises(ScramAuthFailed, match="wrong password"):
        server.handle_client_final(final)
    assert cache.derivations == 2


def test_cached_only_answers_without_pbkdf2_and_leaves_a_miss_to_the_full_call() -> None:
    cache = ClientKeyCache()
    verifier = verifier_for("pw")
    client, server = ScramClient(Sensitive("pw"), cache=cache), ScramServer(verifier)
    server_first = server.handle_client_first(client.first_message())
    assert client.handle_server_first_cached(server_first) is None
    assert cache.derivations == 0
    # the miss left the exchange where it was: the full call completes it
    final = client.handle_server_first(server_first)
    client.verify_server_final(server.handle_client_final(final))
    assert _login(ScramClient(Sensitive("pw"), cache=cache), ScramServer(verifier), True)
    assert cache.derivations == 1
    # without a cache, cached_only always misses
    assert _login(ScramClient(Sensitive("pw"), cache=None), ScramServer(verifier), True) is None


def test_the_cache_keeps_its_bound_and_forgets_the_least_recently_used_first() -> None:
    cache = ClientKeyCache(bound=2)
    verifiers = {name: verifier_for(name) for name in ("a", "b", "c")}

    def login(name: str, cached_only: bool = False) -> bytes | None:
        client = ScramClient(Sensitive(name), cache=cache)
        return _login(client, ScramServer(verifiers[name]), cached_only)

    for name in ("a", "b", "a", "c"):  # "b" is the least recently used when "c" comes
        login(name)
    assert cache.derivations == 3
    assert login("a", cached_only=True) is not None
    assert login("c", cached_only=True) is not None
    assert login("b", cached_only=True) is None


def test_the_cache_holds_no_password_nor_a_plain_digest_of_one() -> None:
    cache = ClientKeyCache()
    password = "canary-" + secrets.token_urlsafe(12)
    _login(ScramClient(Sensitive(password), cache=cache), ScramServer(verifier_for(password)))
    (found,) = cache._entries
    assert password.encode() not in found
    assert found != hashlib.sha256(password.encode()).digest()
    # another process (another key) files the same login under another name
    other = ClientKeyCache()
    assert other._key != cache._key

"""AES-256-GCM envelopes, the keyring, ``Sensitive`` and bearer tokens, with the real primitives.

The envelope rules come from ARCHITECTURE.md: ciphertexts carry a version prefix and are bound by
AAD to their table, row, column and key term, so a ciphertext moved anywhere else (or relabelled
with another term) fails to decrypt with :class:`CryptoError`, never with a stray exception.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
import logging
import pickle
import secrets

import pytest
from sqlalchemy import select, update

from jitvault.crypto import (
    API_TOKEN_PREFIX,
    LINK_TOKEN_PREFIX,
    PURPOSE_DATA,
    SESSION_TOKEN_PREFIX,
    CipherContext,
    Keyring,
    KeyringEntry,
    hash_secret,
    issue_token,
    new_key,
    parse_term,
    parse_token,
    secret_matches,
)
from jitvault.crypto.envelope import NONCE_BYTES, VERSION, cipher, open_, seal
from jitvault.domain import AccountMode, Sensitive
from jitvault.errors import CryptoError
from jitvault.services import Node, targets, users
from jitvault.storage import repositories as repo
from jitvault.storage import sealed
from jitvault.storage import tables as t
from jitvault.storage.tables import ACCOUNT_SECRET, TARGET_ADMIN_SECRET
from tests.conftest import Booted

SECRET = Sensitive(b"correct horse battery staple")
CTX = CipherContext("accounts", 7, "secret")


def keyring_with(*terms: tuple[int, Sensitive[bytes]]) -> Keyring:
    return Keyring([KeyringEntry(term, PURPOSE_DATA, key) for term, key in terms])


def body_bytes(envelope: str) -> bytes:
    body = envelope.split(":", 2)[2]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def envelope_from(term: int | str, raw: bytes) -> str:
    return f"{VERSION}:{term}:" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


# --- round trip -----------------------------------------------------------------------------------


def test_envelope_round_trip_returns_the_plaintext_as_sensitive() -> None:
    kr = keyring_with((1, new_key()))
    envelope = kr.encrypt(SECRET, CTX)
    assert envelope.startswith(f"{VERSION}:1:")
    assert SECRET.reveal() not in envelope.encode()
    opened = kr.decrypt(envelope, CTX)
    assert isinstance(opened, Sensitive)
    assert opened.reveal() == SECRET.reveal()


@pytest.mark.parametrize("plaintext", [b"", b"x", bytes(range(256)) * 64])
def test_envelope_round_trip_for_empty_short_and_long_values(plaintext: bytes) -> None:
    kr = keyring_with((1, new_key()))
    assert kr.decrypt(kr.encrypt(Sensitive(plaintext), CTX), CTX).reveal() == plaintext


def test_two_encryptions_of_one_value_differ() -> None:
    kr = keyring_with((1, new_key()))
    assert kr.encrypt(SECRET, CTX) != kr.encrypt(SECRET, CTX)


def test_newest_term_encrypts_and_older_terms_still_decrypt() -> None:
    kr = keyring_with((1, new_key()))
    old = kr.encrypt(SECRET, CTX)
    kr.add(KeyringEntry(2, PURPOSE_DATA, new_key()))
    new = kr.encrypt(SECRET, CTX)
    assert parse_term(old) == 1
    assert parse_term(new) == 2
    assert kr.decrypt(old, CTX).reveal() == SECRET.reveal()
    assert kr.decrypt(new, CTX).reveal() == SECRET.reveal()


def test_forgotten_term_no_longer_decrypts() -> None:
    kr = keyring_with((1, new_key()))
    old = kr.encrypt(SECRET, CTX)
    kr.add(KeyringEntry(2, PURPOSE_DATA, new_key()))
    kr.forget(1)
    with pytest.raises(CryptoError, match="no key for term 1"):
        kr.decrypt(old, CTX)


# --- binding to row, column, table and term (AAD) ------------------------------------------------


@pytest.mark.parametrize(
    "elsewhere",
    [
        pytest.param(CipherContext("accounts", 8, "secret"), id="another-row"),
        pytest.param(CipherContext("accounts", "7 ", "secret"), id="row-id-text-lookalike"),
        pytest.param(CipherContext("accounts", 7, "admin_secret"), id="another-column"),
        pytest.param(CipherContext("targets", 7, "secret"), id="another-table"),
        pytest.param(CipherContext("targets", 7, "admin_secret"), id="all-three"),
    ],
)
def test_ciphertext_opened_in_another_place_fails(elsewhere: CipherContext) -> None:
    kr = keyring_with((1, new_key()))
    envelope = kr.encrypt(SECRET, CTX)
    with pytest.raises(CryptoError, match="failed authentication"):
        kr.decrypt(envelope, elsewhere)
    # the same envelope still opens where it belongs: only the place changed
    assert kr.decrypt(envelope, CTX).reveal() == SECRET.reveal()


def test_relabelled_term_fails_even_when_both_terms_share_the_key() -> None:
    # Same key material under terms 1 and 2: only the AAD's term binding can refuse the relabel.
    key = new_key()
    kr = keyring_with((1, key), (2, key))
    envelope = seal(cipher(key), 1, SECRET.reveal(), CTX.aad(1))
    assert kr.decrypt(envelope, CTX).reveal() == SECRET.reveal()
    relabelled = envelope.replace(f"{VERSION}:1:", f"{VERSION}:2:", 1)
    assert parse_term(relabelled) == 2
    with pytest.raises(CryptoError, match="failed authentication"):
        kr.decrypt(relabelled, CTX)


def test_relabelled_to_an_unknown_term_fails() -> None:
    kr = keyring_with((1, new_key()))
    relabelled = kr.encrypt(SECRET, CTX).replace(f"{VERSION}:1:", f"{VERSION}:9:", 1)
    with pytest.raises(CryptoError, match="no key for term 9"):
        kr.decrypt(relabelled, CTX)


@pytest.mark.parametrize("spelling", ["+1", "01", " 1", "1 ", "\u0661", "1_0", "-1", "0x1"])
def test_term_spelled_another_way_is_refused(spelling: str) -> None:
    # one envelope, one text: "+1" or an Arabic-Indic digit one must not pass for term 1
    kr = keyring_with((1, new_key()))
    respelled = kr.encrypt(SECRET, CTX).replace(f"{VERSION}:1:", f"{VERSION}:{spelling}:", 1)
    with pytest.raises(CryptoError, match="unknown format"):
        parse_term(respelled)
    with pytest.raises(CryptoError):
        kr.decrypt(respelled, CTX)


def test_wrong_key_for_the_same_term_fails() -> None:
    envelope = keyring_with((1, new_key())).encrypt(SECRET, CTX)
    with pytest.raises(CryptoError, match="failed authentication"):
        keyring_with((1, new_key())).decrypt(envelope, CTX)


def test_wrong_key_fails_at_the_primitive_level() -> None:
    envelope = seal(cipher(new_key()), 1, SECRET.reveal(), CTX.aad(1))
    with pytest.raises(CryptoError):
        open_(cipher(new_key()), envelope, CTX.aad(1))


def test_encrypt_many_seals_each_value_bound_to_its_own_row_with_its_own_nonce() -> None:
    kr = keyring_with((1, new_key()))
    places = [CipherContext("session_events", i, "data") for i in range(1, 6)]
    values = [Sensitive(f"event {i}".encode()) for i in range(1, 6)]
    term, envelopes = kr.encrypt_many(list(zip(places, values, strict=True)))
    assert term == 1
    assert len({e.split(":", 2)[2][:16] for e in envelopes}) == 5  # 5 distinct nonces
    for place, value, envelope in zip(places, values, envelopes, strict=True):
        assert kr.decrypt(envelope, place).reveal() == value.reveal()
    with pytest.raises(CryptoError, match="failed authentication"):
        kr.decrypt(envelopes[0], places[1])  # sealed for row 1, not row 2


def test_a_forgotten_term_no_longer_decrypts_with_its_cached_cipher() -> None:
    kr = keyring_with((1, new_key()), (2, new_key()))
    old = kr.encrypt_many([(CTX, SECRET)])[1][0]
    kr.add(KeyringEntry(3, PURPOSE_DATA, new_key()))
    kr.forget(2)
    kr.forget(1)
    with pytest.raises(CryptoError, match="no key for term 2"):
        kr.decrypt(old, CTX)


# --- malformed envelopes fail cleanly ------------------------------------------------------------


def _garbled(envelope: str) -> dict[str, str]:
    prefix, term, body = envelope.split(":", 2)
    raw = body_bytes(envelope)
    flipped_ct = bytearray(raw)
    flipped_ct[NONCE_BYTES] ^= 0x01
    flipped_tag = bytearray(raw)
    flipped_tag[-1] ^= 0x80
    flipped_nonce = bytearray(raw)
    flipped_nonce[0] ^= 0x01
    return {
        "empty": "",
        "version-only": VERSION,
        "no-body": f"{VERSION}:1",
        "empty-body": f"{VERSION}:1:",
        "plaintext-stored": "hunter2",
        "other-version": f"jv2:{term}:{body}",
        "no-version": f"{term}:{body}",
        "term-not-a-number": f"{VERSION}:one:{body}",
        "term-missing": f"{VERSION}::{body}",
        "body-one-char-short": f"{prefix}:{term}:{body[:-1]}",
        "body-half": f"{prefix}:{term}:{body[: len(body) // 2]}",
        "body-shorter-than-nonce-and-tag": envelope_from(term, raw[: NONCE_BYTES + 15]),
        "nonce-only": envelope_from(term, raw[:NONCE_BYTES]),
        "tag-dropped": envelope_from(term, raw[:-16]),
        "byte-appended": envelope_from(term, raw + b"\x00"),
        "ciphertext-bit-flipped": envelope_from(term, bytes(flipped_ct)),
        "tag-bit-flipped": envelope_from(term, bytes(flipped_tag)),
        "nonce-bit-flipped": envelope_from(term, bytes(flipped_nonce)),
        "non-ascii-body": f"{prefix}:{term}:{body[:-2]}éé",
        "standard-base64-padding-garbage": f"{prefix}:{term}:{body}====x",
    }


GARBLE_CASES = sorted(_garbled(f"{VERSION}:1:" + "A" * 60))


@pytest.mark.parametrize("case", GARBLE_CASES)
def test_truncated_or_garbled_envelope_raises_crypto_error(case: str) -> None:
    kr = keyring_with((1, new_key()))
    bad = _garbled(kr.encrypt(SECRET, CTX))[case]
    with pytest.raises(CryptoError) as info:
        kr.decrypt(bad, CTX)
    # the error names the problem, never the secret or the key
    assert SECRET.reveal().decode() not in str(info.value)


# --- nonces ---------------------------------------------------------------------------------------


def test_one_hundred_thousand_encryptions_never_repeat_a_nonce() -> None:
    n = 100_000
    kr = keyring_with((1, new_key()))
    value = Sensitive(b"v")
    nonces = set()
    for _ in range(n):
        raw = body_bytes(kr.encrypt(value, CTX))
        assert len(raw) == NONCE_BYTES + 1 + 16  # nonce || 1-byte ciphertext || tag
        nonces.add(raw[:NONCE_BYTES])
    assert len(nonces) == n


# --- Sensitive ------------------------------------------------------------------------------------

VALUES = [
    pytest.param("s3cr3t-password-value", id="str"),
    pytest.param(b"s3cr3t-password-value", id="bytes"),
    pytest.param(123456789987654321, id="int"),
]


def _shown(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.mark.parametrize("value", VALUES)
def test_sensitive_never_shows_its_value_in_text(value: object) -> None:
    s = Sensitive(value)
    secret = _shown(value)
    renderings = [
        repr(s),
        str(s),
        format(s),
        format(s, ">40"),
        format(s, "s"),
        f"{s}",
        f"{s!r}",
        f"{s!s}",
        f"{s:^30}",
        "%s" % (s,),  # noqa: UP031 - the old formatting path must redact too
        "%r" % (s,),  # noqa: UP031
        "{}".format(s),  # noqa: UP032
        repr([s, {"k": s}]),
        str((s,)),
        repr(Exception(s)),
    ]
    for text in renderings:
        assert secret not in text
        assert "redacted" in text
    assert not hasattr(s, "__dict__")


def test_sensitive_never_shows_its_value_in_log_records() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    log = logging.getLogger("jitvault.tests.sensitive")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("credential %s / %r", Sensitive("pa55word"), Sensitive("pa55word"))
        log.warning(f"credential {Sensitive('pa55word')}")
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    assert "pa55word" not in text
    assert text.count("redacted") == 3


@pytest.mark.parametrize("value", VALUES)
def test_sensitive_cannot_be_pickled_or_copied_out(value: object) -> None:
    s = Sensitive(value)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(s, protocol=protocol)
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps({"nested": [s]}, protocol=protocol)
    with pytest.raises(TypeError):
        copy.deepcopy(s)


def test_sensitive_cannot_be_json_encoded() -> None:
    with pytest.raises(TypeError):
        json.dumps({"password": Sensitive("pa55word")})


def test_sensitive_reveal_and_equality_compare_values() -> None:
    assert Sensitive("a").reveal() == "a"
    assert Sensitive("a") == Sensitive("a")
    assert Sensitive("a") != Sensitive("b")
    assert Sensitive(b"a") == Sensitive(b"a")
    assert Sensitive(b"a") != Sensitive(b"b")
    assert Sensitive("abc").map(str.upper).reveal() == "ABC"


# --- tokens ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", [API_TOKEN_PREFIX, SESSION_TOKEN_PREFIX, LINK_TOKEN_PREFIX])
def test_issued_token_parses_back_and_its_hash_is_of_the_secret(prefix: str) -> None:
    issued = issue_token(prefix)
    parsed = parse_token(issued.token)
    assert parsed is not None
    got_prefix, token_id, secret = parsed
    assert got_prefix == prefix
    assert token_id == issued.token_id
    assert issued.token.reveal() == f"{prefix}_{token_id}_{secret.reveal()}"
    assert issued.secret_hash == hashlib.sha256(secret.reveal().encode()).hexdigest()
    assert issued.secret_hash == hash_secret(secret.reveal())
    assert secret.reveal() not in issued.secret_hash
    assert secret_matches(secret, issued.secret_hash)
    last = "B" if secret.reveal().endswith("A") else "A"
    assert not secret_matches(Sensitive(secret.reveal()[:-1] + last), issued.secret_hash)
    assert "redacted" in repr(issued)
    assert secret.reveal() not in repr(issued)


def test_token_secrets_carry_at_least_128_random_bits_and_never_repeat() -> None:
    seen_secrets, seen_ids = set(), set()
    for _ in range(2000):
        parsed = parse_token(issue_token().token)
        assert parsed is not None
        _, token_id, secret = parsed
        raw = base64.urlsafe_b64decode(secret.reveal() + "=" * (-len(secret.reveal()) % 4))
        assert len(raw) * 8 >= 128
        seen_secrets.add(raw)
        seen_ids.add(token_id)
    assert len(seen_secrets) == 2000
    assert len(seen_ids) == 2000


@pytest.mark.parametrize(
    "token",
    [
        "",
        "jvt",
        "jvt_0123456789abcdef",
        "jvt_0123456789abcdef_" + "A" * 42,  # one character short
        "jvt_0123456789abcdef_" + "A" * 44,  # one character long
        "jvt_0123456789ABCDEF_" + "A" * 43,  # id is lower-case hex
        "jvt_0123456789abcde_" + "A" * 43,
        "jvt_0123456789abcdef_" + "A" * 42 + "=",
        "JVT_0123456789abcdef_" + "A" * 43,
        "jvt_0123456789abcdef_" + "A" * 43 + "\n",
        " jvt_0123456789abcdef_" + "A" * 43,
        "Bearer jvt_0123456789abcdef_" + "A" * 43,
    ],
)
def test_malformed_tokens_do_not_parse(token: str) -> None:
    assert parse_token(Sensitive(token)) is None


def test_only_the_token_hash_is_stored(booted: Booted) -> None:
    node = booted.node
    with node.read() as conn:
        admin = repo.user_get(conn, "admin")
    token = users.issue_api_token(node, admin, description="probe", actor="admin")
    parsed = parse_token(token)
    assert parsed is not None
    _, token_id, secret = parsed
    with node.read() as conn:
        row = conn.execute(select(t.api_tokens).where(t.api_tokens.c.id == token_id)).one()
        assert row.secret_hash == hash_secret(secret.reveal())
        # neither the secret nor the whole token appears anywhere in the database
        for table in t.metadata.sorted_tables:
            for stored in conn.execute(select(table)).all():
                text = repr(tuple(stored))
                assert secret.reveal() not in text, table.name
                assert token.reveal() not in text, table.name
        admin_parsed = parse_token(Sensitive(booted.admin_token))
        assert admin_parsed is not None
        assert admin_parsed[2].reveal() not in repr(conn.execute(select(t.api_tokens)).all())


# --- stored values: moved ciphertexts fail through the storage layer ----------------------------


def _account_and_target(node: Node, booted: Booted) -> tuple[int, int, int]:
    targets.add_target(
        node,
        booted.admin,
        "db1",
        "postgres",
        {"host": "127.0.0.1"},
        admin_user="postgres",
        admin_secret=Sensitive("target-admin-pw"),
    )
    a = targets.add_account(
        node, booted.admin, "db1", "alice", AccountMode.INJECTED, Sensitive("alice-pw")
    )
    b = targets.add_account(
        node, booted.admin, "db1", "bob", AccountMode.INJECTED, Sensitive("bob-pw")
    )
    target_id = targets.get_target(node, booted.admin, "db1").id
    return a.id, b.id, target_id


def test_stored_secret_is_an_envelope_and_decrypts_in_place(booted: Booted) -> None:
    node = booted.node
    a_id, _, target_id = _account_and_target(node, booted)
    with node.read() as conn:
        stored = conn.execute(select(t.accounts.c.secret).where(t.accounts.c.id == a_id)).scalar()
        assert stored.startswith(f"{VERSION}:1:")
        assert "alice-pw" not in stored
        keyring = node.vault.keyring
        assert sealed.open_column(conn, keyring, ACCOUNT_SECRET, a_id).reveal() == b"alice-pw"
        assert (
            sealed.open_column(conn, keyring, TARGET_ADMIN_SECRET, target_id).reveal()
            == b"target-admin-pw"
        )


def test_stored_ciphertext_copied_to_another_row_fails(booted: Booted) -> None:
    node = booted.node
    a_id, b_id, _ = _account_and_target(node, booted)
    with node.write() as tx:
        alice = tx.conn.execute(select(t.accounts).where(t.accounts.c.id == a_id)).one()
        tx.conn.execute(
            update(t.accounts)
            .where(t.accounts.c.id == b_id)
            .values(secret=alice.secret, secret_term=alice.secret_term)
        )
    with node.read() as conn, pytest.raises(CryptoError, match="failed authentication"):
        sealed.open_column(conn, node.vault.keyring, ACCOUNT_SECRET, b_id)
    bob = targets.get_account(node, booted.admin, "db1", "bob")
    with pytest.raises(CryptoError):
        targets.account_secret(node, bob)


def test_stored_ciphertext_copied_to_another_table_and_column_fails(booted: Booted) -> None:
    node = booted.node
    a_id, _, target_id = _account_and_target(node, booted)
    kr = node.vault.keyring
    with node.read() as conn:
        alice_envelope = conn.execute(
            select(t.accounts.c.secret).where(t.accounts.c.id == a_id)
        ).scalar_one()
    # sealed for accounts.secret of a row with the target's id: only table and column differ
    same_row_id = kr.encrypt(Sensitive(b"x"), CipherContext("accounts", target_id, "secret"))
    for envelope in (alice_envelope, same_row_id):
        with node.write() as tx:
            tx.conn.execute(
                update(t.targets).where(t.targets.c.id == target_id).values(admin_secret=envelope)
            )
        with node.read() as conn, pytest.raises(CryptoError, match="failed authentication"):
            sealed.open_column(conn, kr, TARGET_ADMIN_SECRET, target_id)
    # the original is untouched and still opens where it was sealed
    alice = targets.get_account(node, booted.admin, "db1", "alice")
    assert targets.account_secret(node, alice) == Sensitive("alice-pw")


def test_stored_ciphertext_sealed_for_another_column_of_the_same_row_fails(
    booted: Booted,
) -> None:
    node = booted.node
    _, _, target_id = _account_and_target(node, booted)
    kr = node.vault.keyring
    # an envelope sealed for the right table and row but another column
    wrong_column = kr.encrypt(Sensitive(b"x"), CipherContext("targets", target_id, "admin_user"))
    with node.write() as tx:
        tx.conn.execute(
            update(t.targets).where(t.targets.c.id == target_id).values(admin_secret=wrong_column)
        )
    with node.read() as conn, pytest.raises(CryptoError, match="failed authentication"):
        sealed.open_column(conn, kr, TARGET_ADMIN_SECRET, target_id)


def test_random_bytes_in_an_encrypted_column_fail_cleanly(booted: Booted) -> None:
    node = booted.node
    a_id, _, _ = _account_and_target(node, booted)
    with node.write() as tx:
        tx.conn.execute(
            update(t.accounts)
            .where(t.accounts.c.id == a_id)
            .values(secret=f"{VERSION}:1:{secrets.token_urlsafe(40)}")
        )
    with node.read() as conn, pytest.raises(CryptoError):
        sealed.open_column(conn, node.vault.keyring, ACCOUNT_SECRET, a_id)

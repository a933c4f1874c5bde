"""SCRAM-SHA-256 (RFC 5802, RFC 7677), sans-IO, stdlib only: shared by the core (session token
verifiers) and the plugins (PostgreSQL front end, upstream logins, rotation).

:func:`scram_verifier` computes the verifier PostgreSQL stores for a password, so that
``ALTER ROLE ... PASSWORD 'SCRAM-SHA-256$...'`` never sends the plaintext to the server (nor to
its statement log).

:class:`ScramClient` logs in to an upstream server with a vaulted password; :class:`ScramServer`
checks a client against a stored verifier. Both take and return the SASL payloads only (the
bytes inside SASLInitialResponse / SASLResponse / AuthenticationSASLContinue / ...Final); the
caller frames them with :mod:`jitvault_postgres.protocol`. Neither does channel binding
(``SCRAM-SHA-256-PLUS``): the server refuses a client that insists on it. The user name inside
SCRAM is ignored, as PostgreSQL does (the StartupMessage names the user).

:func:`md5_password` answers servers that still demand ``md5``.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import os
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import overload

from jitvault.domain import Sensitive
from jitvault.errors import AuthError, ValidationError

DEFAULT_ITERATIONS = 4096  # PostgreSQL's scram_iterations default
MECHANISM = "SCRAM-SHA-256"
#: a hostile or broken upstream must not make us spin PBKDF2 for minutes
MAX_ITERATIONS = 10_000_000
_NONCE_BYTES = 18  # what libpq and the PostgreSQL server use (SCRAM_RAW_NONCE_LEN)
_KEY_BYTES = 32


class ScramMalformed(ValidationError):
    """A SCRAM message does not follow RFC 5802 (or uses what we do not support)."""

    code = "scram_malformed"


class ScramAuthFailed(AuthError):
    """The exchange is well-formed but proves nothing: wrong password, wrong server, bad nonce."""

    code = "scram_failed"


def salted_password(password: Sensitive[str], salt: bytes, iterations: int) -> bytes:
    # Our generated passwords are printable ASCII, for which SASLprep is the identity.
    return hashlib.pbkdf2_hmac("sha256", password.reveal().encode(), salt, iterations)


def client_keys(password: Sensitive[str], salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """``(ClientKey, ServerKey)`` of a password (PBKDF2: slow on purpose)."""
    salted = salted_password(password, salt, iterations)
    return _hmac(salted, b"Client Key"), _hmac(salted, b"Server Key")


class ClientKeyCache:
    """The ``(ClientKey, ServerKey)`` pairs of recent upstream logins, so that a password's
    PBKDF2 (4,096 rounds of HMAC-SHA256 by default, about 1 ms) runs once per salt and not at
    every login. A server keeps a role's salt and iteration count until its password changes,
    and a rotation changes the password, so a stale entry is never looked up again: it ages out
    of the bound. Entries are found by an HMAC of the password, the salt and the count under a
    key drawn when the process starts: the table holds no password nor any digest of one that
    could be tested offline, only the keys a login derives (which, like the password, live in
    this process's memory only). Thread-safe; the least recently used entry goes first."""

    def __init__(self, bound: int = 256) -> None:
        self._bound = bound
        self._key = secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, tuple[bytes, bytes]] = OrderedDict()
        self._lock = threading.Lock()
        #: PBKDF2 runs (a miss each): what the tests count
        self.derivations = 0

    @overload
    def keys(
        self, password: Sensitive[str], salt: bytes, iterations: int
    ) -> tuple[bytes, bytes]: ...

    @overload
    def keys(
        self, password: Sensitive[str], salt: bytes, iterations: int, *, derive: bool
    ) -> tuple[bytes, bytes] | None: ...

    def keys(
        self, password: Sensitive[str], salt: bytes, iterations: int, *, derive: bool = True
    ) -> tuple[bytes, bytes] | None:
        """``(ClientKey, ServerKey)`` of ``password`` under ``salt`` and ``iterations``; with
        ``derive=False``, None unless they are cached (no PBKDF2 run)."""
        secret = password.reveal().encode()
        found = hmac.new(
            self._key,
            len(secret).to_bytes(4, "big") + secret + salt + iterations.to_bytes(4, "big"),
            hashlib.sha256,
        ).digest()
        with self._lock:
            cached = self._entries.get(found)
            if cached is not None:
                self._entries.move_to_end(found)
                return cached
        if not derive:
            return None
        keys = client_keys(password, salt, iterations)
        with self._lock:
            self.derivations += 1
            self._entries[found] = keys
            while len(self._entries) > self._bound:
                self._entries.popitem(last=False)
        return keys


#: the process's cache of upstream logins' keys (see :class:`ClientKeyCache`)
CLIENT_KEYS = ClientKeyCache()


def keys_from_salted(salted: bytes) -> tuple[bytes, bytes]:
    """``(StoredKey, ServerKey)`` from a SaltedPassword."""
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return stored_key, server_key


def scram_verifier(
    password: Sensitive[str], salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS
) -> Sensitive[str]:
    """``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` (base64 parts)."""
    salt = salt if salt is not None else os.urandom(16)
    stored_key, server_key = keys_from_salted(salted_password(password, salt, iterations))
    b64 = base64.b64encode
    return Sensitive(
        f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
        f"${b64(stored_key).decode()}:{b64(server_key).decode()}"
    )


@dataclass(frozen=True, slots=True)
class ScramVerifier:
    """A parsed verifier. The keys stay out of ``repr``: with them one can pose as the server."""

    iterations: int
    salt: bytes
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ScramMalformed(f"{what} is not valid base64") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def parse_verifier(verifier: str | Sensitive[str]) -> ScramVerifier:
    """Parse ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``."""
    text = verifier.reveal() if isinstance(verifier, Sensitive) else verifier
    try:
        mechanism, params, keys = text.split("$")
        iterations_text, salt_text = params.split(":")
        stored_text, server_text = keys.split(":")
    except ValueError:
        raise ScramMalformed("not a SCRAM-SHA-256 verifier") from None
    if mechanism != MECHANISM:
        raise ScramMalformed("not a SCRAM-SHA-256 verifier")
    iterations = _parse_iterations(iterations_text)
    salt = _b64decode(salt_text, "verifier salt")
    stored_key = _b64decode(stored_text, "verifier StoredKey")
    server_key = _b64decode(server_text, "verifier ServerKey")
    if not salt or len(stored_key) != _KEY_BYTES or len(server_key) != _KEY_BYTES:
        raise ScramMalformed("verifier has an empty salt or keys of the wrong size")
    return ScramVerifier(iterations, salt, stored_key, server_key)


def _parse_iterations(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        raise ScramMalformed("iteration count is not a number")
    iterations = int(text)
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise ScramMalformed("iteration count out of range")
    return iterations


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _new_nonce() -> str:
    return _b64(secrets.token_bytes(_NONCE_BYTES))


def _check_nonce(nonce: str) -> None:
    # RFC 5802: printable ASCII except ","
    if not nonce or not all(0x21 <= ord(c) <= 0x7E and c != "," for c in nonce):
        raise ScramMalformed("nonce is empty or has characters outside printable ASCII")


def _attributes(message: bytes, what: str) -> list[tuple[str, str]]:
    """``a=value,b=value`` as ordered pairs; SCRAM messages are ASCII (we send no UTF-8 names)."""
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError:
        raise ScramMalformed(f"{what} is not UTF-8") from None
    pairs: list[tuple[str, str]] = []
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=" or not ("a" <= part[0] <= "z" or "A" <= part[0] <= "Z"):
            raise ScramMalformed(f"{what} has a malformed attribute")
        pairs.append((part[0], part[2:]))
    return pairs


def _expect(pairs: list[tuple[str, str]], names: str, what: str) -> list[str]:
    """The values of ``pairs`` when their names are exactly ``names`` in order (no extensions)."""
    if "".join(name for name, _ in pairs) != names:
        if any(name == "m" for name, _ in pairs):
            raise ScramMalformed(f"{what} carries a mandatory extension we do not support")
        raise ScramMalformed(f"{what} does not have the attributes {', '.join(names)} in order")
    return [value for _, value in pairs]


def _saslname(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


class _ClientState(enum.Enum):
    START = enum.auto()
    SENT_FIRST = enum.auto()
    SENT_FINAL = enum.auto()
    DONE = enum.auto()


class ScramClient:
    """The client side of SCRAM-SHA-256 (no channel binding: gs2 header ``n,,``).

    ``first_message()`` -> SASLInitialResponse data; ``handle_server_first(SASLContinue data)``
    -> SASLResponse data; ``verify_server_final(SASLFinal data)`` raises
    :class:`ScramAuthFailed` unless the server proved it knows the verifier.
    ``nonce`` and ``username`` exist for test vectors; leave them unset.
    """

    def __init__(
        self,
        password: Sensitive[str],
        *,
        username: str = "",
        nonce: str | None = None,
        cache: ClientKeyCache | None = CLIENT_KEYS,
    ) -> None:
        self._password = password
        self._cache = cache
        self._nonce = nonce if nonce is not None else _new_nonce()
        _check_nonce(self._nonce)
        self._first_bare = f"n={_saslname(username)},r={self._nonce}"
        self._server_signature = b""
        self._state = _ClientState.START

    def __repr__(self) -> str:
        return f"ScramClient(state={self._state.name})"

    def first_message(self) -> bytes:
        """client-first-message: ``n,,n=<user>,r=<client nonce>``."""
        if self._state is not _ClientState.START:
            raise ScramMalformed("client-first-message already sent")
        self._state = _ClientState.SENT_FIRST
        return f"n,,{self._first_bare}".encode()

    def handle_server_first(self, data: bytes) -> bytes:
        """Check server-first-message; return client-final-message (with the proof). May run
        PBKDF2 (see :meth:`handle_server_first_cached` for a caller that must not block)."""
        answer = self._answer_server_first(data, cached_only=False)
        assert answer is not None
        return answer

    def handle_server_first_cached(self, data: bytes) -> bytes | None:
        """:meth:`handle_server_first` if the password's keys for this salt are in the cache;
        None otherwise, the exchange left as it was (call :meth:`handle_server_first` next,
        in a thread: it runs PBKDF2)."""
        return self._answer_server_first(data, cached_only=True)

    def _answer_server_first(self, data: bytes, *, cached_only: bool) -> bytes | None:
        if self._state is not _ClientState.SENT_FIRST:
            raise ScramMalformed("server-first-message out of order")
        self._state = _ClientState.DONE  # whatever happens next, this exchange cannot resume
        nonce, salt_text, iterations_text = _expect(
            _attributes(data, "server-first-message"), "rsi", "server-first-message"
        )
        _check_nonce(nonce)
        if not nonce.startswith(self._nonce) or len(nonce) == len(self._nonce):
            raise ScramAuthFailed("server nonce does not extend the client nonce")
        salt = _b64decode(salt_text, "salt")
        if not salt:
            raise ScramMalformed("empty salt")
        iterations = _parse_iterations(iterations_text)
        if self._cache is not None:
            keys = self._cache.keys(self._password, salt, iterations, derive=not cached_only)
        else:
            keys = None if cached_only else client_keys(self._password, salt, iterations)
        if keys is None:  # cached_only, and not cached: the exchange stays where it was
            self._state = _ClientState.SENT_FIRST
            return None
        client_key, server_key = keys
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self._first_bare},{data.decode()},{without_proof}".encode()
        proof = _xor(client_key, _hmac(stored_key, auth_message))
        self._server_signature = _hmac(server_key, auth_message)
        self._state = _ClientState.SENT_FINAL
        return f"{without_proof},p={_b64(proof)}".encode()

    def verify_server_final(self, data: bytes) -> None:
        """Check server-final-message ``v=<ServerSignature>``; raise unless it matches."""
        if self._state is not _ClientState.SENT_FINAL:
            raise ScramMalformed("server-final-message out of order")
        self._state = _ClientState.DONE
        pairs = _attributes(data, "server-final-message")
        if pairs and pairs[0][0] == "e":
            raise ScramAuthFailed(f"server refused the login ({pairs[0][1][:64]})")
        (signature_text,) = _expect(pairs, "v", "server-final-message")
        signature = _b64decode(signature_text, "server signature")
        if not hmac.compare_digest(signature, self._server_signature):
            raise ScramAuthFailed("server signature does not match: not the expected server")


class _ServerState(enum.Enum):
    START = enum.auto()
    SENT_FIRST = enum.auto()
    DONE = enum.auto()


class ScramServer:
    """The server side of SCRAM-SHA-256, checking a client against a stored verifier.

    ``handle_client_first(SASLInitialResponse data)`` -> AuthenticationSASLContinue data;
    ``handle_client_final(SASLResponse data)`` -> AuthenticationSASLFinal data, or raises
    :class:`ScramAuthFailed` (wrong proof, altered nonce, altered channel binding) and
    :class:`ScramMalformed` (nonsense, or a client insisting on channel binding).
    """

    def __init__(
        self, verifier: str | Sensitive[str] | ScramVerifier, *, nonce: str | None = None
    ) -> None:
        self._verifier = (
            verifier if isinstance(verifier, ScramVerifier) else parse_verifier(verifier)
        )
        self._server_nonce = nonce if nonce is not None else _new_nonce()
        _check_nonce(self._server_nonce)
        self._gs2_header = ""
        self._first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._state = _ServerState.START

    def __repr__(self) -> str:
        return f"ScramServer(state={self._state.name})"

    def handle_client_first(self, data: bytes) -> bytes:
        """Check client-first-message; return server-first-message ``r=,s=,i=``."""
        if self._state is not _ServerState.START:
            raise ScramMalformed("client-first-message out of order")
        self._state = _ServerState.DONE
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ScramMalformed("client-first-message is not UTF-8") from None
        cbind_flag, sep1, rest = text.partition(",")
        authzid, sep2, first_bare = rest.partition(",")
        if not (sep1 and sep2):
            raise ScramMalformed("client-first-message has no GS2 header")
        if cbind_flag.startswith("p="):
            raise ScramMalformed("channel binding is not offered (no SCRAM-SHA-256-PLUS)")
        if cbind_flag not in ("n", "y"):
            raise ScramMalformed("client-first-message has an invalid channel binding flag")
        if authzid:
            raise ScramMalformed("authorization identities are not supported")
        _, client_nonce = _expect(
            _attributes(first_bare.encode(), "client-first-message"), "nr", "client-first-message"
        )
        _check_nonce(client_nonce)
        self._gs2_header = f"{cbind_flag},,"
        self._first_bare = first_bare
        self._nonce = client_nonce + self._server_nonce
        v = self._verifier
        self._server_first = f"r={self._nonce},s={_b64(v.salt)},i={v.iterations}"
        self._state = _ServerState.SENT_FIRST
        return self._server_first.encode()

    def handle_client_final(self, data: bytes) -> bytes:
        """Check client-final-message and its proof; return server-final-message ``v=``."""
        if self._state is not _ServerState.SENT_FIRST:
            raise ScramMalformed("client-final-message out of order")
        self._state = _ServerState.DONE
        cbind_text, nonce, proof_text = _expect(
            _attributes(data, "client-final-message"), "crp", "client-final-message"
        )
        if not hmac.compare_digest(
            _b64decode(cbind_text, "channel binding"), self._gs2_header.encode()
        ):
            raise ScramAuthFailed("channel binding data does not match the GS2 header")
        if not hmac.compare_digest(nonce.encode(), self._nonce.encode()):
            raise ScramAuthFailed("nonce does not match this exchange")
        proof = _b64decode(proof_text, "proof")
        if len(proof) != _KEY_BYTES:
            raise ScramAuthFailed("proof has the wrong length")
        without_proof = data[: data.rindex(b",p=")].decode()
        auth_message = f"{self._first_bare},{self._server_first},{without_proof}".encode()
        v = self._verifier
        client_key = _xor(proof, _hmac(v.stored_key, auth_message))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), v.stored_key):
            raise ScramAuthFailed("wrong password")
        return f"v={_b64(_hmac(v.server_key, auth_message))}".encode()


def md5_password(user: str, password: Sensitive[str], salt: bytes) -> bytes:
    """The answer to AuthenticationMD5Password: ``md5`` + md5(md5(password + user) + salt)."""
    if len(salt) != 4:
        raise ScramMalformed("an MD5 salt is 4 bytes")
    # md5 is what the server demands here, not our choice of hash
    inner = hashlib.md5(password.reveal().encode() + user.encode(), usedforsecurity=False)
    outer = hashlib.md5(inner.hexdigest().encode() + salt, usedforsecurity=False)
    return b"md5" + outer.hexdigest().encode()


__all__ = [
    "CLIENT_KEYS",
    "DEFAULT_ITERATIONS",
    "MAX_ITERATIONS",
    "MECHANISM",
    "ClientKeyCache",
    "ScramAuthFailed",
    "ScramClient",
    "ScramMalformed",
    "ScramServer",
    "ScramVerifier",
    "keys_from_salted",
    "md5_password",
    "parse_verifier",
    "salted_password",
    "scram_verifier",
]

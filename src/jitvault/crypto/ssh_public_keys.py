"""Users' SSH public keys: the one parser of what a user registers, and fingerprints.

A registered key is one OpenSSH public key line, ``<algorithm> <base64 blob> [comment]``, as
``ssh-keygen`` writes it to ``id_*.pub``. It is read strictly: one line, a known algorithm, a
blob that decodes to exactly that algorithm's key and nothing after it. Refused, each with its
own message (none of which repeats the input): private keys (someone gave the wrong file: the
server must never see, store or echo it), ``authorized_keys`` lines with options (``from=``,
``command=``: jitvault would not enforce them), certificates (jitvault keeps no CA), DSA keys
and RSA keys under 2048 bits.

The fingerprint is OpenSSH's: ``SHA256:`` and the unpadded base64 of the SHA-256 of the blob,
what ``ssh-keygen -l`` prints; the proxy computes it from the blob the client presents.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import warnings
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from jitvault.errors import ValidationError

FINGERPRINT_PREFIX = "SHA256:"
#: the key types a user may register (their certificate forms are refused)
ALGORITHMS = frozenset(
    {
        "ssh-ed25519",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "ssh-rsa",
        # FIDO security keys: the proxy checks their signatures (with user presence) too
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
MIN_RSA_BITS = 2048
MAX_COMMENT_LENGTH = 200
#: far above any public key line (an RSA-16384 line is about 2,800 characters)
MAX_LINE_LENGTH = 16_384
_CERT_SUFFIX = "-cert-v01@openssh.com"
_PRIVATE_MARKERS = ("PRIVATE KEY", "PuTTY-User-Key-File", "SSH2 ENCRYPTED PRIVATE KEY")
_HOW = "give the public key line (the .pub file, as 'ssh-keygen' writes it)"


@dataclass(frozen=True)
class SshPublicKey:
    """A valid public key: its algorithm, wire-format blob, fingerprint and comment."""

    algorithm: str
    blob: bytes
    comment: str

    @property
    def fingerprint(self) -> str:
        return ssh_fingerprint(self.blob)

    @property
    def line(self) -> str:
        """The key as an OpenSSH line without its comment (what is stored)."""
        return f"{self.algorithm} {base64.b64encode(self.blob).decode('ascii')}"


def ssh_fingerprint(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint of a public key blob (``ssh-keygen -l``)."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return FINGERPRINT_PREFIX + digest


def normalize_fingerprint(text: str) -> str:
    """A fingerprint as the user typed it (with or without ``SHA256:``), in stored form."""
    text = text.strip()
    body = text[len(FINGERPRINT_PREFIX) :] if text.startswith(FINGERPRINT_PREFIX) else text
    try:
        raw = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != hashlib.sha256().digest_size:
        raise ValidationError(
            "not a SHA256 key fingerprint",
            hint="as 'jitvault user key list' or 'ssh-keygen -l -f KEY.pub' prints it",
        )
    return FINGERPRINT_PREFIX + body.rstrip("=")


def _refuse_private_key(text: str) -> None:
    if any(marker in text for marker in _PRIVATE_MARKERS):
        raise ValidationError(
            "this is a private key: it was not accepted, and it was not stored",
            hint="register the public half: the .pub file, or 'ssh-keygen -y -f KEY'",
        )


def _names_a_key_type(word: str) -> bool:
    return word in ALGORITHMS or word.endswith(_CERT_SUFFIX) or word == "ssh-dss"


def parse_public_key(text: str, comment: str | None = None) -> SshPublicKey:
    """Parse and check one OpenSSH public key line; ``comment`` replaces the line's own.

    Raises :class:`ValidationError`, whose message never contains the input.
    """
    _refuse_private_key(text)
    if len(text) > MAX_LINE_LENGTH:
        raise ValidationError("too long for an SSH public key line", hint=_HOW)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if len(lines) != 1:
        raise ValidationError(
            "give exactly one public key line" if lines else "no public key given", hint=_HOW
        )
    fields = lines[0].split(None, 2)
    algorithm = fields[0]
    if not _names_a_key_type(algorithm) and any(
        _names_a_key_type(word) for word in lines[0].split()[1:]
    ):
        raise ValidationError(
            "authorized_keys options (from=, command=, ...) are not accepted",
            hint="give the key line alone: jitvault would not enforce them",
        )
    if algorithm.endswith(_CERT_SUFFIX):
        raise ValidationError(
            "SSH certificates are not accepted",
            hint="register the plain public key the certificate was made for",
        )
    if algorithm == "ssh-dss":
        raise ValidationError("DSA keys are not accepted", hint="use an Ed25519 key")
    if algorithm not in ALGORITHMS:
        raise ValidationError("not an SSH public key line (unknown key type)", hint=_HOW)
    if len(fields) < 2:
        raise ValidationError("the key line has no key data", hint=_HOW)
    try:
        blob = base64.b64decode(fields[1], validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError("the key data is not valid base64", hint=_HOW) from None
    # the canonical line: cryptography checks that the blob holds exactly one key of the type
    # the line names, and nothing after it
    canonical = f"{algorithm} {base64.b64encode(blob).decode('ascii')}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            key = load_ssh_public_key(canonical.encode("ascii"))
    except (ValueError, UnsupportedAlgorithm, TypeError):
        raise ValidationError("the key data is not a valid key of its type", hint=_HOW) from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise ValidationError(
            f"RSA keys must have at least {MIN_RSA_BITS} bits (this one has {key.key_size})",
            hint="use an Ed25519 key ('ssh-keygen -t ed25519')",
        )
    given = (fields[2] if len(fields) > 2 else "") if comment is None else comment
    given = given.strip()
    if len(given) > MAX_COMMENT_LENGTH or not given.isprintable():
        raise ValidationError(
            f"the key comment must be printable and at most {MAX_COMMENT_LENGTH} characters"
        )
    return SshPublicKey(algorithm=algorithm, blob=blob, comment=given)


__all__ = [
    "ALGORITHMS",
    "FINGERPRINT_PREFIX",
    "MIN_RSA_BITS",
    "SshPublicKey",
    "normalize_fingerprint",
    "parse_public_key",
    "ssh_fingerprint",
]

"""Shamir secret sharing over GF(2^8), byte by byte (the scheme Vault's unseal uses).

Shares are text: ``jvs1-<base64url(x || y || check)>`` where ``check`` is the first 4 bytes of
SHA-256 over ``x || y``, so a mistyped share is refused before it is used.
"""

from __future__ import annotations

import base64
import hashlib
import secrets

from jitvault.domain import Sensitive
from jitvault.errors import ValidationError

_PREFIX = "jvs1-"

# log/exp tables for GF(256) with the AES polynomial x^8 + x^4 + x^3 + x + 1, generator 3
_EXP = [0] * 512
_LOG = [0] * 256
_x = 1
for _i in range(255):
    _EXP[_i] = _x
    _LOG[_x] = _i
    _x ^= (_x << 1) ^ (0x11B if _x & 0x80 else 0)
    _x &= 0xFF
for _i in range(255, 512):
    _EXP[_i] = _EXP[_i - 255]


def _mul(a: int, b: int) -> int:
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def _div(a: int, b: int) -> int:
    if b == 0:
        raise ZeroDivisionError
    if a == 0:
        return 0
    return _EXP[(_LOG[a] - _LOG[b]) % 255]


def split(secret: Sensitive[bytes], shares: int, threshold: int) -> list[Sensitive[str]]:
    """Split ``secret`` into ``shares`` parts of which any ``threshold`` recover it."""
    if not 2 <= threshold <= shares <= 255:
        raise ValidationError(
            f"cannot split into {shares} shares with threshold {threshold}",
            hint="need 2 <= threshold <= shares <= 255",
        )
    value = secret.reveal()
    # one random polynomial per byte, constant term = the secret byte
    coeffs = [[b] + [secrets.randbelow(256) for _ in range(threshold - 1)] for b in value]
    out: list[Sensitive[str]] = []
    for x in range(1, shares + 1):
        ys = bytearray()
        for poly in coeffs:
            acc = 0
            for c in reversed(poly):  # Horner
                acc = _mul(acc, x) ^ c
            ys.append(acc)
        raw = bytes([x]) + bytes(ys)
        check = hashlib.sha256(raw).digest()[:4]
        out.append(Sensitive(_PREFIX + base64.urlsafe_b64encode(raw + check).decode().rstrip("=")))
    return out


def parse_share(share: Sensitive[str]) -> tuple[int, bytes]:
    text = share.reveal().strip()
    if not text.startswith(_PREFIX):
        raise ValidationError("not a jitvault unseal share", hint="shares start with 'jvs1-'")
    body = text[len(_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except ValueError as exc:
        raise ValidationError("unseal share is not valid base64") from exc
    if len(raw) < 6 or hashlib.sha256(raw[:-4]).digest()[:4] != raw[-4:]:
        raise ValidationError("unseal share failed its checksum", hint="check for a typo")
    return raw[0], raw[1:-4]


def combine(shares: list[Sensitive[str]]) -> Sensitive[bytes]:
    """Recover the secret by Lagrange interpolation at x = 0.

    With fewer than the threshold, the result is a wrong value, not an error: callers verify it
    (the keyring's wrapped keys fail authentication under a wrong root key).
    """
    points = [parse_share(s) for s in shares]
    xs = [x for x, _ in points]
    if len(set(xs)) != len(xs):
        raise ValidationError("the same unseal share was given twice")
    lengths = {len(y) for _, y in points}
    if len(lengths) != 1:
        raise ValidationError("unseal shares come from different splits (lengths differ)")
    n = lengths.pop()
    secret = bytearray(n)
    for i, (xi, yi) in enumerate(points):
        # Lagrange basis at 0: prod_{j != i} xj / (xj ^ xi)
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = _mul(num, xj)
                den = _mul(den, xj ^ xi)
        basis = _div(num, den)
        for k in range(n):
            secret[k] ^= _mul(yi[k], basis)
    return Sensitive(bytes(secret))


__all__ = ["combine", "parse_share", "split"]

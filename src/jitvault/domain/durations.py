"""Human durations: ``30m``, ``1h``, ``2h30m``, ``45s``, ``7d``."""

from __future__ import annotations

import re
from datetime import timedelta

from jitvault.errors import ValidationError

_PART = re.compile(r"(\d+)([smhdw])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """Parse ``1h30m`` style durations; raise :class:`ValidationError` if malformed."""
    s = text.strip().lower()
    pos, total = 0, 0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += int(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise ValidationError(f"invalid duration {text!r}", hint="use e.g. 30m, 1h, 2h30m, 7d")
    return timedelta(seconds=total)


__all__ = ["parse_duration"]

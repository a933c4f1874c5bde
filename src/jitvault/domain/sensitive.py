"""``Sensitive[T]``: a secret value that cannot leak by accident.

``repr``/``str``/``format`` print ``<redacted>``; pickling and JSON encoding refuse; equality is
constant-time for ``str``/``bytes``. The value is read only with :meth:`Sensitive.reveal`, at the
line that sends it where it must go.
"""

from __future__ import annotations

import hmac
from typing import Any, Generic, NoReturn, TypeVar

T = TypeVar("T")

REDACTED = "<redacted>"


class Sensitive(Generic[T]):
    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    def reveal(self) -> T:
        """The secret itself. Call it only where the value leaves for its destination."""
        return self._value

    def __repr__(self) -> str:
        return f"Sensitive({REDACTED})"

    def __str__(self) -> str:
        return REDACTED

    def __format__(self, spec: str) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sensitive):
            return NotImplemented
        a, b = self._value, other._value
        if isinstance(a, str) and isinstance(b, str):
            return hmac.compare_digest(a.encode(), b.encode())
        if isinstance(a, bytes) and isinstance(b, bytes):
            return hmac.compare_digest(a, b)
        return bool(a == b)

    def __hash__(self) -> int:
        return id(self)

    def __reduce__(self) -> NoReturn:
        raise TypeError("Sensitive values cannot be pickled")

    def __bool__(self) -> bool:
        return bool(self._value)

    def __len__(self) -> int:
        return len(self._value)  # type: ignore[arg-type]

    def map(self, fn: Any) -> Sensitive[Any]:
        """A new Sensitive holding ``fn(value)``, without revealing it to the caller."""
        return Sensitive(fn(self._value))


__all__ = ["REDACTED", "Sensitive"]

"""The CLI's HTTP client: JITVAULT_ADDR and JITVAULT_TOKEN, one-line errors, exit codes."""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

import httpx

DEFAULT_ADDR = "http://127.0.0.1:8470"

#: exit codes, documented in the README
EXIT_ERROR = 1
EXIT_INVALID = 2
EXIT_UNAUTHENTICATED = 3
EXIT_FORBIDDEN = 4
EXIT_NOT_FOUND = 5
EXIT_CONFLICT = 6
EXIT_UNAVAILABLE = 7

_EXIT_BY_STATUS = {
    400: EXIT_INVALID,
    401: EXIT_UNAUTHENTICATED,
    403: EXIT_FORBIDDEN,
    404: EXIT_NOT_FOUND,
    409: EXIT_CONFLICT,
    422: EXIT_INVALID,
    429: EXIT_UNAUTHENTICATED,
    503: EXIT_UNAVAILABLE,
}


class CliError(Exception):
    """A failure to print as one line on stderr and exit with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def fail(message: str, exit_code: int = EXIT_ERROR) -> NoReturn:
    raise CliError(message, exit_code)


class ApiClient:
    def __init__(self, addr: str | None = None, token: str | None = None) -> None:
        self.addr = (addr or os.environ.get("JITVAULT_ADDR") or DEFAULT_ADDR).rstrip("/")
        self._token = token if token is not None else os.environ.get("JITVAULT_TOKEN")
        self._http = httpx.Client(base_url=self.addr, timeout=30.0)

    def _headers(self, auth: bool) -> dict[str, str]:
        if not auth:
            return {}
        if not self._token:
            fail(
                "JITVAULT_TOKEN is not set; export it (see 'jitvault dev' or 'jitvault init')",
                EXIT_UNAUTHENTICATED,
            )
        return {"Authorization": f"Bearer {self._token}"}

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        auth: bool = True,
        accept_status: tuple[int, ...] = (),
    ) -> Any:
        try:
            resp = self._http.request(
                method, path, json=json, params=params, headers=self._headers(auth)
            )
        except httpx.TransportError as exc:
            self._transport_failed(exc)
        if resp.status_code >= 400 and resp.status_code not in accept_status:
            self._raise(resp)
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    def stream_lines(self, path: str, params: dict[str, Any] | None = None) -> Any:
        try:
            with self._http.stream("GET", path, params=params, headers=self._headers(True)) as r:
                if r.status_code >= 400:
                    r.read()
                    self._raise(r)
                yield from r.iter_lines()
        except httpx.TransportError as exc:
            self._transport_failed(exc)

    def _transport_failed(self, exc: httpx.TransportError) -> NoReturn:
        """No connection at all, or one that broke after the request was sent: in the second
        case the server may have done what was asked, and the user must know that."""
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            fail(
                f"cannot reach jitvault at {self.addr}: is the server running? (set JITVAULT_ADDR)",
                EXIT_UNAVAILABLE,
            )
        fail(
            f"the connection to jitvault at {self.addr} broke before it answered "
            f"({type(exc).__name__}): what you asked may or may not have been done; "
            "look (for example with 'jitvault request list') before you retry",
            EXIT_UNAVAILABLE,
        )

    @staticmethod
    def _raise(resp: httpx.Response) -> NoReturn:
        try:
            err = resp.json().get("error", {})
            message = err.get("message") or resp.reason_phrase
            hint = err.get("hint")
        except ValueError:
            message, hint = f"HTTP {resp.status_code} {resp.reason_phrase}", None
        text = f"{message} ({hint})" if hint else str(message)
        fail(text, _EXIT_BY_STATUS.get(resp.status_code, EXIT_ERROR))


def read_secret_stdin(what: str) -> str:
    """Read a secret from standard input (never from arguments: they show in ``ps``)."""
    if sys.stdin.isatty():
        import getpass

        value = getpass.getpass(f"{what}: ")
    else:
        value = sys.stdin.readline().rstrip("\r\n")
    if not value:
        fail(f"no {what} on standard input", EXIT_INVALID)
    return value


__all__ = [
    "EXIT_CONFLICT",
    "EXIT_ERROR",
    "EXIT_FORBIDDEN",
    "EXIT_INVALID",
    "EXIT_NOT_FOUND",
    "EXIT_UNAUTHENTICATED",
    "EXIT_UNAVAILABLE",
    "ApiClient",
    "CliError",
    "fail",
    "read_secret_stdin",
]

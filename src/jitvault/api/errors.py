"""One map from our exceptions to HTTP statuses, and error bodies that never echo input."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from jitvault.errors import (
    AuthError,
    Conflict,
    CryptoError,
    Forbidden,
    JitvaultError,
    LockedOut,
    NotFound,
    Unavailable,
    ValidationError,
)
from jitvault.plugin_api import TargetRejected, Unsupported

log = logging.getLogger(__name__)

STATUS: list[tuple[type[JitvaultError], int]] = [
    (Unsupported, 501),
    # the target (a database, a host) refused or could not be reached
    (TargetRejected, 502),
    (LockedOut, 429),
    (AuthError, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (Conflict, 409),
    (ValidationError, 422),
    (Unavailable, 503),
    (CryptoError, 500),
]


def status_for(exc: JitvaultError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_body(code: str, message: str, hint: str | None = None) -> dict[str, object]:
    return {"error": {"code": code, "message": message, "hint": hint}}


def install(app: FastAPI) -> None:
    @app.exception_handler(JitvaultError)
    async def _jitvault(_: Request, exc: JitvaultError) -> JSONResponse:
        status = status_for(exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if isinstance(exc, CryptoError):
            # say what to do, not which bytes failed
            log.error("crypto error: %s", exc.message)
        return JSONResponse(
            error_body(exc.code, exc.message, exc.hint), status_code=status, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes the offending input, which may be a secret: never do that.
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: {e.get('msg', '')}"
            for e in exc.errors()
        ]
        return JSONResponse(
            error_body("invalid", "invalid request: " + "; ".join(problems)), status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body("http", str(exc.detail)), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error: %s", type(exc).__name__)
        return JSONResponse(
            error_body("internal", "internal error", "see the server log"), status_code=500
        )


__all__ = ["error_body", "install", "status_for"]

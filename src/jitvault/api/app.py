"""The FastAPI application. Routes are thin: parse, call one service, map the result."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI

from jitvault import __version__
from jitvault.api import errors
from jitvault.api.routers import (
    audit,
    auth,
    requests,
    sessions,
    sys,
    targets,
    templates,
    users,
)
from jitvault.services import Node


def create_app(node: Node, on_shutdown: Callable[[], None] | None = None) -> FastAPI:
    """The API of ``node``; ``on_shutdown`` runs (in a thread) when the server shuts down,
    after the last request and before the process exits."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if on_shutdown is not None:
            await anyio.to_thread.run_sync(on_shutdown)

    app = FastAPI(
        title="jitvault",
        version=__version__,
        description="Just-in-time privileged access: vault, requests, grants, session proxies.",
        lifespan=lifespan,
    )
    app.state.node = node
    errors.install(app)
    # public routes: health, seal status, init, unseal, login
    app.include_router(sys.public)
    app.include_router(auth.public)
    # everything else needs a caller (CallerDep), and a permission checked in the services
    for router in (
        sys.router,
        auth.router,
        users.router,
        targets.router,
        templates.router,
        requests.router,
        sessions.router,
        audit.router,
    ):
        app.include_router(router)
    return app


__all__ = ["create_app"]

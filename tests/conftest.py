"""Fixtures: every test that touches state runs on SQLite or PostgreSQL (``--db``).

``--db sqlite`` (default) uses a file in the test's tmp dir; ``--db postgres`` creates a uniquely
named database on the local server (127.0.0.1:5432, or ``JITVAULT_TEST_PG``) and drops it
afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from jitvault.api import create_app
from jitvault.config import Settings, load_settings
from jitvault.domain import AccessRequest, Principal, Role
from jitvault.services import Node, requests, system
from tests import leftovers
from tests.support import PG_HOST_DSN, scratch_postgres

# every process this run starts carries its mark (tests/leftovers.py)
os.environ[leftovers.RUN_ENV] = leftovers.RUN


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop and remove what an earlier run that was killed left behind (its servers, clusters,
    sshd servers, test users and scratch databases); a live run's things are left alone."""
    leftovers.sweep(PG_HOST_DSN)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--db",
        choices=("sqlite", "postgres"),
        default=os.environ.get("JITVAULT_TEST_DB", "sqlite"),
        help="state store the suite runs against",
    )


@pytest.fixture(scope="session")
def db_kind(request: pytest.FixtureRequest) -> str:
    return str(request.config.getoption("--db"))


@contextmanager
def scratch_database(kind: str, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL of ``kind``; a PostgreSQL one is dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'jitvault.db'}"
        return
    with scratch_postgres() as url:
        yield url


@pytest.fixture
def database_url(db_kind: str, tmp_path: Path) -> Iterator[str]:
    with scratch_database(db_kind, tmp_path) as url:
        yield url


def make_settings(data_dir: Path, database_url: str, **extra: object) -> Settings:
    return load_settings(None, data_dir=str(data_dir), database_url=database_url, **extra)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path / "data", database_url)


@dataclass
class Booted:
    """An initialized, unsealed node with its first admin."""

    node: Node
    admin: Principal
    admin_token: str


@pytest.fixture
def booted(settings: Settings) -> Iterator[Booted]:
    node = Node.open(settings)
    result = system.initialize(node, "admin")
    with node.read() as conn:
        from jitvault.storage import repositories as repo

        user = repo.user_get(conn, "admin")
    admin = Principal(user.id, user.name, Role.ADMIN, ())
    try:
        yield Booted(node, admin, result.admin_token.reveal())
    finally:
        node.close()


def grant_id_of(node: Node, r: AccessRequest) -> int:
    """The id of the request's grant (it must have one)."""
    grant = requests.grant_of(node, r)
    assert grant is not None, f"request {r.id} has no grant"
    return grant.id


@pytest.fixture
def node(booted: Booted) -> Node:
    return booted.node


@pytest.fixture
def api(booted: Booted) -> Iterator[TestClient]:
    """The real ASGI app over httpx, authenticated as the admin."""
    with TestClient(create_app(booted.node), base_url="http://testserver") as client:
        client.headers["Authorization"] = f"Bearer {booted.admin_token}"
        yield client


from tests.pgcluster import pg_cluster  # noqa: E402, F401
from tests.sshd import sshd_server  # noqa: E402, F401

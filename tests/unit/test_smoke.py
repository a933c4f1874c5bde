from __future__ import annotations

from fastapi.testclient import TestClient


def test_health_is_ok_when_unsealed(api: TestClient) -> None:
    resp = api.get("/v1/sys/health")
    assert resp.status_code == 200
    assert resp.json()["status"] == "ok"


def test_whoami_names_the_admin(api: TestClient) -> None:
    assert api.get("/v1/auth/whoami").json()["name"] == "admin"

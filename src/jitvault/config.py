"""Settings: a TOML file plus ``JITVAULT_*`` environment variables (environment wins).

The data directory holds ``config.toml``, the SQLite database and, with the file key provider,
the root key file (mode 0600). Nothing secret is ever stored in the TOML file itself.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic import ValidationError as PydanticValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from jitvault.errors import ConfigError

DEFAULT_API_PORT = 8470
DEFAULT_PG_PROXY_PORT = 6543
DEFAULT_SSH_PROXY_PORT = 2222


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/jitvault`` or ``~/.local/share/jitvault``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "jitvault"


class TransitSettings(BaseModel):
    """OpenBao / HashiCorp Vault Transit: the root key never leaves the Transit server."""

    addr: str = "http://127.0.0.1:8200"
    mount: str = "transit"
    key_name: str = "jitvault-root"
    #: a file holding the Transit token; else the JITVAULT_TRANSIT_TOKEN environment variable
    token_file: Path | None = None
    ca_cert: Path | None = None


class KeySettings(BaseModel):
    provider: Literal["file", "shamir", "transit"] = "file"
    key_file: Path | None = None
    transit: TransitSettings = Field(default_factory=TransitSettings)


class ServerSettings(BaseModel):
    listen: str = "127.0.0.1"
    api_port: int = DEFAULT_API_PORT
    pg_proxy_port: int = DEFAULT_PG_PROXY_PORT
    ssh_proxy_port: int = DEFAULT_SSH_PROXY_PORT
    #: seconds between background worker passes (expiry, jobs, re-encryption)
    worker_interval: float = 1.0
    #: start the session proxies (PostgreSQL on pg_proxy_port) with the server
    proxies: bool = True
    #: the proxies' TLS certificate and key; default: a self-signed pair in the data directory
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: what `jitvault connect` tells clients to connect to (default: listen)
    public_host: str | None = None
    #: bind the proxy ports with SO_REUSEPORT, so that several `jitvault server` processes on
    #: one PostgreSQL state store share them (the kernel spreads the connections). Off by
    #: default: any process of this user that sets it too could take a share of the clients.
    proxy_reuse_port: bool = False
    #: refuse PostgreSQL clients that do not ask for TLS (libpq's sslmode=require and up do):
    #: without it SCRAM still keeps their token off the wire, but their queries and results
    #: travel in clear
    pg_proxy_require_tls: bool = False
    #: a live session whose proxy node has not said it holds it for this long (a heartbeat
    #: every quarter of it) is ended by any node: that node crashed or was killed
    session_lost_seconds: float = Field(default=60.0, ge=1.0)
    #: store lookups in flight at once, per client address, for logins and cancel requests
    #: that have proven nothing yet (a flood from one address cannot hold back the others'
    #: logins); clients behind one NAT or load balancer share an address
    proxy_preauth_per_source: int = Field(default=2, ge=1)
    #: connections not logged in yet, across the node's proxies (sshd's MaxStartups): each
    #: holds a socket and, for TLS, a handshake's work until it logs in or its login times out;
    #: a new connection over the bound is refused at once
    proxy_max_startups: int = Field(default=256, ge=1)
    #: the same, from one client address (sshd's PerSourceMaxStartups)
    proxy_max_startups_per_source: int = Field(default=64, ge=1)


class AuthSettings(BaseModel):
    max_failures: int = 10
    lockout_seconds: int = 30 * 60
    #: only trust X-Forwarded-For from these peers (empty: never)
    trusted_proxies: list[str] = Field(default_factory=list)


class NotifierSettings(BaseModel):
    """One notification channel, e.g. a signed webhook."""

    name: str
    kind: str = "webhook"
    #: event names to send (request.created, request.decided, grant.created, grant.expiring,
    #: grant.revoked, grant.lapsed, break_glass, account.needs_operator), or "*" for all
    events: list[str] = Field(default_factory=lambda: ["*"])
    options: dict[str, Any] = Field(default_factory=dict)
    #: the signing secret: a file, or the name of an environment variable
    secret_file: Path | None = None
    secret_env: str | None = None


class WorkflowSettings(BaseModel):
    #: warn (notify) this many seconds before a grant expires
    expiry_warning_seconds: int = 300
    #: retry backoff of background jobs: base * 2^attempt seconds, capped
    job_backoff_base: float = 2.0
    job_backoff_max: float = 300.0
    #: attempts of a grant's cleanup (rotation, drop, revoke) before the account needs an operator
    cleanup_max_attempts: int = Field(default=6, ge=1, le=50)


class Settings(BaseSettings):
    """Everything a jitvault node needs to start."""

    model_config = SettingsConfigDict(env_prefix="JITVAULT_", env_nested_delimiter="__")

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str = ""
    log_level: str = "info"
    server: ServerSettings = Field(default_factory=ServerSettings)
    keys: KeySettings = Field(default_factory=KeySettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    workflow: WorkflowSettings = Field(default_factory=WorkflowSettings)
    notifiers: list[NotifierSettings] = Field(default_factory=list)

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'jitvault.db'}"

    @property
    def effective_key_file(self) -> Path:
        return self.keys.key_file or (self.data_dir / "root.key")

    @property
    def config_file(self) -> Path:
        return self.data_dir / "config.toml"


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read ``config_file`` (if given), then apply environment variables and ``overrides``."""
    data: dict[str, Any] = {}
    if config_file is not None:
        try:
            data = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(
                f"config file {config_file} does not exist",
                hint="run 'jitvault init' first or pass --config",
            ) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from exc
        data.setdefault("data_dir", str(config_file.parent))
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        # init kwargs take precedence over env in pydantic-settings; we want env to win over the
        # file, so we read the file as the lowest-priority source by merging env on top.
        env_settings = Settings()
        merged = _merge(data, env_settings.model_dump(exclude_unset=True))
        merged.update({k: v for k, v in overrides.items() if v is not None})
        return Settings(**merged)
    except PydanticValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc.errors()[0]['msg']}") from exc


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def settings_to_toml(settings: Settings) -> dict[str, Any]:
    """The TOML document ``jitvault init`` writes: no secrets, paths as strings."""
    # data_dir is where the file lives: writing it down would tie a copied or moved data
    # directory to its old place
    return settings.model_dump(mode="json", exclude_none=True, exclude={"data_dir"})


__all__ = [
    "DEFAULT_API_PORT",
    "DEFAULT_PG_PROXY_PORT",
    "DEFAULT_SSH_PROXY_PORT",
    "AuthSettings",
    "KeySettings",
    "NotifierSettings",
    "ServerSettings",
    "Settings",
    "TransitSettings",
    "WorkflowSettings",
    "default_data_dir",
    "load_settings",
    "settings_to_toml",
]

"""Local operator commands: init, server, dev. They open the data directory directly.

The server stack (FastAPI, SQLAlchemy, the services) is imported inside the commands that need
it, so that remote commands such as ``jitvault whoami`` start fast.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import typer

from jitvault.cli.client import EXIT_CONFLICT, EXIT_INVALID, EXIT_UNAVAILABLE, fail
from jitvault.cli.output import err_console, note
from jitvault.errors import JitvaultError

if TYPE_CHECKING:
    from jitvault.config import Settings
    from jitvault.services import Node

DataDirOpt = typer.Option(
    None, "--data-dir", help="Data directory (default: ~/.local/share/jitvault)."
)
ConfigOpt = typer.Option(None, "--config", "-c", help="Path to config.toml.")


def _settings(config: Path | None, data_dir: Path | None) -> Settings:
    from jitvault.config import default_data_dir, load_settings

    if config is not None:
        return load_settings(config)
    d = (data_dir or default_data_dir()).expanduser().resolve()
    if (d / "config.toml").exists():
        return load_settings(d / "config.toml")
    return load_settings(None, data_dir=str(d))


def _check_ports_free(settings: Settings) -> None:
    """Refuse to start when the API's or a proxy's port is taken (another jitvault?), rather
    than run without the listener."""
    cfg = settings.server
    ports = [("API", cfg.api_port, "--port", False)]
    if cfg.proxies:
        # with proxy_reuse_port the proxies bind as the other nodes' did: a port they hold
        # with SO_REUSEPORT is free for this one too
        ports += [
            ("PostgreSQL proxy", cfg.pg_proxy_port, "server.pg_proxy_port", cfg.proxy_reuse_port),
            ("SSH proxy", cfg.ssh_proxy_port, "server.ssh_proxy_port", cfg.proxy_reuse_port),
        ]
    for what, port, setting, shared in ports:
        if port == 0:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if shared:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                s.bind((cfg.listen, port))
            except OSError:
                fail(
                    f"the {what} port {port} on {cfg.listen} is in use: is another jitvault "
                    f"running? (choose another with {setting})",
                    EXIT_UNAVAILABLE,
                )


def _print_exports(settings: Settings, token: str | None) -> None:
    cfg = settings.server
    typer.echo(f"export JITVAULT_ADDR=http://{cfg.listen}:{cfg.api_port}")
    if token:
        typer.echo(f"export JITVAULT_TOKEN={token}")


def init(
    data_dir: Path | None = DataDirOpt,
    key_provider: str = typer.Option(
        "file", "--key-provider", help="Root key provider: file, shamir or transit."
    ),
    database_url: str = typer.Option(
        "", "--database-url", help="Default: SQLite in the data directory."
    ),
    admin: str = typer.Option("admin", "--admin", help="Name of the first admin."),
    transit_addr: str | None = typer.Option(None, "--transit-addr", help="OpenBao/Vault URL."),
    transit_key: str | None = typer.Option(None, "--transit-key", help="Transit key name."),
    transit_mount: str | None = typer.Option(None, "--transit-mount", help="Transit mount."),
    port: int | None = typer.Option(None, "--port", help="API port (default 8470)."),
) -> None:
    """Create the data directory, config, database and root key, and the first admin.

    Prints the lines to export. With --key-provider shamir, only the config is written:
    start the server and run 'jitvault operator init --shares 5 --threshold 3'.
    """
    from jitvault.config import default_data_dir, load_settings
    from jitvault.services import Node, system

    if key_provider not in ("file", "shamir", "transit"):
        fail("--key-provider must be file, shamir or transit", EXIT_INVALID)
    provider: Literal["file", "shamir", "transit"] = key_provider  # type: ignore[assignment]
    d = (data_dir or default_data_dir()).expanduser().resolve()
    if (d / "config.toml").exists():
        fail(f"{d} is already initialized (config.toml exists)", EXIT_CONFLICT)
    settings = load_settings(None, data_dir=str(d), database_url=database_url or None)
    settings.keys.provider = provider
    transit = settings.keys.transit
    transit.addr = transit_addr or transit.addr
    transit.key_name = transit_key or transit.key_name
    transit.mount = transit_mount or transit.mount
    if port is not None:
        settings.server.api_port = port
    path = system.write_config(settings)
    note(f"wrote {path}")
    if provider == "shamir":
        note(
            "next: 'jitvault server --config "
            f"{path}', then 'jitvault operator init --shares 5 --threshold 3'"
        )
        _print_exports(settings, None)
        return
    node = Node.open(settings)
    try:
        result = system.initialize(node, admin)
    finally:
        node.close()
    note(f"initialized: {provider} key provider, admin {result.admin_name!r}")
    if provider == "file":
        note(f"root key: {settings.effective_key_file} (back it up, mode 0600)")
    _print_exports(settings, result.admin_token.reveal())


def _serve(node: Node) -> None:
    from jitvault import runtime

    try:
        runtime.serve(node)
    except JitvaultError as exc:
        fail(str(exc), EXIT_UNAVAILABLE)


def server(
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataDirOpt,
    port: int | None = typer.Option(None, "--port", help="API port (overrides config)."),
) -> None:
    """Run the API, the proxies and the background worker in one process."""
    settings = _settings(config, data_dir)
    if port is not None:
        settings.server.api_port = port
    _check_ports_free(settings)
    from jitvault import runtime  # after the cheap checks: it loads the whole server

    runtime.configure_logging(settings.log_level)
    _serve(runtime.open_node(settings))


def dev(
    data_dir: Path | None = DataDirOpt,
    port: int | None = typer.Option(None, "--port", help="API port (default 8470)."),
) -> None:
    """Initialize if needed (SQLite, local key file), print an admin token, run the server.

    Running it again reuses the data directory and prints a fresh admin token.
    """
    settings = _settings(None, data_dir)
    if port is not None:
        settings.server.api_port = port
    if settings.keys.provider != "file":
        fail("'jitvault dev' uses the file key provider; use 'jitvault server'", EXIT_INVALID)
    _check_ports_free(settings)
    from jitvault import runtime  # after the cheap checks: it loads the whole server
    from jitvault.services import Node, system

    runtime.configure_logging(settings.log_level)
    system.write_config(settings)
    # not runtime.open_node: on a fresh directory it would log "run 'jitvault operator init'"
    node = Node.open(settings)
    if not node.vault.is_initialized():
        token = system.initialize(node, token_description=system.DEV_TOKEN).admin_token
        note(f"initialized {settings.data_dir}")
    else:
        try:
            node.vault.auto_unseal()
        except JitvaultError as exc:
            node.close()
            fail(f"the vault could not be unsealed: {exc}", EXIT_UNAVAILABLE)
        token = system.dev_admin_token(node)
    cfg = settings.server
    _print_exports(settings, token.reveal())
    typer.echo(f"# data: {settings.data_dir} (SQLite, root key {settings.effective_key_file})")
    typer.echo(
        f"# psql: PostgreSQL proxy on {cfg.listen}:{cfg.pg_proxy_port}; "
        "'jitvault connect REQUEST_ID' prints the psql line for a live grant"
    )
    typer.echo(
        f"# ssh:  SSH proxy on {cfg.listen}:{cfg.ssh_proxy_port}; "
        "'jitvault connect REQUEST_ID' prints the ssh line for a live grant"
    )
    typer.echo(f"# API docs: http://{cfg.listen}:{cfg.api_port}/docs  (Ctrl-C stops)")
    sys.stdout.flush()
    _serve(node)


def reencrypt(
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataDirOpt,
) -> None:
    """Move every stored secret to the active key term now (what the worker does), with
    progress. Safe to interrupt and run again."""
    from rich.progress import Progress

    from jitvault import runtime
    from jitvault.services import keys

    settings = _settings(config, data_dir)
    node = runtime.open_node(settings)
    try:
        if node.vault.sealed:
            fail(
                "the vault is sealed; this command needs the file or transit key provider",
                EXIT_UNAVAILABLE,
            )
        total = keys.status(node).remaining
        with Progress(console=err_console, transient=False) as progress:
            task = progress.add_task("re-encrypting", total=max(total, 1))
            moved = keys.reencrypt_all(
                node, lambda done, tot: progress.update(task, completed=done, total=max(tot, 1))
            )
        note(f"done: {moved} values now under key term {node.vault.keyring.active_term}")
    except JitvaultError as exc:
        fail(str(exc))
    finally:
        node.close()


__all__ = ["dev", "init", "reencrypt", "server"]

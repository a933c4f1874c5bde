"""Settings precedence and plugin discovery."""

from __future__ import annotations

from pathlib import Path

import pytest

from jitvault.config import load_settings
from jitvault.errors import ConfigError, NotFound
from jitvault.plugin_api import TargetPlugin, discover_targets


def test_environment_overrides_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('log_level = "warning"\n[server]\napi_port = 9001\nlisten = "127.0.0.2"\n')
    monkeypatch.setenv("JITVAULT_SERVER__API_PORT", "9002")
    settings = load_settings(cfg)
    assert settings.server.api_port == 9002
    assert settings.server.listen == "127.0.0.2"  # file value kept where env says nothing
    assert settings.log_level == "warning"
    assert settings.data_dir == tmp_path
    assert settings.effective_database_url == f"sqlite:///{tmp_path / 'jitvault.db'}"


def test_missing_or_broken_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('[keys]\nprovider = "plaintext"\n')
    with pytest.raises(ConfigError, match="invalid configuration"):
        load_settings(wrong)


def test_postgres_target_plugin_is_found_through_its_entry_point() -> None:
    registry = discover_targets()
    assert "postgres" in registry.kinds()
    plugin = registry.get("postgres")
    assert isinstance(plugin, TargetPlugin)
    opts = plugin.parse_options({"host": "127.0.0.1", "port": 5433, "dbname": "app"})
    assert opts["port"] == 5433


def test_unknown_target_kind_names_the_installed_kinds() -> None:
    with pytest.raises(NotFound) as err:
        discover_targets().get("mainframe")
    assert "postgres" in (err.value.hint or "")

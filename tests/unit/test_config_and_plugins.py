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


def test_written_config_names_no_data_dir_so_a_moved_directory_keeps_working(
    tmp_path: Path,
) -> None:
    import tomllib

    import tomli_w

    from jitvault.config import settings_to_toml

    old = tmp_path / "old"
    old.mkdir()
    (old / "config.toml").write_text(
        tomli_w.dumps(settings_to_toml(load_settings(None, data_dir=str(old))))
    )
    assert "data_dir" not in tomllib.loads((old / "config.toml").read_text())
    moved = tmp_path / "moved"
    old.rename(moved)
    settings = load_settings(moved / "config.toml")
    assert settings.data_dir == moved
    assert settings.effective_key_file == moved / "root.key"

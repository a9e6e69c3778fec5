"""The master key stays off the disk tree of the keystore and audit log it protects (docs/adr/0081).

By default it comes from MAIF_MASTER_KEY, else from ``$XDG_CONFIG_HOME/maif/master.key`` (created
owner-only on first run); a key file inside the security directory or the store's data directory is
refused with a ConfigError unless ``unsafe_master_key_in_data_dir`` asks for it by name, and a master key
left beside the keystore by an older version is refused with a hint, never silently used. Each test sets
XDG_CONFIG_HOME to its own directory, so nothing is written to the real home directory.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from maif.errors import ConfigError
from maif.security.manager import (
    AUDIT_SIGNER_AGENT_ID,
    UnsafeConfigurationWarning,
    audit_public_key,
    create_maif_security_manager,
    default_master_key_file,
)


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("MAIF_MASTER_KEY", raising=False)
    monkeypatch.delenv("MAIF_SECURITY_MASTER_KEY_FILE", raising=False)
    home = tmp_path / "config-home"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home


def files_named(directory: Path, name: str) -> list[Path]:
    return sorted(directory.rglob(name))


def test_first_run_creates_the_key_outside_the_data_and_never_orphans_a_keystore(
    tmp_path: Path, config_home: Path
) -> None:
    data = tmp_path / "data" / "security"
    with pytest.warns(UserWarning, match="created a new master key"):
        create_maif_security_manager(None, data_dir=data).close()
    key_file = config_home / "maif" / "master.key"
    assert default_master_key_file() == key_file
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert not files_named(tmp_path / "data", "master.key")  # nothing key-like beside the log
    assert key_file.read_text().strip().encode() not in b"".join(
        path.read_bytes() for path in data.rglob("*") if path.is_file()
    )
    create_maif_security_manager(None, data_dir=data).close()  # reopens with the same key
    assert audit_public_key(data) is not None  # `maif audit public-key` finds it the same way
    key_file.unlink()
    with pytest.raises(ConfigError, match="no master key for the existing keystore"):
        create_maif_security_manager(None, data_dir=data)
    assert not key_file.exists()  # a new key was not invented for the old keystore


@pytest.mark.parametrize("where", ["security", "audit", "store"])
def test_a_key_file_inside_the_protected_directories_is_refused(
    tmp_path: Path, config_home: Path, where: str
) -> None:
    store = tmp_path / "store"
    security_dir = store / "security"
    key_file = {"security": security_dir, "audit": security_dir / "audit", "store": store}[where] / "mk"
    with pytest.raises(ConfigError, match="beside the data it protects") as caught:
        create_maif_security_manager(
            {"master_key_file": str(key_file)}, data_dir=security_dir, protected_directories=[store]
        )
    assert "unsafe_master_key_in_data_dir" in (caught.value.hint or "")
    assert not key_file.exists() and not (security_dir / "keys.maifkeys").exists()


def test_a_symlink_does_not_smuggle_the_key_into_the_data(tmp_path: Path, config_home: Path) -> None:
    security_dir = tmp_path / "security"
    security_dir.mkdir()
    outside = tmp_path / "looks-outside"
    outside.symlink_to(security_dir, target_is_directory=True)
    with pytest.raises(ConfigError, match="beside the data it protects"):
        create_maif_security_manager(
            {"master_key_file": str(outside / "master.key")}, data_dir=security_dir
        )


def test_a_key_file_elsewhere_is_used_and_the_environment_can_name_it(
    tmp_path: Path, config_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "secrets" / "maif.key"
    key_file.parent.mkdir()
    key_file.write_text(secrets.token_hex(32))
    key_file.chmod(0o600)
    data = tmp_path / "security"
    create_maif_security_manager({"master_key_file": str(key_file)}, data_dir=data).close()
    monkeypatch.setenv("MAIF_SECURITY_MASTER_KEY_FILE", str(key_file))
    create_maif_security_manager(None, data_dir=data).close()  # same key: the keystore opens
    assert not (config_home / "maif" / "master.key").exists()


def test_the_environment_variable_wins_over_every_file(
    tmp_path: Path, config_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAIF_MASTER_KEY", secrets.token_hex(32))
    create_maif_security_manager(None, data_dir=tmp_path / "security").close()
    assert not files_named(tmp_path, "master.key")


def test_a_key_left_beside_the_keystore_by_an_older_version_is_refused_with_a_hint(
    tmp_path: Path, config_home: Path
) -> None:
    data = tmp_path / "security"
    with pytest.warns(UserWarning) as warned:
        create_maif_security_manager({"unsafe_master_key_in_data_dir": True}, data_dir=data).close()
    assert any(isinstance(item.message, UnsafeConfigurationWarning) for item in warned)
    legacy = data / "master.key"
    assert legacy.exists()  # the old layout, asked for by name
    with pytest.raises(ConfigError, match="no longer read from there") as caught:
        create_maif_security_manager(None, data_dir=data)
    assert f"mv {legacy}" in (caught.value.hint or "")
    # Moved out as the hint says, the same keystore opens with it.
    target = default_master_key_file()
    target.parent.mkdir(parents=True)
    legacy.rename(target)
    create_maif_security_manager(None, data_dir=data).close()


def test_maif_serve_refuses_a_key_file_in_its_data_directory(tmp_path: Path, config_home: Path) -> None:
    data = tmp_path / "maif-data"
    config = tmp_path / "maif.toml"
    config.write_text(
        f'[storage]\ndata_dir = "{data}"\n[security]\nmaster_key_file = "{data / "master.key"}"\n'
    )
    environment = {key: value for key, value in os.environ.items() if key != "MAIF_MASTER_KEY"}
    served = subprocess.run(
        [sys.executable, "-m", "maif", "serve", "--port", "0", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**environment, "XDG_CONFIG_HOME": str(config_home)},
        cwd=tmp_path,
    )
    assert served.returncode == 2, served.stderr
    assert "beside the data it protects" in served.stderr
    assert "unsafe_master_key_in_data_dir" in served.stderr
    assert not (data / "master.key").exists() and not (data / "security" / "keys.maifkeys").exists()


def test_maif_audit_public_key_finds_the_key_file_the_config_names(tmp_path: Path, config_home: Path) -> None:
    from typer.testing import CliRunner

    from maif.cli.main import app

    key_file = tmp_path / "secrets" / "maif.key"
    key_file.parent.mkdir()
    key_file.write_text(secrets.token_hex(32))
    key_file.chmod(0o600)
    config = tmp_path / "maif.toml"
    config.write_text(f'[security]\nmaster_key_file = "{key_file}"\n')
    data = tmp_path / "security"
    with create_maif_security_manager(config, data_dir=data) as manager:
        audit_key = manager.keystore.current_key(AUDIT_SIGNER_AGENT_ID)
    assert audit_key is not None
    expected = audit_key.public_key.hex()
    runner = CliRunner()
    without = runner.invoke(app, ["audit", "public-key", str(data), "--json"])
    assert without.exit_code == 2 and "no master key" in without.stdout  # the default file is not there
    found = runner.invoke(app, ["audit", "public-key", str(data), "--json", "--config", str(config)])
    assert found.exit_code == 0, found.stdout
    assert expected in found.stdout


def test_a_relative_xdg_config_home_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/dir")
    assert default_master_key_file() == Path.home() / ".config" / "maif" / "master.key"

"""`maif dev-issuer` without a server: loopback only, tokens shaped as RFC 9068 access tokens, clear errors.
tests/service/test_dev_issuer.py runs it against a real `maif serve`."""

from __future__ import annotations

import json
from pathlib import Path

import jwt
import pytest
from typer.testing import CliRunner

from maif.cli.dev_issuer import CLIENT_ID, UnsafeDevelopmentIssuer, load_signing_key, require_loopback
from maif.cli.exit_codes import ExitCode
from maif.cli.main import app
from maif.errors import ConfigError

runner = CliRunner()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com", ""])
def test_serve_refuses_anything_but_loopback_and_creates_no_key(tmp_path: Path, host: str) -> None:
    key_file = tmp_path / "issuer.key"
    result = runner.invoke(app, ["dev-issuer", "serve", "--host", host, "--key-file", str(key_file)])
    assert result.exit_code == ExitCode.USAGE_ERROR and "loopback" in result.stderr
    assert not key_file.exists()


@pytest.mark.parametrize("url", ["http://0.0.0.0:8900", "https://127.0.0.1:8900", "http://127.0.0.1:8900/x"])
def test_an_issuer_url_off_loopback_or_with_a_path_is_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError):
        UnsafeDevelopmentIssuer(load_signing_key(tmp_path / "k", create=True), url)


def test_loopback_addresses_are_accepted() -> None:
    assert require_loopback("localhost") == "127.0.0.1"
    assert require_loopback("::1") == "::1" and require_loopback("127.0.0.2") == "127.0.0.2"


def test_token_is_an_rfc_9068_access_token(tmp_path: Path) -> None:
    key_file = tmp_path / "issuer.key"
    key = load_signing_key(key_file, create=True)
    result = runner.invoke(
        app,
        [
            *("dev-issuer", "token", "--key-file", str(key_file), "--subject", "agent-7"),
            *("--scope", "maif:read", "--lifetime-s", "60", "--json"),
        ],
    )
    assert result.exit_code == 0, result.stderr
    token = json.loads(result.stdout)["access_token"]
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt" and header["alg"] == "EdDSA"
    claims = jwt.decode(token, key.public_key(), algorithms=["EdDSA"], audience="urn:maif:store")
    assert claims["iss"] == "http://127.0.0.1:8900" and claims["sub"] == "agent-7"
    assert claims["scope"] == "maif:read" and claims["client_id"] == CLIENT_ID
    assert claims["exp"] - claims["iat"] == 60 and claims["jti"]
    assert header["kid"] == UnsafeDevelopmentIssuer(key, claims["iss"]).key_id


def test_token_without_the_key_file_says_how_to_make_one(tmp_path: Path) -> None:
    result = runner.invoke(app, ["dev-issuer", "token", "--key-file", str(tmp_path / "missing.key")])
    assert result.exit_code == ExitCode.KEY_ERROR and "dev-issuer serve" in result.stderr
    assert not (tmp_path / "missing.key").exists()


def test_token_lifetime_is_short(tmp_path: Path) -> None:
    load_signing_key(tmp_path / "k", create=True)
    arguments = ["dev-issuer", "token", "--key-file", str(tmp_path / "k"), "--lifetime-s", "86400"]
    result = runner.invoke(app, arguments)
    assert result.exit_code == ExitCode.USAGE_ERROR

"""`maif dev-issuer` end to end: a real `maif serve` trusting the development issuer accepts its tokens
for a first write and read, and refuses a token signed by another development key; `maif serve` says
where it listens and warns when no issuer is configured."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_process import free_port, start_server

from maif.cli.dev_issuer import UnsafeDevelopmentIssuer, load_signing_key
from maif.cli.serve import NO_ISSUER_WARNING


@dataclass
class DevIssuer:
    """A running `maif dev-issuer serve` process and what it printed."""

    process: subprocess.Popen[str]
    key_file: Path
    document: dict[str, Any]

    @property
    def url(self) -> str:
        return str(self.document["issuer"])

    def config(self) -> dict[str, Any]:
        """The security section `start_server` writes: exactly the oauth_providers the issuer printed."""
        return {"oauth_providers": self.document["oauth_providers"]}

    def token(self, subject: str = "agent-1", *scopes: str) -> str:
        arguments = ["--issuer", self.url, "--key-file", str(self.key_file), "--subject", subject]
        for scope in scopes:
            arguments += ["--scope", scope]
        return maif("dev-issuer", "token", *arguments).strip()


def maif(*arguments: str) -> str:
    finished = subprocess.run(
        [sys.executable, "-m", "maif", *arguments], capture_output=True, text=True, timeout=60, check=False
    )
    assert finished.returncode == 0, finished.stderr
    return finished.stdout


@pytest.fixture(scope="module")
def dev_issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevIssuer]:
    key_file = tmp_path_factory.mktemp("dev-issuer") / "issuer.key"
    command = [sys.executable, "-m", "maif", "dev-issuer", "serve", "--key-file", str(key_file)]
    process = subprocess.Popen(
        [*command, "--port", str(free_port()), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = []
        while not lines or lines[-1] != "}\n":  # one indented JSON document, then it serves
            line = process.stdout.readline()
            assert line, f"dev issuer exited: {process.communicate(timeout=10)[1]}"
            lines.append(line)
        issuer = DevIssuer(process, key_file, json.loads("".join(lines)))
        _wait_for(f"{issuer.url}/.well-known/openid-configuration")
        yield issuer
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0


def _wait_for(url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} not answering after 30 s"
        time.sleep(0.1)


def test_the_first_write_with_a_dev_token_and_a_foreign_key_refused(
    dev_issuer: DevIssuer, tmp_path: Path
) -> None:
    assert (dev_issuer.key_file.stat().st_mode & 0o777) == 0o600
    discovery = httpx.get(f"{dev_issuer.url}/.well-known/openid-configuration").json()
    assert discovery["issuer"] == dev_issuer.url
    server = start_server(tmp_path / "service", dev_issuer)
    try:
        token = dev_issuer.token("agent-1", "maif:read", "maif:write")
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as client:
            payload = base64.b64encode(b"my first block").decode()
            written = client.post("/v1/blocks", json={"id": "first", "payload_base64": payload})
            assert written.status_code == 201, written.text
            read = client.get("/v1/blocks/first")
            assert read.status_code == 200 and read.content == b"my first block"
            assert [block["block_id"] for block in client.get("/v1/blocks").json()["blocks"]] == ["first"]

        foreign_key = load_signing_key(tmp_path / "foreign.key", create=True)
        forged = UnsafeDevelopmentIssuer(foreign_key, dev_issuer.url).mint(
            "agent-1", ["maif:read", "maif:write"], lifetime_s=300
        )
        refused = httpx.get(f"{server.url}/v1/blocks/first", headers={"Authorization": f"Bearer {forged}"})
        assert refused.status_code == 401

        read_only = dev_issuer.token("agent-1", "maif:read")
        denied = httpx.post(
            f"{server.url}/v1/blocks",
            json={"id": "second", "payload_base64": payload},
            headers={"Authorization": f"Bearer {read_only}"},
        )
        assert denied.status_code == 403
        log = (server.directory / f"server-{server.port}.log").read_text()
        assert f"maif serve: listening on {server.url}" in log
        assert NO_ISSUER_WARNING not in log
    finally:
        assert server.stop() == 0


def test_the_printed_toml_is_the_printed_config(tmp_path: Path) -> None:
    issuer = UnsafeDevelopmentIssuer(load_signing_key(tmp_path / "k", create=True), "http://127.0.0.1:8900")
    assert tomllib.loads(issuer.provider_toml())["security"] == {"oauth_providers": issuer.provider_config()}


class _NoIssuer:
    def config(self) -> dict[str, Any]:
        return {}


def test_serve_without_an_issuer_warns_and_says_where_it_listens(tmp_path: Path) -> None:
    server = start_server(tmp_path / "service", _NoIssuer())
    try:
        assert httpx.get(f"{server.url}/v1/blocks").status_code == 401
    finally:
        assert server.stop() == 0
    log = (server.directory / f"server-{server.port}.log").read_text()
    assert f"maif serve: listening on {server.url}" in log
    assert NO_ISSUER_WARNING in log and "docs/first-write.md" in log

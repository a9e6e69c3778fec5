"""Fixtures for the service tests: the real OIDC issuer (tests/security/conftest.py's helpers) and a real
``python -m maif.service`` (uvicorn) process on 127.0.0.1 at a free port, trusting that issuer."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

_SECURITY_CONFTEST = Path(__file__).resolve().parents[1] / "security" / "conftest.py"
_spec = importlib.util.spec_from_file_location("maif_security_test_fixtures", _SECURITY_CONFTEST)
assert _spec is not None and _spec.loader is not None
security_fixtures = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = security_fixtures
_spec.loader.exec_module(security_fixtures)
Issuer = security_fixtures.Issuer
REPO = Path(__file__).resolve().parents[2]
# The server launcher lives in a uniquely named module, so test modules import it whatever order pytest
# loaded the several conftest.py files in.
from server_process import Server, free_port, start_server  # noqa: E402

__all__ = ["Issuer", "Server", "free_port", "start_server"]


@pytest.fixture(scope="session")
def oidc_issuer() -> Iterator[Any]:
    issuer = security_fixtures.start_issuer()
    try:
        yield issuer
    finally:
        security_fixtures.stop_issuer(issuer)


@pytest.fixture(scope="session")
def server(oidc_issuer: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("service"), oidc_issuer)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def tokens(oidc_issuer: Any) -> dict[str, str]:
    """Real access tokens from the issuer's client_credentials grant."""
    return {
        "agent-1": oidc_issuer.token("agent-1", "maif:read maif:write"),
        "agent-2": oidc_issuer.token("agent-2", "maif:read maif:write"),
        "read-only": oidc_issuer.token("agent-1", "maif:read"),
        "write-only": oidc_issuer.token("agent-1", "maif:write"),
    }


@pytest.fixture
def client(server: Server, tokens: dict[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {tokens['agent-1']}"}, timeout=60
    ) as session:
        yield session

"""`maif serve` processes as nodes of a scaled-out store, for the tests in this directory.

The launcher is the service tests' (tests/service/server_process.py: ``python -m maif.service``, which
is ``maif serve``, trusting the real OIDC issuer of tests/security/conftest.py); the storage keys that
make a served store a node of a shared one come as MAIF_STORAGE_* environment variables, which
override its config file.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parents[1]


def _shared_module(name: str, path: Path) -> ModuleType:
    """A test helper module by path, under the name the tests that own it import it by (one copy)."""
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


security_fixtures = _shared_module("maif_security_test_fixtures", TESTS / "security" / "conftest.py")
server_process = _shared_module("server_process", TESTS / "service" / "server_process.py")


def start_serve(directory: Path, issuer: Any, environment: dict[str, str], **options: Any) -> Any:
    """A started `maif serve` node (``server_process.Server``); ``options`` go to ``start_server``."""
    try:
        return server_process.start_server(directory, issuer, environment=environment, **options)
    except AssertionError as error:  # start_server's report: the server's exit and log tail, or a timeout
        failure = f"maif serve ({environment['MAIF_STORAGE_NODE_ID']}) did not start: {error}"
    pytest.fail(failure, pytrace=False)


def oidc_issuer_running() -> Iterator[Any]:
    """The real OIDC issuer, started; stopped when the generator closes."""
    issuer = security_fixtures.start_issuer()
    try:
        yield issuer
    finally:
        security_fixtures.stop_issuer(issuer)

"""The checked-in OpenAPI document matches the app, and schemathesis finds no server error against a
real server (bounded examples per operation, real tokens)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from maif.service import openapi_document

CHECKED_IN = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"

schema = schemathesis.openapi.from_dict(openapi_document())


def test_checked_in_openapi_matches_the_app() -> None:
    document = openapi_document()
    assert document["openapi"].startswith("3.1")
    assert json.loads(CHECKED_IN.read_text()) == json.loads(json.dumps(document)), (
        "docs/openapi.json is stale: regenerate it with "
        'python -c "import json; from maif.service import openapi_document; '
        'print(json.dumps(openapi_document(), indent=2, sort_keys=True))" > docs/openapi.json'
    )


def test_every_v1_operation_declares_bearer_security() -> None:
    for path, operations in openapi_document()["paths"].items():
        if path.startswith("/v1/"):
            for operation in operations.values():
                assert operation.get("security") == [{"HTTPBearer": []}], path


@pytest.fixture(scope="module")
def auth_headers(tokens: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['agent-1']}"}


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors(case: Any, server: Any, auth_headers: dict[str, str]) -> None:
    case.call_and_validate(base_url=server.url, headers=auth_headers, checks=[not_a_server_error], timeout=60)

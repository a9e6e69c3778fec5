"""The write route below Starlette's stack (docs/adr/0089): POST /v1/blocks goes from the app straight to
its route, so every answer it gives is compared here with the answer the same route gives through
FastAPI's whole stack (the app called as a plain FastAPI), byte for byte: refusals, problems, receipts.
Also: the receipt's msgspec encoding is the pydantic model's JSON, the audit barrier holds on this path,
and the connection protocol writes a response's head and body in one write.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import secrets
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from uvicorn.server import ServerState

from maif import limits
from maif.security import audit as audit_module
from maif.security.manager import SecurityManager, create_maif_security_manager
from maif.service import app as app_module
from maif.service import schemas
from maif.service.app import create_app
from maif.service.blocks import Written
from maif.service.connections import guarded_protocol
from maif.storage import create_maif_storage

_JSON = {"Content-Type": "application/json"}
_RAW = {"Content-Type": "application/octet-stream"}


@pytest.fixture
def manager(tmp_path: Path, oidc_issuer: Any) -> Iterator[SecurityManager]:
    manager = create_maif_security_manager(
        oidc_issuer.config(), data_dir=tmp_path / "security", master_key=secrets.token_bytes(32)
    )
    try:
        yield manager
    finally:
        manager.close()


def _served(tmp_path: Path, manager: SecurityManager, scenario: Callable[..., Awaitable[None]]) -> None:
    async def run() -> None:
        async with await create_maif_storage({"data_dir": str(tmp_path / "data")}) as storage:
            app = create_app(storage, manager, spool_dir=tmp_path / "spool")
            assert isinstance(app, app_module._ServiceApp) and app.write_route is not None

            async def through_fastapi(scope: Any, receive: Any, send: Any) -> None:
                await FastAPI.__call__(app, scope, receive, send)

            direct = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://maif.test")
            framework = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=through_fastapi), base_url="http://maif.test"
            )
            async with direct, framework:
                await scenario(direct, framework, storage)

    asyncio.run(run())


def _cases(token: str, reader: str) -> list[tuple[str, bytes, dict[str, str]]]:
    bearer = {"Authorization": f"Bearer {token}"}
    too_large = b"x" * (limits.service_json_body_bytes_max + 1)
    long_id = b"i" * (limits.block_id_bytes_max + 1)
    return [
        ("no token, bad header", b"raw", {**_RAW, "X-MAIF-Block-Type": "ab"}),
        ("forged token", b"raw", {**_RAW, "Authorization": "Bearer not.a.jwt"}),
        ("not a bearer", b"raw", {**_RAW, "Authorization": "Basic dXNlcjpwdw=="}),
        ("read scope only", b'{"payload_base64": "aGk="}', {**_JSON, "Authorization": f"Bearer {reader}"}),
        ("header too long", b"raw", {**_RAW, **bearer, "Idempotency-Key": "k" * 256}),
        (
            "two header errors",
            b'{"payload_base64": "aGk="}',
            {**_JSON, **bearer, "Content-Digest": "d" * 1025, "X-MAIF-Block-Type": "a"},
        ),
        ("unsupported media", b"hello", {"Content-Type": "text/plain", **bearer}),
        ("no media", b"hello", bearer),
        ("too large", too_large, {**_JSON, **bearer}),
        ("invalid json", b'{"payload_base64": ', {**_JSON, **bearer}),
        ("wrong field type", b'{"payload_base64": 5}', {**_JSON, **bearer}),
        ("bad base64", b'{"payload_base64": "***"}', {**_JSON, **bearer}),
        ("bad metadata header", b"raw", {**_RAW, **bearer, "X-MAIF-Metadata": "[1]"}),
        ("bad digest", b"raw", {**_RAW, **bearer, "Content-Digest": "sha-256=:AAAA:"}),
        ("bad block id", b'{"id": "%s", "payload_base64": "aGk="}' % long_id, {**_JSON, **bearer}),
        ("existing block", b'{"id": "taken", "payload_base64": "aGk="}', {**_JSON, **bearer}),
    ]


def test_every_refusal_of_the_direct_write_route_is_the_fastapi_routes_byte_for_byte(
    tmp_path: Path, manager: SecurityManager, oidc_issuer: Any
) -> None:
    token = oidc_issuer.token("agent-1", "maif:read maif:write")
    reader = oidc_issuer.token("agent-1", "maif:read")

    async def scenario(direct: httpx.AsyncClient, framework: httpx.AsyncClient, storage: Any) -> None:
        taken = await direct.post(
            "/v1/blocks", content=b'{"id": "taken", "payload_base64": "aGk="}',
            headers={**_JSON, "Authorization": f"Bearer {token}"},
        )
        assert taken.status_code == 201, taken.text
        statuses = set()
        for name, body, headers in _cases(token, reader):
            ours, theirs = [
                await client.post("/v1/blocks", content=body, headers={**headers, "X-Request-Id": "case"})
                for client in (direct, framework)
            ]
            assert ours.status_code == theirs.status_code >= 400, name
            assert ours.headers.raw == theirs.headers.raw, name
            assert ours.content == theirs.content, name
            assert ours.headers["content-type"] == "application/problem+json", name
            statuses.add(ours.status_code)
        assert statuses == {400, 401, 403, 409, 413, 415, 422}

    _served(tmp_path, manager, scenario)


def test_a_write_without_a_token_is_refused_401_before_its_headers_are_looked_at(
    tmp_path: Path, manager: SecurityManager
) -> None:
    async def scenario(direct: httpx.AsyncClient, framework: httpx.AsyncClient, storage: Any) -> None:
        headers = {**_RAW, "X-MAIF-Block-Type": "toolong", "Idempotency-Key": "k" * 300}
        answer = await direct.post("/v1/blocks", content=b"raw", headers=headers)
        assert answer.status_code == 401
        assert answer.json()["type"] == "urn:maif:problem:unauthenticated"
        assert answer.headers["www-authenticate"].startswith("Bearer")

    _served(tmp_path, manager, scenario)


def test_a_middleware_an_embedder_adds_sees_the_write_route_too(
    tmp_path: Path, manager: SecurityManager
) -> None:
    """The shortcut skips only the app's own layers: a middleware added after create_app (CORS, an
    embedder's own auth or logging) must not be bypassed by POST /v1/blocks."""

    async def run() -> None:
        async with await create_maif_storage({"data_dir": str(tmp_path / "data")}) as storage:
            app = create_app(storage, manager, spool_dir=tmp_path / "spool")
            seen: list[str] = []

            class Recorder:
                def __init__(self, inner: Any) -> None:
                    self.inner = inner

                async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
                    if scope["type"] == "http":
                        seen.append(f"{scope['method']} {scope['path']}")
                    await self.inner(scope, receive, send)

            app.add_middleware(Recorder)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://maif.test") as client:
                answer = await client.post("/v1/blocks", content=b"raw", headers=_RAW)
            assert answer.status_code == 401
            assert seen == ["POST /v1/blocks"]

    asyncio.run(run())


def test_receipts_of_both_paths_have_the_same_shape_and_the_block_is_stored(
    tmp_path: Path, manager: SecurityManager, oidc_issuer: Any
) -> None:
    bearer = {"Authorization": f"Bearer {oidc_issuer.token('agent-1', 'maif:read maif:write')}"}

    async def scenario(direct: httpx.AsyncClient, framework: httpx.AsyncClient, storage: Any) -> None:
        receipts = []
        for number, client in enumerate((direct, framework)):
            for body, headers in (
                (json.dumps({"id": f"json-{number}", "payload_base64": "aGk="}).encode(), _JSON),
                (b"hi", {**_RAW, "X-MAIF-Block-Id": f"raw-{number}"}),
            ):
                answer = await client.post("/v1/blocks", content=body, headers={**headers, **bearer})
                assert answer.status_code == 201, answer.text
                receipts.append(answer)
        for ours, theirs in ((receipts[0], receipts[2]), (receipts[1], receipts[3])):
            assert [name for name, _ in ours.headers.raw] == [name for name, _ in theirs.headers.raw]
            assert list(ours.json()) == list(theirs.json()) == list(schemas.WriteReceiptOut.model_fields)
            assert ours.headers["location"] == f"/v1/blocks/{ours.json()['block_id']}"
            assert ours.headers["etag"] == f'"{ours.json()["digest"]}"'
        for block_id in ("json-0", "raw-0"):
            assert (await storage.read_block(block_id)).data == b"hi"

    _served(tmp_path, manager, scenario)


@pytest.mark.parametrize("block_id", ["plain", "ünïcödé-ід", "tab\tand\u2028line", 'quote"back\\slash'])
def test_the_msgspec_receipt_is_the_pydantic_models_json(block_id: str) -> None:
    written = Written(block_id=block_id, digest=bytes(range(32)), lsn=2**40, payload_length=7, parts=3)
    response = app_module._receipt_response(written)
    model = schemas.WriteReceiptOut(
        block_id=block_id, digest=written.digest.hex(), lsn=written.lsn, payload_length=7, parts=3
    )
    expected = json.dumps(model.model_dump(), ensure_ascii=False, separators=(",", ":")).encode()
    assert response.body == expected
    assert response.status_code == 201 and response.media_type == "application/json"


class _HeldDisk:
    """``os.fdatasync`` that, in the audit log's flusher thread only (the store's own syncs go through),
    blocks until released, or fails with EIO once ``failing`` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.failing = False
        self._real = os.fdatasync

    def __call__(self, descriptor: int) -> None:
        if not threading.current_thread().name.startswith("maif-audit-flush-"):
            self._real(descriptor)
            return
        self.release.wait(timeout=30)
        if self.failing:
            raise OSError(errno.EIO, "Input/output error")
        self._real(descriptor)


def test_the_direct_write_route_answers_only_after_its_audit_entry_is_durable(
    tmp_path: Path, manager: SecurityManager, oidc_issuer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    bearer = {"Authorization": f"Bearer {oidc_issuer.token('agent-1', 'maif:read maif:write')}"}
    disk = _HeldDisk()

    async def scenario(direct: httpx.AsyncClient, framework: httpx.AsyncClient, storage: Any) -> None:
        monkeypatch.setattr(audit_module.os, "fdatasync", disk)
        body = b'{"id": "held", "payload_base64": "aGk="}'
        answer = asyncio.ensure_future(direct.post("/v1/blocks", content=body, headers={**_JSON, **bearer}))
        await asyncio.sleep(0.3)
        assert not answer.done(), "the write answered before its audit entry was durable"
        disk.release.set()
        response = await asyncio.wait_for(answer, timeout=20)
        assert response.status_code == 201, response.text

    try:
        _served(tmp_path, manager, scenario)
    finally:
        disk.release.set()
    entries = [entry for entry in manager.get_audit_log() if entry.resource == "block:held"]
    assert [(entry.action, entry.decision) for entry in entries] == [("write", "allow")]


def test_a_direct_write_whose_audit_sync_fails_is_refused_and_nothing_is_stored(
    tmp_path: Path, manager: SecurityManager, oidc_issuer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    bearer = {"Authorization": f"Bearer {oidc_issuer.token('agent-1', 'maif:read maif:write')}"}
    disk = _HeldDisk()
    disk.failing = True
    disk.release.set()

    async def scenario(direct: httpx.AsyncClient, framework: httpx.AsyncClient, storage: Any) -> None:
        monkeypatch.setattr(audit_module.os, "fdatasync", disk)
        body = b'{"id": "unrecorded", "payload_base64": "aGk="}'
        response = await direct.post("/v1/blocks", content=body, headers={**_JSON, **bearer})
        monkeypatch.undo()
        assert response.status_code in (403, 503), response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert not await storage.exists("unrecorded")

    _served(tmp_path, manager, scenario)


class _RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol: Any) -> None:
        pass


async def _plain_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})  # chunked
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if scope["method"] == "POST":
        while (await receive()).get("more_body"):
            pass
    body = b"answer body"
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _exchange(request: bytes, later: bytes = b"") -> list[bytes]:
    async def run() -> list[bytes]:
        config = uvicorn.Config(_plain_app, lifespan="off", log_config=None, access_log=False)
        config.load()
        protocol_class: Any = guarded_protocol(5.0, 8, 64 * 1024)
        protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
        transport = _RecordingTransport()
        protocol.connection_made(transport)
        protocol.data_received(request)
        for chunk in (later, b""):
            for _ in range(25):
                await asyncio.sleep(0.01)
            if chunk:
                protocol.data_received(chunk)
        protocol.connection_lost(None)
        return transport.writes

    return asyncio.run(run())


def test_a_responses_head_and_body_go_in_one_write() -> None:
    writes = _exchange(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    assert len(writes) == 1
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and writes[0].endswith(b"\r\n\r\nanswer body")


def test_heads_without_a_body_to_follow_are_not_held() -> None:
    head = _exchange(b"HEAD / HTTP/1.1\r\nHost: test\r\n\r\n")
    assert len(head) == 1 and head[0].startswith(b"HTTP/1.1 200 OK") and head[0].endswith(b"\r\n\r\n")
    stream = _exchange(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n")
    assert stream[0].endswith(b"transfer-encoding: chunked\r\n\r\n")  # written at once, not held
    assert b"".join(stream[1:]) == b"4\r\npart\r\n0\r\n\r\n"
    continued = _exchange(
        b"POST / HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n", b"hi"
    )
    assert continued[0] == b"HTTP/1.1 100 Continue\r\n\r\n"  # written when asked for, not held
    assert len(continued) == 2 and continued[1].endswith(b"\r\n\r\nanswer body")



def test_only_caller_chosen_ids_are_looked_up_before_a_write(
    tmp_path: Path, manager: SecurityManager, oidc_issuer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An id the service makes up (UUIDv7, 74 random bits) cannot exist yet: no store read for it; an id
    the caller chose is looked up, and a taken one refused 409."""
    bearer = {"Authorization": f"Bearer {oidc_issuer.token('agent-1', 'maif:read maif:write')}"}
    looked_up: list[str] = []

    async def scenario(direct: httpx.AsyncClient, framework: httpx.AsyncClient, storage: Any) -> None:
        service = direct._transport.app.state.service  # type: ignore[attr-defined]
        exists = service.blocks.exists

        async def counted(block_id: str) -> bool:
            looked_up.append(block_id)
            return bool(await exists(block_id))

        monkeypatch.setattr(service.blocks, "exists", counted)
        unnamed, headers = b'{"payload_base64": "aGk="}', {**_JSON, **bearer}
        fresh = [await direct.post("/v1/blocks", content=unnamed, headers=headers) for _ in range(3)]
        assert [answer.status_code for answer in fresh] == [201, 201, 201]
        assert len({answer.json()["block_id"] for answer in fresh}) == 3 and looked_up == []
        chosen = b'{"id": "chosen", "payload_base64": "aGk="}'
        first = await direct.post("/v1/blocks", content=chosen, headers={**_JSON, **bearer})
        again = await direct.post("/v1/blocks", content=chosen, headers={**_JSON, **bearer})
        assert (first.status_code, again.status_code) == (201, 409) and looked_up == ["chosen", "chosen"]
        raw = await direct.post("/v1/blocks", content=b"hi", headers={**_RAW, **bearer})
        assert raw.status_code == 201 and looked_up == ["chosen", "chosen"]

    _served(tmp_path, manager, scenario)

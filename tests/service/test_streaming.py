"""Large streamed uploads and downloads keep the server's memory bounded; shutdown drains writes."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import httpx
import pytest
from conftest import start_server as start_server_for

MiB = 1024 * 1024
UPLOAD_BYTES = 256 * MiB
RSS_GROWTH_BYTES_MAX = 96 * MiB  # well under the 256 MiB moved: the body is never held whole


def _chunk(index: int) -> bytes:
    return blake3.blake3(index.to_bytes(8, "little")).digest(length=MiB)


def _body(
    total_bytes: int, hasher: Any, pause_s: float = 0.0, started: threading.Event | None = None
) -> Iterator[bytes]:
    for index in range(total_bytes // MiB):
        chunk = _chunk(index)
        hasher.update(chunk)
        yield chunk
        if started is not None and index == 0:
            started.set()
        if pause_s:
            time.sleep(pause_s)


@pytest.fixture(scope="module")
def own_server(oidc_issuer: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    server = start_server_for(tmp_path_factory.mktemp("streaming"), oidc_issuer)
    try:
        yield server
    finally:
        server.stop()


def test_256_mib_upload_and_download_stream_with_bounded_memory(
    own_server: Any, tokens: dict[str, str]
) -> None:
    auth = {"Authorization": f"Bearer {tokens['agent-1']}"}
    baseline = own_server.rss_bytes("VmHWM")
    sent = hashlib.sha256()
    with httpx.Client(base_url=own_server.url, headers=auth, timeout=300) as client:
        response = client.post(
            "/v1/blocks",
            content=_body(UPLOAD_BYTES, sent),
            headers={
                "Content-Type": "application/octet-stream",
                "X-MAIF-Block-Id": "big-object",
                "X-MAIF-Block-Type": "VIDE",
            },
        )
        assert response.status_code == 201, response.text
        receipt = response.json()
        assert receipt["payload_length"] == UPLOAD_BYTES and receipt["parts"] == UPLOAD_BYTES // (4 * MiB)
        received, length = hashlib.sha256(), 0
        with client.stream("GET", "/v1/blocks/big-object") as download:
            assert download.status_code == 200
            assert int(download.headers["content-length"]) == UPLOAD_BYTES
            for piece in download.iter_bytes():
                received.update(piece)
                length += len(piece)
        assert length == UPLOAD_BYTES and received.digest() == sent.digest()
        assert download.headers["repr-digest"].startswith("sha-256=:")
        # A range across a part boundary (parts are 4 MiB).
        start = 4 * MiB - 10
        ranged = client.get("/v1/blocks/big-object", headers={"Range": f"bytes={start}-{start + 19}"})
        assert ranged.status_code == 206
        assert ranged.content == (_chunk(3) + _chunk(4))[MiB - 10 : MiB + 10]
        listed = client.get("/v1/blocks", params={"agent_id": "agent-1", "limit": 500}).json()["blocks"]
        assert [item["block_id"] for item in listed] == ["big-object"]  # parts are not listed
    growth = own_server.rss_bytes("VmHWM") - baseline
    assert growth < RSS_GROWTH_BYTES_MAX, f"peak RSS grew by {growth / MiB:.0f} MiB"


def test_sigterm_drains_an_in_flight_streamed_write(
    oidc_issuer: Any, tokens: dict[str, str], tmp_path: Path
) -> None:
    server = start_server_for(tmp_path / "drain", oidc_issuer)
    auth = {"Authorization": f"Bearer {tokens['agent-1']}"}
    sent, started, outcome = hashlib.sha256(), threading.Event(), {}

    def upload() -> None:
        body = _body(24 * MiB, sent, pause_s=0.05, started=started)
        outcome["response"] = httpx.post(
            f"{server.url}/v1/blocks",
            content=body,
            timeout=120,
            headers={**auth, "Content-Type": "application/octet-stream", "X-MAIF-Block-Id": "drained"},
        )

    writer = threading.Thread(target=upload)
    writer.start()
    try:
        assert started.wait(30)
        time.sleep(0.2)
        assert server.process.poll() is None
        server.process.terminate()  # SIGTERM while the body is still arriving
        writer.join(120)
        assert not writer.is_alive()
        assert outcome["response"].status_code == 201, outcome["response"].text
        assert server.process.wait(60) == 0
    finally:
        server.stop()
    restarted = start_server_for(tmp_path / "drain", oidc_issuer, master_key=server.master_key)
    try:
        read = httpx.get(f"{restarted.url}/v1/blocks/drained", headers=auth, timeout=60)
        assert read.status_code == 200 and hashlib.sha256(read.content).digest() == sent.digest()
    finally:
        restarted.stop()

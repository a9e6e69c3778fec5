"""The /v1 API against a real uvicorn server with real OIDC tokens: writes, reads, ranges, digests,
listing, idempotency, audit proofs, export and verify, metrics and health."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from server_process import start_server

from maif.format import merkle, signing


def _write(client: httpx.Client, payload: bytes, **fields: Any) -> httpx.Response:
    body = {"payload_base64": base64.b64encode(payload).decode(), **fields}
    return client.post("/v1/blocks", json=body)


def test_small_block_round_trip_with_etag_digest_and_range(client: httpx.Client) -> None:
    payload = b"hello, agents " * 100
    written = _write(client, payload, block_type="TEXT", metadata={"topic": "greeting"})
    assert written.status_code == 201, written.text
    receipt = written.json()
    block_id = receipt["block_id"]
    read = client.get(f"/v1/blocks/{block_id}")
    assert read.status_code == 200 and read.content == payload
    assert read.headers["etag"] == f'"{receipt["digest"]}"'
    expected = "sha-256=:" + base64.b64encode(hashlib.sha256(payload).digest()).decode() + ":"
    assert read.headers["content-digest"] == expected == read.headers["repr-digest"]
    partial = client.get(f"/v1/blocks/{block_id}", headers={"Range": "bytes=5-9"})
    assert partial.status_code == 206 and partial.content == payload[5:10]
    assert partial.headers["content-range"] == f"bytes 5-9/{len(payload)}"
    assert client.get(f"/v1/blocks/{block_id}", headers={"Range": "bytes=99999-"}).status_code == 416
    assert (
        client.get(f"/v1/blocks/{block_id}", headers={"If-None-Match": read.headers["etag"]}).status_code
        == 304
    )
    as_json = client.get(f"/v1/blocks/{block_id}", params={"view": "json"}).json()
    assert base64.b64decode(as_json["payload_base64"]) == payload
    assert as_json["metadata"]["topic"] == "greeting" and as_json["agent_id"] == "agent-1"


def test_existing_ids_conflict_and_reserved_metadata_is_refused(client: httpx.Client) -> None:
    assert _write(client, b"one", id="fixed-id-1").status_code == 201
    again = _write(client, b"two", id="fixed-id-1")
    assert again.status_code == 409 and again.headers["content-type"] == "application/problem+json"
    assert client.get("/v1/blocks/fixed-id-1").content == b"one"
    refused = _write(client, b"x", metadata={"maif:tenant": "other"})
    assert refused.status_code == 400


def test_idempotency_key_replays_and_refuses_a_different_body(client: httpx.Client) -> None:
    headers = {"Idempotency-Key": "key-123"}
    body = {"payload_base64": base64.b64encode(b"once").decode()}
    first = client.post("/v1/blocks", json=body, headers=headers)
    second = client.post("/v1/blocks", json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json()["block_id"] == second.json()["block_id"]
    other = client.post(
        "/v1/blocks", json={"payload_base64": base64.b64encode(b"twice").decode()}, headers=headers
    )
    assert other.status_code == 422


def test_raw_upload_with_content_digest_is_checked(client: httpx.Client) -> None:
    payload = b"\x00\x01raw" * 1000
    good = "sha-256=:" + base64.b64encode(hashlib.sha256(payload).digest()).decode() + ":"
    response = client.post(
        "/v1/blocks",
        content=payload,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Digest": good,
            "X-MAIF-Block-Type": "BDAT",
            "X-MAIF-Metadata": json.dumps({"source": "raw"}),
        },
    )
    assert response.status_code == 201, response.text
    assert client.get(f"/v1/blocks/{response.json()['block_id']}").content == payload
    bad = "sha-256=:" + base64.b64encode(hashlib.sha256(b"other").digest()).decode() + ":"
    refused = client.post(
        "/v1/blocks",
        content=payload,
        headers={"Content-Type": "application/octet-stream", "Content-Digest": bad},
    )
    assert refused.status_code == 400


def test_sensitive_blocks_need_hardware_attestation(client: httpx.Client) -> None:
    written = _write(client, b"secret plan", metadata={"sensitivity": "sensitive"})
    assert written.status_code == 201
    refused = client.get(f"/v1/blocks/{written.json()['block_id']}")
    assert refused.status_code == 403 and "HARDWARE_ATTESTED" in refused.json()["detail"]
    listed = client.get("/v1/blocks", params={"agent_id": "agent-1", "limit": 500}).json()["blocks"]
    assert written.json()["block_id"] not in {item["block_id"] for item in listed}


def test_other_agents_cannot_write_as_someone_else(client: httpx.Client, tokens: dict[str, str]) -> None:
    response = _write(client, b"impersonation", agent_id="agent-2")
    assert response.status_code == 403


def test_list_filters_by_agent(client: httpx.Client, server: Any, tokens: dict[str, str]) -> None:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {tokens['agent-2']}"}) as other:
        mine = _write(other, b"agent two data").json()["block_id"]
    listed = client.get("/v1/blocks", params={"agent_id": "agent-2", "limit": 500})
    assert listed.status_code == 200
    summaries = listed.json()["blocks"]
    assert mine in {item["block_id"] for item in summaries}
    assert all(item["agent_id"] == "agent-2" for item in summaries)


def test_search_finds_embeddings(client: httpx.Client) -> None:
    vector = [1.0, 0.0, 0.5, 0.25] * 96  # 384 dimensions: the store's embedding size
    payload = json.dumps({"vector": vector}).encode()
    written = _write(client, payload, block_type="EMBD")
    assert written.status_code == 201, written.text
    wrong_size = _write(client, json.dumps({"vector": [1.0, 2.0]}).encode(), block_type="EMBD")
    assert wrong_size.status_code == 422  # would otherwise fail the store's applier for everyone
    found = client.post("/v1/search", json={"vector": vector, "limit": 5})
    assert found.status_code == 200
    assert written.json()["block_id"] in [hit["block_id"] for hit in found.json()["hits"]]


def test_audit_entries_carry_verifiable_inclusion_proofs(client: httpx.Client) -> None:
    _write(client, b"audited")
    first = client.get("/v1/audit", params={"start": 0, "limit": 100}).json()
    tree_size = first["tree_size"]
    start = max(0, tree_size - 100)
    page = client.get("/v1/audit", params={"start": start, "limit": 100}).json()
    assert page["entries"], "the caller's own recent decisions are listed"
    root = bytes.fromhex(page["root"])
    for entry in page["entries"]:
        assert entry["actor"] == "agent-1"
        proof = [bytes.fromhex(node) for node in entry["inclusion_proof"]]
        merkle.verify_inclusion(
            bytes.fromhex(entry["leaf_hash"]), entry["segment_index"], page["tree_size"], proof, root
        )
        assert entry["index"] == page["segment_first_index"] + entry["segment_index"]


def test_audit_pages_cover_every_segment_of_the_history(
    oidc_issuer: Any, tokens: dict[str, str], tmp_path: Path
) -> None:
    """With a four-entry segment the history spans many segments; paging from 0 by next_start walks
    all of it, each page's proofs in its own segment's tree (a sealed segment's: its signed head's)."""
    server = start_server(tmp_path / "tiny-segments", oidc_issuer, security={"audit_segment_entries": 4})
    try:
        headers = {"Authorization": f"Bearer {tokens['agent-1']}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
            for index in range(6):
                assert _write(client, f"segmented {index}".encode()).status_code == 201
            positions, segments, start = [], set(), 0
            while start is not None:
                page = client.get("/v1/audit", params={"start": start, "limit": 5}).json()
                root = bytes.fromhex(page["root"])
                for entry in page["entries"]:
                    proof = [bytes.fromhex(node) for node in entry["inclusion_proof"]]
                    leaf = bytes.fromhex(entry["leaf_hash"])
                    merkle.verify_inclusion(leaf, entry["segment_index"], page["tree_size"], proof, root)
                    positions.append(entry["index"])
                if page["entries"] and page["segment"] != max(segments | {page["segment"]}):
                    raise AssertionError("pages went backwards")
                segments.add(page["segment"])
                start = page["next_start"]
            assert len(segments) >= 3 and positions == sorted(set(positions))
            assert positions[0] == 0  # the history from its first entry, not the current segment's
            metrics = client.get("/metrics").text
            entries_gauge = float(re.search(r"^maif_audit_log_entries ([0-9.e+]+)$", metrics, re.M).group(1))
            assert entries_gauge >= page["total_entries"] > page["tree_size"]
    finally:
        server.stop()


def test_export_streams_a_signed_container_that_verify_accepts(client: httpx.Client) -> None:
    ids = [_write(client, f"export me {index}".encode()).json()["block_id"] for index in range(3)]
    exported = client.post("/v1/export", json={"block_ids": ids})
    assert exported.status_code == 200, exported.text
    signer = exported.headers["x-maif-signer-public-key"]
    report = client.post(
        "/v1/verify",
        content=exported.content,
        params={"trusted_key": signer},
        headers={"Content-Type": "application/octet-stream"},
    ).json()
    assert report["ok"] is True and report["block_count"] == 3
    tampered = bytearray(exported.content)
    tampered[len(tampered) // 3] ^= 0x01
    broken = client.post(
        "/v1/verify", content=bytes(tampered), headers={"Content-Type": "application/octet-stream"}
    )
    assert broken.status_code == 200 and broken.json()["ok"] is False


def test_verify_names_the_last_versions_signers_and_enforces_required_ones(client: httpx.Client) -> None:
    exported = client.post("/v1/export", json={"block_ids": [_write(client, b"signed").json()["block_id"]]})
    signer = exported.headers["x-maif-signer-public-key"]
    signer_id = signing.key_id(Ed25519PublicKey.from_public_bytes(bytes.fromhex(signer))).hex()
    stranger = Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex()

    def verify(required: list[str]) -> dict[str, Any]:
        response = client.post(
            "/v1/verify",
            content=exported.content,
            params={"required_signer": required},
            headers={"Content-Type": "application/octet-stream"},
        )
        assert response.status_code == 200, response.text
        report: dict[str, Any] = response.json()
        return report

    report = verify([signer])
    assert report["ok"] is True and report["last_version_signer_key_ids"] == [signer_id]
    refused = verify([signer, stranger])
    assert refused["ok"] is False
    assert [problem["region"] for problem in refused["problems"]] == ["version 0 manifest"]
    assert "required signer" in refused["problems"][0]["reason"]


def test_trust_bootstrap_opens_a_session_bound_to_the_token(
    client: httpx.Client, server: Any, tokens: dict[str, str]
) -> None:
    session = client.post("/v1/trust/bootstrap", json={})
    assert session.status_code == 200, session.text
    body = session.json()
    assert body["trust_level_name"] == "OAUTH_VERIFIED" and body["agent_id"] == "agent-1"
    headers = {"MAIF-Session": body["session_id"]}
    assert client.get("/v1/stats", headers=headers).status_code == 200
    stolen = httpx.get(
        f"{server.url}/v1/stats", headers={**headers, "Authorization": f"Bearer {tokens['agent-2']}"}
    )
    assert stolen.status_code == 401


def test_metrics_reflect_the_traffic(client: httpx.Client, server: Any) -> None:
    def counter(text: str, pattern: str) -> float:
        match = re.search(pattern + r" ([0-9.e+]+)", text)
        return float(match.group(1)) if match else 0.0

    created = r'maif_http_requests_total\{method="POST",route="/v1/blocks",status="201"\}'
    before = client.get("/metrics").text  # an API token that may read the stats (no metrics token set)
    written = [_write(client, f"metric {index}".encode()) for index in range(5)]
    assert [response.status_code for response in written] == [201] * 5
    after = client.get("/metrics").text
    assert counter(after, created) - counter(before, created) == 5
    whole = r'maif_service_blocks_written_total\{kind="whole"\}'
    assert counter(after, whole) - counter(before, whole) == 5
    assert "maif_http_request_duration_seconds_bucket" in after and "maif_storage_blocks" in after
    audited = r"maif_audit_log_entries"
    assert counter(after, audited) - counter(before, audited) >= 5  # one gate decision per write at least
    assert counter(after, "maif_audit_log_segments_max") == 1 << 24
    # Prometheus naming: counts are counters with _total, and no *_created series (issue 13).
    assert "_created" not in after
    assert re.search(r"^# TYPE maif_storage_writes_total counter$", after, re.MULTILINE)
    assert re.search(r"^# TYPE maif_storage_wal_syncs_total counter$", after, re.MULTILINE)
    assert counter(after, "maif_storage_writes_total") - counter(before, "maif_storage_writes_total") >= 5
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", after, re.MULTILINE))
    assert all(name.endswith("_total") for name, kind in types.items() if kind == "counter")
    assert not any(name.endswith("_total") for name, kind in types.items() if kind == "gauge")
    agent_queue = ("queue_depth_tasks", "tasks_in_flight", "tasks_completed_total", "task_retries_total",
                   "tasks_dead_lettered_total")
    for name in (f"maif_agent_{suffix}" for suffix in agent_queue):
        assert re.search(rf"^{name} ", after, re.MULTILINE), name
    # No per-id labels: neither block ids nor agent ids become label values.
    assert all(response.json()["block_id"] not in after for response in written) and "agent-1" not in after


def test_health_endpoints(server: Any) -> None:
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/readyz").json() == {"status": "ready"}


def test_oversized_json_body_is_refused_before_parsing(client: httpx.Client) -> None:
    response = client.post(
        "/v1/search", content=b"[" * (3 * 1024 * 1024), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413


def test_audit_consistency_proof_links_an_earlier_view_to_the_current_tree(client: httpx.Client) -> None:
    earlier = client.get("/v1/audit", params={"limit": 1}).json()
    _write(client, b"grows the log")
    later = client.get("/v1/audit", params={"limit": 1, "old_size": earlier["tree_size"]}).json()
    assert later["tree_size"] > earlier["tree_size"]
    merkle.verify_consistency(
        earlier["tree_size"],
        later["tree_size"],
        bytes.fromhex(earlier["root"]),
        bytes.fromhex(later["root"]),
        [bytes.fromhex(node) for node in later["consistency_proof"]],
    )
    beyond = client.get("/v1/audit", params={"old_size": later["tree_size"] + 1000})
    assert beyond.status_code == 400


def test_a_client_that_disconnects_mid_upload_leaves_no_block(client: httpx.Client, server: Any) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        token = client.headers["Authorization"]
        raw.sendall(
            b"POST /v1/blocks HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            b"X-MAIF-Block-Id: abandoned\r\nContent-Length: 10000000\r\n"
            + f"Authorization: {token}\r\n\r\n".encode()
            + b"x" * 100_000
        )
    # The abandoned write is never acknowledged and releases its id: a retry under the same id succeeds
    # (409 only while the server has not yet noticed the disconnect).
    for _ in range(100):
        retry = _write(client, b"the retry", id="abandoned")
        if retry.status_code != 409:
            break
        time.sleep(0.05)
    assert retry.status_code == 201, retry.text
    assert client.get("/v1/blocks/abandoned").content == b"the retry"
    assert client.get("/readyz").status_code == 200


def test_search_with_a_vector_of_another_dimension_is_a_client_error(client: httpx.Client) -> None:
    _write(client, json.dumps({"vector": [0.5] * 384}).encode(), block_type="EMBD")
    response = client.post("/v1/search", json={"vector": [1.0, 2.0], "limit": 3})
    assert response.status_code in (400, 422), response.text
    assert client.get("/readyz").status_code == 200


# ---- deleting blocks -----------------------------------------------------------------------------------


def _audit_entries(client: httpx.Client, resource: str) -> list[dict[str, Any]]:
    """The caller's own audit entries about ``resource``, from the last 100 of the log."""
    tree_size = client.get("/v1/audit", params={"limit": 1}).json()["tree_size"]
    page = client.get("/v1/audit", params={"start": max(0, tree_size - 100), "limit": 100}).json()
    return [entry for entry in page["entries"] if entry["resource"] == resource]


def test_deleting_ones_own_block_hides_it_from_reads_listings_and_search(client: httpx.Client) -> None:
    text = _write(client, b"soon gone", block_type="TEXT").json()["block_id"]
    vector = [0.0, 1.0, -0.5, 0.125] * 96
    embedding = _write(client, json.dumps({"vector": vector}).encode(), block_type="EMBD")
    assert embedding.status_code == 201, embedding.text
    embedding_id = embedding.json()["block_id"]
    found = client.post("/v1/search", json={"vector": vector, "limit": 5}).json()["hits"]
    assert embedding_id in [hit["block_id"] for hit in found]

    deleted = client.delete(f"/v1/blocks/{text}")
    assert deleted.status_code == 200, deleted.text
    receipt = deleted.json()
    assert receipt["block_id"] == text and receipt["lsn"] > 0 and receipt["parts"] == 0
    gone = client.get(f"/v1/blocks/{text}")
    assert gone.status_code == 404 and gone.headers["content-type"] == "application/problem+json"
    listed = client.get("/v1/blocks", params={"agent_id": "agent-1", "limit": 500}).json()["blocks"]
    assert text not in {item["block_id"] for item in listed}
    again = client.delete(f"/v1/blocks/{text}")
    assert again.status_code == 404 and again.json()["status"] == 404

    assert client.delete(f"/v1/blocks/{embedding_id}").status_code == 200
    found = client.post("/v1/search", json={"vector": vector, "limit": 50}).json()["hits"]
    assert embedding_id not in [hit["block_id"] for hit in found]
    assert client.get(f"/v1/blocks/{embedding_id}").status_code == 404
    # Audited like every decision: the gate's allow, as writing the caller's own data.
    entries = _audit_entries(client, f"block:{text}")
    assert any(
        entry["action"] == "write" and entry["decision"] == "allow" and entry["reason"] == "write_own"
        for entry in entries
    )


def test_deleting_another_agents_block_needs_an_administrator(
    client: httpx.Client, server: Any, tokens: dict[str, str]
) -> None:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {tokens['agent-2']}"}) as other:
        theirs = _write(other, b"agent two keeps this", metadata={"shared": True}).json()["block_id"]
        refused = client.delete(f"/v1/blocks/{theirs}")
        assert refused.status_code == 403 and refused.headers["content-type"] == "application/problem+json"
        assert "MULTI_PARTY_VERIFIED" in refused.json()["detail"]  # administration, even when shared
        assert other.get(f"/v1/blocks/{theirs}").content == b"agent two keeps this"
        assert client.get(f"/v1/blocks/{theirs}").status_code == 200  # public: agent-1 may still read it
        entries = _audit_entries(client, f"block:{theirs}")
        assert any(e["action"] == "administer" and e["decision"] == "deny" for e in entries)
        assert other.delete(f"/v1/blocks/{theirs}").status_code == 200  # its owner may
        assert other.get(f"/v1/blocks/{theirs}").status_code == 404


def test_deleting_an_absent_block_is_404_and_an_unauthorised_caller_learns_nothing(
    client: httpx.Client, server: Any, tokens: dict[str, str]
) -> None:
    absent = client.delete("/v1/blocks/never-written-here")
    assert absent.status_code == 404 and absent.headers["content-type"] == "application/problem+json"
    mine = _write(client, b"still here").json()["block_id"]
    # A caller who may not delete (read-only) is refused before the lookup: the same answer for an id that
    # exists and one that does not.
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {tokens['read-only']}"}
    ) as reader:
        existing = reader.delete(f"/v1/blocks/{mine}")
        missing = reader.delete("/v1/blocks/never-written-here")
    assert existing.status_code == missing.status_code == 403
    assert existing.json()["detail"] == missing.json()["detail"]
    assert client.get(f"/v1/blocks/{mine}").content == b"still here"
    # Parts of streamed blocks go with their block, never alone.
    assert client.delete(f"/v1/blocks/{mine}~p000000").status_code == 400


def test_deleting_a_streamed_block_deletes_its_parts(client: httpx.Client) -> None:
    payload = bytes(range(256)) * (9 * 1024 * 1024 // 256)  # 9 MiB: three parts of at most 4 MiB
    written = client.post("/v1/blocks", content=payload, headers={"Content-Type": "application/octet-stream"})
    assert written.status_code == 201, written.text
    block_id = written.json()["block_id"]
    assert written.json()["parts"] == 3
    deleted = client.delete(f"/v1/blocks/{block_id}")
    assert deleted.status_code == 200 and deleted.json()["parts"] == 3
    assert client.get(f"/v1/blocks/{block_id}").status_code == 404
    assert client.get(f"/v1/blocks/{block_id}~p000000").status_code == 404


def test_compaction_is_administrative(client: httpx.Client) -> None:
    refused = client.post("/v1/admin/compact")
    assert refused.status_code == 403 and "MULTI_PARTY_VERIFIED" in refused.json()["detail"]
    assert client.post("/v1/admin/compact", params={"garbage_fraction": 0}).status_code == 422

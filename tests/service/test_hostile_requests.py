"""What a red-team review got through (issue 14, item 6), replayed against a real server process: a Range
of Unicode digits, ids with control or non-Latin-1 characters echoed into headers, idle sockets and
stalled bodies that held the server, and /metrics open to anyone."""

from __future__ import annotations

import base64
import json
import socket
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_process import Server, start_server

from maif import limits

HEADER_TIMEOUT_S = 1.0
BODY_READ_TIMEOUT_S = 1.0
BODY_TOTAL_TIMEOUT_S = 3.0
CONNECTIONS_PER_CLIENT_MAX = 8


def _write(client: httpx.Client, payload: bytes, **fields: Any) -> httpx.Response:
    return client.post("/v1/blocks", json={"payload_base64": base64.b64encode(payload).decode(), **fields})


def _assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    return problem


# ---- Range -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["bytes=\u00b2-", "bytes=-\u00b2", "bytes=1-\u00b9", "bytes=\u0661-"])
def test_a_range_of_non_ascii_digits_is_refused_not_a_server_error(client: httpx.Client, value: str) -> None:
    block_id = _write(client, b"0123456789").json()["block_id"]
    # Sent as its Latin-1 (or UTF-8) bytes, as a hostile client would; "\u00b2".isdigit() is True.
    raw = value.encode("latin-1") if value.isascii() or max(value) <= "\xff" else value.encode()
    response = client.get(f"/v1/blocks/{block_id}", headers={"Range": raw})  # type: ignore[dict-item]
    _assert_problem(response, 416)
    assert response.headers["content-range"] == "bytes */10"


# ---- ids in headers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", ["nul\x00id", "cr\rid", "lf\nid", "crlf\r\nX-Injected: 1", "del\x7fid", "c1\x85id"]
)
def test_ids_with_control_characters_are_refused_before_anything_is_stored(
    client: httpx.Client, bad: str
) -> None:
    for fields in ({"id": bad}, {"agent_id": bad}, {"parents": [bad]}):
        problem = _assert_problem(_write(client, b"payload", **fields), 400)
        assert "control character" in problem["detail"]
    # Nothing was stored under the refused id: it is not found (and the connection stayed usable).
    quoted = urllib.parse.quote(bad, safe="")
    assert client.get(f"/v1/blocks/{quoted}").status_code == 404


def test_a_raw_upload_with_a_control_character_in_its_id_header_is_refused(
    server: Server, tokens: dict[str, str]
) -> None:
    # A TAB is legal inside an HTTP header value, so it reaches the service.
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as connection:
        connection.sendall(
            b"POST /v1/blocks HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            b"Authorization: Bearer " + tokens["agent-1"].encode() + b"\r\n"
            b"X-MAIF-Block-Id: tab\tid\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
        )
        closed, answer = _closed_within(connection, 30)
    assert closed
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"control character" in answer


def test_a_non_latin1_block_id_is_written_once_and_read_back(client: httpx.Client) -> None:
    block_id = "блок-" + str(time.time_ns())
    written = _write(client, b"payload", id=block_id)
    assert written.status_code == 201, written.text
    assert written.json()["block_id"] == block_id
    assert written.headers["location"] == "/v1/blocks/" + urllib.parse.quote(block_id, safe="")
    read = client.get(written.headers["location"])
    assert read.status_code == 200 and read.content == b"payload"
    _assert_problem(_write(client, b"payload", id=block_id), 409)  # a retry finds it, as it should


def test_blocks_of_a_non_latin1_agent_can_be_read_raw(
    client: httpx.Client, server: Server, oidc_issuer: Any
) -> None:
    for agent in ("агент-1", "agent-\u00e9", "agent%41"):
        token = oidc_issuer.mint({"sub": agent, "client_id": agent})
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=server.url, headers=auth, timeout=30) as own:
            written = _write(own, b"mine")
            assert written.status_code == 201, written.text
            read = own.get(f"/v1/blocks/{written.json()['block_id']}")
            assert read.status_code == 200 and read.content == b"mine"
            assert urllib.parse.unquote(read.headers["x-maif-agent-id"]) == agent
            assert read.headers["x-maif-agent-id"].isascii()
    assert client.get(f"/v1/blocks/{written.json()['block_id']}").status_code in (200, 403)


@pytest.mark.parametrize(
    "bad", ["nul\x00id", "cr\rid", "lf\nid", "crlf\r\nX-Injected: 1", "del\x7fid", "c1\x85id", "lone\ud800"]
)
def test_task_ids_with_control_characters_are_refused_before_anything_is_queued(
    server: Server, oidc_issuer: Any, bad: str
) -> None:
    # A fresh agent, so its block list shows exactly what its tasks produced.
    agent = f"tasker-{time.time_ns()}"
    token = oidc_issuer.mint({"sub": agent, "client_id": agent})
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as own:
        task = {"task_type": "text_analysis", "input_data": {"text": "refused"}}
        for fields in ({"task_id": bad}, {"input_blocks": [bad]}):
            body = json.dumps({**task, **fields}).encode()  # "\ud800" travels as its JSON escape
            response = own.post("/v1/tasks", content=body, headers={"Content-Type": "application/json"})
            # a lone surrogate: the schema refuses it in some fields (422), check_id in the others
            status = 400 if "\ud800" not in bad or response.status_code == 400 else 422
            assert _assert_problem(response, status)["type"] in (
                "urn:maif:problem:invalid-id",
                "urn:maif:problem:invalid-request",
            )
        if "\ud800" not in bad:  # (a URL cannot carry a lone surrogate: its UTF-8 bytes decode otherwise)
            quoted = urllib.parse.quote(bad, safe="")
            problem = _assert_problem(own.get(f"/v1/tasks/{quoted}"), 400)
            assert problem["type"] == "urn:maif:problem:invalid-id"
        # A task submitted after the refused ones runs; had a refused one been queued, it would have run
        # first (same priority, submission order) and left its blocks.
        accepted = own.post("/v1/tasks", json={"task_id": "good", **task})
        assert accepted.status_code == 202, accepted.text
        for _ in range(300):
            if own.get("/v1/tasks/good").json()["status"] != "pending":
                break
            time.sleep(0.05)
        listed = own.get("/v1/blocks", params={"agent_id": agent}).json()["blocks"]
        assert listed and all("good" in block["block_id"] for block in listed), listed


def test_a_non_latin1_task_id_is_accepted_and_its_status_read(client: httpx.Client) -> None:
    task_id = "задача-" + str(time.time_ns())
    accepted = client.post("/v1/tasks", json={"task_id": task_id, "task_type": "text_analysis",
                                              "input_data": {"text": "hello"}})
    assert accepted.status_code == 202 and accepted.json()["task_id"] == task_id, accepted.text
    status = client.get("/v1/tasks/" + urllib.parse.quote(task_id, safe=""))
    assert status.status_code == 200 and status.json()["task_id"] == task_id


# ---- timeouts and connections ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(oidc_issuer: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(
        tmp_path_factory.mktemp("guarded"),
        oidc_issuer,
        service={
            "max_concurrent_requests": 64,
            "header_timeout_s": HEADER_TIMEOUT_S,
            "body_read_timeout_s": BODY_READ_TIMEOUT_S,
            "body_total_timeout_s": BODY_TOTAL_TIMEOUT_S,
            "connections_per_client_max": CONNECTIONS_PER_CLIENT_MAX,
        },
    )
    try:
        yield running
    finally:
        running.stop()


def _closed_within(connection: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed ``connection`` within ``seconds``, and what it sent before."""
    connection.settimeout(seconds)
    received = b""
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except TimeoutError:
        return False, received
    except ConnectionResetError:
        pass
    return True, received


def test_idle_sockets_of_one_client_do_not_starve_healthz(guarded: Server) -> None:
    idle = [socket.create_connection(("127.0.0.1", guarded.port), timeout=10) for _ in range(70)]
    try:
        time.sleep(0.3)
        # Another client (another loopback address) is served while the 70 sockets are held.
        transport = httpx.HTTPTransport(local_address="127.0.0.2")
        with httpx.Client(transport=transport, timeout=10) as other:
            assert other.get(f"{guarded.url}/healthz").status_code == 200
            assert other.get(f"{guarded.url}/readyz").status_code == 200
        # The sockets beyond the per-client bound were closed at once, the rest after the header timeout.
        started = time.monotonic()
        closed = [_closed_within(connection, HEADER_TIMEOUT_S + 5)[0] for connection in idle]
        assert all(closed) and time.monotonic() - started < HEADER_TIMEOUT_S + 5
    finally:
        for connection in idle:
            connection.close()
    # And the same client is served again once its sockets are gone.
    assert httpx.get(f"{guarded.url}/healthz", timeout=10).status_code == 200


def test_headers_sent_byte_by_byte_are_cut_off(guarded: Server) -> None:
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
        closed, _ = _closed_within(connection, HEADER_TIMEOUT_S + 5)
        assert closed


HEAD_BYTES_MAX = limits.service_request_head_bytes_max  # the guarded server's default


@pytest.mark.parametrize("piece_bytes", [HEAD_BYTES_MAX + 1024, 4096], ids=["one-send", "pieces"])
def test_an_oversized_request_head_is_refused_431(guarded: Server, piece_bytes: int) -> None:
    # One header value larger than the bound, sent at once or in pieces that never end the header line:
    # the parser would buffer it whole, so the guard counts what arrives.
    value = b"a" * (HEAD_BYTES_MAX + 1024)
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: ")
        try:
            for offset in range(0, len(value), piece_bytes):
                connection.sendall(value[offset : offset + piece_bytes])
                time.sleep(0.001)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed while still sending: the answer was sent before
        closed, received = _closed_within(connection, HEADER_TIMEOUT_S / 2)
    assert closed and received.startswith(b"HTTP/1.1 431 "), received[:100]


def test_many_headers_over_the_bound_are_refused_and_a_head_under_it_is_served(guarded: Server) -> None:
    lines = range(HEAD_BYTES_MAX // 1000 + 2)
    many = b"".join(b"X-Filler-%d: %s\r\n" % (index, b"b" * 1000) for index in lines)
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
        closed, received = _closed_within(connection, HEADER_TIMEOUT_S / 2)
    assert closed and received.startswith(b"HTTP/1.1 431 "), received[:100]
    under = many[: len(many) // 2]
    under = under[: under.rindex(b"\r\n") + 2]
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + under + b"\r\n")
        _, received = _closed_within(connection, 5)
    assert received.startswith(b"HTTP/1.1 200 "), received[:100]


def test_pipelined_requests_are_all_answered(guarded: Server) -> None:
    # Three requests in one send: the head guard must count each head, never the one before it.
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as connection:
        connection.sendall(request * 2 + last)
        closed, received = _closed_within(connection, 5)
    assert closed and received.count(b"HTTP/1.1 200 ") == 3, received[:300]


def test_a_stalled_body_is_cut_off_within_the_timeout(guarded: Server, tokens: dict[str, str]) -> None:
    for content_type in (b"application/octet-stream", b"application/json"):
        with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as connection:
            started = time.monotonic()
            connection.sendall(
                b"POST /v1/blocks HTTP/1.1\r\nHost: x\r\nContent-Type: " + content_type + b"\r\n"
                b"Authorization: Bearer " + tokens["agent-1"].encode() + b"\r\n"
                b"Content-Length: 1000\r\n\r\n0123456789"
            )
            closed, answer = _closed_within(connection, BODY_READ_TIMEOUT_S + 10)
            elapsed = time.monotonic() - started
        assert closed and elapsed < BODY_READ_TIMEOUT_S + 10, elapsed
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b"urn:maif:problem:body-timeout" in answer


def _post_head(path: bytes, content_type: bytes, token: str, length: int, extra: bytes = b"") -> bytes:
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: " + content_type + b"\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n" + extra
        + b"Content-Length: " + str(length).encode() + b"\r\n\r\n"
    )


@pytest.mark.parametrize("path", [b"/v1/tasks", b"/v1/search", b"/v1/export"])
def test_a_stalled_json_body_is_answered_408(guarded: Server, tokens: dict[str, str], path: bytes) -> None:
    """FastAPI turns any error while it reads a JSON body into 400 "error parsing the body"; the client
    must still learn that its body timed out."""
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as connection:
        started = time.monotonic()
        connection.sendall(_post_head(path, b"application/json", tokens["agent-1"], 1000) + b'{"task_')
        closed, answer = _closed_within(connection, BODY_READ_TIMEOUT_S + 10)
        elapsed = time.monotonic() - started
    assert closed and elapsed < BODY_READ_TIMEOUT_S + 10, elapsed
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert b"urn:maif:problem:body-timeout" in answer


def _drip(guarded: Server, head: bytes, every_s: float) -> tuple[bytes, float]:
    """Send ``head``, then one body byte every ``every_s`` (never a stall the per-read deadline sees) until
    the server answers and closes; what it answered and after how long."""
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as connection:
        started = time.monotonic()
        connection.sendall(head)
        connection.settimeout(every_s)
        answer = b""
        while time.monotonic() - started < BODY_TOTAL_TIMEOUT_S + 20:
            try:
                chunk = connection.recv(65536)
            except TimeoutError:
                try:
                    connection.sendall(b" ")
                except (BrokenPipeError, ConnectionResetError):
                    break
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
        return answer, time.monotonic() - started


def test_a_drip_fed_upload_is_cut_by_the_total_body_deadline_and_nothing_is_stored(
    guarded: Server, tokens: dict[str, str]
) -> None:
    block_id = f"drip-{time.time_ns()}"
    head = _post_head(
        b"/v1/blocks", b"application/octet-stream", tokens["agent-1"], 100_000,
        b"X-MAIF-Block-Id: " + block_id.encode() + b"\r\n",
    )
    answer, elapsed = _drip(guarded, head, BODY_READ_TIMEOUT_S / 2)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert b"urn:maif:problem:body-timeout" in answer
    assert BODY_TOTAL_TIMEOUT_S - 0.5 < elapsed < BODY_TOTAL_TIMEOUT_S + 5, elapsed
    read = httpx.get(
        f"{guarded.url}/v1/blocks/{block_id}", headers={"Authorization": f"Bearer {tokens['agent-1']}"}
    )
    assert read.status_code == 404, read.text


def test_a_drip_fed_json_body_is_cut_by_the_total_body_deadline(
    guarded: Server, tokens: dict[str, str]
) -> None:
    head = _post_head(b"/v1/tasks", b"application/json", tokens["agent-1"], 100_000)
    answer, elapsed = _drip(guarded, head, BODY_READ_TIMEOUT_S / 2)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert BODY_TOTAL_TIMEOUT_S - 0.5 < elapsed < BODY_TOTAL_TIMEOUT_S + 5, elapsed


def _upload_slowly(server: Server, token: str, piece: bytes, count: int, every_s: float) -> httpx.Response:
    """A raw upload of ``count`` x ``piece``, one piece every ``every_s``."""

    def slowly() -> Iterator[bytes]:
        for _ in range(count):
            yield piece
            time.sleep(every_s)

    return httpx.post(
        f"{server.url}/v1/blocks",
        content=slowly(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"},
        timeout=60,
    )


def test_an_upload_that_keeps_the_minimum_rate_outlasts_the_base_deadline(
    guarded: Server, tokens: dict[str, str]
) -> None:
    """The total deadline grows with the bytes received (body_bytes_per_s_min), so a large upload over a
    slow but honest link is never cut: 64 KiB every 0.5 s for longer than the base deadline."""
    pieces = int(BODY_TOTAL_TIMEOUT_S / 0.5) + 3
    response = _upload_slowly(guarded, tokens["agent-1"], b"y" * 65536, pieces, 0.5)
    assert response.status_code == 201, response.text
    assert response.json()["payload_length"] == pieces * 65536


def test_a_slow_but_steady_body_is_not_cut_off(guarded: Server, tokens: dict[str, str]) -> None:
    response = _upload_slowly(guarded, tokens["agent-1"], b"x" * 10, 3, BODY_READ_TIMEOUT_S / 2)
    assert response.status_code == 201, response.text
    assert response.json()["payload_length"] == 30


# ---- /metrics ----------------------------------------------------------------------------------------------


def test_metrics_are_not_anonymous_by_default(server: Server, tokens: dict[str, str]) -> None:
    anonymous = httpx.get(f"{server.url}/metrics", timeout=30)
    _assert_problem(anonymous, 401)
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert "maif_" not in anonymous.text
    refused = httpx.get(
        f"{server.url}/metrics", headers={"Authorization": f"Bearer {tokens['write-only']}"}, timeout=30
    )
    _assert_problem(refused, 403)
    allowed = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {tokens['agent-1']}"})
    assert allowed.status_code == 200 and "maif_http_requests_total" in allowed.text


def test_unsafe_anonymous_metrics_must_be_asked_for(tmp_path: Path, oidc_issuer: Any) -> None:
    running = start_server(tmp_path, oidc_issuer, service={"unsafe_anonymous_metrics": True})
    try:
        response = httpx.get(f"{running.url}/metrics", timeout=30)
        assert response.status_code == 200 and "maif_http_requests_total" in response.text
    finally:
        running.stop()


@pytest.mark.parametrize(
    "service",
    [
        {"body_total_timeout_s": 0},
        {"body_total_timeout_s": float("nan")},
        {"body_total_timeout_s": 1e9},
        {"body_bytes_per_s_min": 0},
        {"body_bytes_per_s_min": 1 << 40},
    ],
)
def test_body_deadlines_out_of_range_are_refused(tmp_path: Path, service: dict[str, Any]) -> None:
    from maif.cli.serve import _service_section
    from maif.errors import ConfigError

    config = tmp_path / "maif.json"
    config.write_text(json.dumps({"service": service}))
    with pytest.raises(ConfigError, match="body_"):
        _service_section(config)

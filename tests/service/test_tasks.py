"""Agent tasks over HTTP: submitted tasks run in the caller's agent and produce blocks the caller owns;
input blocks are read through the gate."""

from __future__ import annotations

import base64
import re
import time

import httpx


def _wait_for(client: httpx.Client, task_id: str) -> dict[str, object]:
    for _ in range(200):
        status = client.get(f"/v1/tasks/{task_id}").json()
        if status["status"] != "pending":
            return status
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} still pending")


def test_a_text_task_produces_blocks_owned_by_the_caller(client: httpx.Client) -> None:
    submitted = client.post(
        "/v1/tasks",
        json={
            "task_id": "t-1",
            "task_type": "text_analysis",
            "input_data": {"text": "MAIF stores what agents make."},
        },
    )
    assert submitted.status_code == 202 and submitted.json() == {"task_id": "t-1", "accepted": True}
    again = client.post(
        "/v1/tasks", json={"task_id": "t-1", "task_type": "text_analysis", "input_data": {"text": "again"}}
    )
    assert again.json()["accepted"] is False
    status = _wait_for(client, "t-1")
    assert status["status"] == "done" and status["block_ids"]
    for block_id in status["block_ids"]:  # type: ignore[union-attr]
        block = client.get(f"/v1/blocks/{block_id}", params={"view": "json"}).json()
        assert block["agent_id"] == "agent-1"


def test_unknown_task_types_are_refused_at_submission(client: httpx.Client) -> None:
    refused = client.post(
        "/v1/tasks", json={"task_id": "t-bad", "task_type": "no-such-handler", "input_data": {}}
    )
    assert refused.status_code == 400 and "no-such-handler" in refused.json()["detail"]
    assert client.get("/v1/tasks/t-bad").json()["status"] == "pending"  # never queued, so never ran


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


def test_a_failing_task_reports_failed_with_its_reason(client: httpx.Client) -> None:
    before = client.get("/metrics").text
    # text_analysis needs a text; an input_data without one fails every attempt, then is dead-lettered.
    client.post("/v1/tasks", json={"task_id": "t-fails", "task_type": "text_analysis", "input_data": {}})
    status = _wait_for(client, "t-fails")
    assert status["status"] == "failed" and status["reason"]
    after = client.get("/metrics").text  # the agent queue's counters moved (issue 13)
    for name in ("maif_agent_tasks_dead_lettered_total", "maif_agent_tasks_submitted_total"):
        assert _metric(after, name) - _metric(before, name) == 1, name
    assert _metric(after, "maif_agent_task_retries_total") > _metric(before, "maif_agent_task_retries_total")
    assert _metric(after, "maif_agent_queue_depth_tasks") == 0 and _metric(after, "maif_agents") >= 1


def test_a_task_cannot_read_input_blocks_its_submitter_may_not_read(client: httpx.Client) -> None:
    written = client.post(
        "/v1/blocks",
        json={
            "payload_base64": base64.b64encode(b"classified").decode(),
            "metadata": {"sensitivity": "sensitive"},
        },
    )
    assert written.status_code == 201, written.text
    secret = written.json()["block_id"]
    refused = client.post(
        "/v1/tasks",
        json={"task_type": "text_analysis", "input_data": {"text": "x"}, "input_blocks": [secret]},
    )
    assert refused.status_code == 403

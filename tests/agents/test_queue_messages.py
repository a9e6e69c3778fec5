"""What may travel on the distributed task queue: the codec every worker decodes with (maif.agents.queue),
and the configuration that names the broker. Bad input is refused with a typed error and a reason a dead
letter can carry; tests/distributed/test_workers.py sends the same messages through a real broker."""

from __future__ import annotations

import msgspec
import pytest

from maif import limits
from maif.agents.handlers.registry import HandlerRegistry
from maif.agents.queue import decode_task, encode_task
from maif.agents.tasks import AgentTask
from maif.config import AgentConfig, StorageConfig, load_section
from maif.errors import ConfigError, LimitExceededError, TaskMessageError

REGISTRY = HandlerRegistry.with_builtins()


def test_a_task_survives_the_round_trip() -> None:
    task = AgentTask("t-1", "text_analysis", {"text": "hello", "n": [1, 2.5, None]}, priority=3,
                     input_blocks=("a:1", "b:2"), submitted_at=1700000000.5)
    assert decode_task(encode_task(task), REGISTRY) == task
    stamped = decode_task(encode_task(AgentTask("t-2", "text_analysis", {})), REGISTRY)
    assert stamped.submitted_at is not None and stamped.submitted_at > 1.7e9  # the queue dates it


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"", "not a task message"),
        (b"\xc1", "not a task message"),
        (msgspec.msgpack.encode([1, 2, 3]), "Expected `object`"),
        (msgspec.msgpack.encode({"task_id": "x", "task_type": "text_analysis"}), "missing required field"),
        (msgspec.msgpack.encode({"task_id": "x", "task_type": "text_analysis", "input_data": {}, "evil": 1}),
         "unknown field"),
        (msgspec.msgpack.encode({"task_id": "x", "task_type": "text_analysis", "input_data": "text"}),
         "Expected `object`"),
        (msgspec.msgpack.encode({"task_id": "", "task_type": "text_analysis", "input_data": {}}), "task_id"),
        (msgspec.msgpack.encode({"task_id": "x" * 129, "task_type": "text_analysis", "input_data": {}}),
         "task_id"),
        (msgspec.msgpack.encode({"task_id": "x", "task_type": "rm -rf", "input_data": {}}),
         "unknown task type"),
        (msgspec.msgpack.encode({"task_id": "x", "task_type": "text_analysis", "input_data": {},
                                 "input_blocks": ["b"] * (limits.agent_input_blocks_max + 1)}),
         "input blocks"),
        (msgspec.msgpack.encode({"task_id": "x", "task_type": "text_analysis", "input_data": {},
                                 "submitted_at": 1e300}), "submitted_at"),
        (b"\x00" * (limits.queue_task_bytes_max + 1), "exceeds"),
    ],
    ids=["empty", "not-msgpack", "array", "missing-field", "unknown-field", "input-not-a-map", "empty-id",
         "long-id", "unknown-type", "too-many-inputs", "bad-date", "oversized"],
)
def test_a_message_that_is_not_a_valid_task_is_refused_with_its_reason(message: bytes, reason: str) -> None:
    with pytest.raises(TaskMessageError) as caught:
        decode_task(message, REGISTRY)
    assert reason in caught.value.message
    assert isinstance(caught.value, ValueError)


def test_an_oversized_task_is_refused_before_it_reaches_the_queue() -> None:
    task = AgentTask("big", "text_analysis", {"text": "x" * limits.queue_task_bytes_max})
    with pytest.raises(LimitExceededError):
        encode_task(task)


def test_nats_url_is_checked_and_never_echoed() -> None:
    assert load_section(StorageConfig, {"nats_url": "nats://u:p@127.0.0.1:4222"}, environ={}).nats_url
    for bad in ("http://u:secret@host", "nats://", "nats://host:99999", "secret"):
        with pytest.raises(ConfigError) as caught:
            load_section(StorageConfig, {"nats_url": bad}, environ={})
        assert "secret" not in caught.value.diagnostics()


def test_queue_settings_are_range_checked() -> None:
    assert load_section(AgentConfig, {}, environ={}).task_stream == "MAIF_TASKS"
    for bad in ({"task_stream": "a.b"}, {"task_stream": ""}, {"task_stream": "x" * 33},
                {"task_ack_wait_s": 0}, {"task_stream_bytes_max": 10}, {"dead_letter_messages_max": 0},
                {"task_sweep_interval_s": 0}, {"task_queue_connect_timeout_s": 0}, {"worker_key_file": ""}):
        with pytest.raises(ConfigError):
            load_section(AgentConfig, bad, environ={})


def test_a_worker_loop_stops_when_a_library_turns_its_cancellation_into_an_error() -> None:
    """nats-py answers a cancelled request with its own TimeoutError; a worker's periodic loop (heartbeat,
    sweep, progress) must stop anyway, or SIGTERM would wait for ever on it."""
    import asyncio

    from maif.agents.worker import every
    from maif.errors import BackendUnavailableError

    async def scenario() -> None:
        started = asyncio.Event()

        async def body() -> None:
            started.set()
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                raise BackendUnavailableError("request cancelled", component="nats") from None

        loop = asyncio.create_task(every(0.01, body))
        await started.wait()
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(loop, 5)

    asyncio.run(scenario())

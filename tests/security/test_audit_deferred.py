"""Deferred audit durability (ADR 0023): a decision's frame is appended at once (buffered; the flusher
writes it with its sync, many frames per system call), the write and sync overlap the caller's work, and
nothing that depends on it is answered before it is on disk.

The disk is real; ``fdatasync`` is wrapped only to hold it (a slow disk) or to fail it (EIO), so the tests
can see what is and is not answered while the sync has not happened.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import maif.security.audit as audit_module
from maif.config import SecurityConfig
from maif.errors import AuthorizationError, DurabilityError
from maif.security.audit import AuditLog, audit_barrier, verify_audit_log
from maif.security.audit_chain import SegmentedAuditLog, verify_audit_chain
from maif.security.gate import Gate
from maif.security.keys import MemorySigner
from maif.security.policy import Action, Resource, default_policy, permissions_for
from maif.security.trust import ContextSealer, TrustLevel
from maif.service.metrics import ServiceMetrics
from maif.service.middleware import BodyDeadlines, ServiceMiddleware
from maif.service.tracing import DisabledTracer

WAIT_S = 0.3  # how long a held sync must keep its waiters waiting before we call them held


def event(number: int) -> dict[str, object]:
    return {"actor": "agent-1", "action": "write", "resource": f"block/{number}", "decision": "allow"}


class HeldDisk:
    """``fdatasync`` that blocks until released (or fails with EIO once ``failing`` is set)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.failing = False
        self.syncs = 0
        self._real = os.fdatasync

    def __call__(self, descriptor: int) -> None:
        self.syncs += 1
        self.release.wait(timeout=30)
        if self.failing:
            raise OSError(errno.EIO, "Input/output error")
        self._real(descriptor)


@pytest.fixture
def held_disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldDisk]:
    disk = HeldDisk()
    monkeypatch.setattr(audit_module.os, "fdatasync", disk)
    yield disk
    disk.release.set()


def wait_until(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_a_deferred_entry_is_durable_only_after_the_sync_and_the_flusher_syncs_unasked(
    tmp_path: Path, held_disk: HeldDisk
) -> None:
    signer = MemorySigner()
    with AuditLog.open(tmp_path / "a.log", signer) as log:
        ticket = log.append_deferred(event(1))  # returns although the disk holds every sync
        assert not ticket.durable
        waited: list[object] = []
        waiter = threading.Thread(target=lambda: waited.append(ticket.wait()))
        waiter.start()
        waiter.join(WAIT_S)
        assert waiter.is_alive() and not waited, "a ticket's wait returned before its sync"
        held_disk.release.set()
        waiter.join(10)
        assert waited == [ticket.entry] and ticket.durable
        # Nobody waits for the next one: the flusher thread syncs it anyway.
        unwaited = log.append_deferred(event(2))
        wait_until(lambda: unwaited.durable)
    assert verify_audit_log(tmp_path / "a.log", [signer.public_key]).entries == 2


def test_many_deferred_entries_share_syncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    syncs: list[int] = []
    real = os.fdatasync

    def slow_fdatasync(descriptor: int) -> None:
        syncs.append(descriptor)
        time.sleep(0.002)
        real(descriptor)

    monkeypatch.setattr(audit_module.os, "fdatasync", slow_fdatasync)
    signer = MemorySigner()

    async def scenario(log: SegmentedAuditLog) -> None:
        tickets = [log.append_deferred(event(number)) for number in range(400)]
        await asyncio.wait_for(asyncio.gather(*(ticket.wait_async() for ticket in tickets)), timeout=60)
        assert all(ticket.durable for ticket in tickets)

    with SegmentedAuditLog.open(tmp_path / "chain", signer, segment_entries_max=150) as log:
        asyncio.run(scenario(log))  # rollovers happen between the writes and the waits
    assert len(syncs) < 400 / 4, f"{len(syncs)} syncs for 400 deferred appends: no group commit"
    assert verify_audit_chain(tmp_path / "chain", [signer.public_key]).entries >= 400


def assert_both_fail(first: Any, second: Any) -> None:
    """The log failed: a thread waiting on ``first`` and a coroutine awaiting ``second`` both get
    DurabilityError."""

    async def wait_async() -> None:
        await second.wait_async()

    with pytest.raises(DurabilityError):
        first.wait()
    with pytest.raises(DurabilityError):
        asyncio.run(wait_async())


def test_a_failed_sync_fails_every_deferred_waiter_and_the_log(tmp_path: Path, held_disk: HeldDisk) -> None:
    with AuditLog.open(tmp_path / "a.log", MemorySigner()) as log:
        first, second = log.append_deferred(event(1)), log.append_deferred(event(2))
        held_disk.failing = True
        held_disk.release.set()
        assert_both_fail(first, second)
        with pytest.raises(DurabilityError):
            log.append_deferred(event(3))  # never acknowledged, never retried on the same file


class FailingWrites:
    """``os.write`` that fails with ENOSPC on one descriptor once ``failing`` is set; counts its calls."""

    def __init__(self) -> None:
        self.descriptor = -1
        self.failing = False
        self.calls = 0
        self._real = os.write

    def __call__(self, descriptor: int, data: Any) -> int:
        if descriptor != self.descriptor:
            return self._real(descriptor, data)
        self.calls += 1
        if self.failing:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self._real(descriptor, data)


def test_a_failed_write_fails_every_deferred_waiter_and_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The frames are written by the flusher now: a full disk there must reach every waiter, refuse
    later appends, and leave the durable entries as they were."""
    writes = FailingWrites()
    monkeypatch.setattr(audit_module.os, "write", writes)
    signer = MemorySigner()
    path = tmp_path / "a.log"
    with AuditLog.open(path, signer) as log:
        writes.descriptor = log._descriptor
        durable = log.append(event(0))
        writes.failing = True
        first, second = log.append_deferred(event(1)), log.append_deferred(event(2))
        assert_both_fail(first, second)
        assert not first.durable and not second.durable
        with pytest.raises(DurabilityError):
            log.append_deferred(event(3))
        with pytest.raises(DurabilityError):
            log.append(event(4))
    writes.failing = False
    with AuditLog.open(path, signer) as log:
        assert [entry.resource for entry in log.entries()] == [durable.resource]


def test_buffered_frames_are_read_back_before_their_sync_and_written_many_per_call(
    tmp_path: Path, held_disk: HeldDisk, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = FailingWrites()
    monkeypatch.setattr(audit_module.os, "write", writes)
    with AuditLog.open(tmp_path / "a.log", MemorySigner(), checkpoint_every_entries=10_000) as log:
        writes.descriptor = log._descriptor
        tickets = [log.append_deferred(event(number)) for number in range(300)]
        # The disk holds every sync: the entries are still read back (a reader writes the buffer first).
        assert [entry.resource for entry in log.entries()] == [f"block/{n}" for n in range(300)]
        assert not any(ticket.durable for ticket in tickets)
        held_disk.release.set()
        for ticket in tickets:
            ticket.wait()
    assert writes.calls <= 300 / 10, f"{writes.calls} writes for 300 buffered frames"


def _gate_and_context(log: AuditLog) -> tuple[Gate, Any]:
    sealer = ContextSealer()
    scopes = frozenset({"maif:read", "maif:write"})
    now = time.time()
    context = sealer.mint(
        agent_id="agent-1",
        trust_level=TrustLevel.OAUTH_VERIFIED,
        scopes=scopes,
        permissions=permissions_for(TrustLevel.OAUTH_VERIFIED, scopes, SecurityConfig()),
        tenant="",
        issued_at=now,
        expires_at=now + 300,
        evidence=("test",),
    )
    return Gate(default_policy(SecurityConfig()), sealer, log), context


def test_inside_a_barrier_reads_and_refusals_answer_before_the_sync_and_writes_wait_for_it(
    tmp_path: Path, held_disk: HeldDisk
) -> None:
    """ADR 0023: a read or a refusal leaves its sync to the barrier (awaited before the response); a
    grant that changes the store is handed out only once its entry is durable, so no effect can outlive
    a crash without its audit record."""
    log = AuditLog.open(tmp_path / "a.log", MemorySigner())
    gate, context = _gate_and_context(log)
    own = Resource("block-1", owner="agent-1", tenant="", kind="block")
    foreign = Resource("block-2", owner="agent-2", tenant="", kind="block")

    async def scenario() -> None:
        with audit_barrier() as barrier:
            await asyncio.wait_for(gate.authorize_async(context, Action.READ, own), timeout=5)
            with pytest.raises(AuthorizationError):  # a refusal is recorded the same way
                await asyncio.wait_for(gate.authorize_async(context, Action.WRITE, foreign), timeout=5)
            assert barrier.pending == 1  # the latest sync point of the one log
            writing = asyncio.ensure_future(gate.authorize_async(context, Action.WRITE, own))
            waiting = asyncio.ensure_future(barrier.wait())
            await asyncio.sleep(WAIT_S)
            assert not writing.done(), "a grant to change the store was handed out before its audit sync"
            assert not waiting.done(), "the barrier let a response go before its audit sync"
            held_disk.release.set()
            assert await asyncio.wait_for(writing, timeout=10) is not None
            await asyncio.wait_for(waiting, timeout=10)
        # Without a barrier the gate itself waits for the sync, as before.
        assert (await gate.authorize_async(context, Action.READ, own)) is not None

    try:
        asyncio.run(scenario())
    finally:
        held_disk.release.set()
        log.close()
    decisions = [entry.decision for entry in audit_module.read_audit_log(tmp_path / "a.log")
                 if isinstance(entry, audit_module.AuditEntry)]
    assert decisions == ["allow", "deny", "allow", "allow"]


def _audited_transport(log: AuditLog) -> httpx.ASGITransport:
    """The middleware around a route that records one gate-style deferred audit entry, then answers."""

    async def route(scope: Any, receive: Any, send: Any) -> None:
        barrier = audit_module.current_audit_barrier()
        assert barrier is not None
        barrier.add(log.append_deferred(event(1)))
        headers = [(b"content-type", b"text/plain")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"done"})

    middleware = ServiceMiddleware(route, ServiceMetrics(), DisabledTracer(), BodyDeadlines(30.0, 60.0, 8192))
    return httpx.ASGITransport(app=middleware)


def test_the_service_sends_no_response_byte_before_the_audit_sync(
    tmp_path: Path, held_disk: HeldDisk
) -> None:
    log = AuditLog.open(tmp_path / "a.log", MemorySigner())

    async def scenario() -> httpx.Response:
        async with httpx.AsyncClient(transport=_audited_transport(log), base_url="http://test") as client:
            answer = asyncio.ensure_future(client.get("/"))
            await asyncio.sleep(WAIT_S)
            assert not answer.done(), "a response was sent before its audit entry was durable"
            held_disk.release.set()
            return await asyncio.wait_for(answer, timeout=10)

    try:
        response = asyncio.run(scenario())
    finally:
        held_disk.release.set()
        log.close()
    assert response.status_code == 200 and response.text == "done"


def test_a_response_whose_audit_sync_fails_becomes_a_503(tmp_path: Path, held_disk: HeldDisk) -> None:
    log = AuditLog.open(tmp_path / "a.log", MemorySigner())

    async def scenario() -> httpx.Response:
        async with httpx.AsyncClient(transport=_audited_transport(log), base_url="http://test") as client:
            return await client.get("/")

    held_disk.failing = True
    held_disk.release.set()
    try:
        response = asyncio.run(scenario())
    finally:
        log.close()
    assert response.status_code == 503
    assert response.json()["type"] == "urn:maif:problem:unavailable"
    assert "done" not in response.text  # the route's own answer never leaves

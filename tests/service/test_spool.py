"""The upload spool's bounds: per-body cap, shared byte budget, free disk space; nothing leaks."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from maif.errors import LimitExceededError
from maif.service.problems import ServiceProblem
from maif.service.spool import Spool

MiB = 1024 * 1024


async def _body(total: int, piece: int = 256 * 1024) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        size = min(piece, total - sent)
        yield bytes([sent // piece % 251]) * size
        sent += size


def _expected(total: int, piece: int = 256 * 1024) -> bytes:
    hasher, sent = hashlib.sha256(), 0
    while sent < total:
        size = min(piece, total - sent)
        hasher.update(bytes([sent // piece % 251]) * size)
        sent += size
    return hasher.digest()


def test_small_bodies_stay_in_memory_and_large_ones_go_to_an_anonymous_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path, free_bytes_min=0)

    async def scenario() -> None:
        async with contextlib.AsyncExitStack() as stack:
            small = await spool.receive(
                _body(3 * MiB), cap=64 * MiB, keep_in_memory_bytes=4 * MiB, stack=stack
            )
            assert small.file is None and small.memory is not None and small.length == 3 * MiB
            assert small.sha256 == _expected(3 * MiB)
            large = await spool.receive(
                _body(9 * MiB), cap=64 * MiB, keep_in_memory_bytes=4 * MiB, stack=stack
            )
            assert large.memory is None and large.file is not None and large.length == 9 * MiB
            assert large.sha256 == _expected(9 * MiB)
            assert hashlib.sha256(await large.read(0, 9 * MiB)).digest() == large.sha256
            assert spool.reserved_bytes == 9 * MiB
            assert os.listdir(tmp_path) == []  # no name in the directory, ever
        assert spool.reserved_bytes == 0

    asyncio.run(scenario())


def test_a_body_over_its_cap_is_refused_and_releases_what_it_reserved(tmp_path: Path) -> None:
    spool = Spool(tmp_path, free_bytes_min=0)

    async def scenario() -> None:
        with pytest.raises(LimitExceededError):
            spool.admit(10 * MiB, cap=8 * MiB)  # declared: refused before reading
        with pytest.raises(LimitExceededError):
            async with contextlib.AsyncExitStack() as stack:
                await spool.receive(_body(10 * MiB), cap=8 * MiB, keep_in_memory_bytes=0, stack=stack)
        assert spool.reserved_bytes == 0

    asyncio.run(scenario())


def test_the_shared_budget_refuses_a_concurrent_upload_with_retry_after(tmp_path: Path) -> None:
    spool = Spool(tmp_path, budget_bytes=6 * MiB, free_bytes_min=0)

    async def scenario() -> None:
        async with contextlib.AsyncExitStack() as first_stack:
            first = await spool.receive(
                _body(4 * MiB), cap=64 * MiB, keep_in_memory_bytes=0, stack=first_stack
            )
            assert first.file is not None
            with pytest.raises(ServiceProblem) as refused:
                async with contextlib.AsyncExitStack() as second_stack:
                    await spool.receive(
                        _body(4 * MiB), cap=64 * MiB, keep_in_memory_bytes=0, stack=second_stack
                    )
            assert refused.value.status == 503 and refused.value.headers["Retry-After"]
            assert spool.reserved_bytes == 4 * MiB
        async with contextlib.AsyncExitStack() as third_stack:  # the first one's budget came back
            await spool.receive(_body(4 * MiB), cap=64 * MiB, keep_in_memory_bytes=0, stack=third_stack)
        assert spool.reserved_bytes == 0

    asyncio.run(scenario())


def test_an_upload_that_would_eat_the_free_space_is_refused_with_507(tmp_path: Path) -> None:
    figures = os.statvfs(tmp_path)
    free = figures.f_bavail * figures.f_frsize
    spool = Spool(tmp_path, free_bytes_min=free - 8 * MiB)  # only about 8 of the 64 MiB fit

    async def scenario() -> None:
        with pytest.raises(ServiceProblem) as declared:
            spool.admit(64 * MiB, cap=1 << 40)
        assert declared.value.status == 507
        spool.admit(64 * MiB, cap=1 << 40, keep_in_memory_bytes=64 * MiB)  # kept in memory: no disk needed
        with pytest.raises(ServiceProblem) as streamed:
            async with contextlib.AsyncExitStack() as stack:
                await spool.receive(_body(64 * MiB), cap=1 << 40, keep_in_memory_bytes=0, stack=stack)
        assert streamed.value.status == 507
        assert spool.reserved_bytes == 0

    asyncio.run(scenario())


def test_sweep_removes_named_files_a_killed_process_left(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    leftover = spool.named_path("export")
    leftover.write_bytes(b"half an export")
    unrelated = tmp_path / "keep-me"
    unrelated.write_bytes(b"not ours")
    assert Spool(tmp_path).sweep() == 1
    assert not leftover.exists() and unrelated.exists()

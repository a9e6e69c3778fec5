"""Shared helpers for the agent runtime tests: a real store in tmp_path, run with asyncio.run."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


def run(coroutine: Awaitable[T]) -> T:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


@pytest.fixture
def store_config(tmp_path: Path) -> dict[str, Any]:
    return {"data_dir": str(tmp_path / "store")}


@pytest.fixture
def with_store(store_config: dict[str, Any]) -> Callable[[Callable[[Any], Awaitable[T]]], T]:
    """Run ``body(storage)`` against a fresh store, closing it afterwards."""
    from maif.storage import create_maif_storage

    def runner(body: Callable[[Any], Awaitable[T]]) -> T:
        async def main() -> T:
            storage = await create_maif_storage(store_config)
            try:
                return await body(storage)
            finally:
                await storage.close()

        return asyncio.run(main())

    return runner

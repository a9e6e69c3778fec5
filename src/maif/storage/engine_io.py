"""The engine's bulk operations: export to a signed .maif, import from one, and the scrub (``check``).

Export reads each block through the engine (so its digest is verified) and writes it with
:class:`maif.format.container.ContainerWriter`; import verifies the whole container against the
caller's trusted keys *before* writing a single block, then writes in batches through the log.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import blake3

from maif import limits
from maif.errors import (
    BackendError,
    BlockNotFoundError,
    ConfigError,
    IntegrityError,
    MAIFError,
    SignatureError,
)
from maif.storage.rebuild import index_pages
from maif.storage.receipts import CheckReport

if TYPE_CHECKING:
    from maif.storage.engine import MAIFStorage

_IMPORT_BATCH_RECORDS = 1000
_IMPORT_BATCH_BYTES = 64 * 1024 * 1024  # payload bytes held in memory between two write_blocks calls


async def export_blocks(storage: MAIFStorage, path: Path, selection: Sequence[str] | None,
                        signing_key: Any) -> Any:
    from maif.format.container import ContainerWriter

    loop = asyncio.get_running_loop()
    writer = await loop.run_in_executor(None, lambda: ContainerWriter.create(
        path, compression_threshold=storage.config.compression_threshold))
    try:
        if selection is not None:
            for block_id in selection:
                block = await storage.read_block(block_id)
                writer.add(block)
        else:
            async for page in index_pages(storage._backends):
                for record in page:
                    writer.add(await storage.read_block(record.block_id))
        return await loop.run_in_executor(None, writer.commit, [signing_key])
    finally:
        writer.close()


async def import_blocks(storage: MAIFStorage, path: Path, trusted_keys: Sequence[Any]) -> int:
    from maif.format.container import ContainerReader, verify_container

    if not trusted_keys:
        raise ConfigError("import_maif needs at least one trusted public key")
    loop = asyncio.get_running_loop()
    report = await loop.run_in_executor(None, lambda: verify_container(path, list(trusted_keys)))
    if not report.ok:
        reasons = "; ".join(problem.reason for problem in report.problems[:5])
        raise SignatureError(f"refusing to import {path.name}: verification failed ({reasons})")
    reader = await loop.run_in_executor(None, ContainerReader.open, path)
    imported = 0
    try:
        batch = []
        batch_bytes = 0
        for index in range(len(reader)):
            # the container verified in full above, so a block's declared length is its real length:
            # any block the store may hold (up to the format's limit) is imported
            block = reader.block(index, payload_bytes_max=limits.block_payload_bytes_max)
            batch.append(block)
            batch_bytes += len(block.data)
            if len(batch) >= _IMPORT_BATCH_RECORDS or batch_bytes >= _IMPORT_BATCH_BYTES:
                imported += len(await storage.write_blocks(batch))
                batch, batch_bytes = [], 0
        if batch:
            imported += len(await storage.write_blocks(batch))
    finally:
        reader.close()
    return imported


async def check_store(storage: MAIFStorage, read_data_fraction: float) -> CheckReport:
    """Structure of every indexed block (its chunks exist); a sample read back and digest-verified."""
    if not 0.0 <= read_data_fraction <= 1.0:
        raise ConfigError(f"read_data_fraction must be between 0 and 1, got {read_data_fraction}")
    backends = storage._backends
    problems = list(await backends.chunks.scrub(read_data_fraction))
    integrity = getattr(backends.index, "integrity_problems", None)
    index_damage = await integrity() if integrity is not None else []
    problems.extend(index_damage)
    checked = read = 0
    if not index_damage:
        try:
            checked, read = await _check_blocks(storage, read_data_fraction, problems)
            from maif.storage.rebuild import audit

            problems.extend(await audit(storage, lookup=getattr(backends.index, "get_nowait", None)))
        except BackendError as error:  # the index fails while being read: name it, do not crash check
            problems.append(f"the metadata index is unreadable ({error.message}); repair rebuilds it from "
                            "the stored block records")
    else:
        problems.append("the metadata index is damaged; repair (maif store check --repair) rebuilds it "
                        "from the stored block records")
    wal_repair = storage.recovery.repair_summary()  # records lost or salvaged by this open's repair
    if wal_repair is not None:
        problems.append(wal_repair)
    return CheckReport(ok=not problems, problems=problems, blocks_checked=checked, blocks_read=read,
                       wal_records_unapplied=storage._committed_lsn - storage._applied_lsn,
                       repaired=list(storage.repairs))


async def _check_blocks(storage: MAIFStorage, read_data_fraction: float, problems: list[str]
                        ) -> tuple[int, int]:
    """Every indexed block's chunks exist; a sample read back and verified. (blocks checked, read)."""
    backends = storage._backends
    sampler = random.Random(0x4D414946)  # noqa: S311 - sampling, not security
    checked = read = 0
    async for page in index_pages(backends):
        wanted = {digest for record in page for digest in record.chunks}
        present = await backends.chunks.has_chunks(list(wanted))
        for record in page:
            checked += 1
            missing = [digest for digest in record.chunks if digest not in present]
            if missing:
                problems.append(f"block {record.block_id!r}: {len(missing)} chunk(s) missing")
            elif read_data_fraction and sampler.random() < read_data_fraction:
                read += 1
                problems.extend(await _verify_block(storage, record))
    return checked, read


async def _verify_block(storage: MAIFStorage, record: Any) -> list[str]:
    try:
        block, encoded = await storage._assemble(record)
    except (IntegrityError, BlockNotFoundError) as error:
        return [f"block {record.block_id!r}: {error.message}"]
    except MAIFError as error:
        return [f"block {record.block_id!r} unreadable: {error.message}"]
    assert blake3.blake3(encoded).digest() == record.digest and block.id == record.block_id
    return []


__all__ = ["check_store", "export_blocks", "import_blocks"]

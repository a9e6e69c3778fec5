"""kill -9 a real ingesting process at random instants; every acknowledged block must read back bit-exact.

One zygote process pays the imports once and forks an ingesting child per round (crash_child.py); the
test kills the child with SIGKILL after a random delay, then opens the store in this process (recovery
must succeed), reads every block the child had acknowledged and compares it with the block rebuilt from
its seed. Rounds share a data directory in groups, so later children also recover from earlier crashes
(and are sometimes killed during that recovery). The seed of each round is printed on failure.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from maif.format.codec import block_digest
from maif.storage.engine import create_maif_storage

sys.path.insert(0, str(Path(__file__).parent))
from crash_child import block_for

ROUNDS = 50
ROUNDS_PER_DIRECTORY = 5
CHILD = Path(__file__).with_name("crash_child.py")


class Zygote:
    def __init__(self) -> None:
        environment = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
        self.process = subprocess.Popen([sys.executable, str(CHILD), "zygote"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=environment)

    def spawn(self, data_dir: Path, seed: int, receipts: Path) -> int:
        assert self.process.stdin is not None and self.process.stdout is not None
        # Created empty here, not by the child: a child killed before it ran must leave an empty
        # file, never the previous round's receipts.
        receipts.write_bytes(b"")
        self.process.stdin.write(f"run {data_dir} {seed} {receipts}\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline().split()
        assert answer and answer[0] == "pid", answer
        return int(answer[1])

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("quit\n")
        self.process.stdin.close()
        self.process.wait(timeout=30)


def kill_and_wait(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return  # it finished or failed on its own: the receipts file says which
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.002)
    raise AssertionError(f"child {pid} survived SIGKILL")


def acknowledged(receipts: Path) -> tuple[list[tuple[int, int, str]], str | None]:
    """(index, lsn, digest) of every complete receipt line, and the child's error line if any."""
    entries: list[tuple[int, int, str]] = []
    error = None
    for line in receipts.read_text().splitlines(keepends=True):
        if not line.endswith("\n"):
            break  # cut by the kill: that receipt was never fully reported
        words = line.split()
        if words[0] == "error":
            error = line
        elif words[0] != "done":
            entries.append((int(words[0]), int(words[1]), words[2]))
    return entries, error


async def verify(data_dir: Path, expected: dict[str, tuple[int, int, str]]) -> None:
    async with await create_maif_storage({"data_dir": str(data_dir)}) as storage:
        for block_id, (seed, index, digest_hex) in expected.items():
            block = await storage.read_block(block_id)
            rebuilt = block_for(seed, index)
            assert block == rebuilt, f"block {block_id} differs after the crash"
            assert block_digest(block).hex() == digest_hex
        report = await storage.check(read_data_fraction=0.05)
        assert report.ok, report.problems


@pytest.mark.slow
def test_acknowledged_blocks_survive_kill_9(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("MAIF_CRASH_SEED", "20261124")))
    zygote = Zygote()
    try:
        expected: dict[str, tuple[int, int, str]] = {}
        total_acknowledged = 0
        for round_number in range(ROUNDS):
            if round_number % ROUNDS_PER_DIRECTORY == 0:
                expected = {}
            data_dir = tmp_path / f"store-{round_number // ROUNDS_PER_DIRECTORY}"
            seed = rng.randrange(1 << 30)
            receipts = tmp_path / f"receipts-{round_number}.txt"
            pid = zygote.spawn(data_dir, seed, receipts)
            time.sleep(rng.choice([0.0, 0.01, 0.05]) + rng.random() * 0.35)
            kill_and_wait(pid)
            entries, error = acknowledged(receipts)
            assert error is None, f"round {round_number} seed {seed}: child failed: {error}"
            for index, lsn, digest_hex in entries:
                assert lsn > 0
                expected[f"s{seed}-{index}"] = (seed, index, digest_hex)
            total_acknowledged += len(entries)
            # Everything acknowledged in this round, plus a sample of earlier rounds in this directory
            # (they went through more recoveries); the campaign script checks them all.
            this_round = {f"s{seed}-{index}" for index, _, _ in entries}
            earlier = sorted(set(expected) - this_round)
            to_check = this_round | set(rng.sample(earlier, min(len(earlier), 300)))
            try:
                asyncio.run(verify(data_dir, {block_id: expected[block_id] for block_id in to_check}))
            except BaseException as failure:
                raise AssertionError(f"round {round_number} seed {seed}: {failure!r}") from failure
        assert total_acknowledged > ROUNDS * 10, "the children should have acknowledged blocks before dying"
    finally:
        zygote.close()

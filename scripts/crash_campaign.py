"""Long crash campaign (not part of the test suite): kill -9 an ingesting process N times, verify everything.

    .venv/bin/python scripts/crash_campaign.py --rounds 1000 [--seed 1] [--workdir /tmp/maif-crash]

Like tests/storage/test_crash.py but with many more rounds, and after each round EVERY block acknowledged
in that data directory so far is read back and compared bit-exact (not a sample). On the first failure the
data directory and receipts are kept and the round's seed printed, so it replays. Writes a JSON summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "storage"))

from test_crash import Zygote, acknowledged, kill_and_wait, verify  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--rounds-per-directory", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-delay-s", type=float, default=0.6)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--summary", type=Path,
                        default=ROOT / "benchmarks" / "results" / "crash_campaign.json")
    arguments = parser.parse_args()
    workdir = arguments.workdir or Path(tempfile.mkdtemp(prefix="maif-crash-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(arguments.seed)  # noqa: S311 - reproducible test schedule, not security
    zygote = Zygote()
    expected: dict[str, tuple[int, int, str]] = {}
    acknowledged_total = 0
    started = time.monotonic()
    try:
        for round_number in range(arguments.rounds):
            if round_number % arguments.rounds_per_directory == 0:
                if round_number:
                    shutil.rmtree(workdir / f"store-{round_number // arguments.rounds_per_directory - 1}")
                expected = {}
            data_dir = workdir / f"store-{round_number // arguments.rounds_per_directory}"
            seed = rng.randrange(1 << 30)
            receipts = workdir / "receipts.txt"
            pid = zygote.spawn(data_dir, seed, receipts)
            time.sleep(rng.random() * arguments.max_delay_s)
            kill_and_wait(pid)
            entries, error = acknowledged(receipts)
            if error is not None:
                print(f"round {round_number} seed {seed}: child failed: {error}; kept {workdir}")
                return 1
            for index, _lsn, digest_hex in entries:
                expected[f"s{seed}-{index}"] = (seed, index, digest_hex)
            acknowledged_total += len(entries)
            try:
                asyncio.run(verify(data_dir, expected))
            except BaseException as failure:  # noqa: BLE001 - report every kind of failure
                print(f"round {round_number} seed {seed}: {failure!r}; kept {workdir}")
                return 1
            if round_number % 50 == 49:
                print(f"{round_number + 1} rounds, {acknowledged_total} acknowledged blocks verified",
                      flush=True)
    finally:
        zygote.close()
    summary = {"rounds": arguments.rounds, "seed": arguments.seed, "acknowledged_blocks": acknowledged_total,
               "failures": 0, "elapsed_s": round(time.monotonic() - started, 1)}
    arguments.summary.parent.mkdir(parents=True, exist_ok=True)
    arguments.summary.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""CLI start time: `maif --help` and `maif verify` of a one-block file, against the interpreter's own start.

    PYTHONPATH=src .venv/bin/python benchmarks/cli_start_bench.py [--runs 25]

Each command runs ``--runs`` times as a fresh process, the way the console script runs it (the
``maif`` entry point is ``maif.cli.main:app``), interleaved with ``python -c pass`` (the floor: the
interpreter's start on this machine in the same minutes). Reports the median and the minimum wall time of
each, and each median minus the floor's median. Goals (issue 13): help <= 150 ms, verify <= 250 ms.
With ``--baseline-src DIR`` (another checkout's ``src``, e.g. before a change) the same two commands also
run from there, interleaved, and the medians' ratios are reported: a same-run comparison that a busy
machine slows on both sides alike.
Writes benchmarks/results/cli_start.json. Never part of the test run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "cli_start.json"
ENTRY = "import sys; from maif.cli.main import app; sys.argv[0] = 'maif'; sys.exit(app())"


def maif(*arguments: str) -> list[str]:
    return [sys.executable, "-c", ENTRY, *arguments]


def wall_s(command: list[str], cwd: Path, source: str | None = None) -> float:
    environment = None if source is None else {**os.environ, "PYTHONPATH": source}
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"{command[3:]} exited {completed.returncode}: {completed.stderr.decode()[-500:]}")
    return elapsed


def summary(samples: list[float], floor_median: float | None) -> dict[str, Any]:
    median = statistics.median(samples)
    row: dict[str, Any] = {"median_ms": round(median * 1e3, 1), "min_ms": round(min(samples) * 1e3, 1)}
    if floor_median is not None:
        row["median_over_floor_ms"] = round((median - floor_median) * 1e3, 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=25)
    parser.add_argument("--baseline-src", help="another checkout's src directory to compare with")
    arguments = parser.parse_args()
    commands: dict[str, list[str]] = {"python_c_pass": [sys.executable, "-c", "pass"]}
    with tempfile.TemporaryDirectory(prefix="maif-cli-start-") as scratch:
        folder = Path(scratch)
        (folder / "one.txt").write_text("one block\n")
        wall_s(maif("keygen", "-o", "keys"), folder)
        wall_s(maif("pack", "one.txt", "-o", "one.maif", "--key", "keys/maif.key"), folder)
        commands["maif_help"] = maif("--help")
        commands["maif_verify_one_block"] = maif("verify", "one.maif", "--trust", "keys/maif.pub")
        runs: dict[str, tuple[list[str], str | None]] = {
            name: (command, None) for name, command in commands.items()
        }
        if arguments.baseline_src:
            for name in ("maif_help", "maif_verify_one_block"):
                runs[f"baseline_{name}"] = (commands[name], arguments.baseline_src)
        samples: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(arguments.runs):
            for name, (command, source) in runs.items():
                samples[name].append(wall_s(command, folder, source))
    floor = statistics.median(samples["python_c_pass"])
    results: dict[str, Any] = {
        "python": platform.python_version(),
        "runs": arguments.runs,
        "load_average_1m_after": os.getloadavg()[0],
        "python_c_pass": summary(samples["python_c_pass"], None),
        "maif_help": summary(samples["maif_help"], floor),
        "maif_verify_one_block": summary(samples["maif_verify_one_block"], floor),
        "goals_ms": {"maif_help": 150, "maif_verify_one_block": 250},
    }
    if arguments.baseline_src:
        results["baseline_src"] = arguments.baseline_src
        for name in ("maif_help", "maif_verify_one_block"):
            results[f"baseline_{name}"] = summary(samples[f"baseline_{name}"], floor)
            baseline = statistics.median(samples[f"baseline_{name}"])
            results[f"{name}_over_baseline"] = round(statistics.median(samples[name]) / baseline, 3)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""CLI start time: `maif --help` and `maif verify` of a one-block file, against the interpreter's own start.

    PYTHONPATH=src .venv/bin/python benchmarks/cli_start_bench.py [--runs 25]

Each command runs ``--runs`` times as a fresh process, the way the console script runs it (the
``maif`` entry point is ``maif.cli.main:app``), interleaved with ``python -c pass`` (the floor: the
interpreter's start on this machine in the same minutes). Reports the median and the minimum wall time of
each, each median minus the floor's median, and the median CPU time (user + system) of each. Goals
(issue 13): help <= 150 ms, verify <= 250 ms.
With ``--baseline-src DIR`` (another checkout's ``src``, e.g. before a change) the same two commands also
run from there, interleaved, and the medians' ratios are reported: a same-run comparison that a busy
machine slows on both sides alike.
Compiled bytecode is cached (in the scratch folder, PYTHONPYCACHEPREFIX), as it is for a package pip
installed, even when the calling shell sets PYTHONDONTWRITEBYTECODE (this machine's does: then every
start compiles each MAIF module it imports, ~80 ms for `maif verify`); ``--no-bytecode-cache`` measures
that case instead.
Writes benchmarks/results/cli_start.json. Never part of the test run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
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


def child_environment(bytecode_folder: Path | None, source: str | None) -> dict[str, str]:
    """The environment of each timed process: with ``bytecode_folder``, compiled modules are written to
    and read from there (as an installed package's are, compiled by pip), whatever PYTHONDONTWRITEBYTECODE
    the calling shell sets; without it, as the caller's environment says."""
    environment = dict(os.environ)
    if bytecode_folder is not None:
        environment.pop("PYTHONDONTWRITEBYTECODE", None)
        environment["PYTHONPYCACHEPREFIX"] = str(bytecode_folder)
    if source is not None:
        environment["PYTHONPATH"] = source
    return environment


def wall_s(command: list[str], cwd: Path, environment: dict[str, str]) -> float:
    return timed_s(command, cwd, environment)[0]


def timed_s(command: list[str], cwd: Path, environment: dict[str, str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one run of ``command``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode != 0:
        raise RuntimeError(f"{command[3:]} exited {completed.returncode}: {completed.stderr.decode()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def summary(samples: list[float], floor_median: float | None, cpu_samples: list[float]) -> dict[str, Any]:
    median = statistics.median(samples)
    row: dict[str, Any] = {"median_ms": round(median * 1e3, 1), "min_ms": round(min(samples) * 1e3, 1)}
    if floor_median is not None:
        row["median_over_floor_ms"] = round((median - floor_median) * 1e3, 1)
    # CPU time is what a busy machine distorts least: it does not count waiting for a core.
    row["cpu_median_ms"] = round(statistics.median(cpu_samples) * 1e3, 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=25)
    parser.add_argument("--baseline-src", help="another checkout's src directory to compare with")
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="keep the caller's PYTHONDONTWRITEBYTECODE (then every start compiles MAIF's modules)",
    )
    arguments = parser.parse_args()
    load_before = os.getloadavg()[0]
    commands: dict[str, list[str]] = {"python_c_pass": [sys.executable, "-c", "pass"]}
    with tempfile.TemporaryDirectory(prefix="maif-cli-start-") as scratch:
        folder = Path(scratch)
        bytecode = None if arguments.no_bytecode_cache else folder / "bytecode"
        own = child_environment(bytecode, None)
        (folder / "one.txt").write_text("one block\n")
        wall_s(maif("keygen", "-o", "keys"), folder, own)
        wall_s(maif("pack", "one.txt", "-o", "one.maif", "--key", "keys/maif.key"), folder, own)
        commands["maif_help"] = maif("--help")
        commands["maif_verify_one_block"] = maif("verify", "one.maif", "--trust", "keys/maif.pub")
        runs: dict[str, tuple[list[str], dict[str, str]]] = {
            name: (command, own) for name, command in commands.items()
        }
        if arguments.baseline_src:
            baseline = child_environment(bytecode, arguments.baseline_src)
            for name in ("maif_help", "maif_verify_one_block"):
                runs[f"baseline_{name}"] = (commands[name], baseline)
        for command, environment in runs.values():  # fills the bytecode cache, as the first run after install
            wall_s(command, folder, environment)
        samples: dict[str, list[float]] = {name: [] for name in runs}
        cpu: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(arguments.runs):
            for name, (command, environment) in runs.items():
                wall, cpu_time = timed_s(command, folder, environment)
                samples[name].append(wall)
                cpu[name].append(cpu_time)
    floor = statistics.median(samples["python_c_pass"])
    results: dict[str, Any] = {
        "python": platform.python_version(),
        "runs": arguments.runs,
        "bytecode": "compiled every start" if arguments.no_bytecode_cache else "cached (PYTHONPYCACHEPREFIX)",
        "load_average_1m_before": load_before,
        "load_average_1m_after": os.getloadavg()[0],
        "python_c_pass": summary(samples["python_c_pass"], None, cpu["python_c_pass"]),
        **{name: summary(samples[name], floor, cpu[name]) for name in ("maif_help", "maif_verify_one_block")},
        "goals_ms": {"maif_help": 150, "maif_verify_one_block": 250},
    }
    if arguments.baseline_src:
        results["baseline_src"] = arguments.baseline_src
        for name in ("maif_help", "maif_verify_one_block"):
            results[f"baseline_{name}"] = summary(samples[f"baseline_{name}"], floor, cpu[f"baseline_{name}"])
            baseline = statistics.median(samples[f"baseline_{name}"])
            results[f"{name}_over_baseline"] = round(statistics.median(samples[name]) / baseline, 3)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Run every benchmark in benchmarks/ one after the other, then write docs/benchmarks/REPORT.md.

    scripts/bench [--only NAME[,NAME...]] [--skip NAME[,NAME...]] [--report-only] [--list]

(``scripts/bench`` sets up the venv with the bench extra and the system packages first, then runs this.)
Every ``benchmarks/*_bench.py`` runs with its own defaults (the full sizes), each alone, so no two
benchmarks share the 2 cores. Beside each run, ``benchmarks/results/bench_run.json`` records the load
average before and after, the exit code, the elapsed time and which result files it (re)wrote; the report
quotes that load average beside each figure. A benchmark that fails is recorded as failed (its older
results stay and the report says so) and the run goes on; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
RESULTS = BENCHMARKS / "results"
MANIFEST = RESULTS / "bench_run.json"
# Short ones first; the long builds (vectors, servers) last. Benchmarks not named here run in between,
# in name order, so a new benchmark is part of the run without editing this list.
FIRST = ["format", "cli_start", "audit", "audit_segments", "security", "attestation", "agents", "ingest",
         "service", "compaction", "dedup"]
LAST = ["cluster", "distributed", "vector"]


def discover() -> list[str]:
    names = sorted(path.name.removesuffix("_bench.py") for path in BENCHMARKS.glob("*_bench.py"))
    middle = [name for name in names if name not in FIRST and name not in LAST]
    return [name for name in FIRST if name in names] + middle + [name for name in LAST if name in names]


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _result_times() -> dict[str, float]:
    return {path.stem: path.stat().st_mtime for path in RESULTS.glob("*.json") if path != MANIFEST}


def run(names: list[str], mode: str = "full") -> int:
    runs: list[dict[str, object]] = []
    manifest = {"started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "commit": _commit(), "cpus": os.cpu_count(), "mode": mode, "benchmarks": runs}
    failures = 0
    for name in names:
        script = BENCHMARKS / f"{name}_bench.py"
        before = _result_times()
        load_start = list(os.getloadavg())
        started = time.monotonic()
        print(f"== {name}: {script.relative_to(REPO)} (load average {load_start[0]:.2f})", flush=True)
        code = subprocess.run([sys.executable, str(script)], cwd=REPO, check=False).returncode
        after = _result_times()
        written = sorted(stem for stem, mtime in after.items() if before.get(stem) != mtime)
        entry = {"name": name, "exit_code": code, "elapsed_s": round(time.monotonic() - started, 1),
                 "load_average_start": load_start, "load_average_end": list(os.getloadavg()),
                 "results": written}
        runs.append(entry)
        failures += code != 0
        print(f"== {name}: exit {code} in {entry['elapsed_s']} s, wrote {', '.join(written) or 'nothing'}",
              flush=True)
        MANIFEST.write_text(json.dumps(manifest, indent=1) + "\n")  # after each: a crash keeps the rest
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated benchmark names (e.g. ingest,service)")
    parser.add_argument("--skip", default="", help="comma-separated benchmark names to leave out")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report from results")
    parser.add_argument("--list", action="store_true", help="print the benchmarks in run order and exit")
    args = parser.parse_args()
    names = discover()
    if args.list:
        print("\n".join(names))
        return 0
    only = [name for name in args.only.split(",") if name]
    unknown = [name for name in only + args.skip.split(",") if name and name not in names]
    if unknown:
        print(f"bench: unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(names)}", file=sys.stderr)
        return 2
    skip = set(args.skip.split(","))
    selected = [name for name in names if (not only or name in only) and name not in skip]
    mode = "full" if selected == names else "some: " + ",".join(selected)
    status = 0 if args.report_only else run(selected, mode)
    report = subprocess.run([sys.executable, str(BENCHMARKS / "report.py")], cwd=REPO, check=False)
    return status or report.returncode


if __name__ == "__main__":
    raise SystemExit(main())

"""benchmarks/report.py: each goal is read from the result that answers it, judged against its bound, and
a goal no result answers is "not measured" (never guessed)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def _report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_report", REPO / "benchmarks" / "report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _row(text: str, goal: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| {goal} |"))


def test_goals_are_judged_against_their_bounds_and_missing_ones_say_so(tmp_path: Path) -> None:
    report = _report()
    results = tmp_path / "results"
    results.mkdir()
    (results / "ingest.json").write_text(json.dumps({
        "medians": {"fdatasync_latency_ms_p99": 4.0},
        "ratios": {"batch_ack_vs_lmdb_sync_1000": 1.25, "concurrent_64_vs_raw_append_groups_of_64": 0.4},
    }))
    (results / "service.json").write_text(json.dumps({"writes_small": [
        {"offered_per_s": 1000, "achieved_writes_per_s": 990.0, "latency_ms_p50": 2.0, "latency_ms_p99": 9.0},
        {"offered_per_s": 3000, "achieved_writes_per_s": 3100.0, "latency_ms_p50": 3.0,
         "latency_ms_p99": 40.0},
    ]}))
    (results / "bench_run.json").write_text(json.dumps({"started": "t0", "benchmarks": [
        {"name": "ingest", "exit_code": 0, "results": ["ingest"], "load_average_start": [0.5, 0, 0],
         "load_average_end": [1.5, 0, 0]},
        {"name": "service", "exit_code": 3, "results": [], "load_average_start": [2.0, 0, 0],
         "load_average_end": [2.0, 0, 0]}]}))
    output = tmp_path / "REPORT.md"
    loaded = report.load_results(results)
    manifest = json.loads((results / "bench_run.json").read_text())
    output.write_text(report.render(loaded, manifest, [], "plots"))
    text = output.read_text()

    assert "| yes |" in _row(text, "library batch ack vs LMDB")
    assert "0.50 -> 1.50" in _row(text, "library batch ack vs LMDB")  # the load average of its own run
    assert "**no** (50% of 0.8)" in _row(text, "64 concurrent writers")
    # 9 ms against max(5 ms, 2 x 4 ms) = 8 ms: missed, by 1.1x
    assert "**no** (1.1x 8)" in _row(text, "service, 1000 writes/s (p99 ms)")
    assert "| yes |" in _row(text, "service saturation (writes/s)")
    assert "not measured" in _row(text, "library batch applied vs LMDB")
    assert "not measured" in _row(text, "maif --help (ms)")
    assert "**Failed in that run**" in text and "service" in text.split("**Failed in that run**")[1]

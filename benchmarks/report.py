"""Write docs/benchmarks/REPORT.md (and its plots) from the JSON results in benchmarks/results/.

    .venv/bin/python benchmarks/report.py [--results DIR] [--output docs/benchmarks/REPORT.md]

The report states each goal of the speed brief (issue 13) beside the figure that answers it, the file it
comes from, and the machine's load average when that figure was measured: from the run manifest that
``scripts/bench`` writes (``bench_run.json``: load average before and after each benchmark), else from
the result file itself when it recorded one, else "not recorded". A goal whose figure no result holds is
listed as "not measured", never guessed. Plots (matplotlib, PNG, beside the report in ``plots/``):
latency against offered load (service, and the library's open loop when measured), throughput against
each peer of the ingest benchmark, and scaling curves (agents in one process; worker processes when the
cluster benchmark has run).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
REPORT = REPO / "docs" / "benchmarks" / "REPORT.md"
MANIFEST = "bench_run.json"


def dig(document: Any, path: str) -> Any:
    """``document["a"]["b"]...`` for ``path`` "a.b..."; None when any step is missing."""
    for step in path.split("."):
        if isinstance(document, dict) and step in document:
            document = document[step]
        else:
            return None
    return document


@dataclass
class Goal:
    """One goal of the brief: how to read its figure from the results, its bound, and which side is good."""

    name: str
    source: str  # result file stem
    text: str  # the goal as the brief states it
    figure: Callable[[dict[str, dict[str, Any]]], tuple[float | None, str]]  # (value, where it was read)
    bound: Callable[[dict[str, dict[str, Any]]], float]
    at_least: bool  # True: the figure must reach the bound; False: stay at or under it
    also: Callable[[dict[str, dict[str, Any]]], bool] = lambda _results: True  # a second condition

    def verdict(self, value: float, results: dict[str, dict[str, Any]]) -> str:
        bound = self.bound(results)
        met = (value >= bound if self.at_least else value <= bound) and self.also(results)
        if met:
            return "yes"
        if self.at_least:
            return f"**no** ({value / bound:.0%} of {_number(bound)})"
        return f"**no** ({value / bound:.1f}x {_number(bound)})"


def _path(source: str, path: str) -> Callable[[dict[str, dict[str, Any]]], tuple[float | None, str]]:
    def read(results: dict[str, dict[str, Any]]) -> tuple[float | None, str]:
        value = dig(results.get(source), path)
        number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        return number, f"{source}.json {path}"

    return read


def _service_at(rate: int) -> Callable[[dict[str, dict[str, Any]]], tuple[float | None, str]]:
    def read(results: dict[str, dict[str, Any]]) -> tuple[float | None, str]:
        for phase in dig(results.get("service"), "writes_small") or []:
            if phase.get("offered_per_s") == rate and phase.get("latency_ms_p99") is not None:
                return float(phase["latency_ms_p99"]), f"service.json writes_small[offered {rate}/s] p99 ms"
        return None, "service.json writes_small"

    return read


def _service_saturation(results: dict[str, dict[str, Any]]) -> tuple[float | None, str]:
    phases = dig(results.get("service"), "writes_small") or []
    achieved = [phase["achieved_writes_per_s"] for phase in phases if "achieved_writes_per_s" in phase]
    return (max(achieved) if achieved else None), "service.json max achieved_writes_per_s over the phases"


def _fsync_p99(results: dict[str, dict[str, Any]]) -> float | None:
    value = dig(results.get("ingest"), "medians.fdatasync_latency_ms_p99")
    return float(value) if isinstance(value, int | float) else None


def _latency_bound(factor: float) -> Callable[[dict[str, dict[str, Any]]], float]:
    """max(5 ms, factor x the disk's fdatasync p99 measured by the ingest benchmark)."""
    return lambda results: max(5.0, factor * (_fsync_p99(results) or 0.0))


def _fixed(bound: float) -> Callable[[dict[str, dict[str, Any]]], float]:
    return lambda _results: bound


GOALS = [
    Goal("library batch ack vs LMDB", "ingest", ">= 1.0x LMDB sync_1000",
         _path("ingest", "ratios.batch_ack_vs_lmdb_sync_1000"), _fixed(1.0), True),
    Goal("library batch applied vs LMDB", "ingest", ">= 0.7x LMDB sync_1000",
         _path("ingest", "ratios.batch_applied_vs_lmdb_sync_1000"), _fixed(0.7), True),
    Goal("64 concurrent writers", "ingest", ">= 0.8x raw append in groups of 64",
         _path("ingest", "ratios.concurrent_64_vs_raw_append_groups_of_64"), _fixed(0.8), True),
    Goal("open loop, 5000 single writes/s (p99 ms)", "ingest", "<= max(5 ms, 1.5x fdatasync p99)",
         _path("ingest", "open_loop.5000.latency_ms_p99"), _latency_bound(1.5), False),
    Goal("service, 1000 writes/s (p99 ms)", "service", "<= max(5 ms, 2x fdatasync p99)",
         _service_at(1000), _latency_bound(2.0), False),
    Goal("service saturation (writes/s)", "service", ">= 3000 writes/s", _service_saturation,
         _fixed(3000), True),
    Goal("container small blocks written (/s)", "format", ">= 250k blocks/s",
         _path("format", "small.write_durable_blocks_per_s"), _fixed(250_000), True),
    Goal("container small blocks verified (/s)", "format", ">= 300k blocks/s",
         _path("format", "small.verify_full_blocks_per_s"), _fixed(300_000), True),
    Goal("verified large reads vs BLAKE3", "format", ">= 0.8x BLAKE3",
         _path("format", "large.verified_read_ratio_to_blake3"), _fixed(0.8), True),
    Goal("vector search p50 (us)", "vector_bench", "<= 250 us at recall@10 >= 0.95 (300k x 384)",
         _path("vector_bench", "full.chosen.latency_us_p50"), _fixed(250.0), False,
         lambda results: (dig(results.get("vector_bench"), "full.chosen.recall_at_10") or 0) >= 0.95),
    Goal("vector search p50, search thread CPU (us)", "vector_bench",
         "<= 250 us at recall@10 >= 0.95 (no wait for a core; still shares caches with the load)",
         _path("vector_bench", "full.chosen.cpu_us_p50"), _fixed(250.0), False,
         lambda results: (dig(results.get("vector_bench"), "full.chosen.recall_at_10") or 0) >= 0.95),
    Goal("maif --help (ms)", "cli_start", "<= 150 ms", _path("cli_start", "maif_help.median_ms"),
         _fixed(150.0), False),
    Goal("maif verify of a small file (ms)", "cli_start", "<= 250 ms",
         _path("cli_start", "maif_verify_one_block.median_ms"), _fixed(250.0), False),
]


def _flatten(document: Any, prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    if isinstance(document, dict):
        for key, value in document.items():
            items += _flatten(value, f"{prefix}{key}.")
    elif not isinstance(document, list):
        items.append((prefix[:-1], document))
    return items


def _number(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def load_results(directory: Path) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.json")):
        if path.name == MANIFEST:
            continue
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(document, dict):
            results[path.stem] = document
    return results


def load_average(stem: str, document: dict[str, Any], manifest: dict[str, Any]) -> str:
    """The load average recorded when ``stem`` was measured, as text."""
    for run in manifest.get("benchmarks", []):
        if stem in run.get("results", []) and run.get("load_average_start"):
            start, end = run["load_average_start"], run.get("load_average_end") or []
            return (f"{start[0]:.2f} -> {end[0]:.2f} (1-min, at start -> at end of the "
                    f"{run['name']} run of {manifest.get('started', '?')})") if end else f"{start[0]:.2f}"
    for key, value in _flatten(document):
        if "load_average" in key and isinstance(value, int | float):
            return f"{value:.2f} ({key})"
    machine = document.get("machine") or {}
    for key, when in (("load_average_at_start", "start"), ("load_average_start", "start"),
                      ("load_average_at_end", "end"), ("load_average_end", "end")):
        values = machine.get(key)
        if isinstance(values, list) and values:
            return f"{values[0]:.2f} (1-min, at {when})"
    return "not recorded"


def plots(results: dict[str, dict[str, Any]], directory: Path) -> list[tuple[str, str]]:
    """Write the PNGs; ``[(file name, caption)]`` of those written (a plot without data is skipped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written: list[tuple[str, str]] = []

    def save(figure: Any, name: str, caption: str) -> None:
        figure.tight_layout()
        figure.savefig(directory / name, dpi=110)
        plt.close(figure)
        written.append((name, caption))

    phases = dig(results.get("service"), "writes_small") or []
    open_loop = dig(results.get("ingest"), "open_loop") or {}
    if phases or open_loop:
        figure, axis = plt.subplots(figsize=(7, 4.2))
        if phases:
            offered = [phase["offered_per_s"] for phase in phases]
            axis.plot(offered, [phase["latency_ms_p99"] for phase in phases], "o-", label="service p99")
            axis.plot(offered, [phase["latency_ms_p50"] for phase in phases], "o--", label="service p50")
        if isinstance(open_loop, dict) and open_loop:
            rates = sorted(open_loop, key=float)
            axis.plot([float(rate) for rate in rates], [open_loop[rate]["latency_ms_p99"] for rate in rates],
                      "s-", label="library p99 (open loop)")
        floor = _fsync_p99(results)
        if floor is not None:
            axis.axhline(max(5.0, 2 * floor), color="grey", linestyle=":", label="service goal")
        axis.set_xlabel("offered writes/s")
        axis.set_ylabel("latency ms (log)")
        axis.set_yscale("log")
        axis.legend()
        axis.set_title("Write latency against offered load")
        save(figure, "latency_vs_load.png", "Write latency (p50/p99) against offered load, open loop.")

    medians = dig(results.get("ingest"), "medians") or {}
    peers = ("raw_append", "lmdb_sync_1000", "sqlite_full_1000", "maif_batch_ack", "maif_batch_applied",
             "raw_append_groups_of_64", "maif_concurrent_64", "sqlite_full_1")
    bars = [(name, medians[name]) for name in peers if isinstance(medians.get(name), int | float)]
    if bars:
        figure, axis = plt.subplots(figsize=(7, 4.2))
        colors = ["tab:orange" if name.startswith("maif") else "tab:grey" for name, _ in bars]
        axis.barh([name for name, _ in bars], [value for _, value in bars], color=colors)
        axis.set_xscale("log")
        axis.set_xlabel("records/s (log), 1 KiB records, durable")
        axis.set_title("Ingest: MAIF (orange) against its peers, same run")
        save(figure, "ingest_vs_peers.png",
             "Durable ingest throughput of MAIF and each peer in the same run.")

    scaling = dig(results.get("agents"), "io_scaling") or {}
    cluster = results.get("cluster_bench") or results.get("cluster") or {}
    if scaling:
        figure, axis = plt.subplots(figsize=(7, 4.2))
        agents = sorted(scaling, key=int)
        axis.plot([int(count) for count in agents], [scaling[count]["efficiency"] for count in agents], "o-",
                  label="agents in one process (I/O-bound, 20 ms)")
        axis.set_xscale("log")
        axis.set_ylim(0, 1.05)
        axis.set_xlabel("agents")
        axis.set_ylabel("efficiency (measured / ideal tasks/s)")
        axis.axhline(0.9, color="grey", linestyle=":", label="goal 0.9")
        axis.legend()
        axis.set_title("Scaling")
        save(figure, "scaling.png", "Scaling efficiency of I/O-bound agents.")
    if cluster:
        curve = _cluster_curve(cluster)
        if curve:
            figure, axis = plt.subplots(figsize=(7, 4.2))
            for label, points in curve.items():
                axis.plot([x for x, _ in points], [y for _, y in points], "o-", label=label)
            axis.set_xlabel("worker processes")
            axis.set_ylabel("tasks/s")
            axis.legend(fontsize=7)
            axis.set_title("Worker processes (cluster benchmark)")
            save(figure, "cluster_scaling.png",
                 "Tasks/s against worker processes, from the cluster benchmark.")
    return written


def _cluster_curve(document: dict[str, Any]) -> dict[str, list[tuple[float, float]]]:
    """Series "tasks/s against workers" found in a cluster benchmark result, whatever its nesting:
    any list of rows that carry a worker count and a tasks/s figure, labelled by its path."""
    curves: dict[str, list[tuple[float, float]]] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, list) and node and all(isinstance(row, dict) for row in node):
            points = [(float(row["workers"]), float(row["tasks_per_s"])) for row in node
                      if isinstance(row.get("workers"), int | float)
                      and isinstance(row.get("tasks_per_s"), int | float)]
            if len(points) >= 2:
                curves[path or "tasks/s"] = sorted(points)
        elif isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else str(key))

    walk(document, "")
    return dict(list(curves.items())[:8])


def render(results: dict[str, dict[str, Any]], manifest: dict[str, Any], pictures: list[tuple[str, str]],
           plots_dir: str) -> str:
    lines = ["# Benchmark report", "",
             f"Written by `benchmarks/report.py` on {datetime.date.today().isoformat()} from the JSON "
             "results in `benchmarks/results/`; `scripts/bench` runs every benchmark and then this. Each "
             "figure names the file it comes from and the load average of the machine (2 cores) when it "
             "was measured. Medians unless stated. Goals are those of the speed brief (issue 13); a goal "
             "no result answers is \"not measured\".", ""]
    if manifest:
        lines += [f"Last `scripts/bench` run: started {manifest.get('started', '?')}, "
                  f"{len(manifest.get('benchmarks', []))} benchmarks, mode {manifest.get('mode', 'full')}; "
                  f"commit {manifest.get('commit', '?')}.", ""]
        failed = [run["name"] for run in manifest.get("benchmarks", [])
                  if run.get("exit_code") not in (0, None)]
        if failed:
            lines += [f"**Failed in that run** (their results are the older ones): {', '.join(failed)}.", ""]
    lines += ["## Goals", "", "| goal | target | measured | met | from | load average |",
              "|---|---|---|---|---|---|"]
    for goal in GOALS:
        value, where = goal.figure(results)
        document = results.get(goal.source) or {}
        if value is None:
            lines.append(f"| {goal.name} | {goal.text} | not measured | - | {where} | - |")
            continue
        lines.append(f"| {goal.name} | {goal.text} | {_number(value)} | {goal.verdict(value, results)} "
                     f"| {where} | {load_average(goal.source, document, manifest)} |")
    floor = _fsync_p99(results)
    if floor is not None:
        lines += ["", f"fdatasync p99 of the disk (ingest.json, same run as the ingest figures): "
                  f"{floor:.2f} ms; the latency goals take max(5 ms, factor x that)."]
    left = results.get("writepath", {}).get("left")
    if isinstance(left, list) and left:
        lines += ["", "### What is left for the missed library goals", "",
                  "From `benchmarks/writepath_bench.py` (writepath.json, load average "
                  f"{load_average('writepath', results['writepath'], manifest)}): the same write path "
                  "with its applier switched off, LMDB's CPU per put and the CPU of each stage, in one run.",
                  ""]
        lines += [f"- {line}" for line in left if isinstance(line, str)]
    for name, caption in pictures:
        lines += ["", f"![{caption}]({plots_dir}/{name})", "", f"*{caption}*"]
    lines += ["", "## Every result", ""]
    for stem, document in sorted(results.items()):
        goals = document.get("goals") if isinstance(document.get("goals"), dict) else None
        lines += [f"### {stem}", "", f"File `benchmarks/results/{stem}.json`; load average: "
                  f"{load_average(stem, document, manifest)}.", ""]
        if goals:
            lines += ["| goal | figure | measured | met |", "|---|---|---|---|"]
            for key, goal in goals.items():
                if isinstance(goal, dict):
                    measured = goal.get("measured")
                    shown = _number(float(measured)) if isinstance(measured, int | float) else str(measured)
                    lines.append(f"| {key} | {goal.get('goal', '')} | {shown} | {goal.get('met', '')} |")
            lines.append("")
        headline = [(key, value) for key, value in _flatten(document)
                    if isinstance(value, int | float) and not isinstance(value, bool)
                    and not key.startswith(("machine.", "parameters.", "versions.", "runs.", "goals."))][:24]
        if headline:
            lines += ["| figure | value |", "|---|---|"]
            lines += [f"| {key} | {_number(float(value))} |" for key, value in headline]
            lines.append("")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--output", type=Path, default=REPORT)
    parser.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib needed)")
    args = parser.parse_args()
    results = load_results(args.results)
    try:
        manifest = json.loads((args.results / MANIFEST).read_text())
    except (OSError, ValueError):
        manifest = {}
    plots_dir = args.output.parent / "plots"
    pictures = [] if args.no_plots else plots(results, plots_dir)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(results, manifest, pictures, plots_dir.name))
    print(f"wrote {args.output} ({len(results)} results, {len(pictures)} plots)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

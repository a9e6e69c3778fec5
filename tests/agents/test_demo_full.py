"""`maif demo` (demo_full) runs end to end: every step's own check must hold, and --json is parseable."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from maif.cli.demo_full import demo_command


def test_full_demo_runs_end_to_end_with_json_summary(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(demo_command)
    result = CliRunner().invoke(app, ["--json", "--workdir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    steps = {step["name"]: step for step in document["steps"]}
    assert document["ok"] and all(step["passed"] for step in steps.values())
    assert steps["ingest"]["facts"]["dead_lettered"] == 0
    assert steps["ingest"]["facts"]["completed"] == steps["ingest"]["facts"]["tasks"]
    assert steps["export + verify"]["facts"]["block_signatures_verified"] > 0
    tamper = steps["tamper detection"]["facts"]
    assert tamper["reported_blocks"] == [tamper["block_index"]]
    assert (tmp_path / "demo-agent-0.maif").is_file()
    assert document["stats"]["store"]["writes_total"] >= steps["ingest"]["facts"]["blocks_written"]


def test_human_output_names_the_demo_issuer(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(demo_command)
    result = CliRunner().invoke(app, ["--workdir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "DEMO ISSUER" in result.output and "all checks held" in result.output

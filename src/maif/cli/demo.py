"""`maif demo`: the format's promises, kept in front of you in a few seconds, with nothing simulated.

Every step calls the same functions as the real commands, on real files in a work directory:

1. make a trusted Ed25519 key pair and a second, untrusted one;
2. write the corpus: three public-domain poems and a JSON-LD description of them (package data), two PNG
   images drawn here with zlib + struct, and a float32 .npy of letter-frequency vectors computed from the
   poems;
3. pack it into a signed container;
4. verify it under the trusted key (passes);
5. verify it under the untrusted key (refused);
6. flip one byte inside one block's stored payload in a copy, and verify again: the verifier names that block;
7. append a file as a new signed version, verify both versions, and check the Merkle consistency proof that
   version 2 extends version 1 without changing it.

Each step's outcome is checked, not assumed: if a promise does not hold, the step says so and the demo
exits with a failure code.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from maif.cli import demo_media
from maif.cli.exit_codes import ExitCode
from maif.cli.keyfiles import load_signing_key, load_trusted_keys
from maif.cli.keygen import generate_key_pair
from maif.cli.output import CommandOutput, plain, reporting_errors
from maif.cli.packing import PackTally, append_paths, pack_paths
from maif.cli.verification import verdict_of
from maif.cli.views import reading
from maif.format import codec, merkle
from maif.format.verify import verify_container

DEMO_AGENT_ID = "maif-demo"
_CORPUS_FILES = ("ozymandias.txt", "hope-is-the-thing-with-feathers.txt", "the-tyger.txt", "poems.jsonld")
_POEMS = _CORPUS_FILES[:3]


@dataclass
class DemoStep:
    name: str
    passed: bool
    detail: str
    elapsed_ms: float
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class DemoRun:
    workdir: Path
    steps: list[DemoStep] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.steps) and all(step.passed for step in self.steps)


def write_corpus(directory: Path) -> list[Path]:
    """The demo's input files, written into ``directory``; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    package = resources.files("maif.cli").joinpath("demo_corpus")
    written = []
    for name in _CORPUS_FILES:
        target = directory / name
        target.write_bytes(package.joinpath(name).read_bytes())
        written.append(target)
    poems = [(directory / name).read_text(encoding="utf-8") for name in _POEMS]
    media = {
        "sunset.png": demo_media.sunset_png(),
        "ripples.png": demo_media.interference_png(),
        "letter-frequencies.npy": demo_media.encode_float32_npy(
            [demo_media.letter_frequencies(poem) for poem in poems]
        ),
    }
    for name, data in media.items():
        (directory / name).write_bytes(data)
        written.append(directory / name)
    return written


class _Steps:
    """Runs named steps, timing each and recording whether its check held."""

    def __init__(self, run: DemoRun, on_step: Callable[[DemoStep], None]) -> None:
        self.run, self.on_step = run, on_step

    @contextmanager
    def step(self, name: str) -> Iterator[DemoStep]:
        record = DemoStep(name=name, passed=False, detail="", elapsed_ms=0.0)
        started = time.perf_counter()
        yield record
        record.elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
        self.run.steps.append(record)
        self.on_step(record)


def run_demo(workdir: Path, on_step: Callable[[DemoStep], None] = lambda step: None) -> DemoRun:
    """Run every demo step in ``workdir`` (created if missing); each step records whether its check held."""
    run = DemoRun(workdir=workdir)
    steps = _Steps(run, on_step)
    with steps.step("keygen") as step:
        trusted, untrusted = _make_keys(workdir, step)
    signing_key = load_signing_key(Path(trusted["private_key"]))
    trusted_keys = load_trusted_keys([Path(trusted["public_key"])])
    container = workdir / "demo.maif"
    with steps.step("pack") as step:
        rows = _pack_corpus(workdir, container, signing_key, step)
    with steps.step("verify trusted") as step:
        report = verify_container(container, trusted_keys, full=True)
        step.passed = report.ok
        step.detail = (
            f"all {report.block_count} blocks: every byte, the chain, the Merkle root and the signature"
            if report.ok
            else f"unexpected problems: {[problem.describe() for problem in report.problems]}"
        )
    with steps.step("verify untrusted") as step:
        report = verify_container(container, load_trusted_keys([Path(untrusted["public_key"])]), full=True)
        step.passed = verdict_of(report) is ExitCode.SIGNATURE_UNTRUSTED
        step.detail = f"refused: {report.problems[0].reason}" if report.problems else "ACCEPTED (must not be)"
        step.facts = {"verdict": verdict_of(report).name.lower()}
    with steps.step("tamper") as step:
        step.facts = _tamper_and_verify(container, workdir / "demo-tampered.maif", trusted_keys, rows)
        step.passed = step.facts["detected"]
        step.detail = (
            f"flipped one bit at byte {step.facts['offset']:,} (inside block {step.facts['block_index']}, "
            f"{step.facts['path']}) -> verifier: "
            + "; ".join(f"block {p['block_index']}: {p['reason']}" for p in step.facts["problems"])
        )
    with steps.step("append") as step:
        step.facts = _append_and_prove(workdir, container, signing_key, trusted_keys)
        step.passed = step.facts["verified"] and step.facts["consistent"]
        step.detail = (
            f"version 1 adds {step.facts['blocks_added']} block; both versions verify; the RFC 9162 "
            f"consistency proof ({step.facts['proof_hashes']} hashes) "
            f"{'shows version 0 is unchanged inside version 1' if step.facts['consistent'] else 'FAILS'}"
        )
    return run


def _make_keys(workdir: Path, step: DemoStep) -> tuple[dict[str, Any], dict[str, Any]]:
    trusted = generate_key_pair(workdir / "keys", x25519=False, force=True)
    untrusted = generate_key_pair(workdir / "untrusted-keys", x25519=False, force=True)
    step.passed = trusted["key_id"] != untrusted["key_id"]
    step.detail = f"the signer's Ed25519 pair (key id {trusted['key_id'][:12]}…) and a stranger's pair"
    step.facts = {"trusted_key_id": trusted["key_id"], "untrusted_key_id": untrusted["key_id"]}
    return trusted, untrusted


def _pack_corpus(workdir: Path, container: Path, signing_key: Any, step: DemoStep) -> list[dict[str, Any]]:
    corpus = write_corpus(workdir / "corpus")
    _, tally = pack_paths(
        [workdir / "corpus"],
        container,
        signing_keys=[signing_key],
        agent_id=DEMO_AGENT_ID,
        force=True,
        tally=PackTally(keep_rows=True),
    )
    size = container.stat().st_size
    kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(tally.blocks_by_type.items()))
    step.passed = tally.block_count == len(corpus)
    step.detail = f"{tally.block_count} files -> {container.name} ({size:,} bytes, signed): {kinds}"
    step.facts = {"blocks": tally.rows, "container_bytes": size}
    return tally.rows


def _tamper_and_verify(
    container: Path, tampered: Path, trusted_keys: list[Any], rows: list[dict[str, Any]]
) -> dict[str, Any]:
    target = next(row for row in rows if row["type"] == "IMAG")
    shutil.copyfile(container, tampered)
    payload_start, payload_end = payload_range(tampered, target["index"])
    offset = (payload_start + payload_end) // 2  # the middle of the stored payload
    with open(tampered, "r+b") as handle:
        handle.seek(offset)
        original = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([original[0] ^ 0x01]))
    report = verify_container(tampered, trusted_keys, full=True)
    reported = sorted({problem.block_index for problem in report.problems if problem.block_index is not None})
    return {
        "block_index": target["index"],
        "path": target["path"],
        "offset": offset,
        "payload_range": [payload_start, payload_end],
        "reported_blocks": reported,
        "problems": [
            {"block_index": problem.block_index, "reason": problem.reason} for problem in report.problems
        ],
        "verdict": verdict_of(report).name.lower(),
        "detected": (not report.ok) and target["index"] in reported,
    }


def payload_range(container: Path, index: int) -> tuple[int, int]:
    """File offsets [start, end) of block ``index``'s stored payload: its record minus header and metadata."""
    with reading(container) as reader:
        entry = reader.entry(index)
        record = reader.record(index)
        header = codec.decode_header(record, 0, len(record))
        del record  # a view of the map: must not outlive the reader
    start = entry.offset + header.body_offset + header.metadata_length
    assert start < entry.offset + entry.length, "the demo tampers with a block that has a payload"
    return start, entry.offset + entry.length


def _append_and_prove(
    workdir: Path, container: Path, signing_key: Any, trusted_keys: list[Any]
) -> dict[str, Any]:
    addendum = workdir / "addendum"
    addendum.mkdir(exist_ok=True)
    (addendum / "reading-notes.txt").write_text(
        "Ozymandias: a king's boast outlived by the sand around it.\n"
        "The Tyger: who could frame such a thing, and would the same hand make the Lamb?\n"
        "Hope: a bird that sings in the storm and never asks a crumb.\n",
        encoding="utf-8",
    )
    _, tally = append_paths(
        container, [addendum], signing_keys=[signing_key], trusted_keys=trusted_keys, agent_id=DEMO_AGENT_ID
    )
    report = verify_container(container, trusted_keys, full=True)
    with reading(container) as reader:
        versions = reader.versions
        old, new = versions[0], versions[-1]
        proof = reader.consistency_proof(0, len(versions) - 1)
    try:
        merkle.verify_consistency(old.block_count, new.block_count, old.merkle_root, new.merkle_root, proof)
        consistent = True
    except Exception:  # noqa: BLE001 - any refusal means "not consistent", which the demo reports
        consistent = False
    return {
        "versions": len(versions),
        "blocks_added": tally.block_count,
        "verified": report.ok,
        "proof_hashes": len(proof),
        "old_root": old.merkle_root.hex(),
        "new_root": new.merkle_root.hex(),
        "consistent": consistent,
    }


def demo_command(
    workdir: Annotated[
        Path | None,
        typer.Option(
            "--workdir", help="Keep the demo's files here (default: a temporary directory, removed)."
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON summary.")] = False,
) -> None:
    """Show the format working: keys, pack, verify, refuse an untrusted key, catch a flipped byte, append."""
    output = CommandOutput(json_output=json_output)
    with reporting_errors(output), work_directory(workdir) as directory:
        run = run_demo(directory)
        output.result(_summary(run, kept=workdir is not None))
        if not json_output:
            _render(output, run, kept=workdir is not None)
    raise typer.Exit(int(ExitCode.OK if run.passed else ExitCode.INTEGRITY_FAILURE))


def _render(output: CommandOutput, run: DemoRun, *, kept: bool) -> None:
    where = f"files kept in {plain(run.workdir)}" if kept else "in a temporary directory, removed afterwards"
    table = Table(
        title=f"MAIF format demo ({where})", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False
    )
    table.add_column("#", justify="right")
    table.add_column("")
    table.add_column("step", no_wrap=True)
    table.add_column("what happened", overflow="fold")
    table.add_column("ms", justify="right")
    for number, step in enumerate(run.steps, start=1):
        mark = "[green]✓[/green]" if step.passed else "[red]✗[/red]"
        table.add_row(str(number), mark, step.name, plain(step.detail), f"{step.elapsed_ms:.0f}")
    output.human(table)
    total_ms = sum(step.elapsed_ms for step in run.steps)
    if run.passed:
        output.human(f"[bold green]all {len(run.steps)} checks held[/bold green] in {total_ms:.0f} ms")
    else:
        failed = ", ".join(step.name for step in run.steps if not step.passed)
        output.human(f"[bold red]A CHECK FAILED[/bold red]: {failed}")


@contextmanager
def work_directory(workdir: Path | None) -> Iterator[Path]:
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        yield workdir
        return
    with tempfile.TemporaryDirectory(prefix="maif-demo-") as temporary:
        yield Path(temporary)


def _summary(run: DemoRun, *, kept: bool) -> dict[str, Any]:
    return {
        "ok": run.passed,
        "workdir": str(run.workdir) if kept else None,
        "steps": [
            {
                "name": step.name,
                "passed": step.passed,
                "detail": step.detail,
                "elapsed_ms": step.elapsed_ms,
                "facts": step.facts,
            }
            for step in run.steps
        ],
    }

"""`maif demo` (full): the whole system doing real work on the embedded default, in under a minute.

Nothing here is simulated; every number is measured in this run and every check can fail:

1. open a store in the work directory and a security manager whose tokens are really signed (by THE DEMO
   ISSUER, a key pair generated for this run and labelled as such) and really verified (JWKS, audience,
   expiry, at+jwt); each agent gets a registered Ed25519 signing key and an OAUTH_VERIFIED context;
2. run a cluster of agents over a bundled corpus of public-domain texts (text analysis and knowledge
   extraction) and images drawn here with Pillow (image processing), then fuse each text with an image;
   every produced block is provenance-stamped and signed; ingest throughput and latency are measured;
3. semantic searches with the store's vector index; each query names the passage it should find first,
   and the step fails if too few do;
4. export one agent's blocks to a signed .maif, verify the container, and verify every block signature
   inside it with the security manager;
5. flip one byte of a block's payload in a copy: the verifier must name that block;
6. print the statistics of the cluster, the store and the audit log.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from maif.cli.demo import DemoRun, DemoStep, payload_range, work_directory
from maif.cli.exit_codes import ExitCode
from maif.cli.output import CommandOutput, plain, reporting_errors

NUM_AGENTS = 4
EXPORTED_AGENT = "demo-agent-0"
CORPUS = {
    "ozymandias.txt": "Ozymandias (Shelley, 1818)",
    "hope-is-the-thing-with-feathers.txt": "Hope is the thing with feathers (Dickinson)",
    "the-tyger.txt": "The Tyger (Blake, 1794)",
    "gettysburg-address.txt": "The Gettysburg Address (Lincoln, 1863)",
    "psalm-23.txt": "Psalm 23 (King James Version)",
    "sonnet-18.txt": "Sonnet 18 (Shakespeare, 1609)",
    "pride-and-prejudice-opening.txt": "Pride and Prejudice, opening (Austen, 1813)",
    "daffodils.txt": "I Wandered Lonely as a Cloud (Wordsworth, 1807)",
}
QUERIES = {
    "a shattered statue of a king in the desert sands": "ozymandias.txt",
    "government of the people by the people, a nation dedicated to liberty": "gettysburg-address.txt",
    "golden daffodils dancing beside the lake": "daffodils.txt",
    "the shepherd leads me beside still waters and green pastures": "psalm-23.txt",
    "a tiger burning bright in the forests of the night": "the-tyger.txt",
    "a rich single man must want a wife": "pride-and-prejudice-opening.txt",
    "a little bird that keeps singing through the storm": "hope-is-the-thing-with-feathers.txt",
    "your beauty will live forever in these lines": "sonnet-18.txt",
}
QUERY_HITS_REQUIRED = 6


@dataclass
class FullDemoRun(DemoRun):
    """The format demo's run record plus the store's statistics."""

    stats: dict[str, Any] = field(default_factory=dict)


def corpus_texts() -> dict[str, str]:
    package = resources.files("maif.cli").joinpath("demo_corpus")
    return {name: package.joinpath(name).read_text(encoding="utf-8") for name in CORPUS}


def demo_images(count: int = 8) -> list[tuple[str, bytes]]:
    """PNG and JPEG images drawn here: gradients, bands and discs of distinct colours (one with EXIF)."""
    from PIL import Image, ImageDraw

    palette = [
        (220, 40, 40),
        (40, 160, 60),
        (30, 60, 200),
        (240, 200, 40),
        (150, 60, 170),
        (20, 170, 170),
        (240, 130, 30),
        (90, 90, 90),
    ]
    images = []
    for index in range(count):
        colour = palette[index % len(palette)]
        image = Image.new("RGB", (320, 240), tuple(c // 3 for c in colour))
        draw = ImageDraw.Draw(image)
        for row in range(0, 240, 4):
            shade = tuple(min(255, c * row // 240 + 30) for c in colour)
            draw.line([(0, row), (320, row)], fill=shade, width=2 if index % 2 else 1)
        draw.ellipse([40 + 20 * index, 40, 200 + 10 * index, 200], fill=colour, outline=(255, 255, 255))
        out = io.BytesIO()
        if index % 2:
            exif = image.getexif()
            exif[0x010F], exif[0x0110] = "MAIF demo", f"drawn image {index}"  # Make, Model
            image.save(out, format="JPEG", quality=90, exif=exif)
            images.append((f"image-{index}.jpg", out.getvalue()))
        else:
            image.save(out, format="PNG")
            images.append((f"image-{index}.png", out.getvalue()))
    return images


@contextmanager
def _timed(run: FullDemoRun, name: str) -> Iterator[DemoStep]:
    step = DemoStep(name, False, "", 0.0)
    started = time.perf_counter()
    try:
        yield step
    finally:
        step.elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
        run.steps.append(step)


async def run_full_demo(workdir: Path, *, show_progress: bool = False) -> FullDemoRun:
    from maif.agents.demo_issuer import DemoIssuer, bootstrap_agent
    from maif.storage import create_maif_storage

    run = FullDemoRun(workdir)
    agent_ids = [f"demo-agent-{index}" for index in range(NUM_AGENTS)]
    with _timed(run, "trust") as step:
        issuer = DemoIssuer()
        manager = issuer.security_manager(workdir / "security")
        contexts = {agent_id: await bootstrap_agent(manager, issuer, agent_id) for agent_id in agent_ids}
        levels = {context.trust_level.name for context in contexts.values()}
        step.passed = all(context.can_write() for context in contexts.values())
        step.detail = (
            f"{issuer.label}: {len(contexts)} agents bootstrapped from ES256 at+jwt tokens "
            f"verified against its JWKS -> {', '.join(sorted(levels))}"
        )
        step.facts = {"issuer": issuer.label, "agents": agent_ids, "trust_levels": sorted(levels)}
    with _timed(run, "embedding model") as step:
        from maif.agents.embeddings import default_embedder

        embedder = default_embedder()
        await asyncio.to_thread(embedder.embed, ["warm-up"])  # load once, so ingest measures the work
        step.passed = True
        step.detail = f"{embedder.name} ({embedder.dimension} dimensions) loaded on the CPU, offline"
        step.facts = {"embedding": embedder.name, "dimension": embedder.dimension}
    storage = await create_maif_storage({"data_dir": str(workdir / "store")})
    try:
        titles = await _ingest(run, storage, manager, contexts, agent_ids, show_progress)
        await _search(run, storage, titles)
        await _export_verify_tamper(run, storage, manager, workdir)
        run.stats = {
            "store": _plain_stats(await storage.get_stats()),
            "audit_entries": len(manager.get_audit_log()),
        }
    finally:
        await storage.close()
        manager.close()
    return run


async def _ingest(
    run: FullDemoRun,
    storage: Any,
    manager: Any,
    contexts: dict[str, Any],
    agent_ids: list[str],
    show_progress: bool,
) -> dict[str, str]:
    from maif.agents import AgentTask, maif_agent_cluster

    texts = corpus_texts()
    images = demo_images()
    with _timed(run, "ingest") as step:
        started = time.perf_counter()
        async with maif_agent_cluster(
            storage,
            NUM_AGENTS,
            {"batch_size": 16, "batch_timeout_ms": 2.0},
            security_manager=manager,
            contexts=contexts,
            agent_ids=agent_ids,
        ) as cluster:
            phase_one = [
                AgentTask(f"text-{name}", "text_analysis", {"text": text, "title": CORPUS[name]})
                for name, text in texts.items()
            ]
            phase_one += [
                AgentTask(f"kg-{name}", "knowledge_extraction", {"text": text})
                for name, text in texts.items()
            ]
            phase_one += [
                AgentTask(f"img-{name}", "image_processing", {"image": data}) for name, data in images
            ]
            placed = {task.task_id: await cluster.submit_task_round_robin(task) for task in phase_one}
            await _wait_with_progress(cluster, len(phase_one), show_progress, "analysing texts and images")
            fusions = []
            for (text_name, _), (image_name, _) in zip(texts.items(), images, strict=False):
                text_owner, image_owner = placed[f"text-{text_name}"], placed[f"img-{image_name}"]
                fusions.append(
                    AgentTask(
                        f"fuse-{text_name}-{image_name}",
                        "multimodal_fusion",
                        {"text_weight": 0.7},
                        input_blocks=(
                            f"{text_owner}:text-{text_name}:1",
                            f"{image_owner}:img-{image_name}:2",
                        ),
                    )
                )
            for task in fusions:
                await cluster.submit_task_least_loaded(task)
            await _wait_with_progress(cluster, len(phase_one) + len(fusions), show_progress, "fusing")
            stats = await cluster.get_cluster_stats()
        elapsed_s = max(time.perf_counter() - started, 1e-9)
        tasks_total = len(phase_one) + len(fusions)
        latencies = [agent["task_latency_ms_p50"] for agent in stats["per_agent"]]
        step.passed = stats["completed"] == tasks_total and stats["dead_lettered"] == 0
        step.facts = {
            "tasks": tasks_total,
            "completed": stats["completed"],
            "dead_lettered": stats["dead_lettered"],
            "blocks_written": stats["blocks_written"],
            "tasks_per_s": round(tasks_total / elapsed_s, 1),
            "blocks_per_s": round(stats["blocks_written"] / elapsed_s, 1),
            "task_latency_ms_p50_per_agent": latencies,
            "task_latency_ms_p99_max": max(agent["task_latency_ms_p99"] for agent in stats["per_agent"]),
            "tasks_per_agent": {a["agent_id"]: a["completed"] for a in stats["per_agent"]},
        }
        step.detail = (
            f"{NUM_AGENTS} agents ran {stats['completed']}/{tasks_total} tasks "
            f"({len(texts)} texts, {len(images)} images, {len(fusions)} fusions) -> "
            f"{stats['blocks_written']} signed blocks (signatures included), "
            f"{step.facts['tasks_per_s']} tasks/s, p99 latency {step.facts['task_latency_ms_p99_max']} ms"
        )
    return {f"{placed[f'text-{name}']}:text-{name}:1": name for name in texts}


async def _wait_with_progress(cluster: Any, target: int, show_progress: bool, label: str) -> None:
    async def finished() -> int:
        stats = await cluster.get_cluster_stats()
        return int(stats["completed"] + stats["dead_lettered"])

    if not show_progress:
        for agent in cluster.agents:
            await agent.drain()
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    ) as progress:
        bar = progress.add_task(label, total=target)
        while (done := await finished()) < target:
            progress.update(bar, completed=done)
            await asyncio.sleep(0.05)
        progress.update(bar, completed=target)


async def _search(run: FullDemoRun, storage: Any, titles: dict[str, str]) -> None:
    from maif.agents.embeddings import default_embedder

    embedder = default_embedder()
    with _timed(run, "semantic search") as step:
        answers = []
        for query, expected in QUERIES.items():
            hits = await storage.semantic_search(embedder.embed([query])[0], limit=10)
            text_hits = [hit for hit in hits if hit.block_id in titles]
            top = text_hits[0] if text_hits else None
            answers.append(
                {
                    "query": query,
                    "expected": CORPUS[expected],
                    "top": CORPUS[titles[top.block_id]] if top else None,
                    "score": round(top.score, 3) if top else None,
                    "matched": bool(top and titles[top.block_id] == expected),
                }
            )
        matched = sum(1 for answer in answers if answer["matched"])
        step.passed = matched >= QUERY_HITS_REQUIRED
        kind = (
            "a lexical method, not a sentence model"
            if embedder.name == "feature-hashing-v1"
            else ("a sentence model, offline on the CPU")
        )
        step.detail = (
            f"{matched}/{len(answers)} queries found the expected passage first "
            f"(embedding: {embedder.name}, {kind})"
        )
        step.facts = {"embedding": embedder.name, "answers": answers}


async def _export_verify_tamper(run: FullDemoRun, storage: Any, manager: Any, workdir: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from maif.format.container import ContainerReader
    from maif.format.verify import verify_container

    container = workdir / f"{EXPORTED_AGENT}.maif"
    with _timed(run, "export + verify") as step:
        ids = await _block_ids_of(storage, EXPORTED_AGENT)
        export_key = Ed25519PrivateKey.generate()
        await storage.export(container, ids, export_key)
        report = await asyncio.to_thread(verify_container, container, [export_key.public_key()])
        signatures_ok, signatures_checked = await asyncio.to_thread(
            _verify_signatures_inside, container, manager
        )
        step.passed = report.ok and signatures_ok == signatures_checked > 0
        step.detail = (
            f"{len(ids)} blocks of {EXPORTED_AGENT} -> {container.name} "
            f"({container.stat().st_size:,} bytes, signed with an export key made for this run); "
            f"container {'verified' if report.ok else 'REFUSED'}; {signatures_ok}/{signatures_checked} "
            "agent block signatures inside it verify with the agent's registered key"
        )
        step.facts = {
            "container": container.name,
            "blocks": len(ids),
            "container_ok": report.ok,
            "block_signatures_verified": signatures_ok,
            "block_signatures_checked": signatures_checked,
        }
    with _timed(run, "tamper detection") as step:

        with ContainerReader.open(container) as reader:
            index = next(i for i in range(len(reader)) if reader.block(i).type_name == "IMAG")
            target_id = reader.block(index).id
        tampered = workdir / f"{EXPORTED_AGENT}.tampered.maif"
        shutil.copyfile(container, tampered)
        start, end = payload_range(tampered, index)
        offset = (start + end) // 2
        with open(tampered, "r+b") as handle:
            handle.seek(offset)
            byte = handle.read(1)[0]
            handle.seek(offset)
            handle.write(bytes([byte ^ 0x01]))
        tampered_report = await asyncio.to_thread(verify_container, tampered, [export_key.public_key()])
        named = sorted({p.block_index for p in tampered_report.problems if p.block_index is not None})
        step.passed = not tampered_report.ok and named == [index]
        reasons = "; ".join(p.describe() for p in tampered_report.problems[:2])
        step.detail = (
            f"flipped one bit at byte {offset:,} (payload of block {index}, id {target_id}): "
            f"{'detected' if step.passed else 'NOT DETECTED'}, verifier names block(s) {named}: {reasons}"
        )
        step.facts = {"offset": offset, "block_index": index, "block_id": target_id, "reported_blocks": named}


def _verify_signatures_inside(container: Path, manager: Any) -> tuple[int, int]:
    """Check every block's ``<id>:sig`` SECURITY block inside the container with the security manager."""
    from maif.agents.provenance import SIGNATURE_SUFFIX
    from maif.format.container import ContainerReader

    with ContainerReader.open(container) as reader:
        blocks = {block.id: block for block in (reader.block(i) for i in range(len(reader)))}
    checked = verified = 0
    for block_id, block in blocks.items():
        signature = blocks.get(block_id + SIGNATURE_SUFFIX)
        if block_id.endswith(SIGNATURE_SUFFIX) or signature is None:
            continue
        checked += 1
        verified += manager.verify_maif_block_signature(block, signature.data, block.agent_id)[0]
    return verified, checked


async def _block_ids_of(storage: Any, agent_id: str) -> list[str]:
    ids: list[str] = []
    after = None
    while True:
        page = await storage.list_blocks(agent_id=agent_id, limit=500, after=after)
        ids += [summary.block_id for summary in page]
        if len(page) < 500:
            return ids
        after = page[-1].block_id


def _plain_stats(stats: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in stats.items() if isinstance(value, int | float | str)}


def demo_command(
    workdir: Annotated[
        Path | None,
        typer.Option(
            "--workdir", help="Keep the demo's store and files here (default: a temporary directory)."
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON summary.")] = False,
) -> None:
    """Run agents over a corpus into a signed store; search, export, verify and catch tampering."""
    output = CommandOutput(json_output=json_output)
    with reporting_errors(output), work_directory(workdir) as directory:
        run = asyncio.run(run_full_demo(directory, show_progress=not json_output))
        output.result(summary(run, kept=workdir is not None))
        if not json_output:
            _render(output, run, kept=workdir is not None)
    raise typer.Exit(int(ExitCode.OK if run.passed else ExitCode.INTEGRITY_FAILURE))


def summary(run: FullDemoRun, *, kept: bool) -> dict[str, Any]:
    return {
        "ok": run.passed,
        "workdir": str(run.workdir) if kept else None,
        "steps": [
            {
                "name": s.name,
                "passed": s.passed,
                "detail": s.detail,
                "elapsed_ms": s.elapsed_ms,
                "facts": s.facts,
            }
            for s in run.steps
        ],
        "stats": run.stats,
    }


def _render(output: CommandOutput, run: FullDemoRun, *, kept: bool) -> None:
    where = f"files kept in {plain(run.workdir)}" if kept else "in a temporary directory, removed afterwards"
    table = Table(title=f"MAIF demo ({where})", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    for column in ("#", "", "step", "what happened", "ms"):
        table.add_column(column, overflow="fold", justify="right" if column in ("#", "ms") else "left")
    for number, step in enumerate(run.steps, start=1):
        mark = "[green]✓[/green]" if step.passed else "[red]✗[/red]"
        table.add_row(str(number), mark, step.name, plain(step.detail), f"{step.elapsed_ms:.0f}")
    output.human(table)
    searches = next((s for s in run.steps if s.name == "semantic search"), None)
    if searches is not None:
        results = Table(title="semantic search", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
        for column in ("query", "top passage", "cosine", ""):
            results.add_column(column, overflow="fold")
        for answer in searches.facts["answers"]:
            results.add_row(
                plain(answer["query"]),
                plain(answer["top"]),
                str(answer["score"]),
                "[green]✓[/green]" if answer["matched"] else "[yellow]≠[/yellow]",
            )
        output.human(results)
    store = run.stats.get("store", {})
    keys = [
        k
        for k in (
            "writes_total",
            "ack_latency_ms_p50",
            "ack_latency_ms_p99",
            "compression_ratio",
            "dedup_ratio",
            "cache_hit_rate",
        )
        if k in store
    ]
    output.human(
        "store: "
        + ", ".join(f"{k}={store[k]}" for k in keys)
        + f"; audit log entries: {run.stats.get('audit_entries')}"
    )
    verdict = (
        "[bold green]all checks held[/bold green]" if run.passed else "[bold red]A CHECK FAILED[/bold red]"
    )
    output.human(f"{verdict} in {sum(s.elapsed_ms for s in run.steps):.0f} ms")



__all__ = ["FullDemoRun", "demo_command", "run_full_demo", "summary"]

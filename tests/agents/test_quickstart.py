"""The seed's Quick Start runs as written and stores its task's blocks; an accepted task is never dropped
quietly (it completes, or the program fails loudly); ``agent.result`` awaits a task; ``demo.py`` runs.

The programs run in real subprocesses: what is under test is what happens when ``asyncio.run`` ends.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from maif.agents import AgentTask, BlockDraft, HandlerRegistry, MAIFAgent
from maif.errors import AgentError, TaskFailedError
from maif.format.block import MAIFBlockType
from maif.format.codec import block_digest
from maif.storage import create_maif_storage

ROOT = Path(__file__).resolve().parents[2]

# The seed README's Quick Start, verbatim (its blank lines without their trailing spaces).
SEED_QUICK_START = """\
import asyncio
from maif_core import create_maif_storage, MAIFBlock, MAIFBlockType
from maif_agent import MAIFAgent, AgentTask

async def main():
    # Create high-performance storage
    storage = await create_maif_storage()

    # Create AI agent
    agent = MAIFAgent("my_agent", storage)

    # Submit tasks
    task = AgentTask("task_1", "text_analysis", {"text": "Hello MAIF!"})
    await agent.submit_task(task)

    # Process (runs in background)
    await agent.start()

asyncio.run(main())
"""

# A handler that always fails, for the programs below that must fail loudly.
FAILING_AGENT = """\
import asyncio
from maif_core import create_maif_storage
from maif_agent import MAIFAgent, AgentTask
from maif.agents import HandlerRegistry

def broken(task, inputs):
    raise ValueError("this handler always fails")

registry = HandlerRegistry()
registry.register("broken", broken, cpu_bound=False)
"""


def run_program(source: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run ``source`` as its own program in ``tmp_path`` with its store in ``tmp_path/data``."""
    program = tmp_path / "program.py"
    program.write_text(source)
    data_dir = tmp_path / "data"
    env = {
        **os.environ,
        "MAIF_STORAGE_DATA_DIR": str(data_dir),
        "MAIF_EMBEDDINGS": "hashing",  # fast and deterministic; the sentence model is tested elsewhere
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, str(program)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    return done, data_dir


def read_store(data_dir: Path, body: Any) -> Any:
    async def main() -> Any:
        async with await create_maif_storage({"data_dir": str(data_dir)}) as storage:
            return await body(storage)

    return asyncio.run(main())


def test_seed_quick_start_as_written_stores_its_blocks_before_the_program_exits(tmp_path: Path) -> None:
    done, data_dir = run_program(SEED_QUICK_START, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "not completed" not in done.stderr and "Traceback" not in done.stderr, done.stderr

    async def body(storage: Any) -> tuple[list[Any], list[Any], Any]:
        summaries = await storage.list_blocks(agent_id="my_agent", limit=10)
        blocks = [await storage.read_block(summary.block_id) for summary in summaries]
        return summaries, blocks, await storage.check(read_data_fraction=1.0)

    summaries, blocks, report = read_store(data_dir, body)
    assert [block.id for block in blocks] == ["my_agent:task_1:0", "my_agent:task_1:1"]
    text, embedding = blocks
    assert text.block_type == MAIFBlockType.TEXT and text.data == b"Hello MAIF!"
    assert embedding.block_type == MAIFBlockType.EMBEDDING and embedding.parents == (text.id,)
    for summary, block in zip(summaries, blocks, strict=True):
        assert block.metadata["provenance"]["task_id"] == "task_1"
        assert block.metadata["provenance"]["handler"] == "maif.text_analysis"
        assert summary.digest == block_digest(block)  # what the log acknowledged is what reads back
    assert report.ok, report.problems


def test_a_task_failing_every_retry_in_the_quick_start_fails_the_program(tmp_path: Path) -> None:
    source = FAILING_AGENT + textwrap.dedent("""
        async def main():
            storage = await create_maif_storage()
            agent = MAIFAgent("my_agent", storage, {"max_retries": 1}, registry=registry,
                              backoff_base_s=0.001)
            await agent.submit_task(AgentTask("task_1", "broken", {}))
            await agent.start()

        asyncio.run(main())
    """)
    done, data_dir = run_program(source, tmp_path)
    assert done.returncode == 1
    assert "TaskFailedError" in done.stderr and "'task_1'" in done.stderr, done.stderr
    assert "this handler always fails" in done.stderr

    async def body(storage: Any) -> Any:
        return await storage.read_block("my_agent:task_1:0:dead-letter")

    record = read_store(data_dir, body)
    assert record.metadata["dead_letter"]["attempts"] == 2


@pytest.mark.parametrize(
    "lines",
    [
        # started first, then a task submitted and main returns: the task is still queued
        'await agent.start()\nawait agent.submit_task(AgentTask("late_1", "text_analysis", {"text": "x"}))',
        # never started at all
        'await agent.submit_task(AgentTask("late_1", "text_analysis", {"text": "x"}))',
    ],
    ids=["submitted-after-start", "never-started"],
)
def test_a_task_left_unfinished_when_the_loop_ends_fails_the_program(tmp_path: Path, lines: str) -> None:
    source = textwrap.dedent('''
        import asyncio
        from maif_core import create_maif_storage
        from maif_agent import MAIFAgent, AgentTask

        async def main():
            storage = await create_maif_storage()
            agent = MAIFAgent("my_agent", storage)
    ''')
    source += textwrap.indent(lines, "    ") + "\n\nasyncio.run(main())\n"
    done, _ = run_program(source, tmp_path)
    assert done.returncode == 1, done.stderr
    assert "agent 'my_agent': the event loop ended before 1 accepted task completed (late_1)" in done.stderr
    assert "await agent.stop()" in done.stderr  # the hint
    assert "Task exception was never retrieved" not in done.stderr and "destroyed" not in done.stderr


def test_a_failing_main_keeps_its_own_traceback_and_still_names_the_lost_tasks(tmp_path: Path) -> None:
    source = textwrap.dedent("""
        import asyncio
        from maif_core import create_maif_storage
        from maif_agent import MAIFAgent, AgentTask

        async def main():
            storage = await create_maif_storage()
            agent = MAIFAgent("my_agent", storage)
            await agent.submit_task(AgentTask("lost_1", "text_analysis", {"text": "x"}))
            raise RuntimeError("main's own failure")

        asyncio.run(main())
    """)
    done, _ = run_program(source, tmp_path)
    assert done.returncode == 1
    assert "RuntimeError: main's own failure" in done.stderr  # not hidden behind a SystemExit
    assert "1 accepted task completed (lost_1)" in done.stderr


def test_demo_py_runs_the_seed_lines_end_to_end(tmp_path: Path) -> None:
    env = {**os.environ, "MAIF_EMBEDDINGS": "hashing"}
    env.pop("MAIF_STORAGE_DATA_DIR", None)
    done = subprocess.run(
        [sys.executable, str(ROOT / "demo.py"), "--workdir", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All checks held" in done.stdout
    assert "stored before it exited: my_agent:task_1:0" in done.stdout


# ---- the await-result API, in process ---------------------------------------------------------------
def note_registry(gate: asyncio.Event | None = None) -> HandlerRegistry:
    async def note(task: AgentTask, inputs: Any) -> list[BlockDraft]:
        if gate is not None:
            await gate.wait()
        if task.input_data.get("fail"):
            raise RuntimeError(f"planned failure of {task.task_id}")
        return [BlockDraft(MAIFBlockType.TEXT, task.task_id.encode())]

    registry = HandlerRegistry()
    registry.register("note", note)
    return registry


FAST = {"batch_timeout_ms": 1.0, "max_retries": 1}


def test_result_returns_the_durable_blocks_or_raises_the_failure(with_store: Any) -> None:
    async def body(storage: Any) -> None:
        async with MAIFAgent("r", storage, FAST, registry=note_registry(), backoff_base_s=0.001) as agent:
            await agent.submit_task(AgentTask("good", "note", {}))
            await agent.submit_task(AgentTask("bad", "note", {"fail": True}))
            outcome = await agent.result("good", timeout=30)
            assert outcome.task_id == "good" and outcome.block_ids == ("r:good:0",)
            [receipt] = outcome.receipts
            stored = await storage.read_block("r:good:0")
            assert receipt.block_id == stored.id and receipt.digest == block_digest(stored)
            assert await agent.result("good") is outcome  # finished: answered at once
            with pytest.raises(TaskFailedError, match="planned failure of bad") as failure:
                await agent.result("bad", timeout=30)
            assert failure.value.hint is not None and "r:bad:0:dead-letter" in failure.value.hint
            with pytest.raises(AgentError, match="never accepted"):
                await agent.result("unknown")

    with_store(body)


def test_result_times_out_and_refuses_to_wait_on_an_agent_that_is_not_running(with_store: Any) -> None:
    async def body(storage: Any) -> None:
        gate = asyncio.Event()
        agent = MAIFAgent("w", storage, FAST, registry=note_registry(gate))
        await agent.submit_task(AgentTask("slow", "note", {}))
        with pytest.raises(AgentError, match="not running"):
            await agent.result("slow")
        starting = asyncio.create_task(agent.start())  # start() waits for the task queued before it
        with pytest.raises(TimeoutError):
            await agent.result("slow", timeout=0.05)
        assert not starting.done()
        gate.set()
        await starting  # returns once "slow" is durable
        assert (await agent.result("slow", timeout=0)).block_ids == ("w:slow:0",)
        await agent.stop()

    with_store(body)


def test_start_runs_the_backlog_and_raises_for_a_dead_lettered_task(with_store: Any) -> None:
    async def body(storage: Any) -> None:
        agent = MAIFAgent("b", storage, FAST, registry=note_registry(), backoff_base_s=0.001)
        for index in range(5):
            await agent.submit_task(AgentTask(f"t{index}", "note", {"fail": index == 3}))
        with pytest.raises(TaskFailedError, match="1 of the 5 tasks accepted before start"):
            await agent.start()
        stats = await agent.get_stats()
        assert stats["completed"] == 4 and stats["dead_lettered"] == 1 and stats["running"]
        assert len(await storage.list_blocks(agent_id="b", limit=100)) == 4 + 1  # + the dead-letter record
        await agent.submit_task(AgentTask("after", "note", {}))  # the agent keeps running
        assert (await agent.result("after", timeout=30)).block_ids == ("b:after:0",)
        await agent.stop()

    with_store(body)

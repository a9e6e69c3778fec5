"""``maif worker --config FILE [--agents N]``: agents that pull tasks from the NATS JetStream queue.

The config file holds the ``storage`` section (a shared store: ``postgres_url`` + ``s3_endpoint`` +
``s3_bucket``, this process's own ``data_dir``; and ``nats_url``) and the ``agent`` section (queue
settings, docs/adr/0074-distributed-agents.md); MAIF_STORAGE_* / MAIF_AGENT_* variables override it.
It prints one line when it pulls, and runs until SIGTERM or SIGINT: then it stops pulling, hands the tasks
not yet started back to the queue, lets the running ones finish and be acknowledged, closes the store
(exit 0). ``--handlers MODULE`` (repeatable) imports a module whose ``register(registry)`` adds task
handlers to the built-in ones (every worker of a cluster needs the same). ``--metrics-port`` serves the
cluster's Prometheus metrics on 127.0.0.1 (0 picks a free port, printed). A broker or store that cannot
be reached at start: one line naming it and its setting, exit 9. Every block the worker stores is signed
with the key in ``agent.worker_key_file`` (docs/adr/0085); it prints the key's id and its public key
(64 hex digits), which verifiers trust.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from maif.cli.exit_codes import ExitCode
from maif.config import AgentConfig, StorageConfig, load_section
from maif.errors import ConfigError, MAIFError, StoreLockedError

if TYPE_CHECKING:
    from maif.agents.handlers.registry import HandlerRegistry

_SNAPSHOT_INTERVAL_S = 2.0


async def run_worker(config: Path, agents: int, worker_id: str | None, metrics_port: int | None,
                     handler_modules: list[str] | None = None) -> None:
    from maif.agents.queue import TaskQueue
    from maif.agents.worker import Worker
    from maif.format.signing import raw_public_bytes
    from maif.storage.allocator import bound_allocator_retention
    from maif.storage.engine import create_maif_storage

    bound_allocator_retention()  # docs/adr/0083
    storage_config = load_section(StorageConfig, config)
    agent_config = load_section(AgentConfig, config)
    if not storage_config.nats_url:
        raise ConfigError("maif worker needs the storage setting nats_url (the NATS JetStream task queue)",
                          hint="set it in the config file or MAIF_STORAGE_NATS_URL")
    registry = _registry(handler_modules or [])
    queue = await TaskQueue.connect(storage_config.nats_url, agent_config)
    try:
        storage = await create_maif_storage(storage_config)
        try:
            worker = Worker(storage, queue, agent_config, agents=agents, worker_id=worker_id,
                            registry=registry)
            loop = asyncio.get_running_loop()
            for signal_number in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signal_number, worker.stop)
            loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)
            exporter = _serve_metrics(queue, metrics_port) if metrics_port is not None else None
            typer.echo(f"maif worker {worker.worker_id}: {agents} agent{'s' if agents != 1 else ''}, "
                       f"{worker.capacity} slots, pulling from {queue.stream}")
            public_key = raw_public_bytes(worker.signer.public_key).hex()
            typer.echo(f"maif worker {worker.worker_id}: signing with key {worker.signer.key_id_hex}, "
                       f"public key {public_key}")
            try:
                await worker.run()
            finally:
                if exporter is not None:
                    exporter.cancel()
                    await asyncio.gather(exporter, return_exceptions=True)
        finally:
            await storage.close()
    finally:
        await queue.close()


def _dump_tasks() -> None:
    """SIGUSR1: print every asyncio task's stack on stderr (what a worker that does not stop waits for)."""
    for task in asyncio.all_tasks():
        task.print_stack(limit=6, file=sys.stderr)
    sys.stderr.flush()


def _registry(modules: list[str]) -> HandlerRegistry:
    from maif.agents.handlers.registry import HandlerRegistry

    registry = HandlerRegistry.with_builtins()
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            raise ConfigError(f"--handlers {name}: cannot import it: {error}") from None
        register = getattr(module, "register", None)
        if not callable(register):
            raise ConfigError(f"--handlers {name}: the module has no register(registry) function")
        register(registry)
    return registry


def _serve_metrics(queue: object, port: int) -> asyncio.Task[None]:
    from prometheus_client import start_http_server

    from maif.agents.metrics import cluster_registry
    from maif.agents.queue import cluster_stats
    from maif.agents.worker import every

    registry, collector = cluster_registry()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    typer.echo(f"maif worker: metrics on http://127.0.0.1:{server.server_port}/metrics")

    async def snapshot() -> None:
        collector.snapshot = await cluster_stats(queue)  # type: ignore[arg-type]

    async def refresh() -> None:
        try:
            await every(_SNAPSHOT_INTERVAL_S, snapshot)
        finally:
            server.shutdown()

    return asyncio.create_task(refresh(), name="maif-worker-metrics")


def worker_command(
    config: Annotated[Path, typer.Option(help="JSON or TOML config (storage with nats_url, agent).")],
    agents: Annotated[int, typer.Option(min=1, max=100_000, help="Agents in this process.")] = 1,
    worker_id: Annotated[
        str | None, typer.Option(help="Name in heartbeats and metrics (default: <host>-<pid>).")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Serve Prometheus metrics on 127.0.0.1 here.")
    ] = None,
    handlers: Annotated[
        list[str] | None, typer.Option(help="A module whose register(registry) adds task handlers.")
    ] = None,
) -> None:
    """Run agents that pull tasks from the shared NATS JetStream queue into the shared store."""
    logging.basicConfig(level=logging.WARNING, format="maif worker: %(levelname)s %(message)s")
    try:
        asyncio.run(run_worker(config, agents, worker_id, metrics_port, handlers))
    except MAIFError as error:
        typer.echo(f"maif worker: {error.message}", err=True)
        if isinstance(error, StoreLockedError):
            code = ExitCode.STORE_LOCKED
        elif isinstance(error, ConfigError):
            code = ExitCode.USAGE_ERROR
        else:
            code = ExitCode.OTHER_ERROR
        raise typer.Exit(int(code)) from error


__all__ = ["run_worker", "worker_command"]

"""`maif store export|import|search|stats|check|delete|compact`: the storage engine's operations over a
store directory (the first five are also top-level commands, `maif check` ..., as they were first).

Each command opens the store at ``--store DIR`` with :func:`maif.storage.create_maif_storage` (which
replays the store's write-ahead log, as any open does), runs one engine call, closes the store, and renders
the result like every other command (maif.cli.output): Rich for people, one JSON document with ``--json``,
the documented exit codes of maif.cli.exit_codes.

Only `import` may create a store; the other commands refuse a directory that does not hold one (exit 4),
so a mistyped ``--store`` never leaves a fresh empty store behind. The engine does the work and every
check: export reads each block digest-verified and signs the container; import verifies the container
under the ``--trust`` keys before writing a block; search, check (and its ``--repair``), delete and
compact are the engine's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import msgspec
import numpy as np
import typer
from rich.table import Table

from maif import limits
from maif.cli.exit_codes import ExitCode
from maif.cli.keyfiles import load_signing_key, load_trusted_keys
from maif.cli.output import CommandOutput, plain, reporting_errors
from maif.cli.packing import JsonOption
from maif.cli.verification import raise_for_report
from maif.cli.views import require_readable_container, version_row
from maif.errors import BlockNotFoundError, ConfigError, FormatError, SignatureError
from maif.format.block import normalize_block_type
from maif.format.signing import key_id
from maif.format.verify import verify_container

if TYPE_CHECKING:
    from maif.storage.engine import MAIFStorage

ResultT = TypeVar("ResultT")

STORE_MARKER = "wal"  # the engine creates DIR/wal on first open: a directory without it holds no store
_PAGE_BLOCKS = 1000

StoreOption = Annotated[Path, typer.Option("--store", help="The store directory (the engine's data_dir).")]


# ---- opening a store -----------------------------------------------------------------------------


def require_store(directory: Path, *, create: bool = False) -> None:
    """Raise FormatError (exit 4) unless ``directory`` holds a store; with ``create``, a missing or empty
    directory is fine too (the engine creates the store in it)."""
    if not directory.exists():
        if create:
            return
        raise FormatError(
            f"no MAIF store at {directory}: the directory does not exist",
            hint="check --store; `maif import FILE --store DIR` creates a store",
        )
    if not directory.is_dir():
        raise FormatError(f"{directory} is not a directory, so it cannot hold a MAIF store")
    if (directory / STORE_MARKER).is_dir():
        return
    if create and not any(directory.iterdir()):
        return
    raise FormatError(
        f"{directory} does not hold a MAIF store (no {STORE_MARKER}/ directory in it)",
        hint="check --store; a store is never created over a directory that has other files",
    )


def run_on_store(
    directory: Path,
    operation: Callable[[MAIFStorage], Awaitable[ResultT]],
    *,
    create: bool = False,
    repair: bool = False,
) -> ResultT:
    """Open the store in ``directory``, run ``operation`` on it, and close it (even on failure). With
    ``repair`` the open is the engine's explicit repair (a damaged write-ahead log is quarantined and
    salvaged, every derived state rebuilt); without it a damaged log stops the open with
    WALCorruptionError (exit 1), whose hint names `maif store check --repair`."""
    require_store(directory, create=create)

    async def scenario() -> ResultT:
        from maif.storage import create_maif_storage  # the engine loads only when a store command runs

        async with await create_maif_storage({"data_dir": str(directory)}, repair=repair) as storage:
            return await operation(storage)

    return asyncio.run(scenario())


# ---- export --------------------------------------------------------------------------------------


def checked_block_type(text: str) -> str:
    """A FourCC from the command line (``TEXT``, ``EMBD``, ...) as the engine's type name; else exit 2."""
    try:
        block_type = normalize_block_type(text)
    except FormatError as error:
        raise ConfigError(error.message, hint="--type takes a FourCC such as TEXT, EMBD, IMAG") from None
    return block_type if isinstance(block_type, str) else block_type.value


async def matching_block_ids(
    storage: MAIFStorage, *, agent_id: str | None, block_type: str | None
) -> list[str]:
    """Every block id matching the filters, in list_blocks order, paged with ``after`` until done."""
    ids: list[str] = []
    after: str | None = None
    while True:
        page = await storage.list_blocks(
            agent_id=agent_id, block_type=block_type, limit=_PAGE_BLOCKS, after=after
        )
        ids.extend(summary.block_id for summary in page)
        if len(page) < _PAGE_BLOCKS:
            return ids
        after = page[-1].block_id


@contextlib.contextmanager
def new_output_file(output_path: Path, *, force: bool) -> Iterator[Path]:
    """A fresh temporary path beside ``output_path``, renamed onto it only when the body succeeds, so a
    failed export never leaves a partial container under the requested name."""
    if os.path.lexists(output_path) and not force:
        raise ConfigError(f"refusing to overwrite {output_path}", hint="pass --force to replace it")
    if output_path.is_dir():
        raise ConfigError(f"{output_path} is a directory")
    directory = output_path.parent if str(output_path.parent) else Path(".")
    descriptor, temporary_name = tempfile.mkstemp(
        prefix=f".{output_path.name}.", suffix=".partial", dir=directory
    )
    os.close(descriptor)
    temporary = Path(temporary_name)
    try:
        temporary.unlink()  # the container writer creates its file itself (exclusively)
        yield temporary
        os.replace(temporary, output_path)
    finally:
        if os.path.lexists(temporary):
            temporary.unlink()


async def _export(
    storage: MAIFStorage,
    path: Path,
    signing_key: Any,
    *,
    ids: Sequence[str],
    agent_id: str | None,
    block_type: str | None,
) -> Any:
    selection: list[str] | None
    if ids:
        selection = list(dict.fromkeys(ids))  # a block named twice is exported once
    elif agent_id is not None or block_type is not None:
        selection = await matching_block_ids(storage, agent_id=agent_id, block_type=block_type)
    else:
        selection = None  # every block: the engine pages through the index itself
        if not await storage.list_blocks(limit=1):
            raise ConfigError("the store holds no blocks to export")
    if selection == []:
        raise ConfigError("no block matches the --agent/--type filters", hint="nothing was written")
    return await storage.export(path, selection, signing_key)


def export_command(
    store: StoreOption,
    output_path: Annotated[Path, typer.Option("--output", "-o", help="The container to create.")],
    key: Annotated[Path, typer.Option("--key", help="Ed25519 private key (PEM) that signs the container.")],
    agent: Annotated[str | None, typer.Option("--agent", help="Export only this agent's blocks.")] = None,
    block_type: Annotated[
        str | None, typer.Option("--type", help="Export only blocks of this FourCC (TEXT, EMBD, ...).")
    ] = None,
    block_ids: Annotated[
        list[str] | None, typer.Option("--id", help="Export this block id; repeat for several.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the output if it exists.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Export blocks of a store (all, the --agent/--type matches, or the --id blocks) to a signed .maif."""
    output = CommandOutput(json_output=json_output)
    with reporting_errors(output):
        if block_ids and (agent is not None or block_type is not None):
            raise ConfigError(
                "--id cannot be combined with --agent or --type", hint="use one kind of selection"
            )
        type_name = checked_block_type(block_type) if block_type is not None else None
        signing_key = load_signing_key(key)
        with new_output_file(output_path, force=force) as temporary:
            version = run_on_store(
                store,
                lambda storage: _export(
                    storage, temporary, signing_key, ids=block_ids or [], agent_id=agent, block_type=type_name
                ),
            )
        summary = version_row(version)
        output.result(
            {
                "ok": True,
                "store": str(store),
                "container": str(output_path),
                "blocks_exported": summary["block_count"],
                "selection": {"agent_id": agent, "block_type": type_name, "ids": block_ids or None},
                "version": summary,
            }
        )
        output.human(
            f"[green]exported[/green] {summary['block_count']} blocks from {plain(store)} to "
            f"{plain(output_path)}; signed version {summary['number']} by key id "
            f"{key_id(signing_key.public_key()).hex()}"
        )


# ---- import --------------------------------------------------------------------------------------


async def _import(storage: MAIFStorage, container: Path, trusted_keys: Sequence[Any]) -> int:
    try:
        return await storage.import_maif(container, trusted_keys)
    except SignatureError:
        # The engine refuses any failed verification as a SignatureError; a full report tells damaged
        # bytes (exit 1) from an untrusted signature (exit 3).
        report = await asyncio.to_thread(verify_container, container, list(trusted_keys), full=True)
        raise_for_report(report)
        raise


def import_command(
    container: Annotated[Path, typer.Argument(help="The .maif container to import.")],
    store: StoreOption,
    trust: Annotated[
        list[Path],
        typer.Option(
            "--trust", help="Ed25519 public key (PEM) trusted to have signed it; repeat for several."
        ),
    ],
    json_output: JsonOption = False,
) -> None:
    """Import a container's blocks into a store, only if it verifies under a --trust key."""
    output = CommandOutput(json_output=json_output)
    with reporting_errors(output):
        trusted_keys = load_trusted_keys(trust)
        require_readable_container(container)
        # A quick check first (signatures, manifests, Merkle roots) refuses an untrusted file before the
        # store is opened or created; the engine then verifies every payload before writing a block.
        quick_report = verify_container(container, trusted_keys, full=False)
        raise_for_report(quick_report)
        imported = run_on_store(store, lambda storage: _import(storage, container, trusted_keys), create=True)
        output.result(
            {
                "ok": True,
                "store": str(store),
                "container": str(container),
                "blocks_imported": imported,
                "signer_key_ids": list(quick_report.signer_key_ids),
                "trusted_key_ids": [key_id(public_key) for public_key in trusted_keys],
            }
        )
        signers = ", ".join(signer.hex() for signer in quick_report.signer_key_ids)
        output.human(
            f"[green]imported[/green] {imported} blocks from {plain(container)} into {plain(store)} "
            f"(verified; signed by trusted key id(s) {signers})"
        )


# ---- search --------------------------------------------------------------------------------------


def checked_query(values: Any, source: str) -> np.ndarray:
    """A usable query: a non-empty 1-D vector of finite numbers, not all zero, within the dimension cap."""
    try:
        vector = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{source} is not a list of numbers") from error
    if vector.ndim == 2 and vector.shape[0] == 1:
        vector = vector[0]  # a (1, n) array: one embedding saved as a row
    if vector.ndim != 1 or vector.size == 0:
        raise ConfigError(f"{source} must be one non-empty list of numbers, got shape {vector.shape}")
    if vector.size > limits.vector_dimensions_max:
        raise ConfigError(f"{source} has {vector.size} dimensions; at most {limits.vector_dimensions_max}")
    if not np.all(np.isfinite(vector)) or not np.any(vector):
        raise ConfigError(f"{source} must hold finite numbers, not all zero (cosine needs a direction)")
    return vector.astype(np.float32)


def vector_from_json(text: str) -> np.ndarray:
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limits.cli_query_vector_bytes_max:
        raise ConfigError(f"--vector is {size} bytes; at most {limits.cli_query_vector_bytes_max}")
    try:
        values = msgspec.json.decode(text, type=list[float])
    except msgspec.DecodeError as error:
        raise ConfigError(
            f"--vector is not a JSON list of numbers: {error}",
            hint='write it like --vector "[0.1, 0.2, 0.3]"',
        ) from None
    return checked_query(values, "--vector")


def vector_from_npy(path: Path) -> np.ndarray:
    """The query in a .npy file (read with the size capped and pickles refused)."""
    with open(path, "rb") as handle:
        data = handle.read(limits.cli_query_vector_bytes_max + 1)
    if len(data) > limits.cli_query_vector_bytes_max:
        raise ConfigError(f"{path} is larger than {limits.cli_query_vector_bytes_max} bytes: not one query")
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, EOFError, OSError) as error:
        raise FormatError(f"{path} is not a readable .npy file: {error}") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
        raise ConfigError(f"{path} does not hold a real-valued numeric array")
    return checked_query(array, str(path))


def query_vector(
    vector: str | None, vector_file: Path | None, text: str | None
) -> tuple[np.ndarray, str | None]:
    """The query and the embedder that made it (None for a vector given as is); exactly one source."""
    if sum(source is not None for source in (vector, vector_file, text)) != 1:
        raise ConfigError("give exactly one of --vector, --vector-file and --text")
    if vector is not None:
        return vector_from_json(vector), None
    if vector_file is not None:
        return vector_from_npy(vector_file), None
    assert text is not None
    from maif.agents.embeddings import default_embedder  # loads the sentence model only when asked to

    embedder = default_embedder()
    return checked_query(embedder.embed([text])[0], "the embedded --text"), embedder.name


async def _search(
    storage: MAIFStorage,
    query: np.ndarray,
    limit: int,
    threshold: float | None,
    filters: dict[str, str] | None,
) -> list[Any]:
    try:
        return await storage.semantic_search(query, limit=limit, score_threshold=threshold, filters=filters)
    except FormatError as error:  # the vector index refusing the query (its dimension), not a bad file
        raise ConfigError(
            f"query refused: {error.message}",
            hint="query with the embedding model (and dimension) the store was filled with",
        ) from None


def search_command(
    store: StoreOption,
    vector: Annotated[
        str | None, typer.Option("--vector", help='The query as a JSON list: "[0.1, 0.2]".')
    ] = None,
    vector_file: Annotated[
        Path | None, typer.Option("--vector-file", help="The query as a .npy file (one vector).")
    ] = None,
    text: Annotated[
        str | None, typer.Option("--text", help="Text to embed with the default embedder, then search.")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=limits.engine_search_limit_max, help="Most hits to return.")
    ] = 10,
    threshold: Annotated[
        float | None, typer.Option("--threshold", min=-1.0, max=1.0, help="Lowest cosine score to keep.")
    ] = None,
    agent: Annotated[str | None, typer.Option("--agent", help="Only this agent's embeddings.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Find the EMBEDDING blocks most similar (cosine) to a query vector or text."""
    output = CommandOutput(json_output=json_output)
    with reporting_errors(output):
        require_store(
            store
        )  # before embedding: loading a sentence model for a mistyped --store wastes seconds
        query, embedder_name = query_vector(vector, vector_file, text)
        filters = {"agent_id": agent} if agent is not None else None
        hits = run_on_store(store, lambda storage: _search(storage, query, limit, threshold, filters))
        rows = [
            {
                "block_id": hit.block_id,
                "score": hit.score,
                "agent_id": hit.agent_id,
                "block_type": hit.block_type,
            }
            for hit in hits
        ]
        output.result(
            {
                "ok": True,
                "store": str(store),
                "query": {"dimensions": int(query.shape[0]), "embedder": embedder_name},
                "limit": limit,
                "threshold": threshold,
                "filters": filters or {},
                "hits": rows,
            }
        )
        _render_hits(output, rows)


def _render_hits(output: CommandOutput, rows: list[dict[str, Any]]) -> None:
    if not rows:
        output.human("no matching embeddings")
        return
    table = Table(title=f"{len(rows)} hit(s)", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("block id")
    table.add_column("score", justify="right")
    table.add_column("agent")
    table.add_column("type")
    for rank, row in enumerate(rows, start=1):
        table.add_row(
            str(rank),
            plain(row["block_id"]),
            f"{row['score']:.4f}",
            plain(row["agent_id"]),
            plain(row["block_type"]),
        )
    output.human(table)


# ---- stats and check -----------------------------------------------------------------------------


def flattened(stats: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``stats`` as (dotted key, value) rows: nested counters (``chunks``, ``cache``) one row each."""
    for name, value in stats.items():
        if isinstance(value, dict):
            yield from flattened(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def stats_command(store: StoreOption, json_output: JsonOption = False) -> None:
    """Print a store's statistics: blocks, vectors, log, cache, compression and dedup, bytes per tier."""
    output = CommandOutput(json_output=json_output)
    with reporting_errors(output):
        stats = run_on_store(store, lambda storage: storage.get_stats())
        output.result({"ok": True, "store": str(store), "stats": stats})
        table = Table(title=f"store {plain(store)}", title_justify="left")
        table.add_column("statistic")
        table.add_column("value", justify="right")
        for name, value in flattened(stats):
            shown = "-" if value is None else f"{value:,.3f}" if isinstance(value, float) else str(value)
            table.add_row(name, plain(shown))
        output.human(table)


async def _check(storage: MAIFStorage, read_data_fraction: float, repair: bool) -> tuple[Any, Any]:
    if not repair:
        return await storage.check(read_data_fraction), storage.recovery
    report = await storage.repair()  # rebuilds every derived state, then checks (no data read back)
    if read_data_fraction > 0:
        report = await storage.check(read_data_fraction)
    return report, storage.recovery


def check_command(
    store: StoreOption,
    read_data_fraction: Annotated[
        float,
        typer.Option(
            "--read-data-fraction",
            min=0.0,
            max=1.0,
            help="Also read back and digest-verify this fraction of blocks (0 to 1).",
        ),
    ] = 0.0,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Repair first: quarantine and salvage a damaged write-ahead log, rebuild the metadata and "
            "vector indexes from the stored block records; then check.",
        ),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Scrub a store: every block's chunks exist, a sample read back and verified; exit 1 on any problem."""
    output = CommandOutput(json_output=json_output)
    with reporting_errors(output):
        report, recovery = run_on_store(
            store, lambda storage: _check(storage, read_data_fraction, repair), repair=repair
        )
    wal_repair = recovery.repair_summary()
    problems = list(report.problems)
    if repair and wal_repair in problems:
        # The engine's check lists what the log repair lost or salvaged for the life of the open; asked
        # for with --repair it is what this command did (reported below), not a problem left in the store.
        problems.remove(wal_repair)
    verdict = ExitCode.INTEGRITY_FAILURE if problems else ExitCode.OK
    output.result(
        {
            "ok": not problems,
            "verdict": verdict.name.lower(),
            "exit_code": int(verdict),
            "store": str(store),
            "repair": repair,
            "read_data_fraction": read_data_fraction,
            "blocks_checked": report.blocks_checked,
            "blocks_read": report.blocks_read,
            "wal_records_unapplied": report.wal_records_unapplied,
            "repaired": report.repaired,
            "wal_repair": wal_repair,
            "recovery_on_open": recovery,
            "problems": problems,
        }
    )
    _render_check(output, store, report, recovery, problems, repair=repair)
    if problems:
        typer.echo(f"error: {store} failed check ({len(problems)} problem(s))", err=True)
    raise typer.Exit(int(verdict))


def _render_check(
    output: CommandOutput, store: Path, report: Any, recovery: Any, problems: list[str], *, repair: bool
) -> None:
    from maif.storage.wal import lsn_ranges_text

    if report.repaired:
        output.human("repaired" + (":" if repair else " automatically when the store was opened:"))
        for line in report.repaired:
            output.human(f"  - {plain(line)}")
    if recovery.torn_tail_bytes:
        output.human(
            f"write-ahead log: a torn tail of {recovery.torn_tail_bytes} bytes (a write cut short by a "
            "crash) was cut when the store was opened"
        )
    if recovery.corruption is not None:
        output.human(f"write-ahead log repaired: {plain(recovery.corruption)}")
        lost = lsn_ranges_text(recovery.lost_lsns) if recovery.lost_lsns else "none"
        output.human(f"  lost LSNs: {lost}")
        if recovery.reappended_lsns is not None:
            first, last = recovery.reappended_lsns
            output.human(f"  records salvaged after the damage: written again as LSNs {first}..{last}")
        for path in recovery.quarantined:
            output.human(f"  damaged segment copied to: {plain(path)}")
    output.human(
        f"{plain(store)}: {report.blocks_checked} blocks checked, {report.blocks_read} read back "
        "and digest-verified"
    )
    if not problems:
        after = " after the repair" if repair else ""
        output.human(f"[bold green]ok[/bold green]: no problems found{after}")
        return
    table = Table(title=f"{len(problems)} problem(s)", title_justify="left")
    table.add_column("problem")
    for problem in problems:
        table.add_row(plain(problem))
    output.human(table)
    output.human("[bold red]PROBLEMS FOUND[/bold red]")


# ---- delete and compact --------------------------------------------------------------------------


async def _delete(storage: MAIFStorage, block_ids: Sequence[str]) -> tuple[list[Any], list[str]]:
    deleted: list[Any] = []
    missing: list[str] = []
    for block_id in block_ids:
        try:
            deleted.append(await storage.delete_block(block_id))
        except BlockNotFoundError:
            missing.append(block_id)
    return deleted, missing


def delete_command(
    store: StoreOption,
    block_ids: Annotated[
        list[str], typer.Argument(help="The ids of the blocks to delete.", show_default=False)
    ],
    json_output: JsonOption = False,
) -> None:
    """Delete blocks (durable when the command ends); an absent id exits 9, the others are still deleted."""
    output = CommandOutput(json_output=json_output)
    with reporting_errors(output):
        from maif.storage import arguments  # the engine loads only when a store command runs

        ids = [arguments.block_id(block_id, "ID") for block_id in dict.fromkeys(block_ids)]
        deleted, missing = run_on_store(store, lambda storage: _delete(storage, ids))
    code = ExitCode.OTHER_ERROR if missing else ExitCode.OK
    output.result(
        {
            "ok": not missing,
            "exit_code": int(code),
            "exit_name": code.name.lower(),
            "store": str(store),
            "deleted": [{"block_id": receipt.block_id, "lsn": receipt.lsn} for receipt in deleted],
            "not_found": missing,
        }
    )
    for receipt in deleted:
        output.human(f"[green]deleted[/green] {plain(receipt.block_id)} (LSN {receipt.lsn})")
    if missing:
        named = ", ".join(repr(block_id) for block_id in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        typer.echo(
            f"error: no block with id {named}{more} in {store}; {len(deleted)} other block(s) deleted",
            err=True,
        )
    raise typer.Exit(int(code))


def human_bytes(count: int) -> str:
    """``count`` bytes for a person: ``512 B``, ``1.5 KiB``, ``64.1 MiB``."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def compact_command(
    store: StoreOption,
    garbage_fraction: Annotated[
        float,
        typer.Option(
            "--garbage-fraction",
            min=0.0,
            max=1.0,
            help="Rewrite a sealed pack once this fraction of it (above 0, at most 1) is garbage.",
        ),
    ] = 0.2,
    json_output: JsonOption = False,
) -> None:
    """Give back the space of deleted and overwritten blocks by rewriting the sealed packs (crash-safe)."""
    output = CommandOutput(json_output=json_output)
    with reporting_errors(output):
        if garbage_fraction == 0.0:
            raise ConfigError("--garbage-fraction must be above 0 (0 would rewrite every sealed pack)")
        report = run_on_store(store, lambda storage: storage.compact(garbage_fraction))
    output.result(
        {"ok": True, "store": str(store), "garbage_fraction": garbage_fraction, "compaction": report}
    )
    output.human(
        f"[green]reclaimed[/green] {human_bytes(report.bytes_reclaimed)} ({report.bytes_reclaimed:,} bytes) "
        f"in {plain(store)}: {report.packs_rewritten} of {report.packs_examined} sealed pack(s) rewritten"
    )
    table = Table(title="compaction", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("packs examined", str(report.packs_examined))
    table.add_row("packs rewritten", str(report.packs_rewritten))
    table.add_row("live frames copied", str(report.live_frames_copied))
    table.add_row("garbage frames dropped", str(report.garbage_frames_dropped))
    table.add_row("bytes before", f"{human_bytes(report.bytes_before)} ({report.bytes_before:,})")
    table.add_row("bytes after", f"{human_bytes(report.bytes_after)} ({report.bytes_after:,})")
    table.add_row("bytes reclaimed", f"{human_bytes(report.bytes_reclaimed)} ({report.bytes_reclaimed:,})")
    output.human(table)


# ---- `maif store ...` ----------------------------------------------------------------------------

store_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Work on a store directory (--store DIR): export, import, search, stats, check, delete, compact.",
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # Click's help formatter: Rich's costs ~140 ms of start time
)
for _name, _command in (
    ("export", export_command),
    ("import", import_command),
    ("search", search_command),
    ("stats", stats_command),
    ("check", check_command),
    ("delete", delete_command),
    ("compact", compact_command),
):
    store_app.command(_name)(_command)


__all__ = [
    "check_command",
    "compact_command",
    "delete_command",
    "export_command",
    "human_bytes",
    "import_command",
    "require_store",
    "run_on_store",
    "search_command",
    "stats_command",
    "store_app",
]

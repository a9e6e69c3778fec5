"""`maif export|import|search|stats|check|delete|compact` (also under `maif store`) over a real store
directory: happy paths, JSON, exit codes, and check --repair of a store whose indexes or log are damaged.

The store is built with the engine itself (create_maif_storage) in tmp_path; the commands run through
Click's runner on a Typer app of their own, since main.py wires them separately.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import typer
import typer.main
import typer.testing
from typer.testing import CliRunner, Result

from maif.agents.embeddings import HashingEmbedder
from maif.cli import store_commands
from maif.cli.exit_codes import ExitCode
from maif.errors import BlockNotFoundError
from maif.format import codec, signing
from maif.format.block import MAIFBlock, MAIFBlockType
from maif.format.container import ContainerReader
from maif.format.verify import verify_container
from maif.storage import create_maif_storage
from maif.storage.packs import pack_file_name
from maif.testing.conformance import flip_byte

app = typer.Typer(pretty_exceptions_enable=False)
app.command("export")(store_commands.export_command)
app.command("import")(store_commands.import_command)
app.command("search")(store_commands.search_command)
app.command("stats")(store_commands.stats_command)
app.command("check")(store_commands.check_command)
app.command("delete")(store_commands.delete_command)
app.command("compact")(store_commands.compact_command)
_COMMAND = typer.main.get_command(app)  # built once: Typer rebuilds it from type hints on every invoke
runner = CliRunner()

TEXT_IDS = ["t0", "t1", "t2"]
EMBEDDING_IDS = ["e0", "e1", "e2", "e3"]
OTHER_EMBEDDING_ID = "o0"
FRAME_HEADER_BYTES = 48  # a pack frame's header (docs/format/PACKS.md)


def run(*args: str | Path) -> Result:
    with mock.patch.object(typer.testing, "_get_command", lambda _app: _COMMAND):
        return runner.invoke(app, [str(arg) for arg in args])


def run_json(*args: str | Path, code: int = 0) -> dict[str, Any]:
    result = run(*args, "--json")
    assert result.exit_code == code, (result.stdout, result.stderr)
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def unit(index: int, dimensions: int = 4) -> np.ndarray:
    vector = np.full(dimensions, 0.05, dtype=np.float32)
    vector[index] = 1.0
    return vector


def embedding_block(block_id: str, vector: np.ndarray, agent_id: str) -> MAIFBlock:
    return MAIFBlock(
        id=block_id,
        block_type=MAIFBlockType.EMBEDDING,
        data=vector.astype(np.float32).tobytes(),
        metadata={"dtype": "float32"},
        agent_id=agent_id,
    )


def build_store(directory: Path, blocks: list[MAIFBlock]) -> None:
    async def scenario() -> None:
        async with await create_maif_storage({"data_dir": str(directory)}) as storage:
            await storage.write_blocks(blocks)

    asyncio.run(scenario())


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    paths = {}
    for name in ("signer", "stranger"):
        key = signing.generate_signing_key()
        paths[f"{name}.key"] = tmp_path / f"{name}.key"
        paths[f"{name}.pub"] = tmp_path / f"{name}.pub"
        signing.save_private_key(key, paths[f"{name}.key"])
        signing.save_public_key(key.public_key(), paths[f"{name}.pub"])
    return paths


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """Three TEXT blocks by `writer`, four 4-dim embeddings by `embedder`, one by `other`."""
    directory = tmp_path / "store"
    blocks = [
        MAIFBlock(id=block_id, data=f"note {block_id} ".encode() * 40, agent_id="writer")
        for block_id in TEXT_IDS
    ]
    blocks += [embedding_block(block_id, unit(i), "embedder") for i, block_id in enumerate(EMBEDDING_IDS)]
    blocks.append(embedding_block(OTHER_EMBEDDING_ID, unit(0), "other"))
    build_store(directory, blocks)
    return directory


def container_ids(path: Path) -> list[str]:
    with ContainerReader.open(path) as reader:
        return [reader.block(index).id for index in range(len(reader))]


# --- export ---------------------------------------------------------------------------------------


def test_export_writes_every_block_to_a_container_that_verifies(
    tmp_path: Path, store: Path, keys: dict[str, Path]
) -> None:
    output = tmp_path / "all.maif"
    document = run_json("export", "--store", store, "-o", output, "--key", keys["signer.key"])
    everything = TEXT_IDS + EMBEDDING_IDS + [OTHER_EMBEDDING_ID]
    assert document["ok"] and document["blocks_exported"] == len(everything)
    assert sorted(container_ids(output)) == sorted(everything)
    signer = signing.load_public_key(keys["signer.pub"])
    assert document["version"]["signer_key_ids"] == [signing.key_id(signer).hex()]
    assert verify_container(output, [signer]).ok
    assert not verify_container(output, [signing.load_public_key(keys["stranger.pub"])]).ok


def test_export_selects_by_agent_and_type_paging_through_the_list(
    tmp_path: Path, store: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_commands, "_PAGE_BLOCKS", 2)  # four embeddings span three pages
    by_agent = tmp_path / "embedder.maif"
    document = run_json(
        "export", "--store", store, "-o", by_agent, "--key", keys["signer.key"], "--agent", "embedder"
    )
    assert document["blocks_exported"] == 4 and sorted(container_ids(by_agent)) == EMBEDDING_IDS
    by_type = tmp_path / "text.maif"
    result = run("export", "--store", store, "-o", by_type, "--key", keys["signer.key"], "--type", "TEXT")
    assert result.exit_code == 0 and "exported 3 blocks" in result.stdout
    assert sorted(container_ids(by_type)) == TEXT_IDS
    both = tmp_path / "both.maif"
    document = run_json(
        "export",
        "--store",
        store,
        "-o",
        both,
        "--key",
        keys["signer.key"],
        "--agent",
        "other",
        "--type",
        "EMBD",
    )
    assert container_ids(both) == [OTHER_EMBEDDING_ID]


def test_export_of_explicit_ids_keeps_their_order_once_each(
    tmp_path: Path, store: Path, keys: dict[str, Path]
) -> None:
    output = tmp_path / "picked.maif"
    run_json(
        "export",
        "--store",
        store,
        "-o",
        output,
        "--key",
        keys["signer.key"],
        "--id",
        "e2",
        "--id",
        "t1",
        "--id",
        "e2",
    )
    assert container_ids(output) == ["e2", "t1"]


def test_export_refusals_leave_no_file_behind(tmp_path: Path, store: Path, keys: dict[str, Path]) -> None:
    output = tmp_path / "out.maif"
    key = keys["signer.key"]
    missing = run_json(
        "export", "--store", store, "-o", output, "--key", key, "--id", "nope", code=ExitCode.OTHER_ERROR
    )
    assert "nope" in missing["error"]["message"]
    run_json(
        "export", "--store", store, "-o", output, "--key", key, "--agent", "nobody", code=ExitCode.USAGE_ERROR
    )
    run_json(
        "export",
        "--store",
        store,
        "-o",
        output,
        "--key",
        key,
        "--id",
        "t0",
        "--agent",
        "writer",
        code=ExitCode.USAGE_ERROR,
    )
    run_json(
        "export", "--store", store, "-o", output, "--key", key, "--type", "TOOLONG", code=ExitCode.USAGE_ERROR
    )
    run_json("export", "--store", store, "-o", output, "--key", keys["signer.pub"], code=ExitCode.KEY_ERROR)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["store", *keys_names(keys)])
    output.write_bytes(b"precious")
    run_json("export", "--store", store, "-o", output, "--key", key, code=ExitCode.USAGE_ERROR)
    assert output.read_bytes() == b"precious"
    run_json("export", "--store", store, "-o", output, "--key", key, "--force")
    assert len(container_ids(output)) == 8


def test_export_of_an_empty_store_is_refused(tmp_path: Path, keys: dict[str, Path]) -> None:
    empty = tmp_path / "empty"
    build_store(empty, [])
    document = run_json(
        "export", "--store", empty, "-o", tmp_path / "none.maif", "--key", keys["signer.key"], code=2
    )
    assert "no blocks" in document["error"]["message"] and not (tmp_path / "none.maif").exists()


def keys_names(keys: dict[str, Path]) -> list[str]:
    return [path.name for path in keys.values()]


def test_store_commands_refuse_a_directory_that_holds_no_store(tmp_path: Path, keys: dict[str, Path]) -> None:
    missing = tmp_path / "typo"
    document = run_json("stats", "--store", missing, code=ExitCode.MALFORMED_FILE)
    assert "no MAIF store" in document["error"]["message"]
    assert not missing.exists()  # a mistyped --store never becomes a fresh empty store
    other = tmp_path / "documents"
    other.mkdir()
    (other / "letter.txt").write_text("keep me")
    run_json("check", "--store", other, code=ExitCode.MALFORMED_FILE)
    run_json("search", "--store", other, "--vector", "[1, 0]", code=ExitCode.MALFORMED_FILE)
    assert sorted(path.name for path in other.iterdir()) == ["letter.txt"]


HOLDER = """
import asyncio, sys
from maif.storage import create_maif_storage

async def main():
    async with await create_maif_storage({"data_dir": sys.argv[1]}):
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


def test_a_store_open_in_another_process_is_refused_with_its_pid(
    tmp_path: Path, store: Path, keys: dict[str, Path], exported: Path
) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(store)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        for command in (["stats"], ["check"], ["search", "--vector", "[1, 0, 0, 0]"],
                        ["export", "-o", tmp_path / "out.maif", "--key", keys["signer.key"]],
                        ["import", exported, "--trust", keys["signer.pub"]]):
            document = run_json(*command, "--store", store, code=ExitCode.STORE_LOCKED)
            assert document["error"]["type"] == "StoreLockedError"
            assert document["error"]["exit_name"] == "store_locked"
            assert f"process {holder.pid}" in document["error"]["message"]
        human = run("stats", "--store", store)
        assert human.exit_code == ExitCode.STORE_LOCKED
        assert human.stderr.startswith("error: the store") and "Traceback" not in human.stderr
        assert not (tmp_path / "out.maif").exists()
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert run_json("stats", "--store", store)["stats"]["blocks"] == len(TEXT_IDS + EMBEDDING_IDS) + 1


def test_maif_serve_refuses_a_store_another_process_holds(tmp_path: Path) -> None:
    from maif.storage.lock import acquire_store_lock

    data_dir = tmp_path / "store"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"storage": {"data_dir": str(data_dir)}}))
    lock = acquire_store_lock(data_dir)  # this test process is the other holder
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "maif", "serve", "--port", "0", "--config", str(config)],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "MAIF_MASTER_KEY": "00" * 32},
        )
    finally:
        lock.release()
    assert completed.returncode == ExitCode.STORE_LOCKED, completed.stderr
    assert f"process {os.getpid()}" in completed.stderr and "Traceback" not in completed.stderr


# --- import ---------------------------------------------------------------------------------------


@pytest.fixture
def exported(tmp_path: Path, store: Path, keys: dict[str, Path]) -> Path:
    output = tmp_path / "exported.maif"
    run_json("export", "--store", store, "-o", output, "--key", keys["signer.key"])
    return output


def test_import_into_a_new_store_under_a_trusted_key(
    tmp_path: Path, exported: Path, keys: dict[str, Path]
) -> None:
    target = tmp_path / "imported"
    document = run_json(
        "import", exported, "--store", target, "--trust", keys["stranger.pub"], "--trust", keys["signer.pub"]
    )
    assert document["ok"] and document["blocks_imported"] == 8
    signer_id = signing.key_id(signing.load_public_key(keys["signer.pub"])).hex()
    assert document["signer_key_ids"] == [signer_id]
    stats = run_json("stats", "--store", target)["stats"]
    assert stats["blocks"] == 8 and stats["vectors"] == 5
    hits = run_json("search", "--store", target, "--vector", "[0, 0, 1, 0]", "--limit", "1")["hits"]
    assert [hit["block_id"] for hit in hits] == ["e2"]
    again = run("import", exported, "--store", target, "--trust", keys["signer.pub"])
    assert again.exit_code == 0 and "imported 8 blocks" in again.stdout
    assert run_json("stats", "--store", target)["stats"]["blocks"] == 8  # same ids: replaced, not doubled


def test_import_refuses_a_container_signed_by_an_untrusted_key(
    tmp_path: Path, exported: Path, keys: dict[str, Path]
) -> None:
    target = tmp_path / "never-created"
    document = run_json(
        "import",
        exported,
        "--store",
        target,
        "--trust",
        keys["stranger.pub"],
        code=ExitCode.SIGNATURE_UNTRUSTED,
    )
    assert document["error"]["exit_name"] == "signature_untrusted"
    assert not target.exists()


def payload_offset(container: Path, block_id: str) -> int:
    """The file offset of the middle of one block's stored payload (a raw helper for tampering)."""
    with ContainerReader.open(container) as reader:
        index = next(i for i in range(len(reader)) if reader.block(i).id == block_id)
        entry = reader.entry(index)
        record = reader.record(index)
        header = codec.decode_header(record, 0, len(record))
        del record  # a view of the reader's map: must not outlive it
    start = entry.offset + header.body_offset + header.metadata_length
    return (start + entry.offset + entry.length) // 2


def test_import_refuses_a_tampered_payload_as_an_integrity_failure(
    tmp_path: Path, exported: Path, keys: dict[str, Path]
) -> None:
    flip_byte(exported, payload_offset(exported, "t1"))  # signatures still hold: only a full check sees it
    target = tmp_path / "target"
    document = run_json(
        "import", exported, "--store", target, "--trust", keys["signer.pub"], code=ExitCode.INTEGRITY_FAILURE
    )
    assert document["error"]["type"] == "IntegrityError"
    assert run_json("stats", "--store", target)["stats"]["blocks"] == 0  # refused before any block


def test_import_refuses_garbage_and_a_foreign_directory(
    tmp_path: Path, exported: Path, keys: dict[str, Path]
) -> None:
    garbage = tmp_path / "garbage.maif"
    garbage.write_bytes(b"not a container at all" * 10)
    run_json(
        "import",
        garbage,
        "--store",
        tmp_path / "s",
        "--trust",
        keys["signer.pub"],
        code=ExitCode.MALFORMED_FILE,
    )
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a store")
    run_json(
        "import", exported, "--store", foreign, "--trust", keys["signer.pub"], code=ExitCode.MALFORMED_FILE
    )
    run_json(
        "import", exported, "--store", tmp_path / "s", "--trust", keys["signer.key"], code=ExitCode.KEY_ERROR
    )


# --- search ---------------------------------------------------------------------------------------


def test_search_with_a_vector_ranks_by_cosine_and_filters(store: Path) -> None:
    document = run_json("search", "--store", store, "--vector", "[0.0, 1.0, 0.0, 0.0]", "--limit", "3")
    hits = document["hits"]
    assert len(hits) == 3 and hits[0]["block_id"] == "e1"
    assert hits[0]["score"] == pytest.approx(
        float(np.dot(unit(1), [0, 1, 0, 0]) / np.linalg.norm(unit(1))), abs=1e-4
    )
    assert hits[0]["agent_id"] == "embedder" and hits[0]["block_type"] == "EMBD"
    assert [hit["score"] for hit in hits] == sorted((hit["score"] for hit in hits), reverse=True)
    assert document["query"] == {"dimensions": 4, "embedder": None}
    only_other = run_json("search", "--store", store, "--vector", "[1, 0, 0, 0]", "--agent", "other")["hits"]
    assert [hit["block_id"] for hit in only_other] == [OTHER_EMBEDDING_ID]
    close = run_json("search", "--store", store, "--vector", "[1, 0, 0, 0]", "--threshold", "0.9")["hits"]
    assert sorted(hit["block_id"] for hit in close) == ["e0", OTHER_EMBEDDING_ID]
    human = run("search", "--store", store, "--vector", "[0, 0, 0, 1]", "--limit", "1")
    assert human.exit_code == 0 and "e3" in human.stdout and "embedder" in human.stdout


def test_search_with_a_vector_file(tmp_path: Path, store: Path) -> None:
    query = tmp_path / "query.npy"
    np.save(query, np.array([[0.0, 0.0, 2.0, 0.0]]))  # a (1, n) float64 row is one query too
    hits = run_json("search", "--store", store, "--vector-file", query, "--limit", "1")["hits"]
    assert [hit["block_id"] for hit in hits] == ["e2"]
    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    run_json("search", "--store", store, "--vector-file", pickled, code=ExitCode.MALFORMED_FILE)
    huge = tmp_path / "huge.npy"
    np.save(huge, np.ones(200_000))
    run_json("search", "--store", store, "--vector-file", huge, code=ExitCode.USAGE_ERROR)


def test_search_with_text_embeds_the_query(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAIF_EMBEDDINGS", "hashing")  # the built-in embedder: fast and deterministic
    texts = {
        "tyger": "Tyger Tyger, burning bright, in the forests of the night",
        "hope": "Hope is the thing with feathers that perches in the soul",
        "sand": "Round the decay of that colossal wreck, boundless and bare, the lone and level sands",
    }
    embedder = HashingEmbedder()
    vectors = embedder.embed(list(texts.values()))
    directory = tmp_path / "poems"
    build_store(
        directory,
        [embedding_block(name, vector, "reader") for name, vector in zip(texts, vectors, strict=True)],
    )
    document = run_json(
        "search", "--store", directory, "--text", "a bird with feathers, hope", "--limit", "3"
    )
    assert document["hits"][0]["block_id"] == "hope"
    assert document["query"] == {"dimensions": embedder.dimension, "embedder": "feature-hashing-v1"}


def test_search_refuses_bad_queries(tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAIF_EMBEDDINGS", "hashing")
    usage = ExitCode.USAGE_ERROR
    run_json("search", "--store", store, code=usage)  # no query at all
    run_json("search", "--store", store, "--vector", "[1, 0, 0, 0]", "--text", "both", code=usage)
    for bad in ("[1, 0", '["a"]', "[]", "[0, 0, 0, 0]", "[[1, 2]]", "[1e999, 0, 0, 0]", "7"):
        document = run_json("search", "--store", store, "--vector", bad, code=usage)
        assert document["error"]["exit_name"] == "usage_error"
    mismatch = run_json("search", "--store", store, "--vector", "[1, 0, 0]", code=usage)
    assert "dimensions" in mismatch["error"]["message"]
    run_json("search", "--store", store, "--text", "384 dimensions against 4", code=usage)
    assert run("search", "--store", store, "--vector", "[1,0,0,0]", "--limit", "0").exit_code == usage


# --- stats and check ------------------------------------------------------------------------------


def test_stats_reports_the_store(store: Path) -> None:
    document = run_json("stats", "--store", store)
    stats = document["stats"]
    assert document["ok"] and stats["blocks"] == 8 and stats["vectors"] == 5
    assert stats["wal_depth"] == 0 and stats["durability"] == "durable" and isinstance(stats["chunks"], dict)
    human = run("stats", "--store", store)
    assert human.exit_code == 0 and "blocks" in human.stdout and "chunks." in human.stdout


def test_check_passes_on_a_healthy_store(store: Path) -> None:
    document = run_json("check", "--store", store, "--read-data-fraction", "1")
    assert document["ok"] and document["verdict"] == "ok" and document["problems"] == []
    assert document["blocks_checked"] == 8 and document["blocks_read"] == 8
    human = run("check", "--store", store)
    assert human.exit_code == 0 and "no problems found" in human.stdout
    assert run("check", "--store", store, "--read-data-fraction", "1.5").exit_code == ExitCode.USAGE_ERROR


def chunk_location(directory: Path, block_id: str) -> tuple[Path, int]:
    """The pack file and offset of the middle of a block's first chunk (raw, behind the API)."""

    async def scenario() -> tuple[Path, int]:
        async with await create_maif_storage({"data_dir": str(directory)}) as storage:
            record = await storage._backends.index.get(block_id)
            assert record is not None
            chunks = storage._backends.chunks
            warm: Any = getattr(
                chunks, "warm", chunks
            )  # the default store tiers its pack store (warm) to cold
            location = warm.packs.locate(record.chunks[0])
            assert location is not None
            pack = directory / "packs" / pack_file_name(location.pack_id)
            return pack, location.offset + FRAME_HEADER_BYTES + location.stored_length // 2

    return asyncio.run(scenario())


def test_check_finds_a_corrupted_pack_chunk(store: Path) -> None:
    pack, offset = chunk_location(store, "t2")
    flip_byte(pack, offset)
    document = run_json(
        "check", "--store", store, "--read-data-fraction", "1", code=ExitCode.INTEGRITY_FAILURE
    )
    assert not document["ok"] and document["verdict"] == "integrity_failure"
    assert any("'t2'" in problem for problem in document["problems"])
    human = run("check", "--store", store)
    assert human.exit_code == ExitCode.INTEGRITY_FAILURE
    assert "PROBLEMS FOUND" in human.stdout and "failed check" in human.stderr


# --- delete, compact, check --repair ---------------------------------------------------------------


def read_ids(directory: Path, block_ids: list[str]) -> dict[str, bytes | None]:
    """Each block's payload read through the engine, None for one the store refuses as absent."""

    async def scenario() -> dict[str, bytes | None]:
        found: dict[str, bytes | None] = {}
        async with await create_maif_storage({"data_dir": str(directory)}) as storage:
            for block_id in block_ids:
                try:
                    found[block_id] = (await storage.read_block(block_id)).data
                except BlockNotFoundError:
                    found[block_id] = None
        return found

    return asyncio.run(scenario())


def test_delete_refuses_later_reads_searches_and_exports(
    tmp_path: Path, store: Path, keys: dict[str, Path]
) -> None:
    document = run_json("delete", "t0", "e0", "t0", "--store", store)
    assert document["ok"] and document["not_found"] == []
    assert [row["block_id"] for row in document["deleted"]] == ["t0", "e0"]  # named twice, deleted once
    assert document["deleted"][1]["lsn"] == document["deleted"][0]["lsn"] + 1
    assert read_ids(store, ["t0", "e0", "t1"]) == {"t0": None, "e0": None, "t1": b"note t1 " * 40}
    hits = run_json("search", "--store", store, "--vector", "[1, 0.05, 0.05, 0.05]")["hits"]
    assert "e0" not in {hit["block_id"] for hit in hits} and hits
    refused = run_json(
        "export", "--store", store, "-o", tmp_path / "t0.maif", "--key", keys["signer.key"], "--id", "t0",
        code=ExitCode.OTHER_ERROR,
    )
    assert refused["error"]["type"] == "BlockNotFoundError"
    stats = run_json("stats", "--store", store)["stats"]
    assert stats["blocks"] == 6 and stats["vectors"] == 4
    # An absent id: reported, exit 9, and the other ids are still deleted.
    partial = run_json("delete", "t1", "no-such-block", "--store", store, code=ExitCode.OTHER_ERROR)
    assert not partial["ok"] and partial["exit_name"] == "other_error"
    assert partial["not_found"] == ["no-such-block"]
    assert [row["block_id"] for row in partial["deleted"]] == ["t1"]
    assert read_ids(store, ["t1"]) == {"t1": None}
    human = run("delete", "t0", "--store", store)  # deleted already: absent now
    assert human.exit_code == ExitCode.OTHER_ERROR
    assert "no block with id 't0'" in human.stderr and "Traceback" not in human.stderr
    human = run("delete", "t2", "--store", store)
    assert human.exit_code == 0 and "deleted t2 (LSN" in human.stdout


def test_compact_reclaims_the_space_of_deleted_blocks(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    big = [MAIFBlock(id=f"big{index}", data=os.urandom(4 << 20)) for index in range(17)]
    # 68 MiB of incompressible payload: the first pack fills past its 64 MiB cap and is sealed.
    build_store(directory, [MAIFBlock(id="keep", data=b"kept " * 1000), *big])
    packs_before = sum(path.stat().st_size for path in (directory / "packs").glob("*.pack"))
    nothing = run_json("compact", "--store", directory)
    assert nothing["compaction"]["bytes_reclaimed"] == 0  # nothing deleted yet: no garbage to give back
    run_json("delete", *[block.id for block in big[:16]], "--store", directory)
    document = run_json("compact", "--store", directory, "--garbage-fraction", "0.5")
    report = document["compaction"]
    assert document["ok"] and document["garbage_fraction"] == 0.5
    assert report["packs_rewritten"] == 1 and report["live_frames_copied"] >= 1
    assert report["bytes_reclaimed"] > 60 << 20
    assert report["bytes_reclaimed"] == report["bytes_before"] - report["bytes_after"]
    packs_after = sum(path.stat().st_size for path in (directory / "packs").glob("*.pack"))
    assert packs_before - packs_after >= report["bytes_reclaimed"] - (1 << 20)
    assert read_ids(directory, ["keep", "big16", "big0"]) == {
        "keep": b"kept " * 1000, "big16": big[16].data, "big0": None,
    }
    human = run("compact", "--store", directory)
    assert human.exit_code == 0 and "reclaimed 0 B" in human.stdout
    assert run("compact", "--store", directory, "--garbage-fraction", "0").exit_code == ExitCode.USAGE_ERROR
    assert run("compact", "--store", directory, "--garbage-fraction", "1.5").exit_code == ExitCode.USAGE_ERROR
    assert run_json("check", "--store", directory, "--read-data-fraction", "1")["ok"]


def test_human_bytes() -> None:
    assert store_commands.human_bytes(0) == "0 B"
    assert store_commands.human_bytes(1023) == "1023 B"
    assert store_commands.human_bytes(1536) == "1.5 KiB"
    assert store_commands.human_bytes(67_176_354) == "64.1 MiB"
    assert store_commands.human_bytes(3 << 40) == "3.0 TiB"


def remove_derived_indexes(directory: Path) -> None:
    for path in directory.glob("index.sqlite*"):
        path.unlink()
    shutil.rmtree(directory / "vectors")


def test_check_repair_rebuilds_deleted_indexes(store: Path) -> None:
    remove_derived_indexes(store)
    # A plain check: what opening the store rebuilt by itself is shown, and is not a problem.
    human = run("check", "--store", store)
    assert human.exit_code == 0, (human.stdout, human.stderr)
    assert "repaired automatically when the store was opened" in human.stdout
    assert "metadata index rebuilt" in human.stdout and "no problems found" in human.stdout
    remove_derived_indexes(store)
    document = run_json("check", "--repair", "--store", store, "--read-data-fraction", "1")
    assert document["ok"] and document["repair"] is True and document["problems"] == []
    assert document["blocks_checked"] == 8 and document["blocks_read"] == 8
    repaired = "\n".join(document["repaired"])
    assert "metadata index rebuilt from 8 stored block record(s)" in repaired
    assert "vector index rebuilt with 5 vector(s)" in repaired
    assert document["wal_repair"] is None and document["recovery_on_open"]["corruption"] is None
    hits = run_json("search", "--store", store, "--vector", "[0, 0, 1, 0]", "--limit", "1")["hits"]
    assert [hit["block_id"] for hit in hits] == ["e2"]
    human = run("check", "--repair", "--store", store)
    assert human.exit_code == 0 and "repaired:" in human.stdout and "vector index rebuilt" in human.stdout
    assert "no problems found after the repair" in human.stdout


WRITER = """
import asyncio, os, sys
from maif.format.block import MAIFBlock
from maif.storage import create_maif_storage
import maif.storage.engine
# No timed checkpoint before the kill: a slow start (a loaded machine) let the first apply, over 5 s after
# the applier started, checkpoint all 300 records, and then the flipped byte lost nothing to report.
maif.storage.engine._CHECKPOINT_INTERVAL_S = 3600.0

async def main():
    storage = await create_maif_storage({"data_dir": sys.argv[1]})
    await storage.write_blocks([MAIFBlock(id=f"w{i}", data=os.urandom(400)) for i in range(300)])
    print("acknowledged", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


def store_with_a_corrupt_log(directory: Path) -> Path:
    """300 acknowledged writes, then kill -9 (nothing checkpointed: every record is above the checkpoint),
    then one byte flipped in the middle of the last log segment: bit rot amid acknowledged records, not
    a torn tail. Returns the segment."""
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(directory)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "acknowledged\n"
    finally:
        writer.kill()
        writer.wait(timeout=60)
    segment = sorted((directory / "wal").glob("*.wal"))[-1]
    flip_byte(segment, segment.stat().st_size // 2)
    return segment


def test_check_of_a_corrupt_log_names_the_repair_which_then_succeeds(tmp_path: Path) -> None:
    from maif.cli.main import app as maif_app

    directory = tmp_path / "store"
    segment = store_with_a_corrupt_log(directory)

    refused = run_json("check", "--store", directory, code=ExitCode.INTEGRITY_FAILURE)
    assert refused["error"]["type"] == "WALCorruptionError"
    assert segment.name in refused["error"]["message"]
    assert "maif store check --repair" in refused["error"]["hint"]
    human = run("stats", "--store", directory)
    assert human.exit_code == ExitCode.INTEGRITY_FAILURE and "Traceback" not in human.stderr
    assert "is corrupt at offset" in human.stderr and "hint:" in human.stderr and "--repair" in human.stderr
    assert not (directory / "wal" / "quarantine").exists()  # nothing changed without --repair

    # The command the hint names, through the real `maif` app.
    repaired = runner.invoke(maif_app, ["store", "check", "--repair", "--store", str(directory), "--json"])
    assert repaired.exit_code == 0, (repaired.stdout, repaired.stderr)
    document = json.loads(repaired.stdout)
    recovery = document["recovery_on_open"]
    assert document["ok"] and document["problems"] == [] and recovery["corruption"] is not None
    assert recovery["lost_lsns"] and all(1 <= low <= high <= 300 for low, high in recovery["lost_lsns"])
    assert "unreadable" in document["wal_repair"] and recovery["reappended_lsns"] is not None
    assert [Path(path).name for path in recovery["quarantined"]] == [segment.name]
    assert all(Path(path).is_file() for path in recovery["quarantined"])
    # Once repaired, the store opens and checks clean without --repair; the lost LSNs stay reported by
    # the repair only (and the quarantined copy stays on disk).
    after = run_json("check", "--store", directory, "--read-data-fraction", "1")
    assert after["ok"] and after["recovery_on_open"]["corruption"] is None
    assert after["blocks_checked"] >= 299 - sum(high - low + 1 for low, high in recovery["lost_lsns"])


def test_check_repair_human_output_names_the_lost_lsns(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    store_with_a_corrupt_log(directory)
    human = run("check", "--repair", "--store", directory)
    assert human.exit_code == 0, (human.stdout, human.stderr)
    assert "write-ahead log repaired:" in human.stdout and "lost LSNs: " in human.stdout
    assert "lost LSNs: none" not in human.stdout and "damaged segment copied to:" in human.stdout
    assert "no problems found after the repair" in human.stdout


def test_maif_serve_freezes_its_start_up_heap_while_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Everything built before serving is moved out of the collector's generations (gc.freeze, ADR 0089)
    and given back once serving ends, so a process that serves again freezes its heap anew."""
    import asyncio
    import gc

    import uvicorn

    from maif.cli.serve import run_service

    frozen_while_serving: list[int] = []

    async def serve(self: uvicorn.Server, sockets: Any = None) -> None:
        frozen_while_serving.append(gc.get_freeze_count())

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"storage": {"data_dir": str(tmp_path / "store")}}))
    monkeypatch.setenv("MAIF_MASTER_KEY", "00" * 32)
    monkeypatch.setattr(uvicorn.Server, "serve", serve)
    gc.unfreeze()
    asyncio.run(run_service("127.0.0.1", 0, config))
    assert len(frozen_while_serving) == 1 and frozen_while_serving[0] > 10_000
    assert gc.get_freeze_count() == 0

"""The faiss vector index (ADR 0091): recall, exactness, filters, tombstones, generations, conversion."""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import threading
from pathlib import Path
from typing import Any

import blake3
import faiss
import msgspec
import numpy as np
import pytest

from maif.format.block import MAIFBlock, MAIFBlockType
from maif.storage.backends.memory import MemoryVectorIndex
from maif.storage.engine import create_maif_storage
from maif.storage.faiss_vectors import EXACT_ROWS_MAX, HNSW_EF_SEARCH, FaissVectorIndex
from maif.storage.vectors import QUARANTINE_KEEP, UsearchVectorIndex
from maif.testing.conformance import clustered_vectors, flip_byte, run

Items = list[tuple[str, np.ndarray, dict[str, str]]]


def hard_vectors(count: int, dimensions: int, seed: int, clusters: int = 100) -> np.ndarray:
    """The benchmark's kind of data at test scale: unit-variance centres, noise twice as large, so a
    vector's nearest neighbours are many near-equidistant members of its cluster."""
    centres = np.random.default_rng(0).standard_normal((clusters, dimensions)).astype(np.float32)
    rng = np.random.default_rng(seed)
    members = rng.integers(0, clusters, count)
    return (centres[members] + 2.0 * rng.standard_normal((count, dimensions))).astype(np.float32)


async def both(directory: Path, items: Items, **options: Any) -> tuple[MemoryVectorIndex, FaissVectorIndex]:
    exact, index = MemoryVectorIndex(), FaissVectorIndex(directory, **options)
    await exact.add(items)
    await index.add(items)
    return exact, index


def ids(hits: list[tuple[str, float]]) -> list[str]:
    return [block_id for block_id, _ in hits]


def test_recall_on_a_hard_set_meets_the_target(tmp_path: Path) -> None:
    """recall@10 >= 0.95 with the defaults on 4000 clustered vectors, walked (not scanned): measured
    0.9585 (a batch this small is inserted on one thread, so the graph is the same every run)."""
    vectors, queries = hard_vectors(4000, 128, seed=1), hard_vectors(200, 128, seed=2)

    async def scenario() -> tuple[float, float]:
        exact, index = await both(tmp_path, [(f"v{n}", vector, {}) for n, vector in enumerate(vectors)],
                                  exact_rows_max=0)
        truths = [set(ids(await exact.search(query, 10))) for query in queries]
        recalls = []
        for expansion_search in (HNSW_EF_SEARCH, 128):
            index.set_expansion_search(expansion_search)
            found = [set(ids(await index.search(query, 10))) for query in queries]
            recalls.append(sum(map(len, map(set.intersection, truths, found))) / (10 * len(queries)))
        await index.close()
        return recalls[0], recalls[1]

    default, wider = run(scenario())
    assert default >= 0.95
    assert wider >= 0.99


def test_scores_are_exact_and_a_small_index_is_scanned_exactly(tmp_path: Path) -> None:
    """Re-ranking on float32 gives exact scores on the walked path; an index of at most
    ``exact_rows_max`` rows gives exactly the exact answer, order and scores."""
    vectors = np.random.default_rng(5).standard_normal((3000, 48)).astype(np.float32)
    queries = np.random.default_rng(6).standard_normal((30, 48)).astype(np.float32)
    items = [(f"v{n}", vector, {}) for n, vector in enumerate(vectors)]

    async def scenario() -> None:
        exact, walked = await both(tmp_path / "walked", items, exact_rows_max=0)
        scanned = FaissVectorIndex(tmp_path / "scanned")
        await scanned.add(items[:EXACT_ROWS_MAX])
        small = MemoryVectorIndex()
        await small.add(items[:EXACT_ROWS_MAX])
        for query in queries:
            truth, found = await exact.search(query, 10), await walked.search(query, 10)
            scores = dict(truth)
            assert len(found) == 10 and len(set(ids(found)) & set(scores)) >= 9
            exact_score = {block_id: float(vectors[int(block_id[1:])] @ query
                           / np.linalg.norm(vectors[int(block_id[1:])]) / np.linalg.norm(query))
                           for block_id in ids(found)}
            expected = [exact_score[block_id] for block_id in ids(found)]
            assert [score for _, score in found] == pytest.approx(expected, abs=1e-5)
            truth, found = await small.search(query, 10), await scanned.search(query, 10)
            assert ids(found) == ids(truth)
            assert [score for _, score in found] == pytest.approx([score for _, score in truth], abs=1e-6)
            above = await scanned.search(query, 10, score_threshold=truth[4][1] - 1e-6)
            assert ids(above) == ids(truth[:5])
        await walked.close()
        await scanned.close()

    run(scenario())


@pytest.mark.parametrize("exact_rows_max", [0, EXACT_ROWS_MAX])
def test_filters_find_a_rare_value_and_a_common_one(tmp_path: Path, exact_rows_max: int) -> None:
    """A common value (600 rows of 6000) walks the graph with a bitmap selector when the index scans at
    most ``exact_rows_max`` = 0 rows, and is scanned exactly under the default; a rare one (a single
    vector, the farthest from the query) is always scanned exactly and always found."""
    vectors = clustered_vectors(6000, 32, seed=21, clusters=10)
    items = [(f"v{n}", vector, {"agent_id": "loner" if n == 1234 else f"a{n % 10}", "kind": f"k{n % 2}"})
             for n, vector in enumerate(vectors)]

    async def scenario() -> None:
        exact, index = await both(tmp_path, items, exact_rows_max=exact_rows_max)
        far = -vectors[1234]
        walked = []
        for query in [*vectors[:20], far]:
            for filters in ({"agent_id": "a3"}, {"agent_id": "loner"}, {"agent_id": "a4", "kind": "k0"}):
                truth = await exact.search(query, 10, filters=filters)
                found = await index.search(query, 10, filters=filters)
                assert len(found) == len(truth) and all(
                    int(block_id[1:]) % 10 == int(filters["agent_id"][1]) for block_id in ids(found)
                    if "loner" not in filters.values())
                if exact_rows_max == 0 and "loner" not in filters.values():  # walked: approximate
                    walked.append(len(set(ids(found)) & set(ids(truth))) / len(truth))
                else:  # scanned: exact
                    assert ids(found) == ids(truth), filters
        assert not walked or sum(walked) / len(walked) >= 0.95
        assert ids(await index.search(vectors[0], 3, filters={"agent_id": "loner"})) == ["v1234"]
        assert await index.search(vectors[0], 5, filters={"agent_id": "nobody"}) == []
        assert await index.search(vectors[0], 5, filters={"agent_id": "a4", "kind": "k1"}) == []  # 4 is even
        await index.close()

    run(scenario())


def test_removed_and_overwritten_vectors_never_come_back(tmp_path: Path) -> None:
    """Tombstones stay out of every result (walked, scanned, filtered), across a reopen; a flush that
    finds more tombstones than live rows rebuilds the graph without them."""
    vectors = clustered_vectors(4000, 16, seed=31)
    items = [(f"v{n}", vector, {"agent_id": f"a{n % 4}"}) for n, vector in enumerate(vectors)]

    async def scenario() -> None:
        exact, index = await both(tmp_path, items, exact_rows_max=0)
        gone = [f"v{n}" for n in range(0, 4000, 3)]
        changes = [(f"v{n}", -vectors[n], {"agent_id": "moved"}) for n in range(1, 4000, 30)]
        for target in (exact, index):
            assert await target.remove([*gone, "absent"]) == len(gone)
            await target.add(changes)
        assert await index.count() == await exact.count() and index.tombstones == len(gone) + len(changes)
        recalls = []
        for query in vectors[:40:3]:  # the removed vectors themselves: they must not find themselves
            for filters in (None, {"agent_id": "a0"}, {"agent_id": "moved"}):
                found = await index.search(query, 10, filters=filters)
                assert len(found) == 10 and not set(ids(found)) & set(gone)
                truth = await exact.search(query, 10, filters=filters)
                recalls.append(len(set(ids(found)) & set(ids(truth))))
        assert sum(recalls) / (10 * len(recalls)) >= 0.9, recalls
        await index.close()
        reopened = FaissVectorIndex(tmp_path, exact_rows_max=0)
        assert reopened.damage is None and reopened.tombstones == len(gone) + len(changes)
        assert await reopened.count() == await exact.count()
        assert not set(ids(await reopened.search(vectors[0], 50))) & set(gone)
        survivors = [f"v{n}" for n in range(4000) if n % 3 and n % 30 != 1]
        for target in (exact, reopened):
            await target.remove(survivors[: len(survivors) - 10])  # tombstones now outnumber live rows
        await reopened.flush()
        assert reopened.tombstones == 0 and await reopened.count() == await exact.count()
        for query in (vectors[2], -vectors[1]):
            assert set(ids(await reopened.search(query, 5))) == set(ids(await exact.search(query, 5)))
        await reopened.close()
        again = FaissVectorIndex(tmp_path)
        assert again.damage is None and await again.count() == await exact.count()
        await again.close()

    run(scenario())


def test_the_live_row_bitmap_follows_removals_and_growth(tmp_path: Path) -> None:
    """The walk's live-row selector reads a bitmap updated in place; when the index grows past its
    capacity the bitmap moves and the selector must follow (a stale one would read freed memory)."""
    vectors = clustered_vectors(6000, 16, seed=71)

    async def scenario() -> None:
        exact, index = await both(tmp_path, [(f"v{n}", vectors[n], {}) for n in range(1000)],
                                  exact_rows_max=0)
        for target in (exact, index):
            await target.remove([f"v{n}" for n in range(0, 1000, 2)])
        assert ids(await index.search(vectors[10], 1)) != ["v10"]  # the live-row selector is made
        for target in (exact, index):
            await target.add([(f"v{n}", vectors[n], {}) for n in range(1000, 6000)])  # the bitmap moves
            await target.remove([f"v{n}" for n in range(1000, 6000, 2)])
        for number in (11, 12, 1001, 1002, 5999):
            found = ids(await index.search(vectors[number], 10))
            assert not any(int(block_id[1:]) % 2 == 0 for block_id in found)
            assert (found[0] == f"v{number}") == (number % 2 == 1)
            assert len(set(found) & set(ids(await exact.search(vectors[number], 10)))) >= 8
        await index.close()

    run(scenario())


def test_a_search_waits_for_a_flush_without_blocking_the_event_loop(tmp_path: Path) -> None:
    vectors = clustered_vectors(200, 8, seed=51)

    async def scenario() -> None:
        _, index = await both(tmp_path, [(f"v{n}", vector, {}) for n, vector in enumerate(vectors)])
        released = threading.Event()
        index._lock.acquire()
        threading.Timer(0.3, lambda: (released.set(), index._lock.release())).start()
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while not released.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        ticking = asyncio.create_task(ticker())
        hits = await index.search(vectors[4], 1)
        await ticking
        assert released.is_set() and ticks >= 5, "the event loop was blocked while the index was held"
        assert ids(hits) == ["v4"]
        await index.close()

    run(scenario())


# ---- generations: crash safety, damage, quarantine ---------------------------------------------


def write_index(directory: Path, count: int, dimensions: int = 8) -> np.ndarray:
    """A flushed index of ``count`` vectors v0.. in ``directory`` (replacing what was there)."""
    shutil.rmtree(directory, ignore_errors=True)
    vectors = clustered_vectors(count, dimensions, seed=count)

    async def scenario() -> None:
        index = FaissVectorIndex(directory)
        await index.add([(f"v{n}", vector, {}) for n, vector in enumerate(vectors)])
        await index.remove(["v0"])  # a tombstone in the persisted graph
        await index.close()

    run(scenario())
    return vectors


def assert_opens_damaged(directory: Path, reason: str | None = None) -> None:
    """Opening never raises for damaged contents: empty, ``damage`` set, evidence kept, usable."""

    async def scenario() -> None:
        index = FaissVectorIndex(directory)
        try:
            assert index.damage is not None, "damage went unnoticed"
            assert reason is None or reason in index.damage, index.damage
            assert await index.count() == 0 and index.dimensions is None
            assert await index.search(np.ones(8, dtype=np.float32), 3) == []
            await index.add([("fresh", np.ones(5, dtype=np.float32), {})])  # any dimension: it starts over
        finally:
            await index.close()
        reopened = FaissVectorIndex(directory)
        try:
            assert reopened.damage is None and await reopened.count() == 1
        finally:
            await reopened.close()

    run(scenario())
    quarantined = list((directory / "quarantine").iterdir())
    assert quarantined and len(quarantined) <= QUARANTINE_KEEP


def test_crash_before_current_is_replaced_keeps_the_old_generation(tmp_path: Path) -> None:
    async def scenario() -> None:
        index = FaissVectorIndex(tmp_path)
        await index.add([("a", np.array([1, 0], dtype=np.float32), {})])
        await index.flush()
        await index.add([("b", np.array([0, 1], dtype=np.float32), {})])
        await index.close()
        assert (tmp_path / "CURRENT").read_text().strip() == "gen-2"
        # The second flush crashed after writing gen-2 but before CURRENT moved: CURRENT names gen-1,
        # and a half-written gen-2 lies beside it.
        shutil.copytree(tmp_path / "gen-2", tmp_path / "gen-1")
        only_a = FaissVectorIndex(tmp_path / "only-a")
        await only_a.add([("a", np.array([1, 0], dtype=np.float32), {})])
        await only_a.close()
        shutil.rmtree(tmp_path / "gen-1")
        shutil.copytree(tmp_path / "only-a" / "gen-1", tmp_path / "gen-1")
        os.truncate(tmp_path / "gen-2" / "index.faiss", 100)
        (tmp_path / "CURRENT").write_text("gen-1\n")
        reopened = FaissVectorIndex(tmp_path)
        assert reopened.damage is None and await reopened.count() == 1
        await reopened.add([("c", np.array([1, 1], dtype=np.float32), {})])
        await reopened.close()
        assert (tmp_path / "CURRENT").read_text().strip() == "gen-2"
        assert sorted(p.name for p in tmp_path.glob("gen-*")) == ["gen-2"]
        final = FaissVectorIndex(tmp_path)
        assert final.damage is None and await final.count() == 2
        await final.close()

    run(scenario())


def _rewrite_map(directory: Path, **fields: Any) -> None:
    """A well-formed map (checksum recomputed) that disagrees with the files beside it."""
    path = directory / "gen-1" / "map.msgpack"
    header = struct.Struct("<8sH6s32s")
    raw = path.read_bytes()
    mapping = msgspec.msgpack.decode(raw[header.size :])
    if fields.pop("extra_item", False):
        mapping["items"].append(["ghost", mapping["rows"] - 1 if mapping["rows"] else 0, {}])
    mapping.update(fields)
    body = msgspec.msgpack.encode(mapping)
    path.write_bytes(header.pack(b"MAIFFMAP", 1, bytes(6), blake3.blake3(body).digest()) + body)


def _replace_graph(directory: Path, graph: Any) -> None:
    """index.faiss replaced by another faiss index whose size and digest the rewritten map vouches for."""
    raw = faiss.serialize_index(graph).tobytes()
    (directory / "gen-1" / "index.faiss").write_bytes(raw)
    _rewrite_map(directory, index_bytes=len(raw), index_digest=blake3.blake3(raw).digest())


def _corruptions(directory: Path) -> list[tuple[str, Any]]:
    generation = directory / "gen-1"
    names = ("index.faiss", "vectors.f32", "map.msgpack")
    sizes = {name: (generation / name).stat().st_size for name in names}

    def truncate(name: str, size: int) -> Any:
        return lambda: os.truncate(generation / name, size)

    def flip(name: str, offset: int) -> Any:
        return lambda: flip_byte(generation / name, offset)

    cases: list[tuple[str, Any]] = []
    for name, size in sizes.items():
        for offset in sorted({0, 1, 7, 12, 40, 41, size // 3, size // 2, size - 1}):
            cases.append((f"{name} byte {offset} flipped", flip(name, offset)))
        for offset in sorted({0, 20, size // 2, size - 1}):
            cases.append((f"{name} cut at {offset}", truncate(name, offset)))
        cases.append((f"{name} deleted", lambda name=name: (generation / name).unlink()))
        cases.append((f"{name} garbage", lambda name=name, size=size: (generation / name).write_bytes(
            os.urandom(size))))
    ndim = 8
    flat = faiss.IndexFlatIP(ndim)
    flat.add(np.ones((59, ndim), dtype=np.float32))
    other_sq = faiss.IndexHNSWSQ(ndim, faiss.ScalarQuantizer.QT_8bit, 32, faiss.METRIC_INNER_PRODUCT)
    other_sq.train(np.eye(ndim, dtype=np.float32))
    other_sq.add(np.ones((59, ndim), dtype=np.float32))
    cases += [
        ("index.faiss is another kind of index", lambda: _replace_graph(directory, flat)),
        ("index.faiss is quantised otherwise", lambda: _replace_graph(directory, other_sq)),
        ("map names an unknown quantizer", lambda: _rewrite_map(directory, quantizer="fp8")),
        ("map claims other dimensions", lambda: _rewrite_map(directory, ndim=9)),
        ("map claims more rows", lambda: _rewrite_map(directory, rows=61)),
        ("map names a row twice", lambda: _rewrite_map(directory, extra_item=True)),
        ("map claims an impossible M", lambda: _rewrite_map(directory, m=0)),
        ("CURRENT deleted", lambda: (directory / "CURRENT").unlink()),
        ("CURRENT names a missing generation", lambda: (directory / "CURRENT").write_bytes(b"gen-7\n")),
        ("CURRENT is garbage", lambda: (directory / "CURRENT").write_bytes(b"\xff\x00gen")),
        ("CURRENT escapes", lambda: (directory / "CURRENT").write_bytes(b"../../etc\n")),
        ("generation directory deleted", lambda: shutil.rmtree(generation)),
    ]
    return cases


def test_no_damage_to_a_generation_escapes_and_each_is_quarantined(tmp_path: Path) -> None:
    directory = tmp_path / "vectors"
    write_index(directory, 60)
    cases = _corruptions(directory)
    assert len(cases) >= 50
    for name, damage in cases:
        write_index(directory, 60)
        damage()
        try:
            assert_opens_damaged(directory)
        except Exception as error:  # name the case that escaped
            raise AssertionError(f"{name}: {error!r}") from error
    assert len(list((directory / "quarantine").iterdir())) <= QUARANTINE_KEEP


def embedding_block(block_id: str, vector: np.ndarray) -> MAIFBlock:
    return MAIFBlock(id=block_id, block_type=MAIFBlockType.EMBEDDING, data=vector.astype("<f4").tobytes(),
                     metadata={"dtype": "float32"}, agent_id="agent")


def test_a_damaged_generation_is_quarantined_and_the_engine_rebuilds_it(tmp_path: Path) -> None:
    vectors = clustered_vectors(50, 12, seed=61)

    async def scenario() -> None:
        async with await create_maif_storage({"data_dir": str(tmp_path)}) as storage:
            await storage.write_blocks([embedding_block(f"e{n}", vector) for n, vector in enumerate(vectors)])
        generation = (tmp_path / "vectors" / "CURRENT").read_text().strip()
        flip_byte(tmp_path / "vectors" / generation / "index.faiss", 100)
        async with await create_maif_storage({"data_dir": str(tmp_path)}) as storage:
            assert "index.faiss fails its BLAKE3 check" in storage._backends.vectors.damage  # type: ignore[attr-defined]
            assert await storage._backends.vectors.count() == 50
            hits = await storage.semantic_search(vectors[7], 3)
            assert hits[0].block_id == "e7" and hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert any((tmp_path / "vectors" / "quarantine").iterdir())
        async with await create_maif_storage({"data_dir": str(tmp_path)}) as storage:
            assert storage._backends.vectors.damage is None  # type: ignore[attr-defined]
            assert await storage._backends.vectors.count() == 50

    run(scenario())


# ---- conversion of the usearch generations written before ADR 0091 ----------------------------------


def _write_float32_usearch_generation(directory: Path, vectors: np.ndarray) -> None:
    """A generation as MAIF wrote it before quantisation: float32 usearch file, map without dtype."""
    from usearch.index import Index

    generation = directory / "gen-3"
    generation.mkdir(parents=True)
    index = Index(ndim=vectors.shape[1], metric="cos", dtype="f32", connectivity=24, expansion_add=128,
                  expansion_search=64)
    index.add(np.arange(1, len(vectors) + 1, dtype=np.uint64), vectors)
    index.save(str(generation / "index.usearch"))
    usearch_bytes = (generation / "index.usearch").read_bytes()
    body = msgspec.msgpack.encode({
        "ndim": vectors.shape[1], "next_key": len(vectors) + 1, "connectivity": 24, "expansion_add": 128,
        "expansion_search": 64,
        "items": [[f"v{n}", n + 1, {"agent_id": f"a{n % 3}"}] for n in range(len(vectors))],
        "index_bytes": len(usearch_bytes), "index_digest": blake3.blake3(usearch_bytes).digest()})
    header = struct.Struct("<8sH6s32s").pack(b"MAIFVMAP", 1, bytes(6), blake3.blake3(body).digest())
    (generation / "map.msgpack").write_bytes(header + body)
    (directory / "CURRENT").write_text("gen-3\n")


async def _write_int8_usearch_generation(directory: Path, vectors: np.ndarray) -> None:
    legacy = UsearchVectorIndex(directory)
    await legacy.add([(f"v{n}", vector, {"agent_id": f"a{n % 3}"}) for n, vector in enumerate(vectors)])
    await legacy.remove(["v5"])
    await legacy.add([("v6", -vectors[6], {"agent_id": "a0"})])
    await legacy.close()


@pytest.mark.parametrize("dtype", ["i8", "f32"])
def test_a_usearch_generation_is_converted_at_open(tmp_path: Path, dtype: str) -> None:
    vectors = clustered_vectors(500, 24, seed=41)

    async def scenario() -> None:
        exact = MemoryVectorIndex()
        await exact.add([(f"v{n}", vector, {"agent_id": f"a{n % 3}"}) for n, vector in enumerate(vectors)])
        if dtype == "i8":
            await _write_int8_usearch_generation(tmp_path, vectors)
            await exact.remove(["v5"])
            await exact.add([("v6", -vectors[6], {"agent_id": "a0"})])
        else:
            _write_float32_usearch_generation(tmp_path, vectors)
        before = (tmp_path / "CURRENT").read_text().strip()
        converted = FaissVectorIndex(tmp_path)
        assert converted.damage is None and converted.converted_from_usearch
        assert await converted.count() == await exact.count()
        after = (tmp_path / "CURRENT").read_text().strip()
        assert int(after[4:]) == int(before[4:]) + 1  # flushed at once as a new generation
        assert sorted(path.name for path in (tmp_path / after).iterdir()) == [
            "index.faiss", "map.msgpack", "vectors.f32"]
        assert [path.name for path in tmp_path.glob("gen-*")] == [after]  # the usearch generation is gone
        for query in vectors[:30]:
            for filters in (None, {"agent_id": "a1"}):
                truth = await exact.search(query, 5, filters=filters)
                found = await converted.search(query, 5, filters=filters)
                assert ids(found) == ids(truth)
                assert [score for _, score in found] == pytest.approx([score for _, score in truth], abs=1e-5)
        await converted.close()
        reopened = FaissVectorIndex(tmp_path)
        assert reopened.damage is None and not reopened.converted_from_usearch
        assert await reopened.count() == await exact.count()
        await reopened.close()

    run(scenario())


def test_a_damaged_usearch_generation_is_quarantined_not_converted(tmp_path: Path) -> None:
    vectors = clustered_vectors(100, 8, seed=42)
    run(_write_int8_usearch_generation(tmp_path, vectors))
    generation = (tmp_path / "CURRENT").read_text().strip()
    flip_byte(tmp_path / generation / "index.usearch", 200)

    async def scenario() -> None:
        index = FaissVectorIndex(tmp_path)
        assert index.damage is not None and "index.usearch" in index.damage
        assert await index.count() == 0 and not index.converted_from_usearch
        await index.add([("fresh", np.ones(4, dtype=np.float32), {})])
        await index.close()
        reopened = FaissVectorIndex(tmp_path)
        assert reopened.damage is None and await reopened.count() == 1
        assert (tmp_path / (tmp_path / "CURRENT").read_text().strip() / "index.faiss").exists()
        await reopened.close()

    run(scenario())
    assert any((tmp_path / "quarantine").iterdir())

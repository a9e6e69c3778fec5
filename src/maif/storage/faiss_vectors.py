"""The embedded vector index: faiss HNSW over scalar-quantised vectors, re-ranked on float32 (ADR 0091).

:class:`FaissVectorIndex` keeps a faiss ``IndexHNSWSQ`` (inner product on unit vectors, so cosine) whose
row numbers map to block ids. The graph walk compares quantised vectors (:data:`QUANTIZER`: float16 by
default, a half of float32's memory traffic); the top ``limit`` candidates it returns are scored and
ranked again on the float32 unit vectors kept beside it, so the scores and their order are exact.
Parameters (M 32, efConstruction 128, efSearch 40) come from ``benchmarks/vector_bench.py``. faiss itself
is imported when the first index is built or loaded.

faiss cannot take a vector out of an HNSW graph, so a removed or overwritten vector becomes a tombstone:
its row stays in the graph for the walk but a selector keeps it out of every result, and a flush that
finds more tombstones than live rows rebuilds the graph from the live rows. Filters (agent_id,
block_type or any other string attribute) are answered from per-value row sets: a filter matching few
rows (at most ``exact_rows_max``, or under 1/:data:`_FILTER_GRAPH_FRACTION` of the index) is scanned
exactly over those rows; otherwise the graph walk takes a bitmap selector of the matching rows
(``faiss.SearchParametersHNSW(sel=...)``) and, should it still return fewer hits than could exist, the
search falls back to the exact scan. A rare filter value therefore always finds its vectors. An index
of at most ``exact_rows_max`` rows is always searched exactly.

Persistence is the generation scheme of :mod:`maif.storage.vectors`: ``flush`` writes
``vectors/gen-<n>/`` with ``index.faiss`` (faiss' own serialisation), ``vectors.f32`` (every row's
float32 unit vector, in row order) and ``map.msgpack`` (block ids, rows, attributes, parameters, and the
sizes and BLAKE3 digests of the two other files, under a BLAKE3 checksum of its own); syncs them, then
atomically replaces ``vectors/CURRENT``. faiss only ever parses bytes already in memory whose digest
the map vouches for. A damaged generation is moved to ``vectors/quarantine/``, the index starts empty
and ``damage`` says why, so the engine rebuilds it from the blocks. A generation written by the
usearch index this one replaced (``index.usearch``) is read with :class:`UsearchVectorIndex` (which
checks it the same way), re-added here and flushed as a new generation when it is opened.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import struct
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import blake3
import msgspec
import numpy as np

from maif import limits
from maif.durable import write_atomically
from maif.errors import ArgumentValueError, BackendError, StoreClosedError
from maif.storage.backends.base import Capabilities, VectorIndex
from maif.storage.vectors import (
    QUARANTINE_KEEP,
    UsearchVectorIndex,
    check_attributes,
    check_dimensions,
    check_search_limit,
    check_vector,
    unit_vector,
)

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 128
HNSW_EF_SEARCH = 40
QUANTIZER = "fp16"  # how the graph stores vectors (needs no training, unlike 8-bit codes)
_QUANTIZERS = {"fp16": "QT_fp16"}  # name -> faiss.ScalarQuantizer attribute
EXACT_ROWS_MAX = 2048  # an index of at most this many rows is scanned exactly: cheaper than a walk
# The walk returns limit x this candidates, scored and ranked on float32. float16 codes rank almost
# exactly: at 300k x 384, efSearch 40, fetching 20 instead of 10 raised recall@10 by 0.0002 (0.9685 to
# 0.9687) and cost 15 us a query, so only the top ``limit`` are fetched; their scores are still exact.
_RERANK_FACTOR = 1
_FILTER_GRAPH_FRACTION = 50  # a filter matching under 1/50 of the rows is scanned exactly
_FILTER_EF_FACTOR_MAX = 8  # a filtered walk's efSearch grows with rows / matching rows, up to this factor
_PARALLEL_ADD_MIN = 8192  # smaller batches are inserted on one thread: the same graph for the same inserts
_ROWS_MIN = 1024
_HNSW_PARAMETER_MAX = 1 << 16
_MAP_MAGIC = b"MAIFFMAP"
_MAP_VERSION = 1
_MAP_HEADER = struct.Struct("<8sH6s32s")  # magic, version, reserved, BLAKE3 of the msgpack body
_CPUS = os.cpu_count() or 1

_log = logging.getLogger(__name__)


def _faiss() -> Any:
    """faiss, imported when an index is first built or loaded: the library adds about 20 MB of RSS,
    which a store without embeddings never needs. Typed Any: faiss' own stubs lack some of the API
    used here (SearchParametersHNSW)."""
    import faiss

    return faiss


def _quantizer_type(name: str) -> Any:
    return getattr(_faiss().ScalarQuantizer, _QUANTIZERS[name])


class _FaissMap(msgspec.Struct):
    """The persisted state of one generation besides the graph and the float32 rows."""

    ndim: int
    rows: int  # rows in index.faiss and vectors.f32, tombstones included
    m: int
    ef_construction: int
    ef_search: int
    quantizer: str
    items: list[tuple[str, int, dict[str, str]]]  # (block id, row, attributes) of the live rows
    index_bytes: int
    index_digest: bytes
    exact_bytes: int
    exact_digest: bytes


class _Damaged(Exception):
    """A generation's contents are damaged (raised and caught inside :meth:`FaissVectorIndex._load`)."""


def _encode_map(mapping: _FaissMap) -> bytes:
    body = msgspec.msgpack.encode(mapping)
    return _MAP_HEADER.pack(_MAP_MAGIC, _MAP_VERSION, b"\0" * 6, blake3.blake3(body).digest()) + body


def _decode_map(raw: bytes) -> _FaissMap:
    if len(raw) < _MAP_HEADER.size or not raw.startswith(_MAP_MAGIC):
        raise _Damaged("map.msgpack lacks its header")
    _, version, reserved, digest = _MAP_HEADER.unpack_from(raw)
    if reserved != b"\0" * 6:
        raise _Damaged("map.msgpack has a damaged header")
    if version != _MAP_VERSION:
        raise _Damaged(f"map.msgpack has format version {version}; this reader knows {_MAP_VERSION}")
    body = raw[_MAP_HEADER.size :]
    if blake3.blake3(body).digest() != digest:
        raise _Damaged("map.msgpack fails its BLAKE3 check")
    try:
        mapping = msgspec.msgpack.decode(body, type=_FaissMap)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise _Damaged(f"map.msgpack does not decode ({error})") from error
    parameters = (mapping.m, mapping.ef_construction, mapping.ef_search)
    if mapping.quantizer not in _QUANTIZERS:
        raise _Damaged(f"map.msgpack names an unknown quantizer {mapping.quantizer[:16]!r}")
    if not 1 <= mapping.ndim <= limits.vector_dimensions_max or not all(
            1 <= value <= _HNSW_PARAMETER_MAX for value in parameters) or mapping.rows < 0:
        raise _Damaged(f"map.msgpack holds impossible parameters (ndim {mapping.ndim}, HNSW {parameters})")
    rows = [row for _, row, _ in mapping.items]
    if (len(set(rows)) != len(rows) or len({block_id for block_id, _, _ in mapping.items}) != len(rows)
            or any(not 0 <= row < mapping.rows for row in rows)):
        raise _Damaged("map.msgpack names a row or block id twice, or a row outside its range")
    return mapping


def _verified_bytes(path: Path, size: int, digest: bytes) -> bytes:
    """The whole file, once its size and BLAKE3 digest match what the map recorded."""
    actual = path.stat().st_size
    if actual != size:
        raise _Damaged(f"{path.name} is {actual} bytes, its map says {size}")
    raw = path.read_bytes()
    if len(raw) != size or _digest(raw) != digest:
        raise _Damaged(f"{path.name} fails its BLAKE3 check")
    return raw


def _digest(data: bytes) -> bytes:
    return blake3.blake3(data, max_threads=blake3.blake3.AUTO).digest()


def _file_digest(path: Path) -> bytes:
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    hasher.update_mmap(path)
    return hasher.digest()


def _grown(array: np.ndarray, length: int) -> np.ndarray:
    """``array`` with at least ``length`` rows, doubling (amortised O(1) per row); new rows zero."""
    if length <= len(array):
        return array
    grown = np.zeros((max(length, 2 * len(array)), *array.shape[1:]), dtype=array.dtype)
    grown[: len(array)] = array
    return grown


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Selector:
    """A faiss bitmap selector (bit ``row % 8`` of byte ``row // 8``); it holds the array faiss reads
    through a raw pointer, so faiss sees changes made to it in place."""

    def __init__(self, bitmap: np.ndarray) -> None:
        self.bitmap = bitmap
        faiss = _faiss()
        self.selector = faiss.IDSelectorBitmap(len(self.bitmap), faiss.swig_ptr(self.bitmap))


class FaissVectorIndex(VectorIndex):
    """HNSW cosine index (faiss, scalar-quantised walk, float32 ranking) with block-id rows and string
    filters, persisted on flush. ``exact_rows_max`` bounds the index size (in rows) that is scanned
    exactly instead of walked."""

    capabilities = Capabilities(durable=True, shared_between_processes=False, filtered_search=True)

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        m: int = HNSW_M,
        ef_construction: int = HNSW_EF_CONSTRUCTION,
        ef_search: int = HNSW_EF_SEARCH,
        quantizer: str = QUANTIZER,
        exact_rows_max: int = EXACT_ROWS_MAX,
    ) -> None:
        if quantizer not in _QUANTIZERS:
            raise ArgumentValueError(f"quantizer must be one of {sorted(_QUANTIZERS)}, not {quantizer!r}")
        for name, value in (("m", m), ("ef_construction", ef_construction), ("ef_search", ef_search)):
            if not isinstance(value, int) or not 1 <= value <= _HNSW_PARAMETER_MAX:
                raise ArgumentValueError(f"{name} must be 1..{_HNSW_PARAMETER_MAX}, not {value!r}")
        self.directory = Path(directory)
        self.parameters = (m, ef_construction, ef_search)
        self._quantizer_for_new = quantizer
        self.quantizer = quantizer
        self.exact_rows_max = exact_rows_max
        self._lock = threading.Lock()
        self._reset()
        self._generation = 0
        self._dirty = False
        self._closed = False
        self.converted_from_usearch = False
        """True when this open converted a generation written by the usearch index."""
        self.damage: str | None = None
        """What was wrong with the persisted index when it was found damaged and set aside (the index
        then starts empty and must be rebuilt from the blocks); None when it loaded intact."""
        try:
            self._load()
        except OSError as error:
            raise BackendError(f"cannot open vector index {self.directory}: {error.strerror}") from error

    def _reset(self) -> None:
        self._index: Any = None  # a faiss.IndexHNSWSQ once the dimension is known
        self._ndim: int | None = None
        self._matrix = np.zeros((0, 0), dtype=np.float32)  # float32 unit vector of each row
        self._live = np.zeros(0, dtype=bool)
        self._live_bits = np.zeros(0, dtype=np.uint8)  # _live packed, for the walk's selector
        self._live_selector: _Selector | None = None  # over _live_bits; made again when they move
        self._rows = 0  # rows in the graph, tombstones included
        self._row_of: dict[str, int] = {}
        self._block_of: list[str | None] = []  # None: a tombstone
        self._attributes: list[dict[str, str]] = []
        self._postings: dict[tuple[str, str], set[int]] = {}
        self._selectors: dict[Any, _Selector] = {}  # cached per filter until the rows change

    # ---- persistence ---------------------------------------------------------------------------

    def _load(self) -> None:
        """Load the generation CURRENT names (converting a usearch one); damage never makes opening
        fail (see :class:`maif.storage.vectors.UsearchVectorIndex` for the rules, which are the same)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        current = self.directory / "CURRENT"
        generations = sorted(path.name for path in self.directory.glob("gen-*"))
        name: str | None = None
        try:
            if not current.exists():
                if generations:
                    raise _Damaged(f"CURRENT is missing but {', '.join(generations[:3])} exist")
                return
            raw_name = current.read_bytes()[:64].decode("ascii", "replace").strip()
            if not raw_name.startswith("gen-") or not raw_name[4:].isdigit():
                raise _Damaged(f"CURRENT names no generation ({raw_name[:40]!r})")
            name = raw_name
            if (self.directory / name / "index.usearch").exists() and not (
                    self.directory / name / "index.faiss").exists():
                self._convert_usearch()
                return
            self._load_generation(self.directory / name)
        except PermissionError:
            raise
        except Exception as error:  # noqa: BLE001 - faiss raises RuntimeError, msgspec, numpy ...: all damage
            reason = str(error) if isinstance(error, _Damaged) else f"{type(error).__name__}: {error}"
            self._set_aside(f"vector index {self.directory / (name or 'CURRENT')} is damaged: {reason}",
                            name or "unnamed", generations)
            return
        self._generation = int(name[4:])

    def _set_aside(self, damage: str, label: str, generations: list[str]) -> None:
        self.damage = damage
        self._start_empty()
        # New generations are numbered past every one seen, evidence or not.
        self._generation = max((int(gen[4:]) for gen in generations if gen[4:].isdigit()), default=0)
        self._quarantine(label)
        _log.warning("%s; it was set aside and the index starts empty", damage)

    def _convert_usearch(self) -> None:
        """Re-add a usearch generation's vectors here and flush them as a new faiss generation. The
        usearch index checks the generation itself (and quarantines it when damaged)."""
        legacy = UsearchVectorIndex(self.directory)
        legacy._closed = True  # never flushed: its generation is replaced by ours below
        self._generation = legacy._generation
        if legacy.damage is not None:
            self.damage = legacy.damage
            self._start_empty()
            return
        items = []
        for block_id, key in legacy._key_of.items():
            if legacy._exact is not None:
                vector = legacy._exact.of(np.array([key], dtype=np.int64))[0]
            else:
                assert legacy._index is not None
                vector = np.asarray(legacy._index.get(key), dtype=np.float32).reshape(-1)
            items.append((block_id, unit_vector(check_vector(vector)), legacy._attributes[key]))
        if items:
            self._add_locked(items)
        self._dirty = True
        self._flush_locked()
        self.converted_from_usearch = True
        _log.info("vector index %s: converted %d vectors from usearch to faiss", self.directory, len(items))

    def _load_generation(self, generation: Path) -> None:
        map_path = generation / "map.msgpack"
        size = map_path.stat().st_size
        if size > limits.vector_map_bytes_max:
            raise _Damaged(f"map.msgpack is {size} bytes, above limits.vector_map_bytes_max")
        mapping = _decode_map(map_path.read_bytes())
        expected = mapping.rows * mapping.ndim * 4
        if mapping.exact_bytes != expected:
            raise _Damaged(f"map.msgpack records {mapping.exact_bytes} bytes of float32 rows, not {expected}")
        exact = _verified_bytes(generation / "vectors.f32", mapping.exact_bytes, mapping.exact_digest)
        raw = _verified_bytes(generation / "index.faiss", mapping.index_bytes, mapping.index_digest)
        faiss = _faiss()
        index = faiss.deserialize_index(np.frombuffer(raw, dtype=np.uint8))  # owned, already downcast
        if not isinstance(index, faiss.IndexHNSWSQ):
            raise _Damaged(f"index.faiss holds a {type(index).__name__}, not an IndexHNSWSQ")
        shape = (index.d, index.ntotal, index.metric_type)
        if shape != (mapping.ndim, mapping.rows, faiss.METRIC_INNER_PRODUCT):
            raise _Damaged(f"index.faiss holds {index.ntotal} {index.d}-dimensional rows, its map says "
                           f"{mapping.rows} of {mapping.ndim}")
        storage: Any = faiss.downcast_index(index.storage)  # an IndexScalarQuantizer
        if storage.sq.qtype != _quantizer_type(mapping.quantizer):
            raise _Damaged(f"index.faiss is not quantised as its map says ({mapping.quantizer})")
        self._ndim, self._index, self._rows = mapping.ndim, index, mapping.rows
        self._matrix = _grown(np.frombuffer(exact, dtype="<f4").astype(np.float32).reshape(
            mapping.rows, mapping.ndim), max(mapping.rows, _ROWS_MIN))
        self._reserve(len(self._matrix))
        self._block_of = [None] * mapping.rows
        self._attributes = [{}] * mapping.rows
        for block_id, row, attributes in mapping.items:
            self._place(block_id, row, attributes)
        self.parameters = (mapping.m, mapping.ef_construction, mapping.ef_search)
        index.hnsw.efSearch = mapping.ef_search
        self.quantizer = mapping.quantizer

    def _start_empty(self) -> None:
        self._reset()
        self.quantizer = self._quantizer_for_new
        self._dirty = True  # the next flush persists the state (the rebuild, or "empty")

    def _quarantine(self, label: str) -> None:
        """Move CURRENT and every generation into ``quarantine/<label>-<UTC time>/`` (evidence), keeping
        the newest :data:`QUARANTINE_KEEP`. Best effort: the next flush replaces them anyway."""
        quarantine = self.directory / "quarantine"
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        try:
            target = quarantine / f"{label}-{stamp}"
            target.mkdir(parents=True)
            for name in ("CURRENT", "CURRENT.tmp"):
                if (self.directory / name).exists():
                    os.replace(self.directory / name, target / name)
            for generation in self.directory.glob("gen-*"):
                os.replace(generation, target / generation.name)
            _fsync_path(self.directory)
            kept = sorted(quarantine.iterdir(), key=lambda path: path.name.rsplit("-", 1)[-1])
            for old in kept[:-QUARANTINE_KEEP]:
                shutil.rmtree(old, ignore_errors=True)
        except OSError as error:
            _log.warning("could not move the damaged vector index %s aside: %s", self.directory, error)

    def _new_index(self, ndim: int) -> Any:
        m, ef_construction, ef_search = self.parameters
        faiss = _faiss()
        index = faiss.IndexHNSWSQ(ndim, _quantizer_type(self.quantizer), m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
        return index

    def _flush_locked(self) -> None:
        if self._dirty and self._index is None:  # cleared: persist "empty" by naming no generation
            (self.directory / "CURRENT").unlink(missing_ok=True)
            _fsync_path(self.directory)
            for old in self.directory.glob("gen-*"):
                shutil.rmtree(old, ignore_errors=True)
            self._dirty = False
            return
        if not self._dirty or self._index is None or self._ndim is None:
            return
        if self._rows - len(self._row_of) > len(self._row_of):
            self._compact()
        generation = self._generation + 1
        target = self.directory / f"gen-{generation}"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        index_path, exact_path, map_path = (target / name for name in (
            "index.faiss", "vectors.f32", "map.msgpack"))
        # Written straight from memory (no copies of a graph and rows that run to hundreds of MB), then
        # digested from the files.
        _faiss().write_index(self._index, str(index_path))
        np.ascontiguousarray(self._matrix[: self._rows], dtype="<f4").tofile(exact_path)
        items = [(block_id, row, self._attributes[row]) for block_id, row in self._row_of.items()]
        mapping = _FaissMap(
            self._ndim, self._rows, *self.parameters, quantizer=self.quantizer, items=items,
            index_bytes=index_path.stat().st_size, index_digest=_file_digest(index_path),
            exact_bytes=exact_path.stat().st_size, exact_digest=_file_digest(exact_path),
        )
        map_path.write_bytes(_encode_map(mapping))
        for path in (index_path, exact_path, map_path, target):
            _fsync_path(path)
        write_atomically(self.directory / "CURRENT", f"gen-{generation}\n".encode(), mode=0o666)
        for old in self.directory.glob("gen-*"):
            if old.name != target.name:
                shutil.rmtree(old, ignore_errors=True)
        self._generation = generation
        self._dirty = False

    def _compact(self) -> None:
        """Rebuild the graph from the live rows (tombstones outnumber them)."""
        live = [(block_id, self._matrix[row].copy(), self._attributes[row])
                for block_id, row in sorted(self._row_of.items(), key=lambda item: item[1])]
        ndim = self._ndim
        self._reset()
        self._ndim = ndim
        if live:
            self._add_locked(live)
        else:
            assert ndim is not None
            self._index, self._matrix = self._new_index(ndim), np.zeros((_ROWS_MIN, ndim), dtype=np.float32)
            self._reserve(_ROWS_MIN)

    # ---- the VectorIndex API -------------------------------------------------------------------

    async def add(self, items: Sequence[tuple[str, np.ndarray, Mapping[str, str]]]) -> None:
        checked = [
            (block_id, unit_vector(check_vector(vector)), check_attributes(attributes, "vector attributes"))
            for block_id, vector, attributes in items
        ]
        if checked:
            await asyncio.to_thread(self._locked, self._add_locked, checked)

    def _add_locked(self, items: list[tuple[str, np.ndarray, dict[str, str]]]) -> None:
        if self._ndim is None or self._index is None:
            self._ndim = self._ndim or items[0][1].shape[0]
            self._index = self._new_index(self._ndim)
            self._matrix = np.zeros((_ROWS_MIN, self._ndim), dtype=np.float32)
            self._reserve(_ROWS_MIN)
        for _, vector, _ in items:
            check_vector(vector, self._ndim)
        # The last vector of a block id wins, also within one call: each id gets one new row.
        latest = {block_id: (vector, attributes) for block_id, vector, attributes in items}
        for block_id in latest:
            self._forget(block_id)
        vectors = np.stack([vector for vector, _ in latest.values()])
        first = self._rows
        self._reserve(first + len(vectors))
        self._matrix[first : first + len(vectors)] = vectors
        # OpenMP's thread count is per calling thread: this only sets the worker thread's.
        _faiss().omp_set_num_threads(_CPUS if len(vectors) >= _PARALLEL_ADD_MIN else 1)
        self._index.add(vectors)
        self._rows = first + len(vectors)
        self._block_of.extend([None] * len(vectors))
        self._attributes.extend([{}] * len(vectors))
        for row, (block_id, (_, attributes)) in enumerate(latest.items(), start=first):
            self._place(block_id, row, attributes)
        self._dirty = True

    def _reserve(self, rows: int) -> None:
        """Room for ``rows`` rows in the float32 matrix and the live-row masks (new rows: not live)."""
        self._matrix = _grown(self._matrix, rows)
        self._live = _grown(self._live, len(self._matrix))
        if len(self._live_bits) * 8 < len(self._live):
            self._live_bits = _grown(self._live_bits, (len(self._live) + 7) // 8)
            self._live_selector = None  # faiss would read the old array

    def _place(self, block_id: str, row: int, attributes: dict[str, str]) -> None:
        self._row_of[block_id], self._block_of[row], self._attributes[row] = row, block_id, attributes
        self._live[row] = True
        self._live_bits[row >> 3] |= 1 << (row & 7)
        for field in attributes.items():
            self._postings.setdefault(field, set()).add(row)
        self._selectors.clear()

    def _forget(self, block_id: str) -> bool:
        """Make ``block_id``'s row a tombstone; False when it has none."""
        row = self._row_of.pop(block_id, None)
        if row is None:
            return False
        self._block_of[row] = None
        self._live[row] = False
        self._live_bits[row >> 3] &= 0xFF ^ (1 << (row & 7))
        for field in self._attributes[row].items():
            rows = self._postings[field]
            rows.discard(row)
            if not rows:
                del self._postings[field]
        self._attributes[row] = {}
        self._selectors.clear()
        self._dirty = True
        return True

    async def search(
        self,
        query: np.ndarray,
        limit: int,
        *,
        score_threshold: float | None = None,
        filters: Mapping[str, str] | None = None,
    ) -> list[tuple[str, float]]:
        check_search_limit(limit)
        wanted = check_attributes(filters, "search filters")
        vector = unit_vector(check_vector(query))
        if not wanted and self._lock.acquire(blocking=False):
            # An unfiltered search of the in-memory graph takes a few hundred microseconds, less than the
            # hop to a worker thread and back: it runs on the event loop unless a flush or an add holds
            # the index. A filtered one may build a selector or scan thousands of rows: a worker thread.
            try:
                result: list[tuple[str, float]] = self._guarded(
                    self._search_locked, vector, limit, score_threshold, wanted)
                return result
            finally:
                self._lock.release()
        return await asyncio.to_thread(
            self._locked, self._search_locked, vector, limit, score_threshold, wanted)

    def _search_locked(
        self, vector: np.ndarray, limit: int, score_threshold: float | None, wanted: dict[str, str]
    ) -> list[tuple[str, float]]:
        if self._index is None or limit == 0 or not self._row_of:
            return []
        check_dimensions(vector, self._ndim)  # checked in search(); the dimension is read under the lock
        if wanted:
            rows = self._rows_matching(wanted)
            if not rows:
                return []
            if len(rows) <= max(self.exact_rows_max, self._rows // _FILTER_GRAPH_FRACTION):
                return self._exact(vector, np.fromiter(rows, dtype=np.int64, count=len(rows)), limit,
                                   score_threshold)
            key: Any = tuple(sorted(wanted.items()))
        elif self._rows <= self.exact_rows_max:
            return self._exact(vector, np.flatnonzero(self._live[: self._rows]), limit, score_threshold)
        else:
            rows, key = None, None if len(self._row_of) == self._rows else ()
        found = self._walk(vector, limit, key, rows)
        expected = min(limit, len(rows) if rows is not None else len(self._row_of))
        if len(found) < expected:  # the walk ran out of matching candidates: scan what matches
            every = (np.fromiter(rows, dtype=np.int64, count=len(rows)) if rows is not None
                     else np.flatnonzero(self._live[: self._rows]))
            return self._exact(vector, every, limit, score_threshold)
        return self._hits(found, self._matrix[found] @ vector, limit, score_threshold)

    def _rows_matching(self, wanted: dict[str, str]) -> set[int]:
        postings = sorted((self._postings.get(field, set()) for field in wanted.items()), key=len)
        return postings[0].intersection(*postings[1:]) if len(postings) > 1 else postings[0]

    def _walk(self, vector: np.ndarray, limit: int, key: Any, rows: set[int] | None) -> np.ndarray:
        """The graph's candidates (rows, tombstones and non-matching rows excluded) for re-ranking."""
        faiss = _faiss()
        fetch = min(limit * _RERANK_FACTOR, self._rows)
        parameters, selector, widening = None, None, 1
        if key == ():  # every live row: the bitmap kept up to date by _place and _forget
            if self._live_selector is None:
                self._live_selector = _Selector(self._live_bits)
            selector = self._live_selector
        elif key is not None and rows is not None:
            selector = self._selectors.get(key)
            if selector is None:
                mask = np.zeros(self._rows, dtype=bool)
                mask[np.fromiter(rows, dtype=np.int64, count=len(rows))] = True
                selector = self._selectors[key] = _Selector(np.packbits(mask, bitorder="little"))
            # A walk that may keep only 1 node in n fills its result list n times slower: widen it (up
            # to _FILTER_EF_FACTOR_MAX times) so a filtered search finds about what an unfiltered one does.
            widening = max(1, min(_FILTER_EF_FACTOR_MAX, self._rows // len(rows)))
        if selector is not None:
            parameters = faiss.SearchParametersHNSW(
                sel=selector.selector, efSearch=self._index.hnsw.efSearch * widening)
        distances = np.empty((1, fetch), dtype=np.float32)
        labels = np.empty((1, fetch), dtype=np.int64)
        self._index.search_c(1, faiss.swig_ptr(vector), fetch, faiss.swig_ptr(distances),
                             faiss.swig_ptr(labels), parameters)
        found: np.ndarray = labels[0][labels[0] >= 0]
        return found

    def _exact(self, vector: np.ndarray, rows: np.ndarray, limit: int,
               score_threshold: float | None) -> list[tuple[str, float]]:
        scores = self._matrix[rows] @ vector
        if len(rows) > limit:
            best = np.argpartition(-scores, limit - 1)[:limit]
            rows, scores = rows[best], scores[best]
        return self._hits(rows, scores, limit, score_threshold)

    def _hits(self, rows: np.ndarray, scores: np.ndarray, limit: int,
              score_threshold: float | None) -> list[tuple[str, float]]:
        order = np.lexsort((rows, -scores))  # best first; ties by row, so answers are deterministic
        hits: list[tuple[str, float]] = []
        for row, score in zip(rows[order].tolist(), scores[order].tolist(), strict=True):
            if score_threshold is not None and score < score_threshold:
                break
            block_id = self._block_of[row]
            assert block_id is not None, "a tombstone passed the selector"
            hits.append((block_id, score))
            if len(hits) == limit:
                break
        return hits

    async def remove(self, block_ids: Sequence[str]) -> int:
        if not any(block_id in self._row_of for block_id in block_ids):
            return 0  # the applier asks for every non-embedding block: answer on the loop when idle
        removed: int = await asyncio.to_thread(self._locked, self._remove_locked, list(block_ids))
        return removed

    def _remove_locked(self, block_ids: list[str]) -> int:
        return sum(self._forget(block_id) for block_id in block_ids)

    async def clear(self) -> None:
        await asyncio.to_thread(self._locked, self._start_empty)

    async def flush(self) -> None:
        await asyncio.to_thread(self._locked, self._flush_locked)

    def set_expansion_search(self, expansion_search: int) -> None:
        """Walk the graph wider (better recall) or narrower (faster) from now on; persisted with the
        next generation."""
        if not isinstance(expansion_search, int) or not 1 <= expansion_search <= _HNSW_PARAMETER_MAX:
            raise ArgumentValueError(
                f"expansion_search must be 1..{_HNSW_PARAMETER_MAX}, not {expansion_search!r}")
        with self._lock:
            self.parameters = (*self.parameters[:2], expansion_search)
            if self._index is not None:
                self._index.hnsw.efSearch = expansion_search
                self._dirty = True

    async def count(self) -> int:
        return len(self._row_of)

    @property
    def dimensions(self) -> int | None:
        return self._ndim

    @property
    def tombstones(self) -> int:
        """Rows of removed or overwritten vectors still in the graph (until a compacting flush)."""
        return self._rows - len(self._row_of)

    async def close(self) -> None:
        if self._closed:
            return
        try:
            await self.flush()
        finally:
            self._closed = True

    def _locked(self, function: Any, *args: Any) -> Any:
        with self._lock:
            return self._guarded(function, *args)

    def _guarded(self, function: Any, *args: Any) -> Any:
        """``function(*args)`` with faiss' and the file system's failures as BackendError (the caller
        holds the lock)."""
        if self._closed:
            raise StoreClosedError("vector index is closed")
        try:
            return function(*args)
        except OSError as error:
            raise BackendError(f"vector index {self.directory} failed: {error.strerror}") from error
        except RuntimeError as error:  # faiss reports its failures as RuntimeError
            raise BackendError(f"vector index {self.directory} failed: {error}") from error


__all__ = ["EXACT_ROWS_MAX", "HNSW_EF_SEARCH", "HNSW_M", "FaissVectorIndex"]

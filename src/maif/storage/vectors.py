"""Embeddings: decode them from EMBEDDING blocks; and the usearch HNSW index MAIF used until ADR 0091.

The embedded default index is now :class:`maif.storage.faiss_vectors.FaissVectorIndex`; it reads the
generations :class:`UsearchVectorIndex` wrote through this class (which checks them as described below)
and converts them at open. The class stays usable on its own.

:func:`embedding_of` accepts the two payload forms MAIF has seen: little-endian float32 (optionally
described by metadata ``{"dtype": "float32", "dim": N}``) and the seed's JSON ``{"vector": [...]}``.

:class:`UsearchVectorIndex` keeps an HNSW graph (cosine metric) whose integer keys map to block ids.
New indexes store each vector quantised to int8 (:func:`quantise`) for the graph walk, beside its
float32 unit vector, on which the top ``2 x limit`` candidates are re-ranked and scored, so scores
are exact; generations written before quantisation hold float32 only and keep working as they are.
Filters (agent_id, block_type or any other string attribute) are applied by over-fetching
candidates and filtering them, widening the candidate set until enough hits match or the whole index
has been searched exactly, so a rare filter value still finds its vectors. HNSW parameters and the
dtype come from ``benchmarks/vector_bench.py`` (docs/adr/0032-hnsw-parameters.md).

Persistence: ``flush`` writes a new generation directory ``vectors/gen-<n>/`` holding the usearch
file, the id mapping and, for a quantised index, the float32 rows ``vectors.f32``; syncs them, then
atomically replaces ``vectors/CURRENT`` to name it, so a crash leaves either the old or the new
generation, never a mix. Older generations are then removed. If the directory is missing the index
starts empty and the engine's log replay rebuilds it. The map carries a BLAKE3 checksum of itself
and the sizes and BLAKE3 digests of the usearch file and the float32 rows, checked before usearch
parses a byte. The index is derived state: a damaged generation never makes opening fail; it is
moved into ``vectors/quarantine/``, the index starts empty and ``damage`` says what was wrong, so
the engine can rebuild it from the blocks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import shutil
import struct
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import blake3
import msgspec
import numpy as np

from maif import limits
from maif.errors import ArgumentValueError, BackendError, FormatError, LimitExceededError, StoreClosedError
from maif.format.block import MAIFBlock, MAIFBlockType
from maif.storage.backends.base import Capabilities, VectorIndex

if TYPE_CHECKING:  # usearch is imported when a usearch index is made: it costs 16 MB of RSS otherwise
    from usearch.index import Index

HNSW_CONNECTIVITY = 16  # ADR 0033 (stores written before keep the parameters in their maps)
HNSW_EXPANSION_ADD = 128
HNSW_EXPANSION_SEARCH = 96
VECTOR_DTYPE = "i8"  # how new indexes store vectors (ADR 0032): "i8" quantised, or "f32"
_VECTOR_DTYPES = ("f32", "i8")
_INT8_SCALE = 127.0
_RESCORE_FACTOR = 2  # a quantised index fetches limit x this candidates and ranks them on float32
_EXACT_ROWS_MIN = 1024
# Batches smaller than this are inserted on one thread: a single-threaded build is deterministic (the same
# graph, so the same answers, for the same inserts), and small batches (the applier's) gain little from
# more threads; a rebuild's large batches use every core.
_PARALLEL_ADD_MIN = 8192
_OVERFETCH_FACTOR = 4
_OVERFETCH_MIN = 32
_JSON_BYTES_PER_DIMENSION_MAX = 32
_PRINTABLE_ASCII = bytes(range(0x20, 0x7F)) + b"\t\n\r"
QUARANTINE_KEEP = 3  # damaged generations kept under vectors/quarantine/ as evidence; older ones go
_MAP_MAGIC = b"MAIFVMAP"
_MAP_VERSION = 1
_MAP_HEADER = struct.Struct("<8sH6s32s")  # magic, version, reserved, BLAKE3 of the msgpack body
_HNSW_PARAMETER_MAX = 1 << 16

_log = logging.getLogger(__name__)


def embedding_of(block: MAIFBlock) -> np.ndarray | None:
    """The block's embedding as a float32 vector; None for a block that is not an EMBEDDING.

    Without ``{"dtype": "float32"}`` metadata, a payload that is all printable text and not JSON is
    refused rather than read as float32 (``b"not a vector"`` would otherwise be three floats).

    Raises FormatError for an EMBEDDING payload that is neither form, has a dimension above
    ``limits.vector_dimensions_max``, non-finite values, or zero norm (cosine is undefined).
    """
    if block.block_type is not MAIFBlockType.EMBEDDING:
        return None
    declared_dim = block.metadata.get("dim")
    if block.metadata.get("dtype") == "float32":
        vector = _float32_payload(block.data)
    elif block.data.lstrip()[:1] != b"{":
        if _looks_like_text(block.data):
            raise FormatError(
                'embedding payload looks like text, not float32 or JSON {"vector": [...]}',
                hint='set metadata {"dtype": "float32"} if these bytes really are float32',
            )
        vector = _float32_payload(block.data)
    else:
        try:
            vector = _json_payload(block.data)
        except FormatError:
            if len(block.data) % 4 or _looks_like_text(block.data):  # broken JSON is not float32 either
                raise
            vector = _float32_payload(block.data)  # float32 bytes that happen to start with "{"
    if declared_dim is not None and declared_dim != vector.shape[0]:
        raise FormatError(
            f"embedding has {vector.shape[0]} dimensions but its metadata declares {declared_dim}"
        )
    return check_vector(vector)


def _looks_like_text(data: bytes) -> bool:
    """Printable ASCII throughout: real float32 embeddings hold zero, sign and 0x3F/0xBF exponent bytes,
    so an all-text payload without a declared dtype is almost surely a mistake, not a vector."""
    return len(data) > 0 and not data.translate(None, _PRINTABLE_ASCII)


def _float32_payload(data: bytes) -> np.ndarray:
    if len(data) % 4:
        raise FormatError(f"float32 embedding payload length {len(data)} is not a multiple of 4")
    if len(data) // 4 > limits.vector_dimensions_max:
        raise LimitExceededError("embedding dimensions", len(data) // 4, limits.vector_dimensions_max)
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def _json_payload(data: bytes) -> np.ndarray:
    size_max = limits.vector_dimensions_max * _JSON_BYTES_PER_DIMENSION_MAX
    if len(data) > size_max:
        raise LimitExceededError("JSON embedding payload size", len(data), size_max)
    try:
        decoded = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:  # RecursionError: deep nesting
        raise FormatError('embedding payload is neither float32 bytes nor JSON {"vector": [...]}') from error
    values = decoded.get("vector") if isinstance(decoded, dict) else None
    if not isinstance(values, list) or not all(
        isinstance(value, int | float) and not isinstance(value, bool) for value in values
    ):
        raise FormatError('JSON embedding must be an object with a "vector" list of numbers')
    try:
        return np.asarray(values, dtype=np.float32)
    except OverflowError as error:  # an integer beyond the float range
        raise FormatError("JSON embedding holds a number beyond the float32 range") from error


def check_vector(vector: np.ndarray, ndim: int | None = None) -> np.ndarray:
    """A finite, non-zero, 1-D float32 vector within the dimension limit (and of ``ndim`` if given)."""
    array = np.asarray(vector, dtype=np.float32)
    if array.ndim != 1 or array.shape[0] == 0:
        raise FormatError(f"a vector must be one-dimensional and non-empty, got shape {array.shape}")
    if array.shape[0] > limits.vector_dimensions_max:
        raise LimitExceededError("vector dimensions", array.shape[0], limits.vector_dimensions_max)
    if ndim is not None:
        check_dimensions(array, ndim)
    if not np.isfinite(array).all():
        raise FormatError("vector holds NaN or infinite values")
    as_float64 = array.astype(np.float64)
    if as_float64.dot(as_float64) == 0.0:  # float64 squares of float32 values neither overflow nor vanish
        raise FormatError("vector has zero norm; cosine similarity is undefined for it")
    return array


def check_search_limit(limit: object) -> int:
    """A search's ``limit``: a non-negative integer (not a bool) within ``limits.engine_search_limit_max``."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise FormatError(f"search limit must be a non-negative integer, got {limit!r}")
    if limit > limits.engine_search_limit_max:
        raise LimitExceededError("search limit", limit, limits.engine_search_limit_max)
    return limit


def check_dimensions(vector: np.ndarray, ndim: int | None) -> None:
    if vector.shape[0] != ndim:
        raise FormatError(
            f"vector has {vector.shape[0]} dimensions; this index holds {ndim}-dimensional vectors")


def unit_vector(vector: np.ndarray) -> np.ndarray:
    """The vector scaled to length 1 (computed in float64), so float32 distance math cannot overflow."""
    as_float64 = vector.astype(np.float64)
    unit: np.ndarray = (as_float64 / math.sqrt(as_float64.dot(as_float64))).astype(np.float32)
    return unit


def check_attributes(attributes: Mapping[str, str] | None, what: str) -> dict[str, str]:
    """String-to-string attributes or filters, at most ``limits.vector_filter_fields_max`` of them."""
    if attributes is None:
        return {}
    if len(attributes) > limits.vector_filter_fields_max:
        raise LimitExceededError(f"{what} fields", len(attributes), limits.vector_filter_fields_max)
    if not all(isinstance(key, str) and isinstance(value, str) for key, value in attributes.items()):
        raise FormatError(f"{what} must map strings to strings")
    return dict(attributes)


def matches(attributes: Mapping[str, str], filters: Mapping[str, str]) -> bool:
    return all(attributes.get(key) == value for key, value in filters.items())


class _VectorMap(msgspec.Struct):
    """The persisted id mapping of one generation, with the size and BLAKE3 digest of its usearch file
    (None in generations written before they were recorded)."""

    ndim: int
    next_key: int
    connectivity: int
    expansion_add: int
    expansion_search: int
    items: list[tuple[str, int, dict[str, str]]]
    index_bytes: int | None = None
    index_digest: bytes | None = None
    dtype: str = "f32"  # generations written before quantisation stored float32
    exact_bytes: int | None = None  # vectors.f32: the float32 rows of an "i8" index, in items order
    exact_digest: bytes | None = None


class _Damaged(Exception):
    """A generation's contents are damaged (raised and caught inside :meth:`UsearchVectorIndex._load`)."""


def _encode_map(mapping: _VectorMap) -> bytes:
    body = msgspec.msgpack.encode(mapping)
    return _MAP_HEADER.pack(_MAP_MAGIC, _MAP_VERSION, b"\0" * 6, blake3.blake3(body).digest()) + body


def _decode_map(raw: bytes) -> _VectorMap:
    """The map, its checksum verified; a map from before the checksum existed is plain msgpack."""
    body = raw
    if raw.startswith(_MAP_MAGIC):
        if len(raw) < _MAP_HEADER.size:
            raise _Damaged("map.msgpack is cut short in its header")
        _, version, reserved, digest = _MAP_HEADER.unpack_from(raw)
        if reserved != b"\0" * 6:
            raise _Damaged("map.msgpack has a damaged header")
        if version != _MAP_VERSION:
            raise _Damaged(f"map.msgpack has format version {version}; this reader knows {_MAP_VERSION}")
        body = raw[_MAP_HEADER.size :]
        if blake3.blake3(body).digest() != digest:
            raise _Damaged("map.msgpack fails its BLAKE3 check")
    try:
        mapping = msgspec.msgpack.decode(body, type=_VectorMap)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise _Damaged(f"map.msgpack does not decode ({error})") from error
    parameters = (mapping.connectivity, mapping.expansion_add, mapping.expansion_search)
    if mapping.dtype not in _VECTOR_DTYPES:
        raise _Damaged(f"map.msgpack names an unknown vector dtype {mapping.dtype[:16]!r}")
    if not 1 <= mapping.ndim <= limits.vector_dimensions_max or not all(
            1 <= value <= _HNSW_PARAMETER_MAX for value in parameters):
        raise _Damaged(f"map.msgpack holds impossible parameters (ndim {mapping.ndim}, HNSW {parameters})")
    keys = [key for _, key, _ in mapping.items]
    if (len(set(keys)) != len(keys) or len({block_id for block_id, _, _ in mapping.items}) != len(keys)
            or any(not 0 < key < mapping.next_key for key in keys)):
        raise _Damaged("map.msgpack names a key or block id twice, or a key outside its range")
    return mapping


def quantise(unit_vectors: np.ndarray, dtype: str) -> np.ndarray:
    """Unit vectors (one per row, or one 1-D vector) in the form an index of ``dtype`` stores.

    For "i8", each vector is scaled so its largest component is +-127 and rounded: cosine does not
    depend on a vector's length, so the per-vector scale needs no storing, and using the whole int8
    range keeps the rounding error per component within 0.5/127 of the largest one. usearch compares
    int8 vectors with integer dot products (a quarter of float32's memory traffic); the graph walk
    uses them and the final ranking uses the float32 vectors (:class:`_ExactVectors`).
    """
    if dtype == "f32":
        return unit_vectors
    largest = np.max(np.abs(unit_vectors), axis=-1, keepdims=True)  # > 0: unit vectors are non-zero
    quantised: np.ndarray = np.rint(unit_vectors * (_INT8_SCALE / largest)).astype(np.int8)
    return quantised


class _ExactVectors:
    """The float32 unit vectors of a quantised index, one row per usearch key: its candidates are
    ranked on these, so near-ties the int8 rounding would blur keep their exact order and score.

    ``row_of_key`` is an array indexed by key (-1: none), so a search maps its candidates to rows in
    one numpy step; it grows with the keys issued, 8 bytes each, like the index itself."""

    def __init__(self, ndim: int, matrix: np.ndarray | None = None, keys: np.ndarray | None = None) -> None:
        self.matrix = matrix if matrix is not None else np.empty((_EXACT_ROWS_MIN, ndim), dtype=np.float32)
        self.row_of_key = np.full(_EXACT_ROWS_MIN, -1, dtype=np.int64)
        self.free_rows: list[int] = []
        self.rows_used = 0
        if keys is not None and len(keys):
            self.row_of_key = _grown(self.row_of_key, int(keys.max()) + 1, -1)
            self.row_of_key[keys] = np.arange(len(keys))
            self.rows_used = len(keys)

    def put(self, keys: Sequence[int], vectors: np.ndarray) -> None:
        rows = []
        for _ in keys:
            if self.free_rows:
                rows.append(self.free_rows.pop())
            else:
                rows.append(self.rows_used)
                self.rows_used += 1
        self.matrix = _grown(self.matrix, self.rows_used)
        self.row_of_key = _grown(self.row_of_key, max(keys) + 1, -1)
        self.row_of_key[list(keys)] = rows
        self.matrix[rows] = vectors

    def drop(self, key: int) -> None:
        self.free_rows.append(int(self.row_of_key[key]))
        self.row_of_key[key] = -1

    def of(self, keys: np.ndarray) -> np.ndarray:
        rows: np.ndarray = self.matrix[self.row_of_key[keys]]
        return rows


def _grown(array: np.ndarray, length: int, fill: int | None = None) -> np.ndarray:
    """``array`` with at least ``length`` rows, doubling (amortised O(1) per row); new rows ``fill``."""
    if length <= len(array):
        return array
    grown = np.empty((max(length, 2 * len(array)), *array.shape[1:]), dtype=array.dtype)
    grown[: len(array)] = array
    if fill is not None:
        grown[len(array) :] = fill
    return grown


def _file_digest(path: Path) -> bytes:
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    hasher.update_mmap(path)
    return hasher.digest()


class UsearchVectorIndex(VectorIndex):
    """HNSW cosine index (usearch; vectors stored as int8 or float32) with block-id keys and string
    filters, persisted on flush.

    ``dtype`` is how a new index stores vectors; a persisted generation keeps the dtype it was written
    with (float32 for generations from before quantisation) until the index is cleared and rebuilt.
    """

    capabilities = Capabilities(durable=True, shared_between_processes=False, filtered_search=False)

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        connectivity: int = HNSW_CONNECTIVITY,
        expansion_add: int = HNSW_EXPANSION_ADD,
        expansion_search: int = HNSW_EXPANSION_SEARCH,
        dtype: str = VECTOR_DTYPE,
    ) -> None:
        if dtype not in _VECTOR_DTYPES:
            raise ArgumentValueError(f"vector dtype must be one of {_VECTOR_DTYPES}, not {dtype!r}")
        self.directory = Path(directory)
        self.parameters = (connectivity, expansion_add, expansion_search)
        self._dtype_for_new = dtype
        self.dtype = dtype
        """How the current index stores vectors: "i8" (quantised) or "f32"."""
        self._lock = threading.Lock()
        self._index: Index | None = None
        self._ndim: int | None = None
        self._key_of: dict[str, int] = {}
        self._id_of: dict[int, str] = {}
        self._attributes: dict[int, dict[str, str]] = {}
        self._exact: _ExactVectors | None = None  # only for a quantised index
        self._next_key = 1
        self._generation = 0
        self._dirty = False
        self._closed = False
        self.damage: str | None = None
        """What was wrong with the persisted index when it was found damaged and set aside (the index
        then starts empty and must be rebuilt from the blocks); None when it loaded intact."""
        try:
            self._load()
        except OSError as error:
            raise BackendError(f"cannot open vector index {self.directory}: {error.strerror}") from error

    # ---- persistence ---------------------------------------------------------------------------

    def _load(self) -> None:
        """Load the generation CURRENT names.

        The index is derived state, so damaged contents never make opening fail: whatever is wrong
        (CURRENT missing while generations exist, naming nothing or a missing generation; a damaged,
        truncated or inconsistent map or usearch file; anything usearch or the decoder raises) moves
        CURRENT and the generations into ``quarantine/`` (:meth:`_quarantine`), starts empty, and says
        what was wrong in :attr:`damage`. Only a directory this process cannot use (permissions, I/O
        on the directory itself) raises, as BackendError from the constructor.
        """
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
            self._load_generation(self.directory / name)
        except PermissionError:
            raise
        except Exception as error:  # noqa: BLE001 - usearch raises RuntimeError, ValueError, ...: all damage
            reason = str(error) if isinstance(error, _Damaged) else f"{type(error).__name__}: {error}"
            self.damage = f"vector index {self.directory / (name or 'CURRENT')} is damaged: {reason}"
            self._start_empty()
            # New generations are numbered past every one seen, evidence or not.
            self._generation = max((int(gen[4:]) for gen in generations if gen[4:].isdigit()), default=0)
            self._quarantine(name or "unnamed")
            _log.warning("%s; it was set aside and the index starts empty", self.damage)
            return
        self._generation = int(name[4:])

    def _load_generation(self, generation: Path) -> None:
        map_path = generation / "map.msgpack"
        size = map_path.stat().st_size
        if size > limits.vector_map_bytes_max:
            raise _Damaged(f"map.msgpack is {size} bytes, above limits.vector_map_bytes_max")
        mapping = _decode_map(map_path.read_bytes())
        index_path = generation / "index.usearch"
        if mapping.index_digest is not None:  # usearch only ever parses bytes this class wrote
            index_size = index_path.stat().st_size
            if index_size != mapping.index_bytes:
                raise _Damaged(f"index.usearch is {index_size} bytes, its map says {mapping.index_bytes}")
            if _file_digest(index_path) != mapping.index_digest:
                raise _Damaged("index.usearch fails its BLAKE3 check")
        parameters = (mapping.connectivity, mapping.expansion_add, mapping.expansion_search)
        index = self._new_index(mapping.ndim, parameters, mapping.dtype)
        index.load(str(index_path))
        if index.ndim != mapping.ndim:
            raise _Damaged(f"index.usearch holds {index.ndim}-dimensional vectors, its map {mapping.ndim}")
        if index.dtype.name.lower() != mapping.dtype:  # usearch takes the dtype from the file it loads
            raise _Damaged(f"index.usearch holds {index.dtype.name.lower()}, its map says {mapping.dtype}")
        keys = np.fromiter((key for _, key, _ in mapping.items), dtype=np.uint64, count=len(mapping.items))
        if len(keys) and not bool(np.all(index.contains(keys))):
            raise _Damaged(f"its map names {len(keys)} vectors but index.usearch lacks some of them")
        if len(index) > len(keys):
            # Vectors no map entry names (written before overwrites within one batch were handled):
            # unreachable by search, but they broke the count check. Drop them; the next flush is clean.
            stored = np.asarray(index.keys, dtype=np.uint64)
            orphans = stored[~np.isin(stored, keys)]
            index.remove(orphans)
            self._dirty = True
            _log.info("vector index %s: dropped %d vectors no block names", generation, len(orphans))
        if len(index) != len(keys):
            raise _Damaged(f"index.usearch holds {len(index)} vectors but its map names {len(keys)}")
        if mapping.dtype != "f32":
            self._exact = _load_exact(generation / "vectors.f32", mapping, keys)
        for block_id, key, attributes in mapping.items:
            self._key_of[block_id] = key
            self._id_of[key] = block_id
            self._attributes[key] = attributes
        self._index = index
        self._ndim = mapping.ndim
        self._next_key = mapping.next_key
        self.parameters = parameters
        self.dtype = mapping.dtype

    def _start_empty(self) -> None:
        self.dtype = self._dtype_for_new
        self._index = None
        self._exact = None
        self._ndim = None
        self._key_of.clear()
        self._id_of.clear()
        self._attributes.clear()
        self._next_key = 1
        self._dirty = True  # the next flush persists the state (the rebuild, or "empty")

    def _quarantine(self, label: str) -> None:
        """Move CURRENT and every generation into ``quarantine/<label>-<UTC time>/`` (evidence for a
        post-mortem), keeping the newest :data:`QUARANTINE_KEEP` such directories. Best effort: when the
        move fails the next flush replaces CURRENT and removes the old generations anyway."""
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

    def _new_index(self, ndim: int, parameters: tuple[int, int, int] | None = None,
                   dtype: str | None = None) -> Index:
        from usearch.index import Index

        connectivity, expansion_add, expansion_search = parameters or self.parameters
        return Index(
            ndim=ndim,
            metric="cos",
            dtype=dtype or self.dtype,
            connectivity=connectivity,
            expansion_add=expansion_add,
            expansion_search=expansion_search,
        )

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
        generation = self._generation + 1
        target = self.directory / f"gen-{generation}"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        index_path, exact_path = target / "index.usearch", target / "vectors.f32"
        self._index.save(str(index_path))
        items = [(block_id, key, self._attributes[key]) for block_id, key in self._key_of.items()]
        if self._exact is not None:
            keys = np.fromiter((key for _, key, _ in items), dtype=np.int64, count=len(items))
            exact_path.write_bytes(self._exact.of(keys).astype("<f4").tobytes())
        mapping = _VectorMap(
            self._ndim,
            self._next_key,
            *self.parameters,
            items=items,
            index_bytes=index_path.stat().st_size,
            index_digest=_file_digest(index_path),
            dtype=self.dtype,
            exact_bytes=exact_path.stat().st_size if self._exact is not None else None,
            exact_digest=_file_digest(exact_path) if self._exact is not None else None,
        )
        (target / "map.msgpack").write_bytes(_encode_map(mapping))
        for path in (index_path, target / "map.msgpack", *([exact_path] if self._exact else [])):
            _fsync_path(path)
        _fsync_path(target)
        temporary = self.directory / "CURRENT.tmp"
        temporary.write_text(f"gen-{generation}\n")
        _fsync_path(temporary)
        os.replace(temporary, self.directory / "CURRENT")
        _fsync_path(self.directory)
        for old in self.directory.glob("gen-*"):
            if old.name != target.name:
                shutil.rmtree(old, ignore_errors=True)
        self._generation = generation
        self._dirty = False

    # ---- the VectorIndex API -------------------------------------------------------------------

    async def add(self, items: Sequence[tuple[str, np.ndarray, Mapping[str, str]]]) -> None:
        checked = [
            (block_id, unit_vector(check_vector(vector)), check_attributes(attributes, "vector attributes"))
            for block_id, vector, attributes in items
        ]
        if checked:
            await asyncio.to_thread(self._locked, self._add_locked, checked)

    def _add_locked(self, items: list[tuple[str, np.ndarray, dict[str, str]]]) -> None:
        if self._ndim is None:
            self._ndim = items[0][1].shape[0]
            self._index = self._new_index(self._ndim)
            self._exact = _ExactVectors(self._ndim) if self.dtype != "f32" else None
        for _, vector, _ in items:
            check_vector(vector, self._ndim)
        assert self._index is not None
        # The last vector of a block id wins. An id given twice in one call must reach usearch once:
        # removing the first one's key before the batch is added would remove nothing (usearch ignores
        # an absent key), so it stayed in the index under a key no map entry names.
        latest = {block_id: (vector, attributes) for block_id, vector, attributes in items}
        for block_id in latest:
            old_key = self._key_of.pop(block_id, None)
            if old_key is not None:
                self._forget(old_key)
        keys = list(range(self._next_key, self._next_key + len(latest)))
        self._next_key += len(latest)
        vectors = np.stack([vector for vector, _ in latest.values()])
        self._index.add(np.asarray(keys, dtype=np.uint64), quantise(vectors, self.dtype),
                        threads=0 if len(keys) >= _PARALLEL_ADD_MIN else 1)
        if self._exact is not None:
            self._exact.put(keys, vectors)
        for key, (block_id, (_, attributes)) in zip(keys, latest.items(), strict=True):
            self._key_of[block_id], self._id_of[key], self._attributes[key] = key, block_id, attributes
        self._dirty = True

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
            # An unfiltered search of the in-memory graph takes a few hundred microseconds, less than
            # the hop to a worker thread and back; it runs on the event loop unless a flush or an add
            # holds the index. Filtered searches may widen to an exact scan, so they stay in a thread.
            try:
                result: list[tuple[str, float]] = self._guarded(
                    self._search_locked, vector, limit, score_threshold, wanted)
                return result
            finally:
                self._lock.release()
        return await asyncio.to_thread(
            self._locked, self._search_locked, vector, limit, score_threshold, wanted
        )

    def _search_locked(
        self, vector: np.ndarray, limit: int, score_threshold: float | None, wanted: dict[str, str]
    ) -> list[tuple[str, float]]:
        if self._index is None or limit == 0 or len(self._key_of) == 0:
            return []
        check_dimensions(vector, self._ndim)  # checked in search(); the dimension is read under the lock
        stored = quantise(vector, self.dtype)
        total = len(self._key_of)
        fetch = limit * _RESCORE_FACTOR if self._exact is not None else limit
        fetch = min(total, max(fetch * _OVERFETCH_FACTOR, _OVERFETCH_MIN) if wanted else fetch)
        while True:
            exact = fetch >= total
            found = self._index.search(stored, fetch if not exact else total, threads=1, exact=exact)
            keys, distances = found.keys, found.distances
            if self._exact is not None and len(keys):
                scores = self._exact.of(keys.astype(np.int64)) @ vector
                order = np.argsort(-scores, kind="stable")
                keys, distances = keys[order], 1.0 - scores[order]
            hits = self._filter_hits(keys, distances, limit, score_threshold, wanted)
            if len(hits) >= limit or exact or (len(found.keys) < fetch):
                return hits
            fetch = min(total, fetch * _OVERFETCH_FACTOR)

    def _filter_hits(
        self,
        keys: np.ndarray,
        distances: np.ndarray,
        limit: int,
        score_threshold: float | None,
        wanted: dict[str, str],
    ) -> list[tuple[str, float]]:
        hits: list[tuple[str, float]] = []
        for key, distance in zip(keys.tolist(), distances.tolist(), strict=True):
            score = 1.0 - distance
            if score_threshold is not None and score < score_threshold:
                break  # results come best first
            block_id = self._id_of.get(key)
            if block_id is None or (wanted and not matches(self._attributes[key], wanted)):
                continue
            hits.append((block_id, score))
            if len(hits) == limit:
                break
        return hits

    async def remove(self, block_ids: Sequence[str]) -> int:
        if not any(block_id in self._key_of for block_id in block_ids):
            return 0  # the applier asks for every non-embedding block: answer on the loop when idle
        removed: int = await asyncio.to_thread(self._locked, self._remove_locked, list(block_ids))
        return removed

    def _remove_locked(self, block_ids: list[str]) -> int:
        removed = 0
        for block_id in block_ids:
            key = self._key_of.pop(block_id, None)
            if key is not None:
                self._forget(key)
                removed += 1
        return removed

    def _forget(self, key: int) -> None:
        """Remove ``key``'s vector everywhere (its block id is already out of ``_key_of``)."""
        assert self._index is not None
        self._index.remove(key)
        del self._id_of[key], self._attributes[key]
        if self._exact is not None:
            self._exact.drop(key)
        self._dirty = True

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
                self._index.expansion_search = expansion_search  # type: ignore[misc]  # settable at run time
                self._dirty = True

    async def count(self) -> int:
        return len(self._key_of)

    @property
    def dimensions(self) -> int | None:
        return self._ndim

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
        """``function(*args)`` with usearch's and the file system's failures as BackendError (the
        caller holds the lock)."""
        if self._closed:
            raise StoreClosedError("vector index is closed")
        try:
            return function(*args)
        except OSError as error:
            raise BackendError(f"vector index {self.directory} failed: {error.strerror}") from error
        except RuntimeError as error:  # usearch reports its failures as RuntimeError
            raise BackendError(f"vector index {self.directory} failed: {error}") from error


def _load_exact(path: Path, mapping: _VectorMap, keys: np.ndarray) -> _ExactVectors:
    """The float32 rows of a quantised generation, checked against the size and digest its map holds."""
    expected = len(mapping.items) * mapping.ndim * 4
    if mapping.exact_digest is None or mapping.exact_bytes != expected:
        raise _Damaged(f"map.msgpack records {mapping.exact_bytes} bytes of float32 rows, not {expected}")
    size = path.stat().st_size
    if size != expected:
        raise _Damaged(f"vectors.f32 is {size} bytes, its map says {expected}")
    if _file_digest(path) != mapping.exact_digest:
        raise _Damaged("vectors.f32 fails its BLAKE3 check")
    rows = np.fromfile(path, dtype="<f4").astype(np.float32).reshape(len(mapping.items), mapping.ndim)
    matrix = np.empty((max(len(rows), _EXACT_ROWS_MIN), mapping.ndim), dtype=np.float32)
    matrix[: len(rows)] = rows
    return _ExactVectors(mapping.ndim, matrix, keys.astype(np.int64))


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = [
    "UsearchVectorIndex", "check_attributes", "check_search_limit", "check_vector", "embedding_of", "matches",
    "quantise", "unit_vector",
]

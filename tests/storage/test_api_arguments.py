"""Wrong argument types and values at the public API raise MAIF errors that are also the fitting builtin
(TypeError / ValueError), never a stray AttributeError, UnicodeEncodeError or RecursionError, and never
a silent coercion; a refused call leaves the store working with nothing lost.

One store (the embedded default backends) serves the whole module, on one event loop.
"""

from __future__ import annotations

import asyncio
import math
import os
import struct
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maif import limits
from maif.errors import (
    ArgumentTypeError,
    ArgumentValueError,
    BlockNotFoundError,
    ConfigError,
    FormatError,
    LimitExceededError,
    MAIFError,
)
from maif.format.block import MAIFBlock, MAIFBlockType
from maif.storage.engine import MAIFStorage, create_maif_storage

T = TypeVar("T")


class Store(NamedTuple):
    loop: asyncio.AbstractEventLoop
    storage: MAIFStorage
    directory: Path

    def run(self, awaitable: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await awaitable

        return self.loop.run_until_complete(wrapped())


def embedding(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


SEED = MAIFBlock(id="seed", data=b"written before any bad call", agent_id="agent-1", parents=("root",))
SEED_VECTOR = MAIFBlock(id="seed-vector", block_type=MAIFBlockType.EMBEDDING, data=embedding(1, 0, 0),
                        agent_id="agent-1")
KEY = Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    directory = tmp_path_factory.mktemp("api-arguments")
    loop = asyncio.new_event_loop()
    storage = loop.run_until_complete(create_maif_storage({"data_dir": str(directory / "store")}))
    opened = Store(loop, storage, directory)
    try:
        opened.run(storage.write_blocks([SEED, SEED_VECTOR]))
        yield opened
    finally:
        loop.run_until_complete(storage.close())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


_writes = iter(range(1_000_000))


def assert_still_working(store: Store) -> None:
    """Nothing lost, nothing half-written: earlier blocks read back and a new write is acknowledged."""
    assert store.run(store.storage.read_block("seed")) == SEED
    assert store.run(store.storage.read_block("seed-vector")) == SEED_VECTOR
    block = MAIFBlock(id=f"after-{next(_writes)}", data=b"still writable")
    store.run(store.storage.write_block(block))
    assert store.run(store.storage.read_block(block.id)) == block


NAN = float("nan")
DEEP_JSON = b'{"vector": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
HUGE_JSON = b'{"vector": [1' + b"0" * 400 + b"]}"


class Here(NamedTuple):
    """A file name in the module's scratch directory (resolved when the case runs)."""

    name: str


def case(label: str, method: str, *args: Any, error: type[MAIFError], builtin: type[Exception],
         **kwargs: Any) -> Any:
    return pytest.param(method, args, kwargs, error, builtin, id=label)


T_, V_ = ArgumentTypeError, ArgumentValueError
STORE_CASES = [
    case("write_block(None)", "write_block", None, error=T_, builtin=TypeError),
    case("write_block(bytes)", "write_block", b"x", error=T_, builtin=TypeError),
    case("write_blocks(str)", "write_blocks", "ab", error=T_, builtin=TypeError),
    case("write_blocks(one block)", "write_blocks", SEED, error=T_, builtin=TypeError),
    case("write_blocks(None)", "write_blocks", None, error=T_, builtin=TypeError),
    case("write_blocks([block, None])", "write_blocks", [MAIFBlock(id="half"), None], error=T_,
         builtin=TypeError),
    case("EMBEDDING deeply nested JSON", "write_block",
         MAIFBlock(id="deep", block_type="EMBD", data=DEEP_JSON), error=FormatError, builtin=ValueError),
    case("EMBEDDING deeply nested JSON, 4-byte multiple", "write_block",
         MAIFBlock(id="deep4", block_type="EMBD", data=DEEP_JSON + b" " * (-len(DEEP_JSON) % 4)),
         error=FormatError, builtin=ValueError),
    case("EMBEDDING integer beyond float", "write_block",
         MAIFBlock(id="huge", block_type="EMBD", data=HUGE_JSON), error=FormatError, builtin=ValueError),
    case("read_block(lone surrogate)", "read_block", "\ud800", error=V_, builtin=ValueError),
    case("read_block(None)", "read_block", None, error=T_, builtin=TypeError),
    case("read_block(bytes)", "read_block", b"seed", error=T_, builtin=TypeError),
    case("read_block('')", "read_block", "", error=V_, builtin=ValueError),
    case("read_block(too long)", "read_block", "x" * (limits.block_id_bytes_max + 1),
         error=LimitExceededError, builtin=ValueError),
    case("read_block_with_tier(int)", "read_block_with_tier", 7, error=T_, builtin=TypeError),
    case("semantic_search('abc')", "semantic_search", "abc", error=T_, builtin=TypeError),
    case("semantic_search(['1','0','0'])", "semantic_search", ["1", "0", "0"], error=T_, builtin=TypeError),
    case("semantic_search([[1,0,0]])", "semantic_search", [[1, 0, 0]], error=T_, builtin=TypeError),
    case("semantic_search(2-d array)", "semantic_search", np.ones((1, 3)), error=V_, builtin=ValueError),
    case("semantic_search(str array)", "semantic_search", np.array(["1", "0", "0"]), error=T_,
         builtin=TypeError),
    case("semantic_search([])", "semantic_search", [], error=V_, builtin=ValueError),
    case("semantic_search(NaN)", "semantic_search", [NAN, 0, 0], error=V_, builtin=ValueError),
    case("semantic_search(zeros)", "semantic_search", [0, 0, 0], error=V_, builtin=ValueError),
    case("semantic_search(10**400)", "semantic_search", [10**400, 0, 0], error=V_, builtin=ValueError),
    case("semantic_search(1e39)", "semantic_search", [1e39, 0, 0], error=V_, builtin=ValueError),
    case("semantic_search(limit='5')", "semantic_search", [1, 0, 0], limit="5", error=T_, builtin=TypeError),
    case("semantic_search(limit=True)", "semantic_search", [1, 0, 0], limit=True, error=T_,
         builtin=TypeError),
    case("semantic_search(limit=0)", "semantic_search", [1, 0, 0], limit=0, error=V_, builtin=ValueError),
    case("semantic_search(score_threshold='high')", "semantic_search", [1, 0, 0], score_threshold="high",
         error=T_, builtin=TypeError),
    case("semantic_search(score_threshold=NaN)", "semantic_search", [1, 0, 0], score_threshold=NAN,
         error=V_, builtin=ValueError),
    case("semantic_search(filters='x')", "semantic_search", [1, 0, 0], filters="x", error=T_,
         builtin=TypeError),
    case("semantic_search(filters={'agent_id': 5})", "semantic_search", [1, 0, 0], filters={"agent_id": 5},
         error=T_, builtin=TypeError),
    case("semantic_search(too many filters)", "semantic_search", [1, 0, 0],
         filters={str(i): "x" for i in range(limits.vector_filter_fields_max + 1)},
         error=LimitExceededError, builtin=ValueError),
    case("list_blocks(since='yesterday')", "list_blocks", since="yesterday", error=T_, builtin=TypeError),
    case("list_blocks(until=True)", "list_blocks", until=True, error=T_, builtin=TypeError),
    case("list_blocks(since=NaN)", "list_blocks", since=NAN, error=V_, builtin=ValueError),
    case("list_blocks(since=10**400)", "list_blocks", since=10**400, error=V_, builtin=ValueError),
    case("list_blocks(limit='5')", "list_blocks", limit="5", error=T_, builtin=TypeError),
    case("list_blocks(limit=True)", "list_blocks", limit=True, error=T_, builtin=TypeError),
    case("list_blocks(limit=2.0)", "list_blocks", limit=2.0, error=T_, builtin=TypeError),
    case("list_blocks(limit=0)", "list_blocks", limit=0, error=V_, builtin=ValueError),
    case("list_blocks(block_type=5)", "list_blocks", block_type=5, error=T_, builtin=TypeError),
    case("list_blocks(block_type='TOOLONG')", "list_blocks", block_type="TOOLONG", error=FormatError,
         builtin=ValueError),
    case("list_blocks(agent_id=5)", "list_blocks", agent_id=5, error=T_, builtin=TypeError),
    case("list_blocks(parent=['root'])", "list_blocks", parent=["root"], error=T_, builtin=TypeError),
    case("list_blocks(after=lone surrogate)", "list_blocks", after="\udcff", error=V_, builtin=ValueError),
    case("check('x')", "check", "x", error=T_, builtin=TypeError),
    case("check(None)", "check", None, error=T_, builtin=TypeError),
    case("check(True)", "check", True, error=T_, builtin=TypeError),
    case("check(1.5)", "check", 1.5, error=V_, builtin=ValueError),
    case("delete_block(None)", "delete_block", None, error=T_, builtin=TypeError),
    case("delete_block(lone surrogate)", "delete_block", "\ud800", error=V_, builtin=ValueError),
    case("compact('all')", "compact", "all", error=T_, builtin=TypeError),
    case("compact(0)", "compact", 0, error=V_, builtin=ValueError),
    case("compact(NaN)", "compact", NAN, error=V_, builtin=ValueError),
    case("compact(on_step=5)", "compact", 0.5, on_step=5, error=T_, builtin=TypeError),
    case("export(None)", "export", None, None, KEY, error=T_, builtin=TypeError),
    case("export(NUL in path)", "export", Here("a\x00b.maif"), None, KEY, error=V_, builtin=ValueError),
    case("export(selection='seed')", "export", Here("sel.maif"), "seed", KEY, error=T_, builtin=TypeError),
    case("export(selection=[None])", "export", Here("sel.maif"), [None], KEY, error=T_, builtin=TypeError),
    case("export(signing_key=public key)", "export", Here("key.maif"), None, KEY.public_key(), error=T_,
         builtin=TypeError),
    case("import_maif(None)", "import_maif", None, [KEY.public_key()], error=T_, builtin=TypeError),
    case("import_maif(trusted_keys=key)", "import_maif", Here("x.maif"), KEY.public_key(), error=T_,
         builtin=TypeError),
    case("import_maif(trusted_keys=[])", "import_maif", Here("x.maif"), [], error=V_, builtin=ValueError),
    case("import_maif(trusted_keys=[private key])", "import_maif", Here("x.maif"), [KEY], error=T_,
         builtin=TypeError),
]


@pytest.mark.parametrize(("method", "args", "kwargs", "error", "builtin"), STORE_CASES)
def test_a_bad_argument_is_a_typed_error_and_the_store_keeps_working(
    store: Store, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], error: type[MAIFError],
    builtin: type[Exception],
) -> None:
    resolved = [store.directory / arg.name if isinstance(arg, Here) else arg for arg in args]
    lsn_before = store.run(store.storage.get_stats())["wal_last_lsn"]
    with pytest.raises(error) as caught:
        store.run(getattr(store.storage, method)(*resolved, **kwargs))
    assert isinstance(caught.value, builtin), type(caught.value).__mro__
    assert store.run(store.storage.get_stats())["wal_last_lsn"] == lsn_before  # nothing reached the log
    assert not any(store.directory.glob("*.maif"))  # no export was started
    assert_still_working(store)


def test_a_half_bad_batch_writes_nothing(store: Store) -> None:
    with pytest.raises(ArgumentTypeError):
        store.run(store.storage.write_blocks([MAIFBlock(id="good-half"), "bad half"]))
    with pytest.raises(BlockNotFoundError):
        store.run(store.storage.read_block("good-half"))


def test_refused_limits_stay_config_errors(store: Store) -> None:
    """Code written against the old ConfigError for a bad limit or vector still catches the new errors."""
    for call in (store.storage.list_blocks(limit=0), store.storage.semantic_search([NAN, 0, 0]),
                 store.storage.semantic_search([1, 0, 0], limit=10**9)):
        with pytest.raises(ConfigError):
            store.run(call)


def test_well_typed_variants_are_accepted(store: Store) -> None:
    """numpy scalars and arrays, ints for floats, enum or FourCC types, tuples for lists: all fine."""
    storage = store.storage
    hits = store.run(storage.semantic_search(np.array([1, 0, 0], dtype=np.int32), limit=np.int64(1),
                                             score_threshold=np.float32(0.5),
                                             filters={"agent_id": "agent-1"}))
    assert [hit.block_id for hit in hits] == ["seed-vector"]
    hits = store.run(storage.semantic_search((np.float32(1), 0.0, 0)))
    assert [hit.block_id for hit in hits] == ["seed-vector"]
    assert "seed" in {s.block_id for s in store.run(storage.list_blocks(since=0, until=np.float64(4e9)))}
    text = store.run(storage.list_blocks(block_type="TEXT", agent_id="agent-1", parent="root"))
    assert [s.block_id for s in text] == ["seed"]
    assert store.run(storage.list_blocks(block_type=MAIFBlockType.TEXT, agent_id="agent-1",
                                         parent="root")) == text
    assert store.run(storage.check(1)).ok
    path = store.directory / "exported" / "ok.maif"
    path.parent.mkdir()
    store.run(storage.export(os.fspath(path), ("seed",), KEY))
    assert store.run(storage.import_maif(path, (KEY.public_key(),))) == 1


# ---- MAIFBlock and create_maif_storage -----------------------------------------------------------

BLOCK_CASES: list[tuple[str, dict[str, Any], type[MAIFError], type[Exception]]] = [
    ("parents='abc' (not split into letters)", {"parents": "abc"}, ArgumentTypeError, TypeError),
    ("parents=[1]", {"parents": [1]}, ArgumentTypeError, TypeError),
    ("parents=['']", {"parents": [""]}, ArgumentValueError, ValueError),
    ("parents=too many", {"parents": ["p"] * (limits.block_parents_max + 1)}, LimitExceededError, ValueError),
    ("timestamp=True (not 1.0)", {"timestamp": True}, ArgumentTypeError, TypeError),
    ("timestamp='now'", {"timestamp": "now"}, ArgumentTypeError, TypeError),
    ("timestamp=NaN", {"timestamp": NAN}, ArgumentValueError, ValueError),
    ("timestamp=inf", {"timestamp": math.inf}, ArgumentValueError, ValueError),
    ("data='text'", {"data": "text"}, ArgumentTypeError, TypeError),
    ("data=None", {"data": None}, ArgumentTypeError, TypeError),
    ("metadata=[]", {"metadata": []}, ArgumentTypeError, TypeError),
    ("metadata={1: 2}", {"metadata": {1: 2}}, ArgumentTypeError, TypeError),
    ("id=5", {"id": 5}, ArgumentTypeError, TypeError),
    ("id=''", {"id": ""}, ArgumentValueError, ValueError),
    ("id=lone surrogate", {"id": "\ud800"}, ArgumentValueError, ValueError),
    ("agent_id=None", {"agent_id": None}, ArgumentTypeError, TypeError),
    ("agent_id=too long", {"agent_id": "é" * limits.agent_id_bytes_max}, LimitExceededError, ValueError),
    ("version=1.0", {"version": 1.0}, ArgumentTypeError, TypeError),
    ("block_type=5", {"block_type": 5}, ArgumentTypeError, TypeError),
    ("block_type='AB'", {"block_type": "AB"}, FormatError, ValueError),
]


@pytest.mark.parametrize(("fields", "error", "builtin"), [case[1:] for case in BLOCK_CASES],
                         ids=[case[0] for case in BLOCK_CASES])
def test_a_block_with_a_bad_field_is_refused_when_made(
    fields: dict[str, Any], error: type[MAIFError], builtin: type[Exception]
) -> None:
    with pytest.raises(error) as caught:
        MAIFBlock(**fields)
    assert isinstance(caught.value, builtin)


def test_block_fields_of_the_right_kind_are_normalized() -> None:
    block = MAIFBlock(id="n", data=bytearray(b"ab"), parents=["p1", "p2"], timestamp=3, metadata={"k": 1})
    assert block.data == b"ab" and type(block.data) is bytes
    assert block.parents == ("p1", "p2") and block.timestamp == 3.0 and type(block.timestamp) is float
    assert MAIFBlock(data=memoryview(b"xy")).data == b"xy"
    assert MAIFBlock(timestamp=np.float32(1.5)).timestamp == 1.5


@pytest.mark.parametrize(
    ("config", "options", "error", "builtin"),
    [
        (123, {}, ArgumentTypeError, TypeError),
        (b"maif.json", {}, ArgumentTypeError, TypeError),
        ("bad\x00name.json", {}, ArgumentValueError, ValueError),
        ("\ud800.json", {}, ArgumentValueError, ValueError),
        (None, {"backends": "memory"}, ArgumentTypeError, TypeError),
        (None, {"wal_file_ops": object()}, ArgumentTypeError, TypeError),
        (None, {"repair": "yes"}, ArgumentTypeError, TypeError),
    ],
    ids=["int", "bytes", "NUL", "surrogate", "backends", "wal_file_ops", "repair"],
)
def test_create_maif_storage_refuses_bad_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: Any, options: dict[str, Any],
    error: type[MAIFError], builtin: type[Exception]
) -> None:
    monkeypatch.chdir(tmp_path)  # a default store would land in ./maif-data
    with pytest.raises(error) as caught:
        asyncio.run(create_maif_storage(config, **options))
    assert isinstance(caught.value, builtin)
    assert not (tmp_path / "maif-data").exists()


# ---- fuzz: every public storage method, wrong types and values -----------------------------------

_text = st.text(st.one_of(st.characters(), st.characters(categories=["Cs"])), max_size=12)
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=2**64), st.floats(), _text,
    st.binary(max_size=12),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 10**400, "\ud800", "", "x" * 300, b"\xff",
                     "EMBD", "TEXT", object(), np.float32(np.nan), np.array(["a"]), np.zeros((2, 2))]),
)
_wild = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner),
                            st.dictionaries(st.one_of(_text, st.integers()), inner, max_size=3)),
    max_leaves=8,
)


def _fuzz_calls(storage: MAIFStorage, draw: Callable[[], Any]
                ) -> list[tuple[str, Callable[[], Awaitable[Any]]]]:
    a, b, c, d = draw(), draw(), draw(), draw()
    unit = [1.0, 0.0, 0.0]
    return [
        ("write_block", lambda: storage.write_block(a)),
        ("write_blocks", lambda: storage.write_blocks(a)),
        ("read_block", lambda: storage.read_block(a)),
        ("read_block_with_tier", lambda: storage.read_block_with_tier(a)),
        ("list_blocks", lambda: storage.list_blocks(agent_id=a, since=b)),
        ("list_blocks", lambda: storage.list_blocks(block_type=a, until=b, limit=c)),
        ("list_blocks", lambda: storage.list_blocks(parent=a, after=b)),
        ("semantic_search", lambda: storage.semantic_search(a)),
        ("semantic_search", lambda: storage.semantic_search(unit, limit=a, score_threshold=b, filters=c)),
        ("semantic_search", lambda: storage.semantic_search(a, filters=b)),
        ("check", lambda: storage.check(a)),
        ("delete_block", lambda: storage.delete_block(a)),
        ("MAIFBlock", lambda: storage.write_block(MAIFBlock(id=a, block_type=b, data=c, parents=d))),
        ("MAIFBlock", lambda: storage.write_block(MAIFBlock(data=b"x", metadata=a, timestamp=b, agent_id=c,
                                                            version=d))),
        ("MAIFBlock", lambda: storage.write_block(MAIFBlock(block_type="EMBD", data=a, metadata={"dim": b}))),
        ("compact", lambda: storage.compact(a)),
        ("export", lambda: storage.export(a, b, c)),
        ("import_maif", lambda: storage.import_maif(a, b)),
        ("create_maif_storage", lambda: create_maif_storage(a, backends=b if d else None)),
        ("create_maif_storage", lambda: create_maif_storage({"data_dir": "fuzz-store"}, repair=a)),
    ]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_only_maif_errors_come_out(store: Store, data: st.DataObject) -> None:
    workdir = store.directory / "fuzz-cwd"
    workdir.mkdir(exist_ok=True)
    previous = os.getcwd()
    os.chdir(workdir)  # a call that succeeds by accident (create_maif_storage({})) stays in here
    try:
        calls = _fuzz_calls(store.storage, lambda: data.draw(_wild))
        name, call = data.draw(st.sampled_from(calls), label="method")
        try:
            result = store.run(call())
        except MAIFError:
            return
        if isinstance(result, MAIFStorage):
            store.run(result.close())
        # Only calls whose arguments may all be drawn valid can succeed (never a write of a wild value).
        assert name not in {"write_block", "export", "import_maif"}, name
    finally:
        os.chdir(previous)


def test_the_store_survived_the_fuzz(store: Store) -> None:
    assert_still_working(store)
    assert store.run(store.storage.check(1.0)).ok

"""The compiled core (``_core.c``, ADR 0090) against the pure-Python reference, on the same inputs.

The core only proves records valid or defers, so every observable result must be identical with and
without it: the bytes a writer produces, and the whole verification report (every problem, its block,
reason, region and kind) for valid and hostile files alike. Each test runs the same input through both
paths by switching ``maif.format.native``'s module between the core and None.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import blake3
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from maif import limits
from maif.errors import MAIFError
from maif.format import codec, layout, merkle, native
from maif.format.block import MAIFBlock, MAIFBlockType
from maif.format.container import ContainerReader, ContainerWriter
from maif.format.reader import PARALLEL_HASH_BYTES_MIN
from maif.format.verify import verify_container
from maif.testing.hostile import (
    FILE_ID,
    FIXED_HEADER,
    SECTION_4_VIOLATIONS,
    record,
    signed_container,
    text_id,
)

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
EXAMPLES = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def compiled_core() -> ModuleType:
    """The extension itself, even when MAIF_PURE_PYTHON=1 keeps it out of ``native``."""
    core = native.extension()
    assert core is not None, "the compiled core is not built (scripts/setup builds it)"
    return core


path_of = native.switched_to


def both(run: Callable[[], Any]) -> tuple[Any, Any]:
    """``run()`` on the compiled path, then on the pure-Python path."""
    with path_of(compiled_core()):
        compiled = run()
    with path_of(None):
        reference = run()
    return compiled, reference


def report_of(path: Path, **options: Any) -> tuple[Any, ...]:
    report = verify_container(path, [KEY.public_key()], **options)
    return report.ok, report.problems, report.block_count, report.signers_by_version


def seal(path: Path, records: Sequence[bytes], *, offsets: dict[int, int] | None = None) -> Path:
    """``signed_container`` by KEY, with chosen index offsets overridden (entries that break the layout)."""
    return signed_container(path, records, KEY, offsets)


# ---- the extension is there ------------------------------------------------------------------------


def test_the_compiled_core_is_built_and_active_unless_switched_off() -> None:
    assert compiled_core().unproven_records.__doc__
    assert native.pure_python() == (os.environ.get("MAIF_PURE_PYTHON", "") not in ("", "0"))


def test_nothing_is_proven_before_the_limits_are_set(tmp_path: Path) -> None:
    core = compiled_core()
    path = signed_container(tmp_path / "a.maif", [record(fields=text_id("a"))], KEY)
    with ContainerReader.open(path) as reader:
        assert list(reader.unproven_blocks(0, 1)) == ([] if not native.pure_python() else [0])
        core.set_limits(0, 0, 0, 0, 0, 0)
        try:
            unproven = core.unproven_records(reader._mapping, reader._offsets, reader._ends, 0, 1, 1 << 20)
            assert unproven == [0]
        finally:
            compiled_core()


# ---- hostile and valid records: identical reports ---------------------------------------------------

fourccs = st.one_of(st.sampled_from([b"TEXT", b"IMAG", b"x!~z"]), st.binary(min_size=4, max_size=4))
utf8_texts = st.text(max_size=40).map(lambda text: text.encode("utf-8", "surrogatepass"))
texts = st.one_of(
    utf8_texts,
    st.binary(max_size=40),  # often not UTF-8
    st.sampled_from(
        [b"", b"1.0", b"0195f6a0-0000-7000-8000-000000000001", b"0195F6A0-0000-7000-8000-00000000000Z"]
    ),
    st.integers(0, 300).map(lambda size: b"a" * size),  # around the 256-byte limits
)


@st.composite
def records(draw: st.DrawFn) -> bytes:
    """A record near the valid ones: each field present, absent, malformed or over its limit."""
    field_flags = draw(st.one_of(st.integers(0, 0x0F), st.integers(0, 0xFF)))
    fields = b""
    if field_flags & 0x01:
        fields += draw(st.binary(min_size=16, max_size=16))
    else:
        raw = draw(texts)
        fields += struct.pack("<H", len(raw)) + raw
    if field_flags & 0x02:
        raw = draw(texts)
        fields += struct.pack("<H", len(raw)) + raw
    if field_flags & 0x04:
        raw = draw(texts)[:255]
        fields += bytes([len(raw)]) + raw
    if field_flags & 0x08:
        count = draw(st.sampled_from([0, 1, 2, 257]))
        fields += struct.pack("<H", count)
        for _ in range(min(count, 3)):
            raw = draw(texts)
            fields += struct.pack("<H", len(raw)) + raw
    metadata = b""
    if field_flags & 0x10:
        metadata = draw(st.sampled_from([b"\x81\xa1a\x01", b"\x80", b"\x01"]))
        field_flags &= ~0x10  # record() sets it with its length
    payload = draw(st.binary(max_size=64))
    timestamp = draw(st.one_of(st.floats(allow_nan=True), st.just(math.inf), st.just(1.7e9)))
    storage_flags = draw(st.sampled_from([0, 0, 0, 1, 2, 4]))
    length = draw(st.one_of(st.none(), st.integers(0, 100), st.just((1 << 30) + 1)))
    built = record(
        payload,
        fourcc=draw(fourccs),
        storage_flags=storage_flags,
        field_flags=field_flags,
        timestamp=timestamp,
        payload_length=length,
        fields=fields,
        metadata=metadata,
    )
    mutation = draw(st.sampled_from(["none", "none", "flip", "truncate", "extend"]))
    if mutation == "flip" and built:
        bit = draw(st.integers(0, 8 * len(built) - 1))
        built = bytearray(built)
        built[bit // 8] ^= 1 << (bit % 8)
        built = bytes(built)
    elif mutation == "truncate":
        built = built[: draw(st.integers(0, len(built)))]
    elif mutation == "extend":
        built += draw(st.binary(min_size=1, max_size=8))
    return built


@EXAMPLES
@given(st.lists(records(), min_size=1, max_size=6), st.data())
def test_hostile_records_get_the_same_report_from_the_compiled_core_and_the_reference(
    tmp_path_factory: pytest.TempPathFactory, stored: list[bytes], data: st.DataObject
) -> None:
    assume(all(stored))  # an empty record cannot be sealed (offsets must strictly increase)
    path = seal(tmp_path_factory.mktemp("h") / "h.maif", stored)
    if data.draw(st.booleans()):  # damage one record's bytes after signing: a digest mismatch
        raw = bytearray(path.read_bytes())
        records_end = layout.FILE_HEADER.size + sum(map(len, stored))
        raw[data.draw(st.integers(layout.FILE_HEADER.size, records_end - 1))] ^= 0x40
        path.write_bytes(bytes(raw))
    compiled, reference = both(lambda: report_of(path))
    assert compiled == reference


@EXAMPLES
@given(st.lists(records(), min_size=1, max_size=8))
def test_a_record_the_core_proves_is_one_the_reference_accepts(
    tmp_path_factory: pytest.TempPathFactory, stored: list[bytes]
) -> None:
    assume(all(stored))
    path = seal(tmp_path_factory.mktemp("p") / "p.maif", stored)
    with path_of(compiled_core()), ContainerReader.open(path) as reader:
        unproven = set(reader.unproven_blocks(0, len(reader)))
        for index in set(range(len(reader))) - unproven:
            reader.check_block(index)  # raises if the core proved a record the reference refuses


@pytest.mark.parametrize("violation", SECTION_4_VIOLATIONS, ids=lambda violation: violation.name)
def test_every_section_4_violation_gets_the_same_problem_on_both_paths(
    tmp_path: Path, violation: Any
) -> None:
    honest = record(b"honest", fields=text_id("honest"))
    path = signed_container(tmp_path / "v.maif", [honest, violation.record, honest], KEY)
    compiled, reference = both(lambda: report_of(path))
    assert compiled == reference
    assert [problem.block_index for problem in compiled[1]] == [1]


@pytest.mark.parametrize(
    "name, broken",
    [
        ("reserved field flag", record(field_flags=0x20)),
        ("FourCC byte 0x7f", record(fourcc=b"TEX\x7f")),
        ("infinite timestamp", record(timestamp=-math.inf)),
        ("payload shorter than declared", record(b"abc", payload_length=4)),
        ("payload longer than declared", record(b"abcde", payload_length=4)),
        ("empty text id", record(fields=text_id(""))),
        ("id over its limit", record(fields=text_id("i" * 257))),
        ("id not UTF-8", record(fields=struct.pack("<H", 2) + b"\xc3\x28")),
        ("id a surrogate", record(fields=struct.pack("<H", 3) + b"\xed\xa0\x80")),
        ("canonical UUID as text", record(fields=text_id("0195f6a0-0000-7000-8000-000000000001"))),
        ("empty agent id", record(field_flags=0x02, fields=text_id("a") + text_id(""))),
        ("default version present", record(field_flags=0x04, fields=text_id("a") + b"\x031.0")),
        ("version over its limit", record(field_flags=0x04, fields=text_id("a") + b"\x41" + b"v" * 65)),
        ("zero parents", record(field_flags=0x08, fields=text_id("a") + b"\x00\x00")),
        ("too many parents", record(field_flags=0x08, fields=text_id("a") + struct.pack("<H", 257))),
        ("header cut inside the id", FIXED_HEADER.pack(b"TEXT", 0, 0, 1.0, 0) + b"\x05\x00ab"),
        ("header cut inside the fixed part", b"TEXT\x00\x00\x00"),
        ("metadata flag with a zero length", record(field_flags=0x10, fields=text_id("a") + bytes(4))),
        (
            "metadata length over its limit",
            record(
                b"\x81\xa1a" + bytes(limits.block_metadata_bytes_max),
                field_flags=0x10,
                fields=text_id("a") + struct.pack("<I", limits.block_metadata_bytes_max + 1),
                payload_length=2,
            ),
        ),
        (
            "metadata longer than the body",
            record(b"", field_flags=0x10, fields=text_id("a") + struct.pack("<I", 10), payload_length=0),
        ),
        ("metadata not canonical", record(metadata=b"\x82\xa1b\x01\xa1a\x02")),
        ("metadata an empty map", record(metadata=b"\x80")),
        ("metadata cut short", record(metadata=b"\x81\xa1a")),
    ],
)
def test_plain_records_breaking_a_header_rule_are_deferred_and_reported_alike(
    tmp_path: Path, name: str, broken: bytes
) -> None:
    honest = record(b"honest", fields=text_id("honest"))
    path = signed_container(tmp_path / "b.maif", [honest, broken], KEY)
    compiled, reference = both(lambda: report_of(path))
    assert compiled == reference
    assert [problem.block_index for problem in compiled[1]] == [1], name
    with path_of(compiled_core()), ContainerReader.open(path) as reader:
        assert list(reader.unproven_blocks(0, 2)) == [1]


def test_records_with_metadata_are_proven_but_for_their_metadata_which_python_decodes(tmp_path: Path) -> None:
    stored = [
        record(bytes([n]) * 20, fields=text_id(f"m{n}"), metadata=b"\x81\xa1n" + bytes([n])) for n in range(4)
    ]
    path = signed_container(tmp_path / "m.maif", stored, KEY)
    core = compiled_core()
    with path_of(core), ContainerReader.open(path) as reader:
        items = core.unproven_records(reader._mapping, reader._offsets, reader._ends, 0, 4, 1 << 20)
        assert [item[0] for item in items] == [0, 1, 2, 3]  # type: ignore[index]
        assert [reader._view[item[1] : item[2]].tobytes() for item in items] == [  # type: ignore[index]
            b"\x81\xa1n" + bytes([n]) for n in range(4)
        ]
        assert list(reader.unproven_blocks(0, 4)) == []
        assert list(reader.unproven_blocks(0, 4, skip={2})) == [2]
    compiled, reference = both(lambda: report_of(path))
    assert compiled == reference
    assert compiled[0]


def test_entries_that_break_the_layout_are_reported_alike(tmp_path: Path) -> None:
    stored = [record(bytes([n]) * 10, fields=text_id(f"b{n}")) for n in range(6)]
    path = seal(tmp_path / "l.maif", stored, offsets={2: 1 << 40, 4: 3})
    compiled, reference = both(lambda: report_of(path))
    assert compiled == reference
    assert {problem.block_index for problem in compiled[1]} >= {2, 4}


def test_large_records_between_small_ones_are_hashed_and_reported_alike(tmp_path: Path) -> None:
    path = tmp_path / "mixed.maif"
    with ContainerWriter.create(path) as writer:
        for index in range(7):
            size = PARALLEL_HASH_BYTES_MIN + 5 if index % 3 == 1 else 700
            writer.add(MAIFBlock(id=f"m{index}", data=os.urandom(size)))
        writer.commit([KEY])
    raw = bytearray(path.read_bytes())
    with ContainerReader.open(path) as reader:
        damaged = [reader.entry(1).offset + 100, reader.entry(5).offset + 30]
    for at in damaged:
        raw[at] ^= 1
    path.write_bytes(bytes(raw))
    compiled, reference = both(lambda: report_of(path))
    assert compiled == reference
    assert [problem.block_index for problem in compiled[1]] == [1, 5]


def test_progress_reports_cover_the_same_bytes_on_both_paths(tmp_path: Path) -> None:
    path = tmp_path / "progress.maif"
    with ContainerWriter.create(path) as writer:
        writer.add_many(MAIFBlock(id=f"p{n}", data=os.urandom(900)) for n in range(20_000))
        writer.add(MAIFBlock(id="large", data=os.urandom(PARALLEL_HASH_BYTES_MIN)))
        writer.commit([KEY])

    def totals() -> dict[str, int]:
        covered: dict[str, int] = {}

        def on_progress(phase: str, size: int) -> None:
            assert size > 0
            covered[phase] = covered.get(phase, 0) + size

        assert verify_container(path, [KEY.public_key()], on_progress=on_progress).ok
        return covered

    compiled, reference = both(totals)
    assert compiled == reference
    assert compiled["hash"] == compiled["decode"] > 20_000 * 900


# ---- writing: identical bytes ------------------------------------------------------------------------

block_ids = st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda value: str(value).upper()),
    st.text(min_size=1, max_size=20),
    st.just("0195f6a0-0000-7000-8000-00000000000g"),
)


@st.composite
def blocks(draw: st.DrawFn) -> MAIFBlock:
    return MAIFBlock(
        id=draw(block_ids),
        block_type=draw(st.one_of(st.sampled_from(list(MAIFBlockType)), st.sampled_from(["TEXT", "x!~z"]))),
        data=draw(st.one_of(st.binary(max_size=64), st.just(b"z" * 6000), st.just(os.urandom(5000)))),
        metadata=draw(
            st.sampled_from(
                [{}, {"k": 1}, {"path": "é/ü", "n": -5, "f": 1.5, "nested": {"b": [1, 2], "a": None}}]
            )
        ),
        timestamp=draw(st.floats(allow_nan=False, allow_infinity=False)),
        agent_id=draw(st.one_of(st.just(""), st.text(max_size=12))),
        version=draw(st.sampled_from(["1.0", "2", ""])),
        parents=draw(st.sampled_from([(), ("p",)])),
    )


def written(path: Path, batch: list[MAIFBlock], *, many: bool, threshold: int = 4096) -> bytes:
    path.unlink(missing_ok=True)
    writer = ContainerWriter.create(
        path, file_id=FILE_ID, compression_threshold=threshold, _clock_ns=lambda: 7
    )
    with writer:
        if many:
            assert writer.add_many(iter(batch)) == range(len(batch))
        else:
            for block in batch:
                writer.add(block)
        writer.commit([KEY])
    return path.read_bytes()


@EXAMPLES
@given(st.lists(blocks(), max_size=12), st.sampled_from([0, 1, 64, 4096]))
def test_add_many_writes_the_bytes_add_writes_on_both_paths(
    tmp_path_factory: pytest.TempPathFactory, batch: list[MAIFBlock], threshold: int
) -> None:
    path = tmp_path_factory.mktemp("w") / "w.maif"
    compiled, reference = both(lambda: written(path, batch, many=True, threshold=threshold))
    assert compiled == reference == written(path, batch, many=False, threshold=threshold)


@EXAMPLES
@given(st.lists(blocks(), max_size=12))
def test_encode_blocks_is_encode_block_and_its_digest_on_both_paths(batch: list[MAIFBlock]) -> None:
    """The store's log encodes blocks with ``codec.encode_blocks``: the core must give the reference's
    bytes and BLAKE3 digest for every block (large payloads, metadata, parents, versions included)."""
    expected = [(codec.encode_block(block), codec.block_digest(block)) for block in batch]
    compiled, reference = both(lambda: codec.encode_blocks(batch))
    assert compiled == reference == expected


def test_encode_blocks_proves_plain_blocks_in_c_and_defers_the_rest() -> None:
    """The fast path is taken for the store's common block, and left for what only Python encodes."""
    plain = MAIFBlock(id="b1", data=b"p" * 1024, agent_id="bench", timestamp=1.0)
    with_uuid = MAIFBlock(id="0195f6a0-0000-7000-8000-000000000001", data=b"", metadata={"k": 1})
    deferred = [MAIFBlock(id="c", parents=("b1",)), MAIFBlock(id="v", version="2"),
                MAIFBlock(id="big", data=b"x" * (70 * 1024))]
    core = compiled_core()
    proven = core.encode_blocks([plain, with_uuid, *deferred], MAIFBlock, codec.KNOWN_FOURCCS,
                                codec.encode_metadata, codec.CODEC_VERSION, 64 * 1024, blake3.blake3)
    assert proven[0] == (codec.encode_block(plain), codec.block_digest(plain))
    assert proven[1] == (codec.encode_block(with_uuid), codec.block_digest(with_uuid))
    assert proven[2:] == [None] * len(deferred)


def test_encode_blocks_raises_what_encode_block_raises_on_both_paths() -> None:
    batch = [MAIFBlock(id="ok", data=b"fine"), MAIFBlock(id="bad", metadata={"a": {1: 2}})]

    def attempt() -> tuple[str, str]:
        try:
            codec.encode_blocks(batch)
        except MAIFError as error:
            return type(error).__name__, str(error)
        return "", ""

    compiled, reference = both(attempt)
    assert compiled == reference
    assert compiled[0] == "FormatError"


def test_add_many_refuses_metadata_it_cannot_encode_as_add_does(tmp_path: Path) -> None:
    blocks = [MAIFBlock(id="ok", data=b"fine"), MAIFBlock(id="bad", metadata={"a": {1: 2}})]

    def attempt() -> tuple[int, str, str]:
        (tmp_path / "bad.maif").unlink(missing_ok=True)
        with ContainerWriter.create(tmp_path / "bad.maif") as writer:
            try:
                writer.add_many(blocks)
            except MAIFError as error:
                return writer._block_count, type(error).__name__, str(error)
        return -1, "", ""

    compiled, reference = both(attempt)
    assert compiled == reference
    assert compiled[:2] == (1, "FormatError")


def test_add_many_across_batches_with_blocks_the_core_leaves_to_python(tmp_path: Path) -> None:
    batch = [
        MAIFBlock(
            data=bytes([n % 256]) * (n % 1500),
            agent_id="agent-1" if n % 2 else "",
            metadata={"n": n} if n % 997 == 0 else {},
            timestamp=1_700_000_000.0 + n,
        )
        for n in range(9000)
    ]
    compiled, reference = both(lambda: written(tmp_path / "big.maif", batch, many=True))
    assert compiled == reference
    with ContainerReader.open(tmp_path / "big.maif") as reader:
        assert [reader.block(n) for n in (0, 997, 4096, 8999)] == [batch[n] for n in (0, 997, 4096, 8999)]
    assert verify_container(tmp_path / "big.maif", [KEY.public_key()]).ok


def test_add_many_stops_at_the_block_count_limit_like_add(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "container_blocks_max", 3)

    def attempt() -> tuple[int, str]:
        (tmp_path / "limit.maif").unlink(missing_ok=True)
        with ContainerWriter.create(tmp_path / "limit.maif") as writer:
            try:
                writer.add_many(MAIFBlock(id=f"l{n}") for n in range(5))
            except MAIFError as error:
                return writer._block_count, type(error).__name__
        return -1, ""

    compiled, reference = both(attempt)
    assert compiled == reference == (3, "LimitExceededError")


# ---- Merkle hashing ---------------------------------------------------------------------------------


@EXAMPLES
@given(st.lists(st.binary(min_size=32, max_size=32), max_size=70), st.integers(0, 40))
def test_merkle_roots_leaves_and_frontiers_agree_on_both_paths(digests: list[bytes], split: int) -> None:
    def run() -> tuple[Any, ...]:
        leaves = merkle.leaf_hashes_of(digests)
        entries = b"".join(bytes(8) + digest for digest in digests)
        frontier = merkle.Frontier()
        frontier.extend(leaves[:split])
        frontier.extend(leaves[split:])
        return leaves, merkle.leaf_hashes_of_entries(entries, 40, 8), merkle.root(leaves), frontier.root()

    compiled, reference = both(run)
    assert compiled == reference
    assert compiled[0] == compiled[1]
    assert compiled[2] == compiled[3]


# ---- the commit's early sync -------------------------------------------------------------------------


def test_a_failed_early_sync_fails_the_commit_and_the_writer_for_good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The records' fdatasync that starts in a thread during commit is a sync like the last one: when it
    fails, nothing is acknowledged and the writer takes nothing more (never retried: fsyncgate)."""
    from maif.errors import BackendError
    from maif.format import writer as writer_module

    monkeypatch.setattr(writer_module, "_EARLY_SYNC_BYTES_MIN", 1)
    calls: list[int] = []

    def failing_fdatasync(descriptor: int) -> None:
        calls.append(descriptor)
        raise OSError(5, "Input/output error")

    path = tmp_path / "eio.maif"
    writer = ContainerWriter.create(path)
    writer.add_many(MAIFBlock(id=f"e{n}", data=b"x" * 100) for n in range(3))
    monkeypatch.setattr(writer_module.os, "fdatasync", failing_fdatasync)
    with pytest.raises(BackendError, match="cannot sync"):
        writer.commit([KEY])
    assert len(calls) == 1  # the early sync only: the trailer was never written
    with pytest.raises(BackendError, match="earlier write or sync failed"):
        writer.add(MAIFBlock(id="after"))
    with pytest.raises(BackendError):
        writer.commit([KEY])
    monkeypatch.undo()
    writer.close()
    assert path.stat().st_size == layout.FILE_HEADER.size  # cut back to the last complete version (none)


def test_an_early_synced_commit_reads_back_and_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from maif.format import writer as writer_module

    monkeypatch.setattr(writer_module, "_EARLY_SYNC_BYTES_MIN", 1)
    path = tmp_path / "early.maif"
    blocks = [MAIFBlock(id=f"s{n}", data=bytes([n]) * 50) for n in range(5)]
    with ContainerWriter.create(path) as writer:
        writer.add_many(blocks[:3])
        writer.commit([KEY])
        writer.add_many(blocks[3:])
        writer.commit([KEY])
    assert verify_container(path, [KEY.public_key()]).ok
    with ContainerReader.open(path) as reader:
        assert [reader.block(n) for n in range(5)] == blocks


# ---- loading ------------------------------------------------------------------------------------------


_STALE_CORE = (
    "import sys, types; stale = types.ModuleType('maif.format._core'); {abi}"
    "stale.set_limits = lambda *limits: (_ for _ in ()).throw(TypeError('set_limits takes 5 arguments')); "
    "sys.modules['maif.format._core'] = stale; "
)


@pytest.mark.parametrize(
    "environment, prelude, expected",
    [
        ({"MAIF_PURE_PYTHON": "1"}, "", "True"),
        ({"MAIF_PURE_PYTHON": "0"}, "", "False"),
        ({}, "import sys; sys.modules['maif.format._core'] = None; ", "True"),  # the extension is absent
        # A stale build (an older _core.c left compiled in the tree): before ABI, or of another ABI. Its
        # set_limits took other arguments, so using it failed every import of maif.format.
        ({}, _STALE_CORE.format(abi=""), "True"),
        ({}, _STALE_CORE.format(abi="stale.ABI = 1; "), "True"),
    ],
)
def test_the_path_is_chosen_at_import_and_a_missing_or_stale_extension_is_silent(
    environment: dict[str, str], prelude: str, expected: str
) -> None:
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != "MAIF_PURE_PYTHON"} | environment
    code = prelude + "from maif.format import native; print(native.pure_python())"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert (result.stdout.strip(), result.stderr) == (expected, "")

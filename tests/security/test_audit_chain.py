"""A segmented audit log rolls over without a capacity cliff, and the chain of segments is verifiable.

The attacks work on the files directly: edit an entry, drop, reorder, truncate or swap a segment, splice
in a segment of another chain signed by the same key, forge an archived predecessor's head. Each must be
detected and located (the error names the segment file and the entry within it).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import threading
from pathlib import Path

import msgspec
import pytest
from typer.testing import CliRunner

from maif.cli.audit import audit_app
from maif.cli.exit_codes import ExitCode
from maif.errors import FormatError, IntegrityError, SignatureError
from maif.security.audit import HEADER_BYTES, AuditEntry, AuditLog, read_audit_log, verify_audit_log
from maif.security.audit_chain import (
    LINK_ACTION,
    SegmentedAuditLog,
    archive_segments,
    list_segments,
    parse_link,
    read_audit_chain,
    segment_name,
    verify_audit_chain,
)
from maif.security.keys import MemorySigner, raw_public_key

SEGMENT_ENTRIES = 3  # the link entry and two decisions per segment


def event(number: int) -> dict[str, object]:
    return {"actor": "agent-1", "action": "write", "resource": f"block/{number}", "decision": "allow"}


def write_chain(directory: Path, signer: MemorySigner, decisions: int) -> None:
    with SegmentedAuditLog.open(directory, signer, segment_entries_max=SEGMENT_ENTRIES) as log:
        for number in range(decisions):
            log.append(event(number))


@pytest.fixture(scope="module")
def chain_signer() -> MemorySigner:
    return MemorySigner()


@pytest.fixture(scope="module")
def pristine_chain(tmp_path_factory: pytest.TempPathFactory, chain_signer: MemorySigner) -> Path:
    directory = tmp_path_factory.mktemp("chain") / "audit"
    write_chain(directory, chain_signer, 400)  # 200 segments
    return directory


@pytest.fixture
def chain(tmp_path: Path, pristine_chain: Path) -> Path:
    copy = tmp_path / "audit"
    shutil.copytree(pristine_chain, copy)
    return copy


def segment(directory: Path, number: int) -> Path:
    return directory / segment_name(number)


def entry_offsets(path: Path) -> list[int]:
    """The offset of each entry's frame (checkpoint frames skipped); the record starts 40 bytes in."""
    data = path.read_bytes()
    offsets, offset = [], HEADER_BYTES
    while offset < len(data):
        (length,) = struct.unpack_from("<I", data, offset)
        if msgspec.msgpack.decode(data[offset + 40 : offset + 40 + length])["type"] == "entry":
            offsets.append(offset)
        offset += 40 + length
    return offsets


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_thousand_segments_roll_over_and_verify(tmp_path: Path) -> None:
    signer = MemorySigner()
    directory = tmp_path / "audit"
    write_chain(directory, signer, 2000)
    segments = list_segments(directory)
    assert [number for number, _ in segments] == list(range(1000))
    report = verify_audit_chain(directory, [signer.public_key])
    assert report.segments == 1000 and report.first_segment == 0 and report.last_segment == 999
    assert report.entries == 2000 + 999 and report.fully_signed and report.anchor is None
    assert report.last_checkpoint is not None
    # every segment is also an ordinary audit log on its own
    assert verify_audit_log(segments[500][1], [signer.public_key]).entries == SEGMENT_ENTRIES
    with SegmentedAuditLog.open(directory, signer, segment_entries_max=SEGMENT_ENTRIES) as log:
        assert log.segment_number == 999 and log.total_entries == 2999
        assert log.append(event(2000)).index == 2 and log.segment_number == 999  # fills segment 999
        entry = log.append(event(2001))
        assert log.segment_number == 1000 and entry.index == 1 and log.first_index == 3000
        link = parse_link(next(log.entries(0, 1)))
        assert link.segment == 1000 and link.first_index == 3000 and link.chain_id == report.chain_id
        assert link.previous.tree_size == 3 and link.previous.log_id == report.last_checkpoint.log_id
    assert verify_audit_chain(directory, [signer.public_key]).segments == 1001


def test_an_edited_entry_is_located_in_its_segment(chain: Path, chain_signer: MemorySigner) -> None:
    target = segment(chain, 57)
    flip(target, entry_offsets(target)[2] + 60)  # inside entry 2's record
    with pytest.raises(IntegrityError, match=f"{segment_name(57)}: entry 2 ") as caught:
        verify_audit_chain(chain, [chain_signer.public_key])
    assert caught.value.block_index == 2


def test_an_edited_link_entry_is_located(chain: Path, chain_signer: MemorySigner) -> None:
    target = segment(chain, 120)
    flip(target, entry_offsets(target)[0] + 80)
    with pytest.raises(IntegrityError, match=f"{segment_name(120)}: entry 0 ") as caught:
        verify_audit_chain(chain, [chain_signer.public_key])
    assert caught.value.block_index == 0


def test_a_dropped_segment_is_detected(chain: Path, chain_signer: MemorySigner) -> None:
    segment(chain, 80).unlink()
    with pytest.raises(IntegrityError, match=f"segments 80..80 are missing before {segment_name(81)}"):
        verify_audit_chain(chain, [chain_signer.public_key])


def test_a_dropped_segment_with_the_rest_renumbered_is_detected(chain: Path,
                                                                chain_signer: MemorySigner) -> None:
    segment(chain, 80).unlink()
    for number in range(81, 200):
        os.rename(segment(chain, number), segment(chain, number - 1))
    with pytest.raises(IntegrityError, match=f"{segment_name(80)}: entry 0: the link names segment 81"):
        verify_audit_chain(chain, [chain_signer.public_key])


def test_reordered_segments_are_detected(chain: Path, chain_signer: MemorySigner) -> None:
    os.rename(segment(chain, 30), chain / "swap")
    os.rename(segment(chain, 31), segment(chain, 30))
    os.rename(chain / "swap", segment(chain, 31))
    expected = f"{segment_name(30)}: entry 0: the link names segment 31"
    with pytest.raises(IntegrityError, match=expected) as caught:
        verify_audit_chain(chain, [chain_signer.public_key])
    assert caught.value.block_index == 0


def test_a_sealed_segment_cut_back_to_an_earlier_checkpoint_is_detected(
    chain: Path, chain_signer: MemorySigner
) -> None:
    target = segment(chain, 99)  # link entry, checkpoint, entry 1, entry 2, the sealing checkpoint
    with open(target, "r+b") as handle:
        handle.truncate(entry_offsets(target)[1])  # back to the checkpoint over the link entry alone
    assert verify_audit_log(target, [chain_signer.public_key]).entries == 1  # fine on its own
    with pytest.raises(IntegrityError, match=f"{segment_name(100)}: entry 0: the link commits to a head"):
        verify_audit_chain(chain, [chain_signer.public_key])
    with open(target, "r+b") as handle:
        handle.truncate(target.stat().st_size - 1)  # now not even ending on a checkpoint
    with pytest.raises(IntegrityError, match=f"{segment_name(99)}: entry 0: a sealed segment must end"):
        verify_audit_chain(chain, [chain_signer.public_key])


def test_a_sealed_segment_with_a_torn_end_is_detected(chain: Path, chain_signer: MemorySigner) -> None:
    target = segment(chain, 10)
    with open(target, "r+b") as handle:
        handle.truncate(target.stat().st_size - 7)
    with pytest.raises(IntegrityError, match=f"{segment_name(10)}: entry 1: a sealed segment must end"):
        verify_audit_chain(chain, [chain_signer.public_key])


def test_a_segment_of_another_chain_swapped_in_is_detected(
    tmp_path: Path, chain: Path, chain_signer: MemorySigner
) -> None:
    other = tmp_path / "other"
    write_chain(other, chain_signer, 200)  # same key, another chain
    shutil.copyfile(segment(other, 40), segment(chain, 40))
    with pytest.raises(IntegrityError, match=f"{segment_name(40)}: entry 0: the link names another chain"):
        verify_audit_chain(chain, [chain_signer.public_key])


def test_a_rewritten_segment_signed_by_the_same_key_is_detected_at_the_next_link(
    tmp_path: Path, chain: Path, chain_signer: MemorySigner
) -> None:
    # The attacker holds the signing key and rebuilds segment 70 with other decisions but the same link:
    # segment 70 verifies on its own, and segment 71's link exposes it.
    original = next(iter(segment_entries(segment(chain, 70))))
    forged = tmp_path / "forged.audit"
    with AuditLog.open(forged, chain_signer) as log:
        log.append(
            {
                "actor": original.actor,
                "action": original.action,
                "resource": original.resource,
                "decision": original.decision,
                "reason": original.reason,
                **original.details,
            }
        )
        log.append(event(999_999))
        log.append(event(999_998))
    shutil.copyfile(forged, segment(chain, 70))
    expected = f"{segment_name(71)}: entry 0: the link commits to a head of segment 70"
    with pytest.raises(IntegrityError, match=expected):
        verify_audit_chain(chain, [chain_signer.public_key])


def segment_entries(path: Path) -> list[AuditEntry]:
    return [record for record in read_audit_log(path) if isinstance(record, AuditEntry)]


def test_a_renamed_later_segment_cannot_pose_as_segment_zero(chain: Path, chain_signer: MemorySigner) -> None:
    for number in range(0, 5):
        segment(chain, number).unlink()
    os.rename(segment(chain, 5), segment(chain, 0))
    for number in range(6, 200):
        segment(chain, number).unlink()
    with pytest.raises(IntegrityError, match=f"{segment_name(0)}: entry 0: segment 0 begins with a link"):
        verify_audit_chain(chain, [chain_signer.public_key])


def test_archived_segments_verify_from_the_oldest_remaining(
    tmp_path: Path, chain: Path, chain_signer: MemorySigner
) -> None:
    sealed_head = verify_audit_chain(chain, [chain_signer.public_key], from_segment=149).anchor
    moved = archive_segments(chain, tmp_path / "archive", before_segment=150)
    assert len(moved) == 150 and list_segments(chain)[0][0] == 150
    with pytest.raises(IntegrityError, match=r"segments 0\.\.149 are missing") as caught:
        verify_audit_chain(chain, [chain_signer.public_key])
    assert caught.value.hint is not None and "--from-segment" in caught.value.hint
    report = verify_audit_chain(chain, [chain_signer.public_key], from_segment=150)
    assert report.first_segment == 150 and report.segments == 50 and report.first_index == 150 * 3
    assert report.anchor is not None and report.anchor.tree_size == SEGMENT_ENTRIES
    assert sealed_head is not None and sealed_head.log_id != report.anchor.log_id
    # the archive itself still verifies as the prefix of the same chain
    archived = verify_audit_chain(tmp_path / "archive", [chain_signer.public_key])
    assert archived.chain_id == report.chain_id and archived.last_checkpoint == report.anchor
    # the anchor's signature must come from a trusted key
    with pytest.raises(SignatureError, match=f"{segment_name(150)}: .*not trusted"):
        verify_audit_chain(chain, [MemorySigner().public_key], from_segment=150)
    with pytest.raises(FormatError, match="cannot archive the newest segment"):
        archive_segments(chain, tmp_path / "archive", before_segment=200)


def test_the_writer_resumes_after_archiving_and_after_a_crash_mid_rollover(
    tmp_path: Path, chain: Path, chain_signer: MemorySigner
) -> None:
    archive_segments(chain, tmp_path / "archive", before_segment=199)
    (chain / f".{segment_name(200)}.rotating").write_bytes(b"half a rollover")
    with SegmentedAuditLog.open(chain, chain_signer, segment_entries_max=SEGMENT_ENTRIES) as log:
        assert log.segment_number == 199
        log.append(event(1))  # fills segment 199
        log.append(event(2))
        assert log.segment_number == 200 and log.total_entries == 200 * 3 + 2
    assert not (chain / f".{segment_name(200)}.rotating").exists()
    report = verify_audit_chain(chain, [chain_signer.public_key], from_segment=199)
    assert report.last_segment == 200 and report.fully_signed


def test_a_single_file_log_from_before_moves_in_as_segment_zero(tmp_path: Path) -> None:
    signer = MemorySigner()
    legacy = tmp_path / "audit.log"
    with AuditLog.open(legacy, signer) as old:
        for number in range(5):
            old.append(event(number))
    before = legacy.read_bytes()
    with SegmentedAuditLog.open(
        tmp_path / "audit", signer, segment_entries_max=SEGMENT_ENTRIES, legacy_file=legacy
    ) as log:
        legacy_report = verify_audit_log(segment(tmp_path / "audit", 0), [signer.public_key])
        assert log.segment_number == 0 and log.chain_id == legacy_report.log_id
        log.append(event(5))
        assert log.segment_number == 1 and log.first_index == 5
    assert not legacy.exists() and segment(tmp_path / "audit", 0).read_bytes() == before
    report = verify_audit_chain(tmp_path / "audit", [signer.public_key])
    assert report.segments == 2 and report.entries == 7


def test_concurrent_appends_across_rollovers(tmp_path: Path) -> None:
    signer = MemorySigner()
    directory = tmp_path / "audit"
    with SegmentedAuditLog.open(directory, signer, segment_entries_max=5) as log:

        def appender(base: int) -> None:
            for number in range(50):
                log.append(event(base + number))

        threads = [threading.Thread(target=appender, args=(base * 1000,)) for base in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        async def many() -> None:
            await asyncio.gather(*(log.append_async(event(10_000 + number)) for number in range(200)))

        asyncio.run(many())
    report = verify_audit_chain(directory, [signer.public_key])
    decisions = [r for _, r in read_audit_chain(directory) if getattr(r, "action", None) == "write"]
    assert len(decisions) == 400 and report.entries == 400 + report.segments - 1
    links = [r for _, r in read_audit_chain(directory) if getattr(r, "action", None) == LINK_ACTION]
    assert len(links) == report.segments - 1 == 100 - 1


def test_the_cli_verifies_a_directory_and_names_the_bad_segment(
    tmp_path: Path, chain: Path, chain_signer: MemorySigner
) -> None:
    runner = CliRunner()
    key = raw_public_key(chain_signer.public_key).hex()
    result = runner.invoke(audit_app, ["verify", str(chain), "--trust", key])
    assert result.exit_code == ExitCode.OK, result.output
    assert "segments 0..199" in result.stdout
    archive_segments(chain, tmp_path / "archive", before_segment=20)
    result = runner.invoke(audit_app, ["verify", str(chain), "--trust", key])
    assert result.exit_code == ExitCode.INTEGRITY_FAILURE
    arguments = ["verify", str(chain), "--trust", key, "--from-segment", "20"]
    result = runner.invoke(audit_app, [*arguments, "--json"])
    assert result.exit_code == ExitCode.OK, result.output
    flip(segment(chain, 33), entry_offsets(segment(chain, 33))[1] + 50)
    result = runner.invoke(audit_app, ["verify", str(chain), "--trust", key, "--from-segment", "20"])
    assert result.exit_code == ExitCode.INTEGRITY_FAILURE
    assert segment_name(33) in result.output and "entry 1" in result.output
    one_file = str(segment(chain, 40))
    result = runner.invoke(audit_app, ["verify", one_file, "--trust", key, "--from-segment", "2"])
    assert result.exit_code == ExitCode.USAGE_ERROR


def test_a_chain_with_no_signed_checkpoint_is_refused_even_with_an_unsigned_tail_allowed(
    tmp_path: Path,
) -> None:
    signer = MemorySigner()
    directory = tmp_path / "audit"
    log = SegmentedAuditLog.open(directory, signer, checkpoint_every_entries=100, checkpoint_every_s=3600)
    log.append(event(0))
    with pytest.raises(SignatureError, match="no entry is covered by a signed checkpoint"):
        verify_audit_chain(directory, [signer.public_key], allow_unsigned_tail=True)
    trust = ["--trust", raw_public_key(signer.public_key).hex()]
    result = CliRunner().invoke(audit_app, ["verify", str(directory), *trust, "--allow-unsigned-tail"])
    assert result.exit_code == ExitCode.SIGNATURE_UNTRUSTED, result.output
    log.close()
    report = verify_audit_chain(directory, [signer.public_key])
    assert report.fully_signed


def test_pages_walk_the_whole_history_with_proofs_in_each_segments_tree(tmp_path: Path) -> None:
    from maif.format import merkle
    from maif.security.audit_chain import read_chain_page

    signer = MemorySigner()
    with SegmentedAuditLog.open(tmp_path / "chain", signer, segment_entries_max=4) as log:
        for number in range(30):
            log.append(event(number))
        total, seen, start, segments = log.total_entries, [], 0, set()
        while start < total:
            page = read_chain_page(log, start, 3)
            assert page is not None
            segments.add(page.segment)
            for entry, proof in zip(page.entries, page.proofs, strict=True):
                merkle.verify_inclusion(entry.hash, entry.index, page.tree_size, proof, page.root)
                seen.append(page.first_index + entry.index)
            if not page.current:  # a sealed segment's proofs are in the tree its sealed head signs
                assert page.checkpoint is not None
                assert (page.checkpoint.tree_size, page.checkpoint.root) == (page.tree_size, page.root)
            start = min(page.first_index + page.tree_size, start + 3)
        assert seen == list(range(total)) and len(segments) > 8
        only_mine = read_chain_page(log, 0, 4, lambda entry: entry.resource == "block/1")
        assert only_mine is not None and [entry.resource for entry in only_mine.entries] == ["block/1"]
        archive_segments(tmp_path / "chain", tmp_path / "archive", before_segment=3)
        assert read_chain_page(log, 0, 3) is None  # archived: not served, never mistaken for others
        assert read_chain_page(log, total, 3) is None
        later = read_chain_page(log, 12, 3)
        assert later is not None and later.first_index + later.entries[0].index == 12


def test_the_segment_size_comes_from_the_security_config_and_is_validated(tmp_path: Path) -> None:
    import secrets

    from maif.config import SecurityConfig, load_section
    from maif.errors import ConfigError
    from maif.security.manager import create_maif_security_manager

    for bad in ({"audit_segment_entries": 1}, {"audit_segment_entries": (1 << 20) + 1},
                {"audit_segment_bytes": 4095}, {"audit_segment_entries": "many"}):
        with pytest.raises(ConfigError):
            load_section(SecurityConfig, bad)
    manager = create_maif_security_manager(
        {"audit_segment_entries": 3}, data_dir=tmp_path / "security", master_key=secrets.token_bytes(32)
    )
    with manager:
        log = manager.audit_log
        for number in range(10):
            log.append(event(number))
        assert isinstance(log, SegmentedAuditLog) and log.segment_number >= 3

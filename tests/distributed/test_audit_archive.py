"""Archiving audit segments to a real S3 (SeaweedFS): the rest still verifies, the whole chain verifies with
the archive fetched back, tampering in S3 is located, and a process killed mid-archive loses nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import maif
from maif.cli.audit import audit_app
from maif.cli.exit_codes import ExitCode
from maif.errors import StorageError
from maif.security import audit_archive
from maif.security.audit_archive import MANIFEST_NAME, archive_segments_to_store, read_manifest
from maif.security.audit_chain import SegmentedAuditLog, list_segments, segment_name
from maif.security.keys import MemorySigner, raw_public_key
from maif.storage.backends.s3 import S3ObjectStore

PREFIX = "audit-archive"
SEGMENTS = 10  # segments 0..9 (the link entry and two decisions each), 9 the current one


@pytest.fixture
def world(tmp_path: Path, s3_settings: Any, fresh_s3_bucket: str) -> dict[str, Any]:
    signer = MemorySigner()
    directory = tmp_path / "audit"
    with SegmentedAuditLog.open(directory, signer, segment_entries_max=3) as log:
        for number in range(2 * SEGMENTS):
            log.append({"actor": "agent", "action": "write", "resource": f"b/{number}", "decision": "allow"})
    assert len(list_segments(directory)) == SEGMENTS
    return {
        "dir": directory,
        "key": raw_public_key(signer.public_key).hex(),
        "endpoint": s3_settings.endpoint,
        "bucket": fresh_s3_bucket,
        "url": f"s3://{fresh_s3_bucket}/{PREFIX}",
    }


def cli(*args: str) -> Any:
    return CliRunner().invoke(audit_app, [*args], catch_exceptions=False)


def archive(world: dict[str, Any], before: int) -> Any:
    return cli("archive", str(world["dir"]), "--before-segment", str(before), "--to", world["url"],
               "--s3-endpoint", world["endpoint"], "--json")


def verify(world: dict[str, Any], *extra: str) -> Any:
    return cli("verify", str(world["dir"]), "--trust", world["key"], "--json", *extra)


def store(world: dict[str, Any]) -> S3ObjectStore:
    return S3ObjectStore(endpoint_url=world["endpoint"], bucket=world["bucket"], prefix=PREFIX)


def s3(world: dict[str, Any], operation: str, *args: Any) -> Any:
    async def run() -> Any:
        objects = store(world)
        try:
            return await getattr(objects, operation)(*args)
        finally:
            await objects.close()

    return asyncio.run(run())


def test_archived_segments_leave_a_verifiable_remainder_and_the_whole_chain_verifies_fetched(
    world: dict[str, Any],
) -> None:
    result = archive(world, 6)
    assert result.exit_code == 0, result.output
    assert [n for n, _ in list_segments(world["dir"])] == list(range(6, SEGMENTS))
    manifest = read_manifest(world["dir"])
    assert manifest is not None and [e.segment for e in manifest.segments] == list(range(6))
    assert s3(world, "list") == [entry.key for entry in manifest.segments]

    remainder = verify(world)  # no --from-segment needed: the manifest says what was archived, and it links
    assert remainder.exit_code == 0, remainder.output
    document = json.loads(remainder.stdout)
    assert document["first_segment"] == 6 and document["archived"]["to"] == world["url"]
    assert document["archived"]["keys"] == [entry.key for entry in manifest.segments]

    human = cli("verify", str(world["dir"]), "--trust", world["key"])
    assert human.exit_code == 0 and f"archived in {world['url']}" in human.output
    assert verify(world, "--from-segment", "7").exit_code == 0  # a later start still links to a local one

    whole = verify(world, "--fetch-archived")
    assert whole.exit_code == 0, whole.output
    document = json.loads(whole.stdout)
    assert (document["first_segment"], document["last_segment"]) == (0, SEGMENTS - 1)
    assert document["entries"] == 3 * SEGMENTS - 1 and document["fetched"]["segments"] == 6

    again = archive(world, 8)  # archiving more later extends the same archive
    assert again.exit_code == 0, again.output
    assert verify(world, "--fetch-archived").exit_code == 0


def segment_bytes(world: dict[str, Any], number: int) -> bytes:
    manifest = read_manifest(world["dir"])
    assert manifest is not None
    return bytes(s3(world, "get", manifest.segments[number].key))


@pytest.mark.parametrize("attack", ["flip", "delete", "swap"])
def test_an_archived_segment_tampered_with_in_s3_is_detected_and_located(
    world: dict[str, Any], attack: str
) -> None:
    assert archive(world, 6).exit_code == 0
    manifest = read_manifest(world["dir"])
    assert manifest is not None
    target = manifest.segments[3].key
    if attack == "flip":
        data = bytearray(segment_bytes(world, 3))
        data[len(data) // 2] ^= 0x01
        s3(world, "put", target, bytes(data))
    elif attack == "delete":
        s3(world, "delete", target)
    else:
        s3(world, "put", target, segment_bytes(world, 2))
    result = verify(world, "--fetch-archived")
    assert result.exit_code == ExitCode.INTEGRITY_FAILURE, result.output
    message = result.output
    assert "archived audit segment 3" in message and target in message
    expected = {"flip": "altered or swapped", "delete": "missing", "swap": "altered or swapped"}[attack]
    assert expected in message
    assert verify(world).exit_code == 0  # what remains locally is untouched and still links


def test_a_segment_whose_manifest_record_differs_is_refused_even_if_s3_agrees(world: dict[str, Any]) -> None:
    """Tampering with S3 *and* the manifest's digest: the fetched segment must still link into the chain."""
    assert archive(world, 6).exit_code == 0
    manifest = read_manifest(world["dir"])
    assert manifest is not None
    swapped = segment_bytes(world, 2)
    s3(world, "put", manifest.segments[3].key, swapped)
    path = world["dir"] / MANIFEST_NAME
    document = json.loads(path.read_bytes())
    document["segments"][3]["digest"] = document["segments"][2]["digest"]
    document["segments"][3]["size"] = document["segments"][2]["size"]
    path.write_text(json.dumps(document))
    result = verify(world, "--fetch-archived")
    assert result.exit_code == ExitCode.INTEGRITY_FAILURE, result.output
    assert "archived audit segment 3" in result.output and "renamed or reordered" in result.output


KILLER = """
import asyncio, os, signal, sys
from maif.security.audit_archive import archive_segments_to_store
from maif.storage.backends.s3 import S3ObjectStore

class DiesAfterUploading(S3ObjectStore):
    async def put(self, key, data):
        await super().put(key, data)
        if key.endswith({victim!r}):
            os.kill(os.getpid(), signal.SIGKILL)  # after the upload, before the read-back and the removal

async def main():
    store = DiesAfterUploading(endpoint_url={endpoint!r}, bucket={bucket!r}, prefix={prefix!r})
    await archive_segments_to_store({directory!r}, store, before_segment=6, location={url!r},
                                    endpoint={endpoint!r})

asyncio.run(main())
"""


def test_a_process_killed_between_upload_and_removal_loses_nothing_and_a_rerun_finishes(
    world: dict[str, Any],
) -> None:
    script = textwrap.dedent(KILLER).format(
        victim=segment_name(3), endpoint=world["endpoint"], bucket=world["bucket"], prefix=PREFIX,
        directory=str(world["dir"]), url=world["url"],
    )
    source = str(Path(maif.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": source}
    killed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120)
    assert killed.returncode == -9, killed.stderr.decode()
    assert [n for n, _ in list_segments(world["dir"])] == list(range(3, SEGMENTS))  # 3 uploaded, kept
    manifest = read_manifest(world["dir"])
    assert manifest is not None and len(manifest.segments) == 3
    assert verify(world).exit_code == 0
    assert verify(world, "--fetch-archived").exit_code == 0

    uploads: list[str] = []

    class Counting(S3ObjectStore):
        async def put(self, key: str, data: bytes) -> None:
            uploads.append(key)
            await super().put(key, data)

    async def rerun() -> list[int]:
        objects = Counting(endpoint_url=world["endpoint"], bucket=world["bucket"], prefix=PREFIX)
        try:
            done = await archive_segments_to_store(world["dir"], objects, before_segment=6,
                                                   location=world["url"], endpoint=world["endpoint"])
        finally:
            await objects.close()
        return [entry.segment for entry in done]

    assert asyncio.run(rerun()) == [3, 4, 5]
    assert not any(key.endswith(segment_name(3)) for key in uploads)  # its verified copy was reused
    assert [n for n, _ in list_segments(world["dir"])] == list(range(6, SEGMENTS))
    assert verify(world, "--fetch-archived").exit_code == 0


def test_a_failure_after_the_manifest_before_removal_leaves_it_verifiable_and_a_rerun_removes_it(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_remove = audit_archive._remove_durably

    def fail_on_segment_2(path: Path) -> None:
        if path.name == segment_name(2):
            raise StorageError(f"cannot remove archived audit segment {path}: injected")
        real_remove(path)

    monkeypatch.setattr(audit_archive, "_remove_durably", fail_on_segment_2)
    failed = archive(world, 6)
    assert failed.exit_code != 0 and "injected" in failed.output
    monkeypatch.setattr(audit_archive, "_remove_durably", real_remove)
    manifest = read_manifest(world["dir"])
    assert manifest is not None and len(manifest.segments) == 3  # 2 recorded, still here
    assert list_segments(world["dir"])[0][0] == 2
    assert verify(world).exit_code == 0
    assert verify(world, "--fetch-archived").exit_code == 0
    assert archive(world, 6).exit_code == 0
    assert list_segments(world["dir"])[0][0] == 6
    assert verify(world, "--fetch-archived").exit_code == 0


def test_a_local_segment_altered_after_its_copy_was_recorded_is_not_removed(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(path: Path) -> None:
        raise StorageError("injected")

    monkeypatch.setattr(audit_archive, "_remove_durably", never)
    assert archive(world, 1).exit_code != 0
    monkeypatch.undo()
    local = world["dir"] / segment_name(0)
    data = bytearray(local.read_bytes())
    data[-5] ^= 0x01
    local.write_bytes(bytes(data))
    result = archive(world, 1)
    assert result.exit_code == ExitCode.INTEGRITY_FAILURE, result.output
    assert local.exists()

"""Every `maif` command end to end: happy paths, JSON output, and the documented exit codes on failure."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import typer.main
import typer.testing
from typer.testing import CliRunner, Result

from maif.cli.demo_media import sunset_png
from maif.cli.exit_codes import ExitCode
from maif.cli.main import app
from maif.format import signing
from maif.format.block import MAIFBlock
from maif.format.container import ContainerReader, ContainerWriter

runner = CliRunner()
# Typer rebuilds the click command from type hints on every invoke (most of the cost of a call); build it
# once here. Patched per call, so nothing outside these tests sees it.
_COMMAND = typer.main.get_command(app)


def invoke(arguments: list[str]) -> Result:
    with mock.patch.object(typer.testing, "_get_command", lambda _app: _COMMAND):
        return runner.invoke(app, arguments)


def run(*args: str | Path) -> Any:
    return invoke([str(arg) for arg in args])


def run_json(*args: str | Path, code: int = 0) -> dict[str, Any]:
    result = run(*args, "--json")
    assert result.exit_code == code, (result.stdout, result.stderr)
    return json.loads(result.stdout)


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    run_json("keygen", "-o", directory)
    return directory


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "deeper").mkdir(parents=True)
    (root / "notes.txt").write_text("field notes\n")
    (root / "graph.jsonld").write_text('{"@context": {"@vocab": "https://schema.org/"}, "name": "g"}')
    (root / "deeper" / "sunset.png").write_bytes(sunset_png(24))
    np.save(root / "deeper" / "vectors.npy", np.arange(12, dtype=np.float32).reshape(3, 4))
    (root / "deeper" / "random.bin").write_bytes(bytes(range(256)) * 40)
    return root


@pytest.fixture
def packed(tmp_path: Path, keys: Path, corpus: Path) -> Path:
    output = tmp_path / "corpus.maif"
    run_json("pack", corpus, "-o", output, "--key", keys / "maif.key")
    return output


# --- keygen ------------------------------------------------------------------------------------


def test_keygen_writes_a_private_key_only_its_owner_can_read(tmp_path: Path) -> None:
    document = run_json("keygen", "-o", tmp_path / "k")
    private, public = tmp_path / "k" / "maif.key", tmp_path / "k" / "maif.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert document["kind"] == "ed25519"
    assert document["key_id"] == signing.key_id(signing.load_public_key(public)).hex()
    assert signing.load_private_key(private).public_key() == signing.load_public_key(public)


def test_keygen_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    first = run_json("keygen", "-o", tmp_path)
    refused = run("keygen", "-o", tmp_path)
    assert refused.exit_code == ExitCode.USAGE_ERROR
    assert "--force" in refused.stderr and "Traceback" not in refused.stderr
    replaced = run_json("keygen", "-o", tmp_path, "--force")
    assert replaced["key_id"] != first["key_id"]


def test_keygen_x25519_pair(tmp_path: Path) -> None:
    document = run_json("keygen", "-o", tmp_path, "--x25519")
    assert document["kind"] == "x25519"
    assert stat.S_IMODE((tmp_path / "maif-x25519.key").stat().st_mode) == 0o600
    assert (tmp_path / "maif-x25519.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")


# --- pack / inspect ----------------------------------------------------------------------------


def test_pack_detects_types_records_provenance_and_skips_symlinks(
    tmp_path: Path, keys: Path, corpus: Path
) -> None:
    (corpus / "escape").symlink_to(keys / "maif.key")
    output = tmp_path / "out.maif"
    document = run_json("pack", corpus, "-o", output, "--key", keys / "maif.key", "--agent", "agent-7")
    types = {row["path"]: row["type"] for row in document["blocks"]}
    assert types == {
        "corpus/deeper/random.bin": "BLOB",
        "corpus/deeper/sunset.png": "IMAG",
        "corpus/deeper/vectors.npy": "EMBD",
        "corpus/graph.jsonld": "KGRF",
        "corpus/notes.txt": "TEXT",
    }
    assert list(types) == sorted(types)  # sorted walk, depth first
    assert document["skipped"] == [{"path": str(corpus / "escape"), "reason": "symbolic link (not followed)"}]
    with ContainerReader.open(output) as reader:
        block = reader.block(reader.find(document["blocks"][-1]["id"]))
        assert block.agent_id == "agent-7"
        assert block.data == (corpus / "notes.txt").read_bytes()
        assert block.metadata["path"] == "corpus/notes.txt"
        assert block.metadata["size_bytes"] == len(block.data)
        assert block.metadata["mtime_ns"] == (corpus / "notes.txt").stat().st_mtime_ns
        del block


def test_pack_refuses_to_overwrite_and_leaves_no_partial_file(
    tmp_path: Path, keys: Path, corpus: Path
) -> None:
    output = tmp_path / "out.maif"
    output.write_text("precious")
    refused = run("pack", corpus, "-o", output, "--key", keys / "maif.key")
    assert refused.exit_code == ExitCode.USAGE_ERROR
    assert output.read_text() == "precious"
    missing = run(
        "pack", corpus, tmp_path / "no-such-file", "-o", tmp_path / "new.maif", "--key", keys / "maif.key"
    )
    assert missing.exit_code == ExitCode.MALFORMED_FILE
    assert "Traceback" not in missing.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["corpus", "keys", "out.maif"]


def test_pack_with_a_missing_or_wrong_key_is_a_key_error(tmp_path: Path, keys: Path, corpus: Path) -> None:
    for key in (tmp_path / "absent.key", keys / "maif.pub"):
        result = run("pack", corpus, "-o", tmp_path / "x.maif", "--key", key)
        assert result.exit_code == ExitCode.KEY_ERROR, result.stderr
        assert "Traceback" not in result.stderr


def test_inspect_shows_versions_signers_and_block_table(packed: Path, keys: Path) -> None:
    document = run_json("inspect", packed)
    key_id = signing.key_id(signing.load_public_key(keys / "maif.pub")).hex()
    assert document["block_count"] == 5 and len(document["versions"]) == 1
    assert document["signer_key_ids"] == [key_id]
    assert document["versions"][0]["signer_key_ids"] == [key_id]
    rows = {row["path"]: row for row in document["blocks"]}
    assert [row["index"] for row in document["blocks"]] == list(range(5))
    assert rows["corpus/deeper/random.bin"]["flags"] == ["compressed"]  # 10 KiB of a repeating pattern
    assert rows["corpus/notes.txt"]["payload_bytes"] == len("field notes\n")
    human = run("inspect", packed)
    assert human.exit_code == 0 and "IMAG" in human.stdout


def test_human_pack_prints_a_summary_and_lists_files_only_when_verbose(
    tmp_path: Path, keys: Path, corpus: Path
) -> None:
    quiet = run("pack", corpus, "-o", tmp_path / "quiet.maif", "--key", keys / "maif.key")
    assert quiet.exit_code == 0 and "5 blocks" in quiet.stdout and "notes.txt" not in quiet.stdout
    verbose = run("pack", corpus, "-o", tmp_path / "loud.maif", "--key", keys / "maif.key", "-v")
    assert verbose.exit_code == 0 and "corpus/notes.txt" in verbose.stdout


# --- verify ------------------------------------------------------------------------------------


def _flip_byte_in_block(container: Path, index: int) -> None:
    with ContainerReader.open(container) as reader:
        entry = reader.entry(index)
    offset = entry.offset + entry.length - 1
    data = bytearray(container.read_bytes())
    data[offset] ^= 0x40
    container.write_bytes(bytes(data))


def test_verify_passes_under_the_trusted_key(packed: Path, keys: Path) -> None:
    document = run_json("verify", packed, "--trust", keys / "maif.pub")
    assert document["ok"] and document["verdict"] == "ok" and document["problems"] == []
    assert run_json("verify", packed, "--trust", keys / "maif.pub", "--quick")["mode"] == "quick"


def test_verify_takes_a_trusted_key_as_64_hex_digits(tmp_path: Path, packed: Path, keys: Path) -> None:
    """The form `/v1/export` and `maif audit` print: no PEM conversion needed to verify offline."""
    raw = signing.load_public_key(keys / "maif.pub").public_bytes_raw().hex()
    assert run_json("verify", packed, "--trust", raw)["verdict"] == "ok"
    run_json("keygen", "-o", tmp_path / "stranger")
    stranger = signing.load_public_key(tmp_path / "stranger" / "maif.pub").public_bytes_raw().hex()
    run_json("verify", packed, "--trust", stranger, code=ExitCode.SIGNATURE_UNTRUSTED)
    run_json("verify", packed, "--trust", "f" * 63 + "g", code=ExitCode.KEY_ERROR)  # neither hex nor a file


def test_verify_names_the_tampered_block_and_exits_1(packed: Path, keys: Path) -> None:
    _flip_byte_in_block(packed, 2)
    document = run_json("verify", packed, "--trust", keys / "maif.pub", code=ExitCode.INTEGRITY_FAILURE)
    assert document["verdict"] == "integrity_failure"
    assert [problem["block_index"] for problem in document["problems"]] == [2]
    human = run("verify", packed, "--trust", keys / "maif.pub")
    assert human.exit_code == ExitCode.INTEGRITY_FAILURE and "NOT VERIFIED" in human.stdout


def test_verify_lists_every_damaged_block(packed: Path, keys: Path) -> None:
    for index in (0, 3):
        _flip_byte_in_block(packed, index)
    document = run_json("verify", packed, "--trust", keys / "maif.pub", code=ExitCode.INTEGRITY_FAILURE)
    assert sorted(problem["block_index"] for problem in document["problems"]) == [0, 3]


def test_verify_refuses_an_untrusted_key_with_exit_3(tmp_path: Path, packed: Path) -> None:
    run_json("keygen", "-o", tmp_path / "stranger")
    document = run_json(
        "verify", packed, "--trust", tmp_path / "stranger" / "maif.pub", code=ExitCode.SIGNATURE_UNTRUSTED
    )
    assert not document["ok"] and document["problems"][0]["kind"] == "signature"


def test_verify_a_file_resigned_by_another_key_is_refused(tmp_path: Path, packed: Path, keys: Path) -> None:
    run_json("keygen", "-o", tmp_path / "forger")
    run_json(
        "append",
        packed,
        tmp_path / "keys" / "maif.pub",
        "--key",
        tmp_path / "forger" / "maif.key",
        "--trust",
        keys / "maif.pub",
    )  # a co-owner extends it, signing with their own key
    result = run("verify", packed, "--trust", keys / "maif.pub")
    assert result.exit_code == ExitCode.SIGNATURE_UNTRUSTED  # version 1 is not signed by a trusted key


def test_verify_require_signer_checks_the_last_versions_signers(tmp_path: Path) -> None:
    """Version 0 is signed by A and B, version 1 by A only: B is in the union of signers but did not sign
    the last version, so `--require-signer B` fails (exit 3) and `--require-signer A` passes."""
    for name in ("a", "b"):
        run_json("keygen", "-o", tmp_path / name)
    a, b = (signing.load_private_key(tmp_path / name / "maif.key") for name in ("a", "b"))
    a_pub, b_pub = tmp_path / "a" / "maif.pub", tmp_path / "b" / "maif.pub"
    container = tmp_path / "cosigned.maif"
    with ContainerWriter.create(container) as writer:
        writer.add(MAIFBlock(data=b"first"))
        writer.commit([a, b])
        writer.add(MAIFBlock(data=b"second"))
        writer.commit([a])
    a_id, b_id = (signing.key_id(key.public_key()).hex() for key in (a, b))

    passed = run_json("verify", container, "--trust", a_pub, "--trust", b_pub, "--require-signer", a_pub)
    assert passed["signer_key_ids"] == [a_id, b_id]
    assert passed["signers_by_version"] == [[a_id, b_id], [a_id]]
    assert passed["last_version_signer_key_ids"] == [a_id] and passed["required_signer_key_ids"] == [a_id]

    # B is trusted because it is required (no --trust for it needed), yet it did not sign version 1.
    for extra in ([], ["--trust", b_pub]):
        required = ["--require-signer", a_pub, "--require-signer", b_pub]
        refused = run_json(
            "verify", container, "--trust", a_pub, *extra, *required, code=ExitCode.SIGNATURE_UNTRUSTED
        )
        problems = [(p["region"], p["kind"]) for p in refused["problems"]]
        assert problems == [("version 1 manifest", "signature")]
        assert b_id in refused["problems"][0]["reason"]
    human = run("verify", container, "--trust", a_pub, "--require-signer", b_pub)
    assert human.exit_code == ExitCode.SIGNATURE_UNTRUSTED and "required signer" in human.stdout
    not_a_key = tmp_path / "not-a-key.pem"
    not_a_key.write_text("hello")
    run_json("verify", container, "--trust", a_pub, "--require-signer", not_a_key, code=ExitCode.KEY_ERROR)


@pytest.mark.parametrize(
    "contents",
    [b"", b"not a maif file at all" * 10, b"\x89MAIF\r\n\x1a" + b"\x00" * 200, os.urandom(4096)],
    ids=["empty", "text", "magic-then-zeros", "random"],
)
def test_verify_garbage_is_malformed_with_exit_4(tmp_path: Path, keys: Path, contents: bytes) -> None:
    garbage = tmp_path / "garbage.maif"
    garbage.write_bytes(contents)
    result = run("verify", garbage, "--trust", keys / "maif.pub")
    assert result.exit_code == ExitCode.MALFORMED_FILE, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and result.stderr.startswith("error: ")
    document = run_json("inspect", garbage, code=ExitCode.MALFORMED_FILE)
    assert document["error"]["exit_code"] == ExitCode.MALFORMED_FILE


def test_verify_torn_tail_and_missing_file(tmp_path: Path, packed: Path, keys: Path) -> None:
    complete = packed.read_bytes()
    extra = tmp_path / "extra.txt"
    extra.write_text("second version")
    run_json("append", packed, extra, "--key", keys / "maif.key", "--trust", keys / "maif.pub")
    torn = tmp_path / "torn.maif"
    torn.write_bytes(packed.read_bytes()[:-10])  # version 1's trailer is cut: version 0 is what remains
    document = run_json("verify", torn, "--trust", keys / "maif.pub", code=ExitCode.INTEGRITY_FAILURE)
    assert len(document["versions"]) == 1 and document["problems"][0]["block_index"] is None
    assert run_json("inspect", torn)["torn_tail_bytes"] == len(packed.read_bytes()) - 10 - len(complete)
    missing = run_json(
        "verify", tmp_path / "absent.maif", "--trust", keys / "maif.pub", code=ExitCode.MALFORMED_FILE
    )
    assert missing["ok"] is False


def test_verify_without_trust_is_a_usage_error(packed: Path) -> None:
    assert run("verify", packed).exit_code == ExitCode.USAGE_ERROR


# --- unpack ------------------------------------------------------------------------------------


def test_unpack_round_trips_bytes_and_mtimes(tmp_path: Path, packed: Path, corpus: Path, keys: Path) -> None:
    destination = tmp_path / "restored"
    document = run_json("unpack", packed, "-o", destination, "--trust", keys / "maif.pub")
    assert document["files_written"] == 5 and document["verified"] is True
    for original in corpus.rglob("*"):
        if original.is_file():
            restored = destination / "corpus" / original.relative_to(corpus)
            assert restored.read_bytes() == original.read_bytes()
            assert restored.stat().st_mtime_ns == original.stat().st_mtime_ns
    again = run("unpack", packed, "-o", destination)
    assert again.exit_code == ExitCode.USAGE_ERROR  # files exist; --force replaces them
    assert run("unpack", packed, "-o", destination, "--force").exit_code == 0


def test_unpack_with_trust_writes_nothing_from_a_tampered_container(
    tmp_path: Path, packed: Path, keys: Path
) -> None:
    _flip_byte_in_block(packed, 4)
    destination = tmp_path / "restored"
    result = run("unpack", packed, "-o", destination, "--trust", keys / "maif.pub")
    assert result.exit_code == ExitCode.INTEGRITY_FAILURE
    assert not destination.exists() or not any(destination.iterdir())


def _container_with_paths(path: Path, key_dir: Path, recorded_paths: list[str]) -> None:
    key = signing.load_private_key(key_dir / "maif.key")
    with ContainerWriter.create(path) as writer:
        for recorded in recorded_paths:
            writer.add(MAIFBlock(data=b"payload of " + recorded.encode(), metadata={"path": recorded}))
        writer.commit([key])


@pytest.mark.parametrize(
    "evil", ["../evil", "safe/../../evil", "/tmp/maif-cli-test-evil", "a/./b", "x\\..\\y"]
)
def test_unpack_refuses_path_traversal_and_writes_nothing(tmp_path: Path, keys: Path, evil: str) -> None:
    container = tmp_path / "evil.maif"
    _container_with_paths(container, keys, ["innocent.txt", evil])
    destination = tmp_path / "out" / "inside"
    result = run("unpack", container, "-o", destination, "--trust", keys / "maif.pub")
    assert result.exit_code == ExitCode.UNSAFE_PATH, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not Path("/tmp/maif-cli-test-evil").exists()
    assert not destination.exists() or not any(destination.iterdir())  # refused before writing anything


def test_unpack_refuses_a_symlink_planted_in_the_destination(tmp_path: Path, keys: Path) -> None:
    container = tmp_path / "plain.maif"
    _container_with_paths(container, keys, ["docs/readme.txt"])
    destination, outside = tmp_path / "out", tmp_path / "outside"
    destination.mkdir()
    outside.mkdir()
    (destination / "docs").symlink_to(outside, target_is_directory=True)
    result = run("unpack", container, "-o", destination, "--force")
    assert result.exit_code == ExitCode.UNSAFE_PATH
    assert list(outside.iterdir()) == []


def test_unpack_skips_blocks_without_a_recorded_path(tmp_path: Path, keys: Path) -> None:
    container = tmp_path / "library.maif"
    key = signing.load_private_key(keys / "maif.key")
    with ContainerWriter.create(container) as writer:
        writer.add(MAIFBlock(id="made-by-an-agent", data=b"no path"))
        writer.commit([key])
    document = run_json("unpack", container, "-o", tmp_path / "out")
    assert document["files_written"] == 0
    assert document["skipped"] == [{"index": 0, "id": "made-by-an-agent", "reason": "no recorded path"}]


# --- encryption --------------------------------------------------------------------------------


def test_encrypted_pack_needs_the_recipient_key(tmp_path: Path, keys: Path, corpus: Path) -> None:
    run_json("keygen", "-o", tmp_path / "alice", "--x25519")
    run_json("keygen", "-o", tmp_path / "mallory", "--x25519")
    container = tmp_path / "secret.maif"
    document = run_json(
        "pack",
        corpus,
        "-o",
        container,
        "--key",
        keys / "maif.key",
        "--encrypt-for",
        tmp_path / "alice" / "maif-x25519.pub",
    )
    assert document["encrypted"] is True
    assert b"field notes" not in container.read_bytes()
    inspected = run_json("inspect", container)
    assert all(row["flags"][-1] == "encrypted" and row["path"] is None for row in inspected["blocks"])
    assert run("unpack", container, "-o", tmp_path / "o1").exit_code == ExitCode.KEY_ERROR
    wrong = run("unpack", container, "-o", tmp_path / "o2", "--key", tmp_path / "mallory" / "maif-x25519.key")
    assert wrong.exit_code == ExitCode.KEY_ERROR and "Traceback" not in wrong.stderr
    run_json(
        "unpack",
        container,
        "-o",
        tmp_path / "o3",
        "--key",
        tmp_path / "alice" / "maif-x25519.key",
        "--trust",
        keys / "maif.pub",
    )
    assert (tmp_path / "o3" / "corpus" / "notes.txt").read_text() == "field notes\n"
    run_json(
        "verify",
        container,
        "--trust",
        keys / "maif.pub",
        "--decrypt-key",
        tmp_path / "alice" / "maif-x25519.key",
    )


def test_verify_with_a_foreign_decryption_key_says_wrong_key_not_tampered(
    tmp_path: Path, keys: Path, corpus: Path
) -> None:
    run_json("keygen", "-o", tmp_path / "alice", "--x25519")
    run_json("keygen", "-o", tmp_path / "mallory", "--x25519")
    container = tmp_path / "secret.maif"
    recipient = tmp_path / "alice" / "maif-x25519.pub"
    run_json("pack", corpus, "-o", container, "--key", keys / "maif.key", "--encrypt-for", recipient)
    foreign = tmp_path / "mallory" / "maif-x25519.key"

    wrong = run_json(
        "verify", container, "--trust", keys / "maif.pub", "--decrypt-key", foreign, code=ExitCode.KEY_ERROR
    )
    assert wrong["error"]["exit_name"] == "key_error" and wrong["error"]["message"].startswith("wrong key")
    human = run("verify", container, "--trust", keys / "maif.pub", "--decrypt-key", foreign)
    assert human.exit_code == ExitCode.KEY_ERROR and "wrong key" in human.stderr
    assert "integrity" not in human.stdout + human.stderr

    # A damaged file stays a damaged file whatever key is given: its recipient list cannot be trusted.
    damaged = bytearray(container.read_bytes())
    damaged[200] ^= 0x01
    container.write_bytes(bytes(damaged))
    tampered = run("verify", container, "--trust", keys / "maif.pub", "--decrypt-key", foreign)
    assert tampered.exit_code not in (ExitCode.OK, ExitCode.KEY_ERROR)
    assert "wrong key" not in tampered.stderr


# --- append ------------------------------------------------------------------------------------


def test_append_adds_a_signed_version_and_keeps_the_first(tmp_path: Path, packed: Path, keys: Path) -> None:
    before = packed.read_bytes()
    extra = tmp_path / "extra.txt"
    extra.write_text("appended later\n")
    document = run_json("append", packed, extra, "--key", keys / "maif.key", "--trust", keys / "maif.pub")
    assert document["version"]["number"] == 1 and document["version"]["block_count"] == 6
    assert document["blocks"][0]["index"] == 5 and document["blocks"][0]["path"] == "extra.txt"
    assert packed.read_bytes().startswith(before)  # append only: nothing earlier was rewritten
    verified = run_json("verify", packed, "--trust", keys / "maif.pub")
    assert [version["block_count"] for version in verified["versions"]] == [5, 6]


def test_append_refuses_an_untrusted_or_tampered_container(tmp_path: Path, packed: Path, keys: Path) -> None:
    run_json("keygen", "-o", tmp_path / "stranger")
    extra = tmp_path / "extra.txt"
    extra.write_text("x")
    size = packed.stat().st_size
    untrusted = run(
        "append", packed, extra, "--key", keys / "maif.key", "--trust", tmp_path / "stranger" / "maif.pub"
    )
    assert untrusted.exit_code == ExitCode.SIGNATURE_UNTRUSTED
    assert packed.stat().st_size == size


# --- demo and the entry point ------------------------------------------------------------------


def test_demo_runs_end_to_end_and_detects_the_flipped_byte(tmp_path: Path) -> None:
    document = run_json("format-demo", "--workdir", tmp_path / "demo")
    assert document["ok"] is True
    steps = {step["name"]: step for step in document["steps"]}
    assert list(steps) == ["keygen", "pack", "verify trusted", "verify untrusted", "tamper", "append"]
    assert all(step["passed"] for step in steps.values())
    tamper = steps["tamper"]["facts"]
    assert tamper["detected"] and tamper["reported_blocks"] == [tamper["block_index"]]
    start, end = tamper["payload_range"]
    assert start <= tamper["offset"] < end  # the flipped byte is inside the block's payload
    assert steps["verify untrusted"]["facts"]["verdict"] == "signature_untrusted"
    assert steps["append"]["facts"]["consistent"] and steps["append"]["facts"]["versions"] == 2
    assert {row["type"] for row in steps["pack"]["facts"]["blocks"]} == {"TEXT", "KGRF", "IMAG", "EMBD"}
    assert (tmp_path / "demo" / "demo.maif").exists()  # --workdir keeps the files


def test_demo_human_output() -> None:
    result = run("format-demo")
    assert result.exit_code == 0, result.stderr
    assert "all 6 checks held" in result.stdout and "✗" not in result.stdout


def test_exit_codes_are_pinned() -> None:
    assert {code.name: int(code) for code in ExitCode} == {
        "OK": 0,
        "INTEGRITY_FAILURE": 1,
        "USAGE_ERROR": 2,
        "SIGNATURE_UNTRUSTED": 3,
        "MALFORMED_FILE": 4,
        "KEY_ERROR": 5,
        "UNSAFE_PATH": 6,
        "LIMIT_EXCEEDED": 7,
        "STORE_LOCKED": 8,
        "OTHER_ERROR": 9,
        "INTERNAL_ERROR": 70,
        "INTERRUPTED": 130,
    }


def test_python_dash_m_maif_exits_with_the_documented_code(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.maif"
    garbage.write_bytes(b"garbage")
    completed = subprocess.run(
        [sys.executable, "-m", "maif", "verify", str(garbage), "--trust", str(garbage)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # the trust "key" is garbage too: the key is read first, so this is a key error, reported in one line
    assert completed.returncode == ExitCode.KEY_ERROR, completed.stderr
    assert completed.stderr.startswith("error: ") and "Traceback" not in completed.stderr


# --- edge cases ------------------------------------------------------------------------------------


def test_pack_an_empty_directory_is_a_usage_error_and_writes_nothing(tmp_path: Path, keys: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run("pack", tmp_path / "empty", "-o", tmp_path / "out.maif", "--key", keys / "maif.key")
    assert result.exit_code == ExitCode.USAGE_ERROR
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty", "keys"]


def test_pack_a_file_above_the_block_cap_stores_it_as_parts(
    tmp_path: Path, keys: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from maif import limits

    monkeypatch.setattr(limits, "block_payload_bytes_max", 100)
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(250)))
    document = run_json("pack", big, "-o", tmp_path / "out.maif", "--key", keys / "maif.key")
    assert (document["files_added"], document["blocks_added"]) == (1, 3)  # the part size is capped at 100
    assert document["blocks"][0]["parts"] == 3
    run_json("unpack", tmp_path / "out.maif", "-o", tmp_path / "out", "--trust", keys / "maif.pub")
    assert (tmp_path / "out" / "big.bin").read_bytes() == bytes(range(250))


def test_pack_into_a_missing_directory_is_an_io_error(tmp_path: Path, keys: Path, corpus: Path) -> None:
    result = run("pack", corpus, "-o", tmp_path / "no" / "such" / "dir.maif", "--key", keys / "maif.key")
    assert result.exit_code == ExitCode.MALFORMED_FILE and "Traceback" not in result.stderr


def test_json_errors_are_a_json_document_on_stdout(tmp_path: Path) -> None:
    run_json("keygen", "-o", tmp_path)
    document = run_json("keygen", "-o", tmp_path, code=ExitCode.USAGE_ERROR)
    assert document == {
        "ok": False,
        "error": {
            "type": "ConfigError",
            "message": f"refusing to overwrite {tmp_path / 'maif.key'}",
            "hint": "pass --force to replace the key pair",
            "exit_code": 2,
            "exit_name": "usage_error",
        },
    }


def test_keygen_force_replaces_a_planted_symlink_without_following_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("do not touch")
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "maif.key").symlink_to(victim)
    assert run("keygen", "-o", keys).exit_code == ExitCode.USAGE_ERROR
    run_json("keygen", "-o", keys, "--force")
    assert victim.read_text() == "do not touch"
    assert not (keys / "maif.key").is_symlink()


def test_unpack_ignores_a_hostile_mtime_and_refuses_a_non_string_path(tmp_path: Path, keys: Path) -> None:
    key = signing.load_private_key(keys / "maif.key")
    odd = tmp_path / "odd.maif"
    with ContainerWriter.create(odd) as writer:
        writer.add(MAIFBlock(data=b"a", metadata={"path": "a.txt", "mtime_ns": -5}))
        writer.add(MAIFBlock(data=b"b", metadata={"path": "b.txt", "mtime_ns": True}))
        writer.add(MAIFBlock(data=b"c", metadata={"path": "c.txt", "mtime_ns": (1 << 64) - 1}))
        writer.commit([key])
    assert run_json("unpack", odd, "-o", tmp_path / "out")["files_written"] == 3
    hostile = tmp_path / "hostile.maif"
    with ContainerWriter.create(hostile) as writer:
        writer.add(MAIFBlock(data=b"x", metadata={"path": ["list", "not", "string"]}))
        writer.commit([key])
    assert run("unpack", hostile, "-o", tmp_path / "out2").exit_code == ExitCode.UNSAFE_PATH


def test_demo_reports_a_failed_check_with_a_failing_exit_code(monkeypatch: pytest.MonkeyPatch) -> None:
    import maif.cli.demo as demo

    real = demo._tamper_and_verify

    def blind_verifier(*args: Any) -> dict[str, Any]:
        facts = real(*args)
        return {**facts, "detected": False, "problems": []}

    monkeypatch.setattr(demo, "_tamper_and_verify", blind_verifier)
    document = run_json("format-demo", code=ExitCode.INTEGRITY_FAILURE)
    assert document["ok"] is False
    assert [step["name"] for step in document["steps"] if not step["passed"]] == ["tamper"]


def test_repair_cuts_a_torn_tail_and_then_append_works(tmp_path: Path, packed: Path, keys: Path) -> None:
    complete = packed.read_bytes()
    with packed.open("ab") as handle:
        handle.write(b"half-written record from a crash")
    extra = tmp_path / "extra.txt"
    extra.write_text("after the crash")
    refused = run("append", packed, extra, "--key", keys / "maif.key", "--trust", keys / "maif.pub")
    assert refused.exit_code != 0 and packed.read_bytes().startswith(complete)
    preview = run_json("repair", packed, "--dry-run")
    assert preview["bytes_truncated"] == len(b"half-written record from a crash")
    assert packed.stat().st_size > len(complete)
    repaired = run_json("repair", packed)
    assert repaired["versions_kept"] == 1 and packed.read_bytes() == complete
    assert run_json("repair", packed)["bytes_truncated"] == 0
    run_json("append", packed, extra, "--key", keys / "maif.key", "--trust", keys / "maif.pub")
    run_json("verify", packed, "--trust", keys / "maif.pub")


def test_repair_will_not_silently_empty_a_file(tmp_path: Path, packed: Path) -> None:
    data = bytearray(packed.read_bytes())
    data[-1] ^= 0xFF  # the only trailer is damaged: no complete version remains
    packed.write_bytes(bytes(data))
    assert run("repair", packed).exit_code == ExitCode.USAGE_ERROR
    assert packed.read_bytes() == bytes(data)


def test_names_that_look_like_rich_markup_are_printed_literally(tmp_path: Path, keys: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "[bold]x[red].txt").write_text("markup in a name")
    container = tmp_path / "m.maif"
    packed = run("pack", source, "-o", container, "--key", keys / "maif.key", "-v")
    assert packed.exit_code == 0, packed.stderr
    assert "[bold]x[red].txt" in packed.stdout
    hostile = tmp_path / "hostile.maif"
    key = signing.load_private_key(keys / "maif.key")
    with ContainerWriter.create(hostile) as writer:
        writer.add(MAIFBlock(id="[/oops]", data=b"x", metadata={"path": "[/unbalanced]"}))
        writer.commit([key])
    for arguments in (["inspect", hostile], ["unpack", hostile, "-o", tmp_path / "out", "-v"]):
        result = run(*arguments)
        assert result.exit_code == 0, result.stderr
        assert "[/unbalanced]" in result.stdout


def test_unpack_refuses_a_file_swapped_between_verify_and_read(
    tmp_path: Path, packed: Path, keys: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import maif.cli.unpacking as unpacking

    other = tmp_path / "other.maif"
    run_json("pack", corpus / "notes.txt", "-o", other, "--key", keys / "maif.key")
    real_verify = unpacking.verify_container

    def verify_the_swapped_in_file(path: Any, *args: Any, **kwargs: Any) -> Any:
        return real_verify(other, *args, **kwargs)  # what a verifier reopening the path would see

    monkeypatch.setattr(unpacking, "verify_container", verify_the_swapped_in_file)
    destination = tmp_path / "out"
    result = run("unpack", packed, "-o", destination, "--trust", keys / "maif.pub")
    assert result.exit_code == ExitCode.INTEGRITY_FAILURE and "changed while" in result.stderr
    assert not destination.exists() or not any(destination.iterdir())


def test_verify_accepts_any_one_trusted_key_among_several(tmp_path: Path, packed: Path, keys: Path) -> None:
    run_json("keygen", "-o", tmp_path / "stranger")
    document = run_json(
        "verify", packed, "--trust", tmp_path / "stranger" / "maif.pub", "--trust", keys / "maif.pub"
    )
    assert document["ok"] and len(document["trusted_key_ids"]) == 2
    assert document["signer_key_ids"] == [signing.key_id(signing.load_public_key(keys / "maif.pub")).hex()]


def test_keys_of_the_wrong_kind_are_key_errors(
    tmp_path: Path, keys: Path, corpus: Path, packed: Path
) -> None:
    run_json("keygen", "-o", tmp_path / "enc", "--x25519")
    wrong_recipient = run(
        "pack",
        corpus,
        "-o",
        tmp_path / "x.maif",
        "--key",
        keys / "maif.key",
        "--encrypt-for",
        keys / "maif.pub",
    )  # an Ed25519 key is not an X25519 recipient
    assert wrong_recipient.exit_code == ExitCode.KEY_ERROR and "X25519" in wrong_recipient.stderr
    wrong_trust = run("verify", packed, "--trust", tmp_path / "enc" / "maif-x25519.pub")
    assert wrong_trust.exit_code == ExitCode.KEY_ERROR and "Traceback" not in wrong_trust.stderr
    private_as_trust = run("verify", packed, "--trust", keys / "maif.key")
    assert private_as_trust.exit_code == ExitCode.KEY_ERROR


def test_co_signed_pack_verifies_under_either_key(tmp_path: Path, keys: Path, corpus: Path) -> None:
    run_json("keygen", "-o", tmp_path / "cosigner")
    container = tmp_path / "cosigned.maif"
    cosigner = tmp_path / "cosigner"
    document = run_json(
        "pack", corpus, "-o", container, "--key", keys / "maif.key", "--key", cosigner / "maif.key"
    )
    assert len(document["version"]["signer_key_ids"]) == 2
    assert len(run_json("inspect", container)["signer_key_ids"]) == 2
    for trusted in (keys / "maif.pub", cosigner / "maif.pub"):
        run_json("verify", container, "--trust", trusted)
    twice = run(
        "pack", corpus, "-o", tmp_path / "twice.maif", "--key", keys / "maif.key", "--key", keys / "maif.key"
    )
    assert twice.exit_code == ExitCode.USAGE_ERROR

"""Hostile containers through the command line: every mutation ends in a documented exit code.

The format's own tests flip every byte at the library level; here the question is what a *user* sees:
`verify` must never exit 0 on a changed file or on a signed record that breaks a format rule, no command
may crash (exit 70) or print a traceback, and a decompression bomb streams through bounded memory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from unittest import mock

import pytest
import typer.main
import typer.testing
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner, Result

from maif.cli.exit_codes import ExitCode
from maif.cli.main import app
from maif.format import signing
from maif.format.block import MAIFBlock
from maif.format.container import ContainerWriter
from maif.testing.hostile import (
    ENCRYPTED,
    SECTION_4_VIOLATIONS,
    Violation,
    one_gib_zstd_bomb,
    path_metadata,
    record,
    run_measuring_peak_rss,
    signed_container,
    text_id,
)

runner = CliRunner()
# Typer rebuilds the click command from type hints on every invoke (most of the cost of a call); build it
# once here. Patched per call, so nothing outside these tests sees it.
_COMMAND = typer.main.get_command(app)


def invoke(arguments: list[str]) -> Result:
    with mock.patch.object(typer.testing, "_get_command", lambda _app: _COMMAND):
        return runner.invoke(app, arguments)


DOCUMENTED = {int(code) for code in ExitCode} - {int(ExitCode.INTERNAL_ERROR)}


@pytest.fixture(scope="module")
def small_container(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    directory = tmp_path_factory.mktemp("hostile")
    invoke(["keygen", "-o", str(directory / "k")])
    key = signing.load_private_key(directory / "k" / "maif.key")
    container = directory / "small.maif"
    with ContainerWriter.create(container) as writer:
        writer.add(MAIFBlock(data=b"hello", metadata={"path": "a.txt"}))
        writer.add(MAIFBlock(data=b"x" * 5000, metadata={"path": "b/b.txt"}))  # stored compressed
        writer.commit([key])
    return directory, container.read_bytes()


def _mutant(directory: Path, data: bytes, offset: int, mask: int) -> Path:
    mutated = bytearray(data)
    mutated[offset] ^= mask
    path = directory / "mutant.maif"
    path.write_bytes(bytes(mutated))
    return path


@pytest.mark.parametrize(("mask", "stride"), [(0x01, 1), (0xFF, 5)])
def test_verify_never_accepts_a_changed_byte(
    small_container: tuple[Path, bytes], mask: int, stride: int
) -> None:
    directory, data = small_container
    trust = str(directory / "k" / "maif.pub")
    for offset in range(0, len(data), stride):
        mutant = _mutant(directory, data, offset, mask)
        result = invoke(["verify", str(mutant), "--trust", trust, "--json"])
        assert result.exit_code in (
            ExitCode.INTEGRITY_FAILURE,
            ExitCode.SIGNATURE_UNTRUSTED,
            ExitCode.MALFORMED_FILE,
        ), (offset, result.exit_code, result.stderr)
        assert "Traceback" not in result.stderr, offset


def test_inspect_and_unpack_never_crash_on_a_changed_byte(small_container: tuple[Path, bytes]) -> None:
    directory, data = small_container
    trust = str(directory / "k" / "maif.pub")
    for offset in range(1, len(data), 9):  # a sample: the exhaustive pass is verify's, above
        mutant = _mutant(directory, data, offset, 0x01)
        for arguments in (
            ["inspect", str(mutant)],
            ["unpack", str(mutant), "-o", str(directory / f"out-{offset}")],
            ["unpack", str(mutant), "-o", str(directory / f"checked-{offset}"), "--trust", trust],
        ):
            result = invoke([*arguments, "--json"])
            assert result.exit_code in DOCUMENTED, (offset, arguments[0], result.stderr)
            assert "Traceback" not in result.stderr, (offset, arguments[0])
        # verified unpack writes nothing from a changed file
        checked = directory / f"checked-{offset}"
        assert not checked.exists() or not any(checked.rglob("*.txt")), offset


@pytest.mark.parametrize("cut", [1, 10, 64, 65, 100, 200])
def test_truncated_containers_are_reported_not_crashed(small_container: tuple[Path, bytes], cut: int) -> None:
    directory, data = small_container
    truncated = directory / "truncated.maif"
    truncated.write_bytes(data[: len(data) - cut])
    result = invoke(["verify", str(truncated), "--trust", str(directory / "k" / "maif.pub")])
    assert result.exit_code in (
        ExitCode.INTEGRITY_FAILURE,
        ExitCode.MALFORMED_FILE,
        ExitCode.SIGNATURE_UNTRUSTED,
    ), result.stderr
    assert "Traceback" not in result.stderr


# --- signed records that break SPEC section 4 -----------------------------------------------------


@pytest.fixture(scope="module")
def trusted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Ed25519PrivateKey, Path]:
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    public = tmp_path_factory.mktemp("trusted") / "signer.pub"
    signing.save_public_key(key.public_key(), public)
    return key, public


_EXIT_BY_KIND = {"format": ExitCode.MALFORMED_FILE, "limit": ExitCode.LIMIT_EXCEEDED}


@pytest.mark.parametrize("violation", SECTION_4_VIOLATIONS, ids=lambda violation: violation.name)
def test_verify_and_unpack_refuse_a_signed_record_that_breaks_a_section_4_rule(
    tmp_path: Path, trusted: tuple[Ed25519PrivateKey, Path], violation: Violation
) -> None:
    key, public = trusted
    honest = record(b"honest payload", fields=text_id("honest"), metadata=path_metadata("honest.txt"))
    container = signed_container(tmp_path / "hostile.maif", [honest, violation.record], key)
    expected = _EXIT_BY_KIND[violation.kind]
    result = invoke(["verify", str(container), "--trust", str(public), "--json"])
    assert result.exit_code == expected, (result.stdout, result.stderr)
    problems = json.loads(result.stdout)["problems"]
    assert [(problem["block_index"], problem["kind"]) for problem in problems] == [(1, violation.kind)]
    assert violation.match in problems[0]["reason"]
    for trust in ([], ["--trust", str(public)]):
        destination = tmp_path / f"out-{len(trust)}"
        result = invoke(["unpack", str(container), "-o", str(destination), *trust, "--json"])
        assert result.exit_code == expected, (trust, result.stdout, result.stderr)
        error = json.loads(result.stdout)["error"]
        assert error["type"] == violation.error.__name__ and violation.match in error["message"]
        assert not (destination / "hostile.bin").exists()  # nothing of the refused block is left behind
        if trust:
            assert not destination.exists() or not any(destination.iterdir())  # verified: nothing written


def test_a_malformed_encrypted_record_is_refused_as_malformed_without_the_key(
    tmp_path: Path, trusted: tuple[Ed25519PrivateKey, Path]
) -> None:
    key, public = trusted
    too_short = record(bytes(27), storage_flags=ENCRYPTED, payload_length=0)  # less than nonce and tag
    container = signed_container(tmp_path / "sealed.maif", [too_short], key)
    result = invoke(["verify", str(container), "--trust", str(public)])
    assert result.exit_code == ExitCode.MALFORMED_FILE, result.stderr
    result = invoke(["unpack", str(container), "-o", str(tmp_path / "out"), "--trust", str(public), "--json"])
    assert result.exit_code == ExitCode.MALFORMED_FILE, result.stderr  # not a key error: nothing to decrypt
    assert json.loads(result.stdout)["error"]["type"] == "FormatError"


def test_inspect_shows_a_timestamp_no_date_can_hold(tmp_path: Path) -> None:
    container = tmp_path / "far.maif"
    with ContainerWriter.create(container) as writer:
        writer.add(MAIFBlock(id="far", data=b"x", timestamp=1e300))  # finite: a valid block
        writer.commit([Ed25519PrivateKey.from_private_bytes(bytes(range(32)))])
    result = invoke(["inspect", str(container), "--json"])
    assert result.exit_code == ExitCode.OK, result.stderr  # was 70 (OverflowError)
    assert json.loads(result.stdout)["blocks"][0]["created_at"] == "1e+300 s (out of range)"


# --- a decompression bomb: 33 KB on disk, 1 GiB declared ------------------------------------------

_MAIF_MAIN = """
sys.argv = ["maif", *sys.argv[1:]]
from maif.cli.main import main
main()
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_unpacking_a_one_gib_zstd_bomb_stays_within_150_mb(
    tmp_path: Path, trusted: tuple[Ed25519PrivateKey, Path]
) -> None:
    """The bomb is a valid file (1 GiB of zeros), so `unpack --trust` verifies it in full (decompressing
    it once) and writes it; both stream through bounded buffers. Before streaming: 1,099 MB peak."""
    key, public = trusted
    container = one_gib_zstd_bomb(tmp_path / "bomb.maif", key)
    assert container.stat().st_size < 34_000
    destination = tmp_path / "out"
    arguments = ["unpack", str(container), "-o", str(destination), "--trust", str(public), "--json"]
    try:
        result, peak_rss_mb = run_measuring_peak_rss(_MAIF_MAIN, arguments)
        assert result.returncode == ExitCode.OK, result.stderr
        assert (destination / "bomb.bin").stat().st_size == 1 << 30
    finally:
        shutil.rmtree(destination, ignore_errors=True)  # 1 GiB: do not leave it for pytest's tmp retention
    assert peak_rss_mb <= 150, f"peak RSS {peak_rss_mb} MB"

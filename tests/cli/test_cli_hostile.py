"""Hostile containers through the command line: every mutation ends in a documented exit code.

The format's own tests flip every byte at the library level; here the question is what a *user* sees:
`verify` must never exit 0 on a changed file, and no command may crash (exit 70) or print a traceback.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
import typer.main
import typer.testing
from typer.testing import CliRunner, Result

from maif.cli.exit_codes import ExitCode
from maif.cli.main import app
from maif.format import signing
from maif.format.block import MAIFBlock
from maif.format.container import ContainerWriter

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

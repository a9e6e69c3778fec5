"""`maif pack` / `unpack` / `verify` of files larger than a part: streamed, reassembled, checked, with
progress only on a terminal. Part sizes are tiny here so that the logic runs in milliseconds; the
memory bound is checked on a 512 MiB sparse file in a child process, and 3 x 1 GiB is measured by
benchmarks/bigpack_bench.py."""

from __future__ import annotations

import io
import json
import os
import pty
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console
from test_cli_commands import keys, run, run_json  # noqa: F401 (keys is a fixture)

from maif.cli.exit_codes import ExitCode
from maif.cli.inputs import open_input_file, read_pieces
from maif.cli.keyfiles import load_signing_key
from maif.cli.packing import parse_size
from maif.cli.progress import TransferProgress
from maif.errors import FormatError
from maif.format.block import MAIFBlock
from maif.format.container import ContainerWriter
from maif.format.parts import PartInfo, part_metadata

BIG = bytes((index * 131 + 17) % 251 for index in range(5000))  # 5 parts of 1 KiB (the last 904 bytes)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    root.mkdir()
    (root / "big.bin").write_bytes(BIG)
    (root / "small.txt").write_text("small\n")
    os.utime(root / "big.bin", ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    return root


def test_a_file_larger_than_a_part_round_trips_through_pack_verify_unpack(
    tmp_path: Path, keys: Path, tree: Path  # noqa: F811
) -> None:
    output = tmp_path / "tree.maif"
    packed = run_json("pack", tree, "-o", output, "--key", keys / "maif.key", "--part-size", "1K")
    assert (packed["files_added"], packed["blocks_added"]) == (2, 6)
    assert [row.get("parts") for row in packed["blocks"]] == [5, None]
    assert run_json("verify", output, "--trust", keys / "maif.pub")["ok"]
    unpacked = run_json("unpack", output, "-o", tmp_path / "out", "--trust", keys / "maif.pub")
    assert unpacked["files"] == [
        {"index": 0, "path": "tree/big.bin", "size_bytes": len(BIG)},
        {"index": 5, "path": "tree/small.txt", "size_bytes": 6},
    ]
    restored = tmp_path / "out" / "tree" / "big.bin"
    assert restored.read_bytes() == BIG
    assert restored.stat().st_mtime_ns == 1_700_000_000_123_456_789
    assert sorted(path.name for path in restored.parent.iterdir()) == ["big.bin", "small.txt"]


def test_append_stores_a_large_file_as_parts_too(tmp_path: Path, keys: Path, tree: Path) -> None:  # noqa: F811
    output = tmp_path / "tree.maif"
    run_json("pack", tree / "small.txt", "-o", output, "--key", keys / "maif.key")
    appended = run_json(
        "append", output, tree / "big.bin", "--key", keys / "maif.key", "--trust", keys / "maif.pub",
        "--part-size", "2048",
    )
    assert appended["blocks_added"] == 3
    run_json("unpack", output, "-o", tmp_path / "out", "--trust", keys / "maif.pub")
    assert (tmp_path / "out" / "big.bin").read_bytes() == BIG


def _write_broken_set(path: Path, key_file: Path) -> None:
    """Parts 0 and 2 of a 3-part set, signed: the middle part is missing."""
    set_id, payload = "ab" * 16, b"0123456789ab"
    with ContainerWriter.create(path) as writer:
        for index in (0, 2):
            digest = "00" * 32 if index == 2 else None
            info = PartInfo(set_id, index, 3, 4 * index, len(payload), digest)
            metadata = {"path": "victim.bin", "part": part_metadata(info)}
            writer.add(MAIFBlock(data=payload[4 * index : 4 * index + 4], metadata=metadata))
        writer.commit([load_signing_key(key_file)])


def test_unpack_without_trust_refuses_a_broken_set_and_leaves_no_file(
    tmp_path: Path, keys: Path  # noqa: F811
) -> None:
    container = tmp_path / "broken.maif"
    _write_broken_set(container, keys / "maif.key")
    destination = tmp_path / "out"
    result = run("unpack", container, "-o", destination, "--json")
    assert result.exit_code == ExitCode.INTEGRITY_FAILURE, result.stderr
    assert "missing" in json.loads(result.stdout)["error"]["message"]
    assert list(destination.iterdir()) == []  # neither the file nor its temporary
    verdict = run_json("verify", container, "--trust", keys / "maif.pub", code=ExitCode.INTEGRITY_FAILURE)
    assert [problem["block_index"] for problem in verdict["problems"]] == [1]


def test_a_file_that_grows_or_shrinks_while_packed_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "moving.bin"
    path.write_bytes(b"x" * 10)
    with open_input_file(path) as source:
        with open(path, "ab") as appender:
            appender.write(b"more")
        with pytest.raises(FormatError, match="grew"):
            list(read_pieces(source, 4, path))
    with open_input_file(path) as source:
        os.truncate(path, 5)
        with pytest.raises(FormatError, match="shrank"):
            list(read_pieces(source, 4, path))


def test_part_size_option_is_checked(tmp_path: Path, keys: Path, tree: Path) -> None:  # noqa: F811
    for bad in ("0", "-4", "lots", "12X"):
        result = run("pack", tree, "-o", tmp_path / "x.maif", "--key", keys / "maif.key", "--part-size", bad)
        assert result.exit_code == ExitCode.USAGE_ERROR, (bad, result.stderr)
    assert not (tmp_path / "x.maif").exists()
    sizes = [parse_size(text) for text in ("4096", "1K", "16M", "16MiB", "1g")]
    assert sizes == [4096, 1024, 16 << 20, 16 << 20, 1 << 30]


def test_progress_draws_bytes_rate_and_eta_on_a_terminal_console() -> None:
    sink = io.StringIO()
    console = Console(file=sink, force_terminal=True, width=120)
    with TransferProgress(enabled=True, console=console) as progress:
        advance = progress.task("pack", 3 << 20)
        advance(3 << 20)
    drawn = sink.getvalue()
    assert "pack" in drawn and "3.1/3.1 MB" in drawn and "100%" not in drawn.replace("100%", "")
    assert TransferProgress(enabled=False).task("pack", 10)(10) is None


def test_progress_is_silent_in_a_pipe(tmp_path: Path, keys: Path, tree: Path) -> None:  # noqa: F811
    result = run("pack", tree, "-o", tmp_path / "t.maif", "--key", keys / "maif.key", "--part-size", "1K")
    assert result.exit_code == 0 and result.stderr == ""


def _run_with_stderr_on_a_terminal(arguments: list[str]) -> tuple[int, str, str]:
    """Run ``python -m maif`` with stderr on a pseudo-terminal and stdout on a pipe."""
    controller, terminal = pty.openpty()
    environment = {**os.environ, "COLUMNS": "120", "TERM": "xterm"}
    process = subprocess.Popen(
        [sys.executable, "-m", "maif", *arguments],
        stdout=subprocess.PIPE,
        stderr=terminal,
        env=environment,
    )
    os.close(terminal)
    drawn = bytearray()
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        drawn += chunk
    stdout = process.stdout.read().decode() if process.stdout else ""
    code = process.wait(timeout=60)
    os.close(controller)
    return code, stdout, drawn.decode("utf-8", "replace")


def test_pack_unpack_verify_show_progress_on_a_terminal_and_json_stays_clean(
    tmp_path: Path, keys: Path, tree: Path  # noqa: F811
) -> None:
    output = tmp_path / "tree.maif"
    pack = ["pack", str(tree), "-o", str(output), "--key", str(keys / "maif.key"), "--part-size", "1K"]
    pack.append("--json")
    code, stdout, drawn = _run_with_stderr_on_a_terminal(pack)
    assert code == 0, drawn
    assert json.loads(stdout)["blocks_added"] == 6
    assert "pack" in drawn and "5.0/5.0 kB" in drawn
    trust = ["--trust", str(keys / "maif.pub")]
    code, stdout, drawn = _run_with_stderr_on_a_terminal(["verify", str(output), *trust, "--json"])
    assert code == 0 and json.loads(stdout)["ok"]
    assert "hash" in drawn and "decode" in drawn
    unpack = ["unpack", str(output), "-o", str(tmp_path / "out"), *trust, "--json"]
    code, stdout, drawn = _run_with_stderr_on_a_terminal(unpack)
    assert code == 0 and json.loads(stdout)["files_written"] == 2
    assert "unpack" in drawn
    code, stdout, drawn = _run_with_stderr_on_a_terminal(["verify", str(output), *trust, "--quiet"])
    assert code == 0 and "hash" not in drawn and "verified" in stdout


_CHILD = """
import sys
from maif.cli.main import app
for arguments in sys.argv[1:]:
    try:
        app(arguments.split("\\t"), standalone_mode=False)
    except SystemExit as exit:
        assert not exit.code, exit.code
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_peak_memory_stays_bounded_on_a_file_far_larger_than_a_part(
    tmp_path: Path, keys: Path  # noqa: F811
) -> None:
    """512 MiB (sparse: zeros, so compression and disk cost little) in 8 MiB parts: pack, verify and
    unpack in one child process whose peak resident set must stay far below the file's size."""
    big = tmp_path / "sparse.bin"
    with open(big, "wb") as handle:
        handle.truncate(512 << 20)
    container, out = tmp_path / "sparse.maif", tmp_path / "out"
    key, public = keys / "maif.key", keys / "maif.pub"
    commands = [
        f"pack\t{big}\t-o\t{container}\t--key\t{key}\t--part-size\t8M\t--compression-threshold\t0",
        f"verify\t{container}\t--trust\t{public}",
        f"unpack\t{container}\t-o\t{out}\t--trust\t{public}",
    ]
    completed = subprocess.run(
        [sys.executable, "-c", _CHILD, *commands], capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    peak_mb = int(completed.stdout.split()[-1]) / 1024
    assert (out / "sparse.bin").stat().st_size == 512 << 20
    assert peak_mb < 200, f"peak RSS {peak_mb:.0f} MB for a 512 MiB file in 8 MiB parts"


def _kill_when(process: subprocess.Popen[bytes], ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 60
    while not ready():
        assert process.poll() is None, "the command finished before it could be killed"
        assert time.monotonic() < deadline, "the command never reached the point to kill it at"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def _partial_larger_than(directory: Path, size: int) -> bool:
    """Whether a temporary ``*.partial`` file in ``directory`` has grown past ``size`` bytes."""
    try:
        partials = [path for path in directory.iterdir() if path.name.endswith(".partial")]
        return any(path.stat().st_size > size for path in partials)
    except FileNotFoundError:  # the directory is not made yet, or the file was just renamed
        return False


def test_kill_9_during_pack_or_unpack_never_leaves_a_file_under_its_name(
    tmp_path: Path, keys: Path  # noqa: F811
) -> None:
    """A real process killed in the middle of a part set: the container and the unpacked file appear
    under their names only complete (pack renames after the signed commit; unpack after the digest)."""
    big = tmp_path / "big.bin"
    with open(big, "wb") as handle:
        handle.truncate(96 << 20)
    container = tmp_path / "big.maif"
    maif = [sys.executable, "-m", "maif"]
    pack = subprocess.Popen([*maif, "pack", str(big), "-o", str(container), "--key", str(keys / "maif.key"),
                             "--part-size", "1M", "--compression-threshold", "1000000000"])
    _kill_when(pack, lambda: _partial_larger_than(tmp_path, 4 << 20))
    assert not container.exists()
    run_json("pack", big, "-o", container, "--key", keys / "maif.key", "--part-size", "1M",
             "--compression-threshold", "1000000000")
    out = tmp_path / "out"
    unpack = subprocess.Popen([*maif, "unpack", str(container), "-o", str(out), "-q"])
    _kill_when(unpack, lambda: _partial_larger_than(out, 4 << 20))
    assert not (out / "big.bin").exists()
    run_json("unpack", container, "-o", out, "--trust", keys / "maif.pub")
    assert (out / "big.bin").stat().st_size == 96 << 20


def test_a_name_near_the_file_system_limit_unpacks(tmp_path: Path, keys: Path) -> None:  # noqa: F811
    """The temporary name beside it must fit too (255 bytes on most file systems)."""
    name = "é" * 125 + ".txt"  # 254 bytes of UTF-8
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / name).write_text("x")
    run_json("pack", tmp_path / "in", "-o", tmp_path / "n.maif", "--key", keys / "maif.key")
    run_json("unpack", tmp_path / "n.maif", "-o", tmp_path / "out", "--trust", keys / "maif.pub")
    assert [path.name for path in (tmp_path / "out" / "in").iterdir()] == [name]

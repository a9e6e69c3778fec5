"""Walking inputs (sorted, no symlinks followed) and extracting outputs (never outside the destination)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maif import limits
from maif.cli.extract import Extractor, checked_parts
from maif.cli.inputs import InputFile, SkippedPath, iter_input_files, open_input_file, read_pieces
from maif.errors import ConfigError, FormatError, UnsafePathError


def _tree(root: Path) -> Path:
    corpus = root / "corpus"
    (corpus / "b-dir").mkdir(parents=True)
    (corpus / "a.txt").write_text("a")
    (corpus / "c.txt").write_text("c")
    (corpus / "b-dir" / "z.txt").write_text("z")
    (corpus / "b-dir" / "y.bin").write_bytes(b"\x00")
    return corpus


def test_walk_is_sorted_depth_first_and_records_relative_paths(tmp_path: Path) -> None:
    corpus = _tree(tmp_path)
    single = tmp_path / "single.txt"
    single.write_text("s")
    items = list(iter_input_files([corpus, single]))
    assert [item.recorded_path for item in items if isinstance(item, InputFile)] == [
        "corpus/a.txt",
        "corpus/b-dir/y.bin",
        "corpus/b-dir/z.txt",
        "corpus/c.txt",
        "single.txt",
    ]


def test_dot_records_under_the_directory_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = _tree(tmp_path)
    monkeypatch.chdir(corpus)
    recorded = [item.recorded_path for item in iter_input_files([Path(".")]) if isinstance(item, InputFile)]
    assert recorded[0] == "corpus/a.txt"


def test_symlinks_and_fifos_are_skipped_never_followed(tmp_path: Path) -> None:
    corpus = _tree(tmp_path)
    secret = tmp_path / "outside-secret.txt"
    secret.write_text("secret")
    (corpus / "link-to-secret").symlink_to(secret)
    (corpus / "link-to-dir").symlink_to(tmp_path, target_is_directory=True)
    os.mkfifo(corpus / "pipe")
    items = list(iter_input_files([corpus, corpus / "link-to-secret"]))
    skipped = {item.path.name: item.reason for item in items if isinstance(item, SkippedPath)}
    assert skipped["link-to-secret"].startswith("symbolic link")
    assert skipped["link-to-dir"].startswith("symbolic link")
    assert skipped["pipe"] == "not a regular file"
    recorded = [item.recorded_path for item in items if isinstance(item, InputFile)]
    assert not any("secret" in path or "outside" in path for path in recorded)


def test_two_inputs_with_one_recorded_name_are_refused(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    (tmp_path / "one" / "x.txt").write_text("1")
    (tmp_path / "two" / "x.txt").write_text("2")
    with pytest.raises(ConfigError):
        list(iter_input_files([tmp_path / "one" / "x.txt", tmp_path / "two" / "x.txt"]))


def test_a_name_that_is_not_utf8_stops_the_walk(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    directory.mkdir()
    (directory / os.fsdecode(b"bad-\xff-name")).write_text("x")
    with pytest.raises(FormatError, match="UTF-8"):
        list(iter_input_files([directory]))


def test_read_refuses_a_file_swapped_for_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("t")
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(OSError), open_input_file(link):
        pass
    with open_input_file(target) as source:
        assert (list(read_pieces(source, 4, target)), source.size_bytes) == ([b"t"], 1)


@pytest.mark.parametrize(
    "recorded",
    [
        "../evil",
        "a/../../evil",
        "/etc/passwd",
        "a//b",
        "./a",
        "a/.",
        "",
        "a\\..\\evil",
        "C:evil",
        "a\x00b",
        "x/" * limits.cli_recorded_path_parts_max + "y",
        "a" * (limits.cli_recorded_path_bytes_max + 1),
        42,
        None,
    ],
)
def test_unsafe_recorded_paths_are_refused(recorded: object) -> None:
    with pytest.raises(UnsafePathError):
        checked_parts(recorded)


def test_safe_recorded_paths_pass() -> None:
    assert checked_parts("corpus/poems/the-tyger.txt") == ["corpus", "poems", "the-tyger.txt"]
    assert checked_parts("..hidden/x..y") == ["..hidden", "x..y"]


def test_extractor_refuses_a_planted_symlink_directory(tmp_path: Path) -> None:
    destination, outside = tmp_path / "out", tmp_path / "outside"
    destination.mkdir()
    outside.mkdir()
    (destination / "corpus").symlink_to(outside, target_is_directory=True)
    with Extractor(destination, overwrite=True) as extractor, pytest.raises(UnsafePathError):
        extractor.write("corpus/a.txt", b"payload", mtime_ns=None)
    assert list(outside.iterdir()) == []


def test_extractor_refuses_a_planted_symlink_file(tmp_path: Path) -> None:
    destination = tmp_path / "out"
    destination.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("original")
    (destination / "a.txt").symlink_to(victim)
    with Extractor(destination, overwrite=True) as extractor, pytest.raises(UnsafePathError):
        extractor.write("a.txt", b"payload", mtime_ns=None)
    assert victim.read_text() == "original"


def test_extractor_overwrite_rules_and_mtime(tmp_path: Path) -> None:
    destination = tmp_path / "out"
    destination.mkdir()
    (destination / "exists.txt").write_text("old")
    with Extractor(destination, overwrite=False) as extractor:
        with pytest.raises(ConfigError):
            extractor.write("exists.txt", b"new", mtime_ns=None)
        extractor.write("d/new.txt", b"first", mtime_ns=1_000_000_000_123)
        extractor.write("d/new.txt", b"second", mtime_ns=None)  # written twice in one run: the later wins
    assert (destination / "exists.txt").read_text() == "old"
    assert (destination / "d" / "new.txt").read_bytes() == b"second"
    with Extractor(destination, overwrite=True) as extractor:
        extractor.write("exists.txt", b"new", mtime_ns=1_000_000_000_123)
    assert (destination / "exists.txt").read_bytes() == b"new"
    assert (destination / "exists.txt").stat().st_mtime_ns == 1_000_000_000_123


@given(st.text(alphabet=st.sampled_from(["a", "b", ".", "/", "\\", ":", "\x00", "é", " "]), max_size=24))
@settings(max_examples=400, deadline=None)
def test_any_path_the_checker_accepts_stays_inside_the_destination(recorded: str) -> None:
    try:
        parts = checked_parts(recorded)
    except UnsafePathError:
        return
    joined = os.path.normpath(os.path.join("/destination", *parts))
    assert joined.startswith("/destination/")
    assert "\x00" not in joined and ".." not in parts and "." not in parts

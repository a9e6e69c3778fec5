"""Remembered audit heads: `maif audit verify` checks freshness by default (issue 14, ADR 0088).

A log cut right after a checkpoint, or an older genuine copy, is fully signed: the log alone cannot
reveal it, only a signed head seen earlier can. So every passing `maif audit verify` remembers the
newest signed head it verified, on the auditor's machine (never beside the log), keyed by the log's
identity (the chain id of a segmented directory, the log id of a single file), and every later verify
of that log, wherever its copy lies, must still hold that head unchanged:

    $XDG_STATE_HOME/maif/audit-heads/<identity hex>.json   (default ~/.local/state/maif/audit-heads)

This is trust on first use, like SSH's known_hosts: the first verification of a log on a machine
checks nothing about freshness (it says so); `--witness FILE` (a head saved elsewhere, for example by
`maif audit checkpoint` on the server) covers that first time. The file holds the encoded signed
checkpoint and, for a directory, the segment it belongs to; it is re-verified under the caller's
trusted keys each time, so a forged file is refused, never trusted.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from maif import limits
from maif.durable import write_atomically
from maif.errors import FormatError, IntegrityError, LimitExceededError, SignatureError, StorageError
from maif.security.audit import SignedCheckpoint, TrustedKey, decode_checkpoint, encode_checkpoint

_FORMAT = "maif-audit-head/1"
_FILE_BYTES_MAX = 4 * limits.audit_record_bytes_max  # hex doubles the checkpoint, plus a few fields


class RememberedHead(NamedTuple):
    """The newest signed head verified earlier on this machine; ``segment`` is None for a single file."""

    file: Path
    segment: int | None
    checkpoint: SignedCheckpoint


def heads_directory() -> Path:
    """``$XDG_STATE_HOME/maif/audit-heads`` (``~/.local/state/...``); a relative XDG_STATE_HOME is
    ignored, as the XDG Base Directory specification says."""
    base = os.environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(base):
        base = str(Path.home() / ".local" / "state")
    return Path(base) / "maif" / "audit-heads"


def head_file(directory: Path, identity: bytes) -> Path:
    return directory / f"{identity.hex()}.json"


def recall(directory: Path, identity: bytes) -> RememberedHead | None:
    """The head remembered for the log ``identity``, or None; a damaged file is a FormatError."""
    file = head_file(directory, identity)
    try:
        with file.open("rb") as handle:
            data = handle.read(_FILE_BYTES_MAX + 1)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise StorageError(f"cannot read the remembered audit head {file}: {error.strerror}") from error
    if len(data) > _FILE_BYTES_MAX:
        raise LimitExceededError(f"remembered audit head {file}", len(data), _FILE_BYTES_MAX)
    try:
        document = json.loads(data)
        if document["format"] != _FORMAT or document["identity"] != identity.hex():
            raise ValueError("another format or another log")
        segment = document["segment"]
        if segment is not None and (type(segment) is not int or segment < 0):
            raise ValueError("bad segment number")
        checkpoint = decode_checkpoint(bytes.fromhex(document["checkpoint"]))
    except (ValueError, KeyError, TypeError, FormatError) as error:
        raise FormatError(
            f"remembered audit head {file} is damaged ({error})",
            hint="remove the file to verify this log as if for the first time on this machine",
        ) from None
    return RememberedHead(file, segment, checkpoint)


def remember(directory: Path, identity: bytes, segment: int | None, checkpoint: SignedCheckpoint) -> Path:
    """Write the head for ``identity`` (owner-only, atomically: a crash leaves the old or the new), unless
    the head remembered now is further along: two verifies racing never move it back."""
    file = head_file(directory, identity)
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = recall(directory, identity)
            if current is not None and _position(current.segment, current.checkpoint) > _position(
                segment, checkpoint
            ):
                return file
            _replace(file, identity, segment, checkpoint)
    except OSError as error:
        raise StorageError(f"cannot remember the audit head in {file}: {error.strerror}") from error
    return file


def _position(segment: int | None, checkpoint: SignedCheckpoint) -> tuple[int, int]:
    return (segment or 0, checkpoint.tree_size)


def _replace(file: Path, identity: bytes, segment: int | None, checkpoint: SignedCheckpoint) -> None:
    document = {
        "format": _FORMAT,
        "identity": identity.hex(),
        "segment": segment,
        "checkpoint": encode_checkpoint(checkpoint).hex(),
    }
    write_atomically(file, json.dumps(document).encode("utf-8"), mode=0o600)


def check_still_held(
    log_path: Path, remembered: RememberedHead, trusted: Sequence[TrustedKey], *, first_segment: int
) -> None:
    """Refuse (IntegrityError) a log that no longer holds the remembered head unchanged.

    ``log_path`` passed every other check already. A single file is replayed against the head as a
    witness. In a directory, the head's segment is replayed if it is still here; a head of a segment
    before ``first_segment`` (archived since) is older than every segment that remains, which link back
    to it through signed heads; a head of a segment after the last one means segments were dropped.
    """
    from maif.security.audit import verify_audit_log, verify_checkpoint
    from maif.security.audit_chain import list_segments

    checkpoint, segment = remembered.checkpoint, remembered.segment
    try:
        verify_checkpoint(checkpoint, trusted)
    except SignatureError as error:
        raise SignatureError(
            f"the audit head remembered in {remembered.file}: {error.message}",
            hint="a head written by someone else, or the log's key changed: remove the file (or pass "
            "--no-remember) once you know why",
        ) from None
    target = log_path
    if segment is not None:
        present = dict(list_segments(log_path))
        if segment < first_segment or (segment not in present and segment < max(present, default=-1)):
            return
        if segment not in present:
            raise _older(
                log_path, remembered, f"segment {segment}, which held it, is gone (segments dropped)"
            )
        target = present[segment]
    try:
        verify_audit_log(target, trusted, witness=checkpoint, allow_unsigned_tail=True)
    except IntegrityError as error:
        raise _older(log_path, remembered, error.message) from None


def _older(log_path: Path, remembered: RememberedHead, problem: str) -> IntegrityError:
    head = remembered.checkpoint
    return IntegrityError(
        f"audit log {log_path} is older than, or diverges from, the signed head over {head.tree_size} "
        f"entries verified on this machine before (remembered in {remembered.file}): {problem}; the log "
        "was cut back, replaced, or is an older copy",
        hint="verifying an archive of this log's older segments, or a log knowingly replaced? pass "
        f"--no-remember (or remove {remembered.file})",
    )


__all__ = ["RememberedHead", "check_still_held", "head_file", "heads_directory", "recall", "remember"]

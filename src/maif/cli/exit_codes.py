"""The exit codes of every `maif` command, and the one place that maps an error to its code.

Scripts branch on these, so they are part of the public interface: never renumber one. docs/cli.md lists
them; a test pins the numbers.
"""

from __future__ import annotations

import enum

from maif.errors import (
    BackendError,
    ConfigError,
    CryptoError,
    FormatError,
    IntegrityError,
    LimitExceededError,
    MAIFError,
    SignatureError,
    StoreLockedError,
    UnsafePathError,
)


class ExitCode(enum.IntEnum):
    """What a `maif` command's exit status means."""

    OK = 0
    """Everything asked for was done; for `verify`, everything verified under a trusted key."""
    INTEGRITY_FAILURE = 1
    """Well-formed data failed a digest, chain or Merkle check (a tampered or damaged block)."""
    USAGE_ERROR = 2
    """Bad arguments or options, or an output that exists and --force was not given."""
    SIGNATURE_UNTRUSTED = 3
    """A signature is missing, invalid, or not made by any key given with --trust."""
    MALFORMED_FILE = 4
    """A file could not be read or written, or is not a well-formed container this version reads."""
    KEY_ERROR = 5
    """A key file is unreadable or of the wrong kind, or decryption was refused (wrong or missing key)."""
    UNSAFE_PATH = 6
    """`unpack` refused a recorded path that would escape the destination directory."""
    LIMIT_EXCEEDED = 7
    """An input is larger than a named bound in maif.limits."""
    STORE_LOCKED = 8
    """The store is open in another process (e.g. `maif serve`): its lock names the holder's PID."""
    OTHER_ERROR = 9
    """Any other MAIF error (reported with its message)."""
    INTERNAL_ERROR = 70
    """A bug in MAIF (BSD EX_SOFTWARE): the traceback is printed on stderr; please report it."""
    INTERRUPTED = 130
    """Interrupted by the user (Ctrl-C)."""


# Most specific first: SignatureError is an IntegrityError and UnsafePathError a FormatError.
_CODE_BY_ERROR: tuple[tuple[type[BaseException], ExitCode], ...] = (
    (SignatureError, ExitCode.SIGNATURE_UNTRUSTED),
    (IntegrityError, ExitCode.INTEGRITY_FAILURE),
    (UnsafePathError, ExitCode.UNSAFE_PATH),
    (FormatError, ExitCode.MALFORMED_FILE),
    (CryptoError, ExitCode.KEY_ERROR),
    (LimitExceededError, ExitCode.LIMIT_EXCEEDED),
    (StoreLockedError, ExitCode.STORE_LOCKED),
    (ConfigError, ExitCode.USAGE_ERROR),
    (OSError, ExitCode.MALFORMED_FILE),
    (BackendError, ExitCode.MALFORMED_FILE),  # the format reports file I/O failures as BackendError
    (KeyboardInterrupt, ExitCode.INTERRUPTED),
    (MAIFError, ExitCode.OTHER_ERROR),
)


def exit_code_for(error: BaseException) -> ExitCode:
    """The exit code a command ends with when ``error`` stops it."""
    for error_type, code in _CODE_BY_ERROR:
        if isinstance(error, error_type):
            return code
    raise AssertionError(f"no exit code for {type(error).__name__}; only handled errors reach here")


__all__ = ["ExitCode", "exit_code_for"]

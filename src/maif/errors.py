"""One error root for everything MAIF raises on purpose.

Every failure the outside world can cause (hostile input, a missing key, a full disk, a forged token)
surfaces as a subclass of :class:`MAIFError`. Bugs in MAIF itself surface as ``AssertionError``:
the two are never mixed. Foreign exceptions are converted at the boundary with ``raise ... from``.

    MAIFError
    ├── ConfigError                 a configuration value is missing, mistyped or out of range
    │   ├── ArgumentTypeError       an argument to a public call has the wrong type         [TypeError]
    │   └── ArgumentValueError      an argument of the right type holds a refused value    [ValueError]
    ├── LimitExceededError          input larger than a named bound in maif.limits         [ValueError]
    ├── FormatError                 bytes that are not a well-formed container or record   [ValueError]
    │   ├── TruncatedError          the bytes end before a structure does
    │   ├── UnsupportedVersionError a version this reader does not implement
    │   └── UnsafePathError         a recorded path that would escape its destination directory
    ├── IntegrityError              well-formed bytes that fail a digest, chain or Merkle check
    │   ├── SignatureError          a signature that is missing, invalid or not by a trusted key
    │   └── WALCorruptionError      acknowledged log records are damaged; opening needs a repair
    ├── CryptoError                 key material or an AEAD operation failed
    │   └── DecryptionError         ciphertext, tag or associated data refused, or no usable key
    ├── StorageError                the store could not do what was asked
    │   ├── BlockNotFoundError      no block with that id
    │   ├── DurabilityError         the log could not be made durable; the store refuses writes
    │   ├── StoreClosedError        the store is closed or closing
    │   ├── StoreLockedError        another open store (any process, or this one) holds the directory
    │   ├── ForeignStoreError       a database, bucket or collection holds another store or a foreign
    │   │                           layout: refused, never overwritten
    │   └── BackendError            a storage backend (disk, server) failed
    │       ├── BackendUnavailableError  a server did not answer (component named): retry later
    │       │   └── StoreDegradedError   a write refused: the backlog waiting for that server is full
    │       └── CredentialsError    a server refused the configured credentials (never retried)
    ├── SecurityError               a security decision refused the caller
    │   ├── AuthenticationError     who is asking could not be established
    │   │   ├── TokenError          an OAuth/OIDC token was refused
    │   │   └── AttestationError    a TPM quote or credential was refused
    │   └── AuthorizationError      the caller is known but may not do this to this resource
    └── AgentError                  the agent runtime could not accept or run a task
        ├── QueueFullError          a bounded queue is full (backpressure)
        ├── TaskFailedError         a task failed after its retries
        └── TaskMessageError        a message on the task queue is not a valid task    [ValueError]

Each error carries a one-line message and, where useful, a ``hint`` for the human reading it.
Messages never contain secrets (tokens, keys, plaintext).

Errors about a wrong *value* or *type* also subclass the builtin in brackets (as zarr's errors do), so
``except ValueError`` / ``except TypeError`` written for the standard library keeps working (a
subclass inherits its parent's builtin: ``TruncatedError`` is a ``ValueError`` too).

Every public entry point checks its arguments (:mod:`maif.validation`) before it acts: a wrong type
raises ``ArgumentTypeError``; a value it may not take (NaN, a lone surrogate, an empty id, a number out
of range) ``ArgumentValueError``; a size above a named bound ``LimitExceededError``; a malformed FourCC
or EMBEDDING payload ``FormatError``. Both argument errors are ``ConfigError`` subclasses, so code that
caught ``ConfigError`` for a bad ``limit`` still does.
"""

from __future__ import annotations


class MAIFError(Exception):
    """Root of every error MAIF raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def diagnostics(self) -> str:
        """The message and the hint, formatted for a person at a terminal."""
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class ConfigError(MAIFError):
    """A configuration value is missing, mistyped or out of range."""


class ArgumentTypeError(ConfigError, TypeError):
    """An argument to a public call has the wrong type (a ``str`` where a list of ids belongs, ``None``
    for a block, a ``bool`` for a number). Also a :class:`TypeError`."""


class ArgumentValueError(ConfigError, ValueError):
    """An argument to a public call has the right type but a value it may not take (NaN, a lone
    surrogate, an empty id, a number out of range). Also a :class:`ValueError`."""


class LimitExceededError(MAIFError, ValueError):
    """Input is larger than a named bound in :mod:`maif.limits`. Also a :class:`ValueError`."""

    def __init__(self, what: str, size: int, limit: int, *, hint: str | None = None) -> None:
        super().__init__(f"{what} is {size}, above the limit of {limit}", hint=hint)
        self.what = what
        self.size = size
        self.limit = limit


class FormatError(MAIFError, ValueError):
    """Bytes that are not a well-formed .maif container or record. Also a :class:`ValueError`."""

    def __init__(self, message: str, *, offset: int | None = None, hint: str | None = None) -> None:
        where = f" at offset {offset}" if offset is not None else ""
        super().__init__(f"{message}{where}", hint=hint)
        self.offset = offset


class TruncatedError(FormatError):
    """The bytes end before a structure does."""


class UnsupportedVersionError(FormatError):
    """A format version this reader does not implement."""


class UnsafePathError(FormatError):
    """A path recorded in a container (absolute, with ``..``, or through a symlink) would escape the
    directory it is being extracted into."""


class IntegrityError(MAIFError):
    """Well-formed bytes that fail a digest, chain or Merkle check."""

    def __init__(self, message: str, *, block_index: int | None = None, hint: str | None = None) -> None:
        where = f" (block {block_index})" if block_index is not None else ""
        super().__init__(f"{message}{where}", hint=hint)
        self.block_index = block_index


class SignatureError(IntegrityError):
    """A signature that is missing, invalid, or not made by a trusted key."""


class WALCorruptionError(IntegrityError):
    """Acknowledged write-ahead log records are damaged (not a torn tail): the store refuses to open
    until a repair is asked for explicitly.

    ``segment`` is the file name and ``offset`` the byte offset of the damage; ``first_lost_lsn`` is the
    LSN expected there; ``salvageable_lsns`` (first, last) and ``salvageable_count`` describe the records
    after the damage that still validate (None and 0 when none does); ``lost_lsns`` lists the LSN ranges
    known to be unreadable.
    """

    def __init__(self, message: str, *, segment: str, offset: int, first_lost_lsn: int,
                 salvageable_lsns: tuple[int, int] | None, salvageable_count: int,
                 lost_lsns: list[tuple[int, int]], hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.segment = segment
        self.offset = offset
        self.first_lost_lsn = first_lost_lsn
        self.salvageable_lsns = salvageable_lsns
        self.salvageable_count = salvageable_count
        self.lost_lsns = lost_lsns


class CryptoError(MAIFError):
    """Key material or an AEAD operation failed."""


class DecryptionError(CryptoError):
    """Ciphertext, tag or associated data refused, or no usable key."""


class StorageError(MAIFError):
    """The store could not do what was asked."""


class BlockNotFoundError(StorageError):
    """No block with that id."""


class DurabilityError(StorageError):
    """The write-ahead log could not be made durable; the store refuses further writes."""


class StoreClosedError(StorageError):
    """The store is closed or closing."""


class StoreLockedError(StorageError):
    """Another open store holds the data directory's lock; ``holder_pid`` names its process when known."""

    def __init__(self, message: str, *, holder_pid: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.holder_pid = holder_pid


class BackendError(StorageError):
    """A storage backend (disk, server) failed."""


class BackendUnavailableError(BackendError):
    """A server (``component``: "postgresql", "s3", "redis", "qdrant") is unreachable, restarting or timed
    out. Nothing local was harmed, so the same call may be retried (after ``retry_after_s``); the store
    keeps acknowledging writes into its local log meanwhile, up to a bound."""

    def __init__(self, message: str, *, component: str, retry_after_s: float = 1.0,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.component = component
        self.retry_after_s = retry_after_s


class StoreDegradedError(BackendUnavailableError):
    """A write refused because ``component`` has been unavailable long enough that the writes waiting
    for it in the local log reached their bound; nothing was written. Retry after ``retry_after_s``
    (HTTP 503 with Retry-After in the service)."""


class CredentialsError(BackendError):
    """A server refused the configured credentials. Never retried; the message never holds a secret."""


class ForeignStoreError(StorageError):
    """A database, bucket or collection holds another MAIF store's data or a layout that is not MAIF's:
    refused, never overwritten."""


class SecurityError(MAIFError):
    """A security decision refused the caller."""


class AuthenticationError(SecurityError):
    """Who is asking could not be established."""


class TokenError(AuthenticationError):
    """An OAuth/OIDC token was refused."""


class AttestationError(AuthenticationError):
    """A TPM quote or credential was refused."""


class AuthorizationError(SecurityError):
    """The caller is known but may not do this to this resource."""


class AgentError(MAIFError):
    """The agent runtime could not accept or run a task."""


class QueueFullError(AgentError):
    """A bounded queue is full; the caller should back off."""


class TaskFailedError(AgentError):
    """A task failed after all its retries."""


class TaskMessageError(AgentError, ValueError):
    """A message on the distributed task queue is not a valid task (wrong schema, oversized, unknown task
    type): a worker dead-letters it with this message as the reason and never runs it."""


__all__ = [
    "AgentError",
    "ArgumentTypeError",
    "ArgumentValueError",
    "AttestationError",
    "AuthenticationError",
    "AuthorizationError",
    "BackendError",
    "BackendUnavailableError",
    "BlockNotFoundError",
    "ConfigError",
    "CredentialsError",
    "CryptoError",
    "DecryptionError",
    "DurabilityError",
    "ForeignStoreError",
    "FormatError",
    "IntegrityError",
    "LimitExceededError",
    "MAIFError",
    "QueueFullError",
    "SecurityError",
    "SignatureError",
    "StorageError",
    "StoreClosedError",
    "StoreDegradedError",
    "StoreLockedError",
    "TaskFailedError",
    "TaskMessageError",
    "TokenError",
    "TruncatedError",
    "UnsafePathError",
    "UnsupportedVersionError",
    "WALCorruptionError",
]

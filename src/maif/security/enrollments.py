"""The attestation verifier's durable state: which attestation key (AK) each agent enrolled, and the
newest TPM clock accepted from each AK (docs/adr/0086).

Before this, both lived in the verifier's memory only. A restart of `maif serve` forgot every enrolment,
so every agent had to walk MakeCredential/ActivateCredential again, and until it did, the FIRST caller to
enrol an agent id (with any TPM whose EK chains to a trusted root) bound its own AK to it. It also forgot
the clocks, so a TPM whose state was rolled back was no longer caught across the restart.

:class:`EnrollmentFile` keeps that state in one :class:`~maif.security.sealed_file.SealedFile` beside the
keystore (``<security data dir>/attestation.maifstate``), sealed under a key derived from the master key:
an enrolment cannot be added, changed or dropped on disk without the master key, and a flipped bit or a
wrong key is a typed error when the verifier starts. Enrolments and revocations are written (fsync)
before they take effect. A quote's clock is written with the next enrolment change, at the latest
``CLOCK_FLUSH_INTERVAL_S`` after an earlier write, and when the verifier closes; a crash loses at most
that much clock history (rollback is still caught against the last written clock).

Several processes may share the file (they share the keystore already): each change is made under the
file's lock on the newest copy, and a verifier reloads a copy another process replaced.

Limits: the whole file is rewritten on each change (about 400 bytes per enrolled agent), which suits
thousands of agents, not millions (``limits.attestation_state_file_bytes_max``); and, like the keystore,
it cannot tell that it was replaced by an older copy of itself.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import msgspec

from maif import limits
from maif.errors import FormatError, LimitExceededError
from maif.security.sealed_file import SealedFile

CLOCK_FLUSH_INTERVAL_S = 10.0
"""The longest a newly accepted TPM clock stays in memory only."""

_MAGIC = b"MAIFATTS"
_VERSION = 1
_CONTEXT_KEY = "MAIF attestation state 2026-12 encryption key"


class EnrolledRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    agent_id: str
    ak_public: bytes
    ak_name: bytes
    ak_qualified_name: bytes
    ek_name: bytes
    ek_certificate_sha256: bytes
    enrolled_at: float


class ClockRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    ak_name: bytes
    reset_count: int
    restart_count: int
    clock: int


class AttestationState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    generation: int
    enrolled: list[EnrolledRecord]
    clocks: list[ClockRecord]


EMPTY = AttestationState(0, [], [])
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(AttestationState)


class EnrollmentFile:
    """Read and write :class:`AttestationState` sealed at ``path``. Not thread-safe: the verifier holds
    its own lock around every call."""

    def __init__(self, path: str | Path, master_key: bytes) -> None:
        self.path = Path(path)
        self._file = SealedFile(
            self.path, master_key, magic=_MAGIC, version=_VERSION, key_context=_CONTEXT_KEY,
            what="attestation state", bytes_max=limits.attestation_state_file_bytes_max,
        )

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """The file's exclusive lock, shared with every process using it."""
        return self._file.locked()

    def stale(self) -> bool:
        return self._file.stale()

    def load(self) -> AttestationState:
        plaintext = self._file.read()
        if plaintext is None:
            return EMPTY
        try:
            state = _DECODER.decode(plaintext)
        except msgspec.DecodeError as error:  # authenticated yet malformed: written by a buggy writer
            raise FormatError(f"attestation state {self.path} is malformed: {error}") from error
        if len(state.enrolled) > limits.attestation_enrolled_agents_max:
            raise LimitExceededError(
                "enrolled agents", len(state.enrolled), limits.attestation_enrolled_agents_max
            )
        return state

    def save(self, state: AttestationState) -> None:
        self._file.write(_ENCODER.encode(state))


__all__ = ["CLOCK_FLUSH_INTERVAL_S", "AttestationState", "ClockRecord", "EnrolledRecord", "EnrollmentFile"]

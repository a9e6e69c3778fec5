"""Verification of a .maif container against public keys the caller trusts, reporting every problem.

Quick mode checks what a reader relies on without touching block bytes: the file header, every version's
trailer and manifest, the chain of manifests, each index against its manifest's digest, the Merkle root
over the indexed block digests, and the signatures. Full mode also recomputes every block's chained
BLAKE3 digest from its stored bytes (every byte of the file is then covered) and decodes every record it
can, applying every rule of SPEC section 4: each header, and the metadata and payload of every block in
the clear (compressed payloads are decompressed as a stream, in bounded memory) and, given the
decryption key, of every encrypted block after its AES-GCM tag is checked. A signer can sign malformed
bytes, so a valid signature does not excuse them.

Trust comes only from ``trusted_keys``: a signature by a key the caller did not pass is ignored, and a
version without a valid signature by a trusted key is a problem. A key with several entries in one
manifest counts once. ``required_signers`` (trusted too) must each have a valid signature on the last
version, since signatures sit outside what they sign and a co-signature can be stripped (SPEC section 7).
Every version after the first must repeat its predecessor's key wraps byte for byte (SPEC section 8): a
later signer cannot add or swap recipients. Problems are collected, not raised, so one report locates
every damaged block (by index) or region (by name).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

import blake3

from maif.errors import FormatError, LimitExceededError, MAIFError, SignatureError
from maif.format import merkle, signing
from maif.format.parts import part_set_problems
from maif.format.reader import ContainerReader
from maif.format.reports import Problem, VerificationReport

PROGRESS_BATCH_BYTES: Final = 8 << 20
CHECK_BATCH_BLOCKS: Final = 8192
"""Blocks handed to the compiled core's record check at once (progress is reported between batches)."""

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from maif.format.aead import KeyWrap
    from maif.format.layout import Manifest


def verify_container(
    path: str | os.PathLike[str],
    trusted_keys: Sequence[Ed25519PublicKey],
    *,
    full: bool = True,
    decryption_key: X25519PrivateKey | None = None,
    required_signers: Sequence[Ed25519PublicKey] = (),
    on_progress: Callable[[str, int], None] | None = None,
) -> VerificationReport:
    """Check ``path`` against ``trusted_keys``; ``ok`` only if nothing at all is wrong (and each of
    ``required_signers``, trusted as well, signed the last version).

    ``on_progress(phase, record_bytes)`` is told, in full mode, how many record bytes each pass
    ("hash", then "decode") has covered since its last call (every few MiB, for a progress bar)."""
    try:
        reader = ContainerReader.open(path, decryption_key=decryption_key)
    except MAIFError as error:
        return VerificationReport(False, [Problem(None, error.message, "file", kind_of(error))], 0, [])
    with reader:
        problems: list[Problem] = []
        signers_by_version = _check_versions(reader, [*trusted_keys, *required_signers], problems)
        if signers_by_version:
            _check_required_signers(required_signers, signers_by_version, problems)
        problems += [Problem(index, reason) for index, reason in sorted(reader.bad_entries.items())]
        if full:
            decrypt = decryption_key is not None
            _check_blocks(reader, problems, check_encrypted=decrypt, on_progress=on_progress)
            reported = {problem.block_index for problem in problems if problem.block_index is not None}
            problems += part_set_problems(reader, reported, decrypt=decrypt)
        union = list(dict.fromkeys(key for signers in signers_by_version for key in signers))
        return VerificationReport(
            not problems, problems, len(reader), reader.versions, union, signers_by_version
        )


def _check_required_signers(
    required: Sequence[Ed25519PublicKey], signers_by_version: list[list[bytes]], problems: list[Problem]
) -> None:
    last = len(signers_by_version) - 1
    for key in required:
        if signing.key_id(key) not in signers_by_version[last]:
            reason = f"required signer {signing.key_id(key).hex()} has no valid signature on the last version"
            problems.append(Problem(None, reason, f"version {last} manifest", "signature"))


def _check_versions(
    reader: ContainerReader, trusted_keys: Sequence[Ed25519PublicKey], problems: list[Problem]
) -> list[list[bytes]]:
    """Every version's links, index digest, Merkle root, key wraps and signatures; the trusted keys that
    validly signed each version (each key once)."""
    if reader.torn_tail_bytes:
        problems.append(
            Problem(
                None,
                f"{reader.torn_tail_bytes} bytes after the end of the last complete "
                "version (a torn write, or a damaged trailer)",
                "tail",
            )
        )
    if not reader.versions:
        problems.append(
            Problem(None, "no committed version: nothing in the file is signed", "file", "signature")
        )
        return []
    if not trusted_keys:
        problems.append(
            Problem(None, "no trusted public keys were given; nothing can be verified", "file", "signature")
        )
    trusted = {signing.key_id(key): key for key in trusted_keys}
    signers_by_version: list[list[bytes]] = []
    leaf_hashes = reader.leaf_hashes()
    frontier = merkle.Frontier()  # grows version by version: every root in O(n) total, not O(n x versions)
    previous_digest = bytes(32)
    previous_wraps: tuple[KeyWrap, ...] = ()
    for number, (manifest, info) in enumerate(zip(reader.manifests, reader.versions, strict=True)):
        region = f"version {number} manifest"
        if manifest.previous_manifest_digest != previous_digest:
            problems.append(Problem(None, "does not link to the previous version's manifest", region))
        previous_digest = info.manifest_digest
        if number and manifest.key_wraps != previous_wraps:
            reason = (
                "key wraps differ from the previous version's: recipients are fixed at creation, "
                "every version repeats them byte for byte (SPEC section 8)"
            )
            problems.append(Problem(None, reason, region, "format"))
        previous_wraps = manifest.key_wraps
        if blake3.blake3(reader.index_region(number)).digest() != manifest.index_digest:
            problems.append(
                Problem(
                    None, "index bytes do not match the manifest's index digest", f"version {number} index"
                )
            )
        frontier.extend(leaf_hashes[frontier.size : manifest.block_count])
        if frontier.root() != manifest.merkle_root:
            problems.append(Problem(None, "Merkle root over the indexed digests does not match", region))
        valid = _check_signatures(reader.file_header, manifest, trusted, region, problems)
        signers_by_version.append(list(dict.fromkeys(valid)))  # a duplicate entry adds no signer
    return signers_by_version


def _check_signatures(
    file_header: bytes,
    manifest: Manifest,
    trusted: dict[bytes, Ed25519PublicKey],
    region: str,
    problems: list[Problem],
) -> list[bytes]:
    body_digest = manifest.body_digest
    valid: list[bytes] = []
    for entry in manifest.signatures:
        key = trusted.get(entry.key_id)
        if key is None:
            continue  # not a key the caller trusts: it neither helps nor hurts
        message = signing.signed_message(
            file_header,
            manifest.block_count,
            manifest.merkle_root,
            entry.key_id,
            entry.signed_at_ns,
            body_digest,
        )
        try:
            signing.verify_signature(key, entry.signature, message)
            valid.append(entry.key_id)
        except SignatureError:
            reason = f"signature by trusted key {entry.key_id.hex()} does not verify"
            problems.append(Problem(None, reason, region, "signature"))
    if not valid:
        problems.append(Problem(None, "no valid signature by a trusted key", region, "signature"))
    return valid


def _check_blocks(
    reader: ContainerReader,
    problems: list[Problem],
    *,
    check_encrypted: bool,
    on_progress: Callable[[str, int], None] | None = None,
) -> None:
    """Recompute every block's chained digest, then apply every SPEC section 4 rule to each block whose
    digest holds: header, metadata and payload (streamed, bounded memory); for an encrypted block without
    a decryption key, its header only."""
    hashed = None if on_progress is None else (lambda size: on_progress("hash", size))
    mismatches = reader.digest_mismatches(on_bytes=hashed)
    problems += [
        Problem(index, "stored bytes do not match the indexed BLAKE3 digest") for index in mismatches
    ]
    skip = set(mismatches) | set(reader.bad_entries)
    covered = _decode_progress(reader, on_progress)
    for first in range(0, len(reader), CHECK_BATCH_BLOCKS):
        stop = min(first + CHECK_BATCH_BLOCKS, len(reader))
        # With the compiled core, the blocks it proved valid are not checked again (ADR 0090).
        for index in reader.unproven_blocks(first, stop, skip):
            if covered is not None:
                covered(index)
            if index in skip:
                continue
            try:
                reader.check_block(index, decrypt=check_encrypted)
            except MAIFError as error:
                reason = error.message.removeprefix(f"block {index}: ").removesuffix(f" (block {index})")
                problems.append(Problem(index, reason, kind=kind_of(error)))
        if covered is not None:
            covered(stop)


def _decode_progress(
    reader: ContainerReader, on_progress: Callable[[str, int], None] | None
) -> Callable[[int], None] | None:
    """A ``covered(index)`` that tells ``on_progress`` the record bytes before ``index`` in batches of at
    least 8 MiB (a callback per small block would cost more than checking it); None without one."""
    if on_progress is None:
        return None
    state = {"reported_to": 0, "pending": 0}

    def covered(index: int) -> None:
        for done in range(state["reported_to"], index):
            state["pending"] += reader.entry(done).length
        state["reported_to"] = index
        if state["pending"] >= PROGRESS_BATCH_BYTES or (index == len(reader) and state["pending"]):
            on_progress("decode", state["pending"])
            state["pending"] = 0

    return covered


def kind_of(error: MAIFError) -> str:
    """The problem kind (``reports.PROBLEM_KINDS``) of an error found while verifying."""
    if isinstance(error, SignatureError):
        return "signature"
    if isinstance(error, LimitExceededError):
        return "limit"
    if isinstance(error, FormatError):
        return "format"
    return "integrity"  # a digest, chain or AEAD tag that does not match (or a key that cannot decrypt)


__all__ = ["Problem", "VerificationReport", "kind_of", "verify_container"]

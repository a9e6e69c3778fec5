"""RFC 9162 Merkle trees over BLAKE3: roots, inclusion proofs and consistency proofs.

Hashes follow RFC 9162 section 2.1 with BLAKE3-256 as the hash function:

    leaf hash  = H(0x00 || data)          node hash = H(0x01 || left || right)
    MTH({})    = H()                      MTH(D[n]) = node(MTH(D[0:k]), MTH(D[k:n])), k = largest 2^i < n

Callers usually hold *leaf hashes* already (a container stores each block's digest; the audit log each
entry's hash), so every function here takes the list of leaf hashes, not the leaf data. Proof
verification follows the iterative algorithms of RFC 9162 sections 2.1.3.2 and 2.1.4.2 and checks every
step: a proof of the wrong length, an index out of range, or a root that does not match is refused.
"""

from __future__ import annotations

from collections.abc import Sequence

import blake3

from maif.errors import IntegrityError
from maif.format import native

HASH_SIZE = 32
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def hash_leaf(data: bytes | memoryview) -> bytes:
    """RFC 9162 leaf hash of ``data``."""
    hasher = blake3.blake3(_LEAF_PREFIX)
    hasher.update(data)
    return hasher.digest()


def hash_children(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node hash."""
    return blake3.blake3(_NODE_PREFIX + left + right).digest()


def empty_root() -> bytes:
    """The root of a tree with no leaves: the hash of the empty string."""
    return blake3.blake3(b"").digest()


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """The Merkle tree hash of the leaves, in O(n) time.

    Pairs adjacent nodes level by level and carries an odd last node up unchanged, which builds exactly
    RFC 9162's left-balanced tree; hashing a level in one comprehension keeps the per-node Python cost
    low (containers hash one leaf per block on every verification).
    """
    if not leaf_hashes:
        return empty_root()
    level = list(leaf_hashes)
    hasher = blake3.blake3
    core = native.core()
    if core is not None:
        native_root: bytes | None = core.merkle_root(level, hasher)
        if native_root is not None:
            return native_root
    while len(level) > 1:
        carry = [level[-1]] if len(level) & 1 else []
        level = [
            hasher(_NODE_PREFIX + left + right).digest()
            for left, right in zip(level[0::2], level[1::2], strict=False)
        ] + carry
    return level[0]


def leaf_hashes_of_entries(entries: bytes, entry_bytes: int, digest_at: int) -> list[bytes]:
    """RFC 9162 leaf hashes of the 32-byte digests at ``digest_at`` in each ``entry_bytes``-byte entry
    (a container index, as stored)."""
    core = native.core()
    if core is not None:
        hashes: list[bytes] = core.leaf_hashes(entries, entry_bytes, digest_at, blake3.blake3)
        return hashes
    return leaf_hashes_of(
        [entries[at : at + HASH_SIZE] for at in range(digest_at, len(entries), entry_bytes)]
    )


def leaf_hashes_of(digests: Sequence[bytes]) -> list[bytes]:
    """RFC 9162 leaf hashes of many leaves at once."""
    hasher = blake3.blake3
    core = native.core()
    if core is not None and all(type(digest) is bytes and len(digest) == HASH_SIZE for digest in digests):
        hashes: list[bytes] = core.leaf_hashes(b"".join(digests), HASH_SIZE, 0, hasher)
        return hashes
    return [hasher(_LEAF_PREFIX + digest).digest() for digest in digests]


class Frontier:
    """The right edge of a growing tree: O(log n) memory, O(1) amortised hashing per appended leaf.

    Holds one perfect subtree per set bit of the leaf count (largest first); the root folds them right
    to left, the same shape RFC 9162's left-balanced split produces.
    """

    __slots__ = ("_stack", "size")

    def __init__(self) -> None:
        self._stack: list[tuple[bytes, int]] = []
        self.size = 0

    def copy(self) -> Frontier:
        twin = Frontier()
        twin._stack, twin.size = list(self._stack), self.size
        return twin

    def push(self, leaf_hash: bytes) -> None:
        self._push_subtree(leaf_hash, 1)

    def extend(self, leaf_hashes: Sequence[bytes]) -> None:
        """Append many leaves: hashed as whole perfect subtrees, level by level (much faster than push)."""
        position = 0
        while position < len(leaf_hashes):
            # The next aligned perfect subtree may be as large as the lowest set bit of the current size.
            aligned = self.size & -self.size if self.size else 1 << 62
            chunk = 1 << (min(aligned, len(leaf_hashes) - position).bit_length() - 1)
            self._push_subtree(root(leaf_hashes[position : position + chunk]), chunk)
            position += chunk

    def _push_subtree(self, node: bytes, size: int) -> None:
        assert self.size % size == 0  # only aligned perfect subtrees keep the RFC 9162 shape
        self.size += size
        while self._stack and self._stack[-1][1] == size:
            left, _ = self._stack.pop()
            node, size = hash_children(left, node), size * 2
        self._stack.append((node, size))

    def root(self) -> bytes:
        if not self._stack:
            return empty_root()
        node = self._stack[-1][0]
        for left, _ in reversed(self._stack[:-1]):
            node = hash_children(left, node)
        return node


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, D[n]) of RFC 9162 section 2.1.3.1: the sibling hashes from the leaf up."""
    if not 0 <= index < len(leaf_hashes):
        raise IndexError(f"leaf index {index} outside a tree of {len(leaf_hashes)} leaves")
    return _path(leaf_hashes, index)


def _path(leaves: Sequence[bytes], index: int) -> list[bytes]:
    if len(leaves) <= 1:
        return []
    split = _largest_power_of_two_below(len(leaves))
    if index < split:
        return [*_path(leaves[:split], index), root(leaves[split:])]
    return [*_path(leaves[split:], index - split), root(leaves[:split])]


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """PROOF(m, D[n]) of RFC 9162 section 2.1.4.1: shows the first ``old_size`` leaves are a prefix."""
    if not 0 <= old_size <= len(leaf_hashes):
        raise IndexError(f"old size {old_size} outside a tree of {len(leaf_hashes)} leaves")
    if old_size in (0, len(leaf_hashes)):
        return []
    return _subproof(old_size, leaf_hashes, True)


def _subproof(m: int, leaves: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [root(leaves)]
    split = _largest_power_of_two_below(n)
    if m <= split:
        return [*_subproof(m, leaves[:split], complete), root(leaves[split:])]
    return [*_subproof(m - split, leaves[split:], False), root(leaves[:split])]


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], expected_root: bytes
) -> None:
    """Raise :class:`IntegrityError` unless ``proof`` puts ``leaf_hash`` at ``index`` under the root."""
    if not 0 <= index < tree_size:
        raise IntegrityError(f"inclusion proof index {index} outside a tree of {tree_size} leaves")
    _require_hashes(proof, "inclusion proof")
    fn, sn = index, tree_size - 1
    node = leaf_hash
    for sibling in proof:
        if sn == 0:
            raise IntegrityError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            node = hash_children(sibling, node)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            node = hash_children(node, sibling)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise IntegrityError("inclusion proof is shorter than the tree is deep")
    if node != expected_root:
        raise IntegrityError("inclusion proof does not lead to the expected root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Raise :class:`IntegrityError` unless ``proof`` shows the old tree is a prefix of the new one."""
    if not 0 <= old_size <= new_size:
        raise IntegrityError(f"consistency proof from size {old_size} to {new_size} is impossible")
    _require_hashes(proof, "consistency proof")
    if old_size == new_size:
        if proof:
            raise IntegrityError("consistency proof between equal sizes must be empty")
        if old_root != new_root:
            raise IntegrityError("trees of equal size have different roots")
        return
    if old_size == 0:
        if proof:
            raise IntegrityError("consistency proof from an empty tree must be empty")
        return
    if not proof:
        raise IntegrityError("consistency proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is itself the first node
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    old_node = new_node = path[0]
    for sibling in path[1:]:
        if sn == 0:
            raise IntegrityError("consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            old_node = hash_children(sibling, old_node)
            new_node = hash_children(sibling, new_node)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            new_node = hash_children(new_node, sibling)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise IntegrityError("consistency proof is shorter than the tree is deep")
    if old_node != old_root:
        raise IntegrityError("consistency proof does not reproduce the old root")
    if new_node != new_root:
        raise IntegrityError("consistency proof does not reproduce the new root")


def _require_hashes(proof: Sequence[bytes], what: str) -> None:
    if len(proof) > 64:
        raise IntegrityError(f"{what} has {len(proof)} hashes; no tree of 2^64 leaves exists")
    for item in proof:
        if not isinstance(item, bytes) or len(item) != HASH_SIZE:
            raise IntegrityError(f"{what} holds a hash that is not {HASH_SIZE} bytes")


def _largest_power_of_two_below(n: int) -> int:
    """The k of RFC 9162: the largest power of two strictly smaller than n (n >= 2)."""
    assert n >= 2
    return 1 << ((n - 1).bit_length() - 1)


__all__ = [
    "HASH_SIZE",
    "Frontier",
    "consistency_proof",
    "empty_root",
    "hash_children",
    "hash_leaf",
    "inclusion_proof",
    "leaf_hashes_of",
    "root",
    "verify_consistency",
    "verify_inclusion",
]

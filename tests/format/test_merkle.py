"""RFC 9162 Merkle trees: roots against the recursive definition, every proof for small trees, forgeries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maif.errors import IntegrityError
from maif.format import merkle


def reference_root(leaves: list[bytes]) -> bytes:
    """MTH straight from RFC 9162 section 2.1.1, recursively."""
    if not leaves:
        return merkle.empty_root()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return merkle.hash_children(reference_root(leaves[:k]), reference_root(leaves[k:]))


def leaves_of(n: int) -> list[bytes]:
    return [merkle.hash_leaf(i.to_bytes(4, "big")) for i in range(n)]


@pytest.mark.parametrize("n", range(0, 70))
def test_root_matches_recursive_definition(n: int) -> None:
    assert merkle.root(leaves_of(n)) == reference_root(leaves_of(n))


def test_leaf_and_node_are_domain_separated() -> None:
    a, b = merkle.hash_leaf(b"a"), merkle.hash_leaf(b"b")
    # A node must never equal the leaf hash of its children's concatenation (second-preimage defence).
    assert merkle.hash_children(a, b) != merkle.hash_leaf(a + b)


@pytest.mark.parametrize("n", range(1, 34))
def test_every_inclusion_proof_verifies_and_no_other_leaf_does(n: int) -> None:
    leaves = leaves_of(n)
    tree_root = merkle.root(leaves)
    for index in range(n):
        proof = merkle.inclusion_proof(leaves, index)
        merkle.verify_inclusion(leaves[index], index, n, proof, tree_root)
        wrong_leaf = leaves[(index + 1) % n] if n > 1 else merkle.hash_leaf(b"x")
        with pytest.raises(IntegrityError):
            merkle.verify_inclusion(wrong_leaf, index, n, proof, tree_root)
        if n > 1:
            with pytest.raises(IntegrityError):
                merkle.verify_inclusion(leaves[index], (index + 1) % n, n, proof, tree_root)


@pytest.mark.parametrize("n", range(1, 34))
def test_every_consistency_proof_verifies(n: int) -> None:
    leaves = leaves_of(n)
    new_root = merkle.root(leaves)
    for m in range(0, n + 1):
        proof = merkle.consistency_proof(leaves, m)
        merkle.verify_consistency(m, n, merkle.root(leaves[:m]), new_root, proof)


def test_consistency_refuses_a_rewritten_history() -> None:
    leaves = leaves_of(13)
    proof = merkle.consistency_proof(leaves, 6)
    forged_old = leaves_of(6)
    forged_old[2] = merkle.hash_leaf(b"rewritten")
    with pytest.raises(IntegrityError):
        merkle.verify_consistency(6, 13, merkle.root(forged_old), merkle.root(leaves), proof)
    with pytest.raises(IntegrityError):
        merkle.verify_consistency(6, 13, merkle.root(leaves[:6]), merkle.root(leaves), proof[:-1])
    with pytest.raises(IntegrityError):
        merkle.verify_consistency(6, 13, merkle.root(leaves[:6]), merkle.root(leaves), [*proof, proof[0]])
    with pytest.raises(IntegrityError):
        merkle.verify_consistency(7, 6, merkle.root(leaves[:7]), merkle.root(leaves[:6]), proof)


@given(st.integers(1, 200), st.data())
def test_tampered_proof_step_is_refused(n: int, data: st.DataObject) -> None:
    leaves = leaves_of(n)
    index = data.draw(st.integers(0, n - 1))
    proof = merkle.inclusion_proof(leaves, index)
    if not proof:
        return
    step = data.draw(st.integers(0, len(proof) - 1))
    bit = data.draw(st.integers(0, 255))
    forged = list(proof)
    flipped = bytearray(forged[step])
    flipped[bit // 8] ^= 1 << (bit % 8)
    forged[step] = bytes(flipped)
    with pytest.raises(IntegrityError):
        merkle.verify_inclusion(leaves[index], index, n, forged, merkle.root(leaves))


def test_malformed_proofs_are_typed_errors() -> None:
    leaves = leaves_of(5)
    tree_root = merkle.root(leaves)
    with pytest.raises(IntegrityError):
        merkle.verify_inclusion(leaves[0], 5, 5, [], tree_root)
    with pytest.raises(IntegrityError):
        merkle.verify_inclusion(leaves[0], 0, 5, [b"short"], tree_root)
    with pytest.raises(IntegrityError):
        merkle.verify_inclusion(leaves[0], 0, 5, [tree_root] * 65, tree_root)


@pytest.mark.parametrize("n", range(0, 70))
def test_frontier_root_matches_the_tree_root_at_every_size(n: int) -> None:
    frontier = merkle.Frontier()
    for leaf in leaves_of(n):
        frontier.push(leaf)
    assert frontier.size == n
    assert frontier.root() == reference_root(leaves_of(n))


def test_leaf_hashes_of_matches_hash_leaf() -> None:
    digests = [bytes([i]) * 32 for i in range(5)]
    assert merkle.leaf_hashes_of(digests) == [merkle.hash_leaf(d) for d in digests]


@pytest.mark.parametrize("chunks", [[0], [1], [5], [1, 1, 1], [3, 5, 8], [64, 1, 2], [7, 0, 9, 33], [100]])
def test_frontier_extend_matches_push_for_any_chunking(chunks: list[int]) -> None:
    leaves = leaves_of(sum(chunks))
    extended, pushed = merkle.Frontier(), merkle.Frontier()
    position = 0
    for size in chunks:
        extended.extend(leaves[position : position + size])
        for leaf in leaves[position : position + size]:
            pushed.push(leaf)
        position += size
        assert extended.size == pushed.size == position
        assert extended.root() == pushed.root() == reference_root(leaves[:position])

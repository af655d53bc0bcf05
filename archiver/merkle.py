"""RFC 6962 / RFC 9162 Merkle tree hashing, proof planning and proof verification.

Pure functions only: no storage, no I/O. Proof *construction* takes a `hash_range(lo, hi)`
callback (`MTH(D[lo:hi])`) that the caller backs with stored interior nodes, so this module
never touches a database; proof *verification* needs only hashes.

Hashing (RFC 6962 §2.1): leaf = SHA-256(0x00 ‖ data), node = SHA-256(0x01 ‖ left ‖ right),
empty tree = SHA-256("").

    # echo -n 00 | xxd -r -p | sha256sum
    >>> hash_leaf(b"").hex()
    '6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d'
    # echo -n 014E3132334E343536 | xxd -r -p | sha256sum
    >>> hash_children(b"N123", b"N456").hex()
    'aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb'
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from archiver.errors import ProofError, RootMismatchError

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

HashRange = Callable[[int, int], bytes]


def hash_leaf(data: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def hash_children(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _largest_power_of_two_below(n: int) -> int:
    """Largest power of two strictly smaller than `n` (requires n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over a list of leaf hashes (reference implementation, O(n) memory)."""
    if not leaf_hashes:
        return EMPTY_ROOT
    level = list(leaf_hashes)
    while len(level) > 1:
        nxt = [hash_children(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


# --- incremental tree -------------------------------------------------------------------------


@dataclass
class CompactRange:
    """The right border of a growing tree: one perfect subtree per set bit of `size`.

    `append` returns the perfect nodes it completed as ``(level, index, hash)`` so the caller
    can persist interior hashes (needed to serve proofs after segments expire).
    """

    size: int = 0
    # (level, index, hash), left to right, levels strictly decreasing
    nodes: list[tuple[int, int, bytes]] = field(default_factory=list)

    def append(self, leaf_hash: bytes) -> list[tuple[int, int, bytes]]:
        created = [(0, self.size, leaf_hash)]
        self.nodes.append((0, self.size, leaf_hash))
        while len(self.nodes) >= 2 and self.nodes[-1][0] == self.nodes[-2][0]:
            (lvl, lidx, left), (_, _, right) = self.nodes[-2], self.nodes[-1]
            merged = (lvl + 1, lidx >> 1, hash_children(left, right))
            self.nodes[-2:] = [merged]
            created.append(merged)
        self.size += 1
        return created

    def root(self) -> bytes:
        if not self.nodes:
            return EMPTY_ROOT
        acc = self.nodes[-1][2]
        for _, _, h in reversed(self.nodes[:-1]):
            acc = hash_children(h, acc)
        return acc

    @classmethod
    def from_nodes(cls, size: int, node: Callable[[int, int], bytes]) -> CompactRange:
        """Rebuild the border of a tree of `size` leaves from stored perfect nodes."""
        nodes: list[tuple[int, int, bytes]] = []
        offset = 0
        for level in range(size.bit_length() - 1, -1, -1):
            if size >> level & 1:
                index = offset >> level
                nodes.append((level, index, node(level, index)))
                offset += 1 << level
        return cls(size=size, nodes=nodes)


def perfect_range_hash(node: Callable[[int, int], bytes]) -> HashRange:
    """Turn a perfect-node getter ``node(level, index)`` into ``hash_range(lo, hi)``."""

    def hash_range(lo: int, hi: int) -> bytes:
        n = hi - lo
        if n <= 0:
            raise ProofError(f"empty range [{lo}, {hi})")
        if n & (n - 1) == 0 and lo % n == 0:
            return node(n.bit_length() - 1, lo // n)
        k = _largest_power_of_two_below(n)
        return hash_children(hash_range(lo, lo + k), hash_range(lo + k, hi))

    return hash_range


# --- proof planning (RFC 6962 §2.1.1 and §2.1.2) ----------------------------------------------


def inclusion_proof(index: int, size: int, hash_range: HashRange) -> list[bytes]:
    """PATH(index, D[0:size]). Requires 0 <= index < size."""
    if not 0 <= index < size:
        raise ProofError(f"index is beyond size: {index} >= {size}")

    def path(m: int, lo: int, hi: int) -> list[bytes]:
        n = hi - lo
        if n == 1:
            return []
        k = _largest_power_of_two_below(n)
        if m < k:
            return path(m, lo, lo + k) + [hash_range(lo + k, hi)]
        return path(m - k, lo + k, hi) + [hash_range(lo, lo + k)]

    return path(index, 0, size)


def consistency_proof(size1: int, size2: int, hash_range: HashRange) -> list[bytes]:
    """PROOF(size1, D[0:size2]). Requires 0 < size1 <= size2; empty when size1 == size2."""
    if not 0 < size1 <= size2:
        raise ProofError(f"consistency proof needs 0 < size1 <= size2, got {size1} and {size2}")
    if size1 == size2:
        return []

    def subproof(m: int, lo: int, hi: int, complete: bool) -> list[bytes]:
        n = hi - lo
        if m == n:
            return [] if complete else [hash_range(lo, hi)]
        k = _largest_power_of_two_below(n)
        if m <= k:
            return subproof(m, lo, lo + k, complete) + [hash_range(lo + k, hi)]
        return subproof(m - k, lo + k, hi, False) + [hash_range(lo, lo + k)]

    return subproof(size1, 0, size2, True)


# --- proof verification (RFC 9162 §2.1.3.2 and §2.1.4.2) --------------------------------------


def _decomp_incl_proof(index: int, size: int) -> tuple[int, int]:
    inner = (index ^ (size - 1)).bit_length()
    border = bin(index >> inner).count("1")
    return inner, border


def _chain_inner(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    for i, h in enumerate(proof):
        seed = hash_children(seed, h) if (index >> i) & 1 == 0 else hash_children(h, seed)
    return seed


def _chain_inner_right(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    for i, h in enumerate(proof):
        if (index >> i) & 1 == 1:
            seed = hash_children(h, seed)
    return seed


def _chain_border_right(seed: bytes, proof: Sequence[bytes]) -> bytes:
    for h in proof:
        seed = hash_children(h, seed)
    return seed


def _check_hashes(what: str, hashes: Sequence[bytes]) -> None:
    for i, h in enumerate(hashes):
        if len(h) != HASH_SIZE:
            raise ProofError(f"{what}[{i}] has unexpected size {len(h)}, want {HASH_SIZE}")


def root_from_inclusion_proof(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes]
) -> bytes:
    """Compute the root implied by an inclusion proof. Requires 0 <= index < size."""
    if index >= size:
        raise ProofError(f"index is beyond size: {index} >= {size}")
    if len(leaf_hash) != HASH_SIZE:
        raise ProofError(f"leaf hash has unexpected size {len(leaf_hash)}, want {HASH_SIZE}")
    _check_hashes("proof", proof)
    inner, border = _decomp_incl_proof(index, size)
    if len(proof) != inner + border:
        raise ProofError(f"wrong proof size {len(proof)}, want {inner + border}")
    res = _chain_inner(leaf_hash, proof[:inner], index)
    return _chain_border_right(res, proof[inner:])


def verify_inclusion(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Raise unless `proof` shows leaf `index` is in the tree of `size` with `root`."""
    _check_hashes("root", [root])
    calculated = root_from_inclusion_proof(index, size, leaf_hash, proof)
    if calculated != root:
        raise RootMismatchError(root, calculated, f"inclusion of leaf {index} in size {size}")


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Raise unless `proof` shows the tree of `size1`/`root1` is a prefix of `size2`/`root2`."""
    _check_hashes("proof", proof)
    if size2 < size1:
        raise ProofError(f"size2 ({size2}) < size1 ({size1})")
    if size1 == 0:
        # Every tree extends the empty tree, so such a "proof" proves nothing; accepting it
        # would let a rolled-back or forked log pass a check that callers believe happened.
        raise ProofError("consistency from an empty tree (size1 = 0) proves nothing")
    if size1 == size2:
        if proof:
            raise ProofError(f"size1 = size2 = {size1}, but proof has {len(proof)} hashes")
        if root1 != root2:
            raise RootMismatchError(root1, root2, f"equal sizes {size1}")
        return
    if not proof:
        # Without this an attacker could pass any pair of roots by sending nothing.
        raise ProofError("empty consistency proof")

    inner, border = _decomp_incl_proof(size1 - 1, size2)
    shift = (size1 & -size1).bit_length() - 1
    inner -= shift
    seed, start = proof[0], 1
    if size1 == 1 << shift:
        seed, start = root1, 0
    if len(proof) != start + inner + border:
        raise ProofError(f"wrong proof size {len(proof)}, want {start + inner + border}")
    rest = proof[start:]
    mask = (size1 - 1) >> shift
    hash1 = _chain_border_right(_chain_inner_right(seed, rest[:inner], mask), rest[inner:])
    if hash1 != root1:
        raise RootMismatchError(root1, hash1, f"consistency {size1}->{size2}, first root")
    hash2 = _chain_border_right(_chain_inner(seed, rest[:inner], mask), rest[inner:])
    if hash2 != root2:
        raise RootMismatchError(root2, hash2, f"consistency {size1}->{size2}, second root")

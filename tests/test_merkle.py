"""RFC 6962 hashing and RFC 9162 proofs: the vectors in tests/vectors, plus our own proofs round-tripping."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from archiver import merkle
from archiver.errors import ProofError, RootMismatchError, VerificationError
from tests.conftest import VECTORS

RFC6962 = VECTORS / "rfc6962"


def _cases(kind: str) -> list[Path]:
    found = sorted((RFC6962 / kind).rglob("*.json"))
    assert found, f"no {kind} vectors under {RFC6962}"  # an empty walk must not pass
    return found


def _b64(value: str | None) -> bytes:
    return base64.b64decode(value) if value else b""


@pytest.mark.parametrize("path", _cases("inclusion"), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_inclusion_vectors(path: Path) -> None:
    c = json.loads(path.read_text())
    args = (c["leafIdx"], c["treeSize"], _b64(c["leafHash"]), [_b64(p) for p in c["proof"] or []], _b64(c["root"]))
    if c["wantErr"]:
        with pytest.raises(VerificationError):
            merkle.verify_inclusion(*args)
    else:
        merkle.verify_inclusion(*args)


@pytest.mark.parametrize("path", _cases("consistency"), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_consistency_vectors(path: Path) -> None:
    c = json.loads(path.read_text())
    args = (c["size1"], c["size2"], [_b64(p) for p in c["proof"] or []], _b64(c["root1"]), _b64(c["root2"]))
    if c["wantErr"]:
        with pytest.raises(VerificationError):
            merkle.verify_consistency(*args)
    else:
        merkle.verify_consistency(*args)


def test_known_hashes() -> None:
    # echo -n 00 | xxd -r -p | sha256sum
    assert merkle.hash_leaf(b"").hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    # echo -n 014E3132334E343536 | xxd -r -p | sha256sum
    assert merkle.hash_children(b"N123", b"N456").hex() == (
        "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb")
    # sha256sum < /dev/null
    assert merkle.EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def _tree(n: int) -> tuple[list[bytes], dict[tuple[int, int], bytes], merkle.CompactRange]:
    leaves = [merkle.hash_leaf(hashlib.sha256(str(i).encode()).digest()) for i in range(n)]
    nodes: dict[tuple[int, int], bytes] = {}
    cr = merkle.CompactRange()
    for leaf in leaves:
        for lvl, idx, h in cr.append(leaf):
            nodes[(lvl, idx)] = h
    return leaves, nodes, cr


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 8, 9, 31, 64, 65, 100])
def test_compact_range_matches_reference_root(n: int) -> None:
    leaves, nodes, cr = _tree(n)
    assert cr.root() == merkle.root_of(leaves)
    rebuilt = merkle.CompactRange.from_nodes(n, lambda lvl, idx: nodes[(lvl, idx)])
    assert rebuilt.root() == cr.root() and rebuilt.nodes == cr.nodes


def test_every_generated_proof_verifies_and_tampering_fails() -> None:
    leaves, nodes, _ = _tree(70)
    hash_range = merkle.perfect_range_hash(lambda lvl, idx: nodes[(lvl, idx)])
    roots = {n: merkle.root_of(leaves[:n]) for n in range(1, 71)}
    for size in range(1, 71):
        for index in range(size):
            proof = merkle.inclusion_proof(index, size, hash_range)
            merkle.verify_inclusion(index, size, leaves[index], proof, roots[size])
            if proof:
                bad = [proof[0][:-1] + bytes([proof[0][-1] ^ 1])] + proof[1:]
                with pytest.raises(RootMismatchError):
                    merkle.verify_inclusion(index, size, leaves[index], bad, roots[size])
        for size1 in range(1, size + 1):
            proof = merkle.consistency_proof(size1, size, hash_range)
            merkle.verify_consistency(size1, size, proof, roots[size1], roots[size])
            if size1 < size:
                with pytest.raises(VerificationError):
                    merkle.verify_consistency(size1, size, proof, roots[size], roots[size1])


def test_reordering_one_historical_leaf_breaks_consistency() -> None:
    leaves, nodes, _ = _tree(20)
    hash_range = merkle.perfect_range_hash(lambda lvl, idx: nodes[(lvl, idx)])
    swapped = leaves[:3] + [leaves[4], leaves[3]] + leaves[5:]
    with pytest.raises(RootMismatchError, match="consistency 10->20"):
        merkle.verify_consistency(10, 20, merkle.consistency_proof(10, 20, hash_range),
                                  merkle.root_of(swapped[:10]), merkle.root_of(leaves))


def test_preconditions_name_the_numbers() -> None:
    with pytest.raises(ProofError, match=r"index is beyond size: 5 >= 5"):
        merkle.root_from_inclusion_proof(5, 5, bytes(32), [])
    with pytest.raises(ProofError, match=r"wrong proof size 0, want 3"):
        merkle.root_from_inclusion_proof(0, 5, bytes(32), [])
    with pytest.raises(ProofError, match=r"size2 \(3\) < size1 \(4\)"):
        merkle.verify_consistency(4, 3, [], bytes(32), bytes(32))
    with pytest.raises(ProofError, match="empty consistency proof"):
        merkle.verify_consistency(3, 4, [], bytes(32), bytes(32))


@pytest.mark.parametrize("path", _cases("consistency"), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_the_standalone_verifiers_consistency_check_on_the_same_vectors(path: Path) -> None:
    """exporters/verify_bundle.py has its own RFC 9162 consistency check (a regulator runs it alone)."""
    from exporters.verify_bundle import consistent

    c = json.loads(path.read_text())
    ok = consistent(c["size1"], c["size2"], [_b64(p) for p in c["proof"] or []], _b64(c["root1"]), _b64(c["root2"]))
    assert ok is (not c["wantErr"]), c


def test_the_standalone_check_accepts_our_own_proofs() -> None:
    from exporters.verify_bundle import consistent

    leaves = [merkle.hash_leaf(b"%d" % i) for i in range(70)]

    def hash_range(lo: int, hi: int) -> bytes:
        return merkle.root_of(leaves[lo:hi])

    for size1 in range(1, 70):
        for size2 in (size1, size1 + 1, 70):
            proof = merkle.consistency_proof(size1, size2, hash_range) if size1 < size2 else []
            assert consistent(size1, size2, proof, hash_range(0, size1), hash_range(0, size2))
            if size1 < size2:
                assert not consistent(size1, size2, proof, hash_range(0, size1), hash_range(0, size2 - 1))

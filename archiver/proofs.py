"""Serve RFC 9162 inclusion and consistency proofs from the stored Merkle tiles.

Proofs come from interior hashes kept in SQL, not from segments, so they keep working after
old segments expire or subjects are shredded.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator

import sqlalchemy as sa

from archiver.errors import ProofError
from archiver.merkle import HashRange, consistency_proof, inclusion_proof, perfect_range_hash
from archiver.sealer import TILE_WIDTH, TileStore


class ProofService:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def inclusion(self, stream: str, seq: int, tree_size: int) -> list[bytes]:
        with self.engine.connect() as conn:
            return inclusion_proof(seq, tree_size, self._range(conn, stream, tree_size))

    def consistency(self, stream: str, size1: int, size2: int) -> list[bytes]:
        with self.engine.connect() as conn:
            return consistency_proof(size1, size2, self._range(conn, stream, size2))

    def inclusions(self, stream: str, seqs: Iterable[int], tree_size: int,
                   cache_chunks: int = 256) -> Iterator[tuple[int, bytes, list[bytes]]]:
        """(seq, leaf hash, proof) for many records of one stream (ascending `seqs` read each tile
        row once), holding at most `cache_chunks` tile rows in memory."""
        with self.engine.connect() as conn:
            tiles = TileStore(conn, stream, max_chunks=cache_chunks)
            # proofs of nearby leaves share most siblings; the right edge's (imperfect) subtrees are
            # hashed once instead of once per proof
            hash_range = functools.lru_cache(maxsize=4096)(self._range_of(tiles, tree_size))
            # Within a complete, aligned block of 2^k leaves the path's first k hashes are the
            # block's own nodes (siblings at levels 0..k-1) and the rest is the block's path, the
            # same for every leaf of the block: computed once per block.
            k = TILE_WIDTH.bit_length() - 1
            block, upper = -1, []
            for seq in seqs:
                if ((seq >> k) + 1) << k > tree_size:  # the ragged right edge: the general path
                    yield seq, tiles.node(0, seq), inclusion_proof(seq, tree_size, hash_range)
                    continue
                if seq >> k != block:
                    block, upper = seq >> k, inclusion_proof(seq, tree_size, hash_range)[k:]
                yield seq, tiles.node(0, seq), [tiles.node(level, (seq >> level) ^ 1) for level in range(k)] + upper

    def leaf_hash(self, stream: str, seq: int) -> bytes:
        with self.engine.connect() as conn:
            return TileStore(conn, stream).node(0, seq)

    @staticmethod
    def _range(conn: sa.Connection, stream: str, size: int) -> HashRange:
        return ProofService._range_of(TileStore(conn, stream), size)

    @staticmethod
    def _range_of(tiles: TileStore, size: int) -> HashRange:
        def node(level: int, index: int) -> bytes:
            if (index + 1) << level > size:
                raise ProofError(f"node level={level} index={index} lies beyond tree size {size}")
            return tiles.node(level, index)

        return perfect_range_hash(node)

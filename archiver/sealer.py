"""The sealer: pending events of one stream → one WORM Parquet segment + a signed checkpoint.

Steps for one batch (numbers match the failpoints and the crash tests):

  (0) take the stream's lock (one writer per stream, across processes and machines);
  (1) reconcile anything a crash left behind (an in-flight segment, an unpublished checkpoint);
  (2) assign seqs to pending events in id order, canonicalise (RFC 8785), extend the hash
      chain and the Merkle tree, write one Parquet segment;
  (3) record the segment key as in flight (SQL), then PUT it with Object Lock COMPLIANCE,
      retain-until from the retention policy and ``If-None-Match: *``;
  (4) read it back and compare SHA-256;
  (5) commit seqs, segment row, chain head, tree size/root and Merkle tiles in one SQL
      transaction;
  (6) sign a checkpoint (stream, tree size, root, head, time) and PUT it beside the segment;
  (7) mark the checkpoint published.

A crash between any two steps loses nothing and duplicates nothing: before (3) nothing
durable happened; after (3) the in-flight key tells recovery to *adopt* the object already in
the store (it is WORM; it cannot be replaced) by matching its records to the still-pending
events; after (5) only the checkpoint is missing and is published on restart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog

from archiver import failpoints
from archiver.checkpoint import Checkpoint, SignedCheckpoint, key_id
from archiver.crypto import Signer
from archiver.db import events, inbox, merkle_tiles, segments, streams
from archiver.errors import ConflictError, ObjectExistsError, ObjectNotFoundError, ObjectStoreError
from archiver.heads import StoredHead, write_head
from archiver.leases import StreamLocks
from archiver.merkle import CompactRange, hash_leaf
from archiver.objectstore import ObjectStore
from archiver.publish import Publisher
from archiver.records import COLUMNS, GENESIS, canonical, canonical_parts, format_ts, join_canonical, link
from archiver.segments import checkpoint_key, decode_segment, encode_columns, segment_key
from archiver.sqlutil import as_utc, insert_for, insert_ignore, utcnow
from archiver.timestamps import Timestamper

log = structlog.get_logger("strongroom.sealer")

TILE_WIDTH = 256  # hashes per merkle_tiles row
RECORD_FROM_EVENT = [c for c in COLUMNS if c not in ("seq", "prev_hash", "record_hash")]


def _id_runs(ids: list[int], first_seq: int) -> list[tuple[int, int, int]]:
    """Split ids (ascending) into runs of consecutive integers: (first id, last id, its seq)."""
    runs: list[tuple[int, int, int]] = []
    for i, eid in enumerate(ids):
        if runs and eid == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], eid, runs[-1][2])
        else:
            runs.append((eid, eid, first_seq + i))
    return runs


class TileStore:
    """Perfect Merkle nodes of one stream, 256 per (level, chunk) row."""

    def __init__(self, conn: sa.Connection, stream: str, max_chunks: int | None = None) -> None:
        """`max_chunks` bounds the rows kept in memory (the oldest clean rows are dropped first)."""
        self.conn = conn
        self.stream = stream
        self.max_chunks = max_chunks
        self._chunks: dict[tuple[int, int], bytearray] = {}
        self._dirty: set[tuple[int, int]] = set()

    def _chunk(self, level: int, chunk: int) -> bytearray:
        key = (level, chunk)
        if key not in self._chunks:
            if self.max_chunks is not None and len(self._chunks) >= self.max_chunks:
                old = next((k for k in self._chunks if k not in self._dirty), None)
                if old is not None:
                    del self._chunks[old]
            blob = self.conn.execute(
                sa.select(merkle_tiles.c.hashes).where(
                    merkle_tiles.c.stream == self.stream, merkle_tiles.c.level == level,
                    merkle_tiles.c.chunk == chunk)
            ).scalar()
            self._chunks[key] = bytearray(blob or b"")
        return self._chunks[key]

    def node(self, level: int, index: int) -> bytes:
        chunk = self._chunk(level, index // TILE_WIDTH)
        off = (index % TILE_WIDTH) * 32
        if off + 32 > len(chunk):
            raise KeyError(f"merkle node level={level} index={index} of {self.stream} not stored")
        return bytes(chunk[off : off + 32])

    def add(self, nodes: list[tuple[int, int, bytes]]) -> None:
        for level, index, h in nodes:
            chunk = self._chunk(level, index // TILE_WIDTH)
            off = (index % TILE_WIDTH) * 32
            if off != len(chunk):
                raise ConflictError(f"merkle tile {self.stream}/{level}/{index}", str(len(chunk)), str(off))
            chunk += h
            self._dirty.add((level, index // TILE_WIDTH))

    def flush(self) -> None:
        rows = [{"stream": self.stream, "level": lvl, "chunk": ch, "hashes": bytes(self._chunks[(lvl, ch)])}
                for lvl, ch in sorted(self._dirty)]
        if rows:
            stmt = insert_for(self.conn, merkle_tiles)
            self.conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["stream", "level", "chunk"], set_={"hashes": stmt.excluded.hashes}
                ),
                rows,
            )
        self._dirty.clear()


@dataclass
class _Batch:
    stream: str
    event_ids: list[int]
    count: int
    first_seq: int
    head: bytes
    root: bytes
    new_nodes: list[tuple[int, int, bytes]]
    key: str
    data: bytes


class Sealer:
    def __init__(
        self,
        engine: sa.Engine,
        store: ObjectStore,
        signing_key: Signer | Callable[[], Signer],
        retain_until: Callable[[str, datetime], tuple[datetime, str]],
        batch_max: int = 50_000,
        clock: Callable[[], datetime] = utcnow,
        head_interval: timedelta = timedelta(minutes=1),
        timestamper: Timestamper | None = None,
        publisher: Publisher | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        # a callable: the key in force at each signature (a rotation takes effect without a restart)
        self._signing_key = signing_key if callable(signing_key) else (lambda: signing_key)
        self.retain_until = retain_until
        self.batch_max = batch_max
        self.locks = StreamLocks(engine)
        self.clock = clock
        self.head_interval = head_interval
        self.timestamper = timestamper
        self.publisher = publisher
        self._head_at: datetime | None = None  # when this sealer last wrote the archive head
        self._last_cp: dict[str, Checkpoint] = {}  # stream -> the checkpoint this sealer last published

    @property
    def signing_key(self) -> Signer:
        return self._signing_key()

    # -- public -----------------------------------------------------------------------------

    def seal_all(self) -> int:
        """Seal every stream with work until none is left. Returns records sealed.

        Work = pending events, an in-flight segment, or an unpublished checkpoint. Streams
        locked by another sealer are skipped (they return 0) and picked up by that sealer.
        """
        total, failed = 0, dict[str, BaseException]()
        while True:
            sealed = 0
            for stream in self._streams_with_work():
                if stream in failed:
                    continue
                try:
                    sealed += self.seal_stream(stream)
                except Exception as e:  # one stream's failure never stops the others
                    log.error("seal.stream_failed", stream=stream, error=type(e).__name__, detail=str(e)[:300])
                    failed[stream] = e
            total += sealed
            if sealed == 0:
                break
        self._purge_sealed_inbox()
        if total:
            self.write_head()
        if failed and not total:  # nothing sealed at all: say why (the store may be away)
            raise next(iter(failed.values()))
        return total

    def _streams_with_work(self) -> list[str]:
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.union(
                    sa.select(events.c.stream).where(events.c.segment_id.is_(None)),
                    sa.select(streams.c.stream).where(streams.c.pending_key.is_not(None)),
                    sa.select(segments.c.stream).where(segments.c.checkpoint_key.is_(None)),
                )
            ).scalars().all()
        return sorted(found)

    def seal_stream(self, stream: str) -> int:
        """(0)–(7) for one batch of `stream`. Returns records sealed (0 if another sealer has it)."""
        with self.locks.hold(stream) as mine:  # (0)
            if not mine:
                return 0
            self._ensure_stream(stream)
            return self._seal_locked(stream)

    def _seal_locked(self, stream: str) -> int:
        self._recover(stream)  # (1)
        batch = self._build(stream)  # (2)
        if batch is None:
            return 0
        self._set_pending(stream, batch.key)  # (3)
        failpoints.hit("sealer.before_put")
        until, rule = self.retain_until(stream, self.clock())  # from the schedule in force
        try:
            put = self.store.put_locked(batch.key, batch.data, until)
            version_id = put.version_id
        except ObjectExistsError:
            # Only possible if an earlier attempt's intent was lost; adopt what is stored.
            self._recover(stream)
            return 0
        failpoints.hit("sealer.after_put")
        self._read_back(batch.key, version_id, hashlib.sha256(batch.data).hexdigest())  # (4)
        failpoints.hit("sealer.after_readback")
        seg_id = self._commit(batch, version_id, until, rule)  # (5)
        failpoints.hit("sealer.after_commit")
        self._publish_checkpoint(seg_id)  # (6), (7)
        return batch.count

    # -- (0) stream row -------------------------------------------------------------------

    def _ensure_stream(self, stream: str) -> None:
        with self.engine.begin() as conn:
            insert_ignore(conn, streams, [{
                "stream": stream, "tree_size": 0, "head_hash": GENESIS.hex(),
                "root_hash": hashlib.sha256(b"").hexdigest(), "updated_at": self.clock(),
            }])

    # -- (1) recovery -----------------------------------------------------------------------

    def _recover(self, stream: str) -> None:
        with self.engine.connect() as conn:
            head = conn.execute(sa.select(streams).where(streams.c.stream == stream)).one()
        if head.pending_key:
            try:
                data = self.store.get(head.pending_key)
            except ObjectNotFoundError:
                data = None  # the PUT never happened: the events are simply still pending
            if data is not None:
                self._adopt(stream, head.pending_key, data)
            self._set_pending(stream, None)
        for seg_id in self._unpublished_checkpoints(stream):
            self._publish_checkpoint(seg_id)

    def _adopt(self, stream: str, key: str, data: bytes) -> None:
        """Commit a segment that reached the store before a crash, matching it to SQL events."""
        records, meta = decode_segment(data)
        with self.engine.connect() as conn:
            head = conn.execute(sa.select(streams).where(streams.c.stream == stream)).one()
            if records[0]["seq"] != head.tree_size:
                if records[0]["seq"] < head.tree_size:
                    return  # already committed before the crash
                raise ConflictError(f"orphan {key}", str(head.tree_size), str(records[0]["seq"]))
            keys = [r["natural_key"] for r in records]
            by_key: dict[str, int] = {}
            for start in range(0, len(keys), 5000):  # stay under SQLite's bound-parameter limit
                by_key.update({r.natural_key: r.id for r in conn.execute(
                    sa.select(events.c.natural_key, events.c.id).where(
                        events.c.stream == stream, events.c.natural_key.in_(keys[start : start + 5000]),
                        events.c.segment_id.is_(None)))})
        if len(by_key) != len(keys):
            raise ConflictError(f"orphan {key}", f"{len(keys)} pending events", f"{len(by_key)} found")
        tree = self._tree(stream, head.tree_size)
        new_nodes: list[tuple[int, int, bytes]] = []
        prev = bytes.fromhex(head.head_hash)
        for rec in records:
            canon = canonical(rec)
            if rec["prev_hash"] != prev or link(prev, canon) != rec["record_hash"]:
                raise ConflictError(f"orphan {key} seq={rec['seq']}", prev.hex(), rec["prev_hash"].hex())
            prev = rec["record_hash"]
            new_nodes += tree.append(hash_leaf(canon))
        version_id = next(
            (v.version_id for v in self.store.list_versions(key) if v.key == key and not v.is_delete_marker), None
        )
        batch = _Batch(stream, [by_key[k] for k in keys], len(records), records[0]["seq"], prev, tree.root(),
                       new_nodes, key, data)
        lock = self.store.retention(key, version_id)  # the lock it was written with, not today's schedule
        until, rule = (lock.retain_until, "as stored") if lock.retain_until else self.retain_until(stream, self.clock())
        seg_id = self._commit(batch, version_id, until, rule)
        self._publish_checkpoint(seg_id)

    def _unpublished_checkpoints(self, stream: str) -> list[int]:
        with self.engine.connect() as conn:
            return list(conn.execute(
                sa.select(segments.c.id)
                .where(segments.c.stream == stream, segments.c.checkpoint_key.is_(None))
                .order_by(segments.c.first_seq)
            ).scalars().all())

    # -- (2) build --------------------------------------------------------------------------

    def _tree(self, stream: str, size: int) -> CompactRange:
        with self.engine.connect() as conn:
            return CompactRange.from_nodes(size, TileStore(conn, stream).node)

    def _build(self, stream: str) -> _Batch | None:
        with self.engine.connect() as conn:
            head = conn.execute(sa.select(streams).where(streams.c.stream == stream)).one()
            rows = conn.execute(
                sa.select(events).where(events.c.stream == stream, events.c.segment_id.is_(None))
                .order_by(events.c.id).limit(self.batch_max)
            ).mappings().all()
        if not rows:
            return None
        n = len(rows)
        cols: dict[str, list[Any]] = {c: [ev[c] for ev in rows] for c in RECORD_FROM_EVENT}
        cols["event_time"] = [as_utc(v) for v in cols["event_time"]]
        cols["received_at"] = [as_utc(v) for v in cols["received_at"]]
        cols["seq"] = list(range(head.tree_size, head.tree_size + n))
        tree = self._tree(stream, head.tree_size)
        prev = bytes.fromhex(head.head_hash)
        prevs, hashes, new_nodes = [], [], []
        for part in canonical_parts(cols):
            canon = join_canonical(part, prev)
            prevs.append(prev)
            prev = link(prev, canon)
            hashes.append(prev)
            new_nodes += tree.append(hash_leaf(canon))
        cols["prev_hash"], cols["record_hash"] = prevs, hashes
        first, last = head.tree_size, head.tree_size + n - 1
        now = self.clock()
        meta = {"stream": stream, "first_seq": first, "last_seq": last, "prev_hash": head.head_hash,
                "head_hash": prev.hex(), "tree_size": last + 1, "root_hash": tree.root().hex(),
                "sealed_at": format_ts(now)}
        key = segment_key(stream, f"{now:%Y-%m-%d}", first, last)
        return _Batch(stream, [ev["id"] for ev in rows], n, first, prev, tree.root(), new_nodes, key,
                      encode_columns(cols, meta))

    # -- (3)–(5) ----------------------------------------------------------------------------

    def _set_pending(self, stream: str, key: str | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.update(streams).where(streams.c.stream == stream).values(pending_key=key))

    def _read_back(self, key: str, version_id: str | None, sha256: str) -> None:
        got = hashlib.sha256(self.store.get(key, version_id)).hexdigest()
        if got != sha256:
            raise ObjectStoreError(f"read-back of {key} has sha256 {got}, wrote {sha256}")

    def _commit(self, b: _Batch, version_id: str | None, retain_until: datetime, rule: str) -> int:
        last = b.first_seq + b.count - 1
        now = self.clock()
        with self.engine.begin() as conn:
            seg_id = conn.execute(
                sa.insert(segments).values(
                    stream=b.stream, first_seq=b.first_seq, last_seq=last, object_key=b.key,
                    version_id=version_id, sha256=hashlib.sha256(b.data).hexdigest(), size=len(b.data),
                    retain_until=retain_until, retention_rule=rule[:64], head_hash=b.head.hex(),
                    root_hash=b.root.hex(), created_at=now,
                ).returning(segments.c.id)
            ).scalar_one()
            for lo, hi, seq in _id_runs(b.event_ids, b.first_seq):
                # one statement per run of consecutive ids: seq = id + (first seq of run - first id)
                conn.execute(
                    sa.update(events).where(events.c.id.between(lo, hi))
                    .values(seq=events.c.id + (seq - lo), segment_id=seg_id)
                )
            res = conn.execute(
                sa.update(streams)
                .where(streams.c.stream == b.stream, streams.c.tree_size == b.first_seq)
                .values(tree_size=last + 1, head_hash=b.head.hex(), root_hash=b.root.hex(),
                        pending_key=None, updated_at=now)
            )
            if res.rowcount != 1:
                raise ConflictError(f"stream {b.stream} head", str(b.first_seq), "moved")
            tiles = TileStore(conn, b.stream)
            tiles.add(b.new_nodes)
            tiles.flush()
        return int(seg_id)

    # -- (6)–(7) checkpoint -----------------------------------------------------------------

    def _publish_checkpoint(self, seg_id: int) -> None:
        with self.engine.connect() as conn:
            seg = conn.execute(sa.select(segments).where(segments.c.id == seg_id)).one()
        key = checkpoint_key(seg.stream, seg.last_seq)
        previous = self._previous_checkpoint(seg)
        signing_key = self.signing_key
        cp = Checkpoint(seg.stream, seg.last_seq + 1, seg.root_hash, seg.head_hash, format_ts(self.clock()),
                        key_id(signing_key.public_key()), segment=seg.object_key, segment_sha256=seg.sha256,
                        previous_sha256=previous.digest() if previous else None,
                        previous_size=previous.tree_size if previous else None)
        published = cp  # what the store holds under `key` (the one stored before a crash, if any)
        try:
            # a checkpoint is kept at least as long as the segment it signs (and is never disposed)
            self.store.put_locked(key, SignedCheckpoint.sign(cp, signing_key).to_json(),
                                  max(as_utc(seg.retain_until), self.retain_until(seg.stream, self.clock())[0]))
        except ObjectExistsError:
            stored = SignedCheckpoint.from_json(self.store.get(key), key)
            if stored.checkpoint.key_id == cp.key_id:  # (one signed before a rotation is checked by verify)
                stored.verify(signing_key.public_key(), key)
            s = stored.checkpoint
            if (s.tree_size, s.root_hash, s.head_hash) != (cp.tree_size, cp.root_hash, cp.head_hash):
                raise ConflictError(key, cp.root_hash, s.root_hash) from None
            published = s
        failpoints.hit("sealer.after_checkpoint_put")
        with self.engine.begin() as conn:
            conn.execute(sa.update(segments).where(segments.c.id == seg_id).values(checkpoint_key=key))
        self._last_cp[seg.stream] = published

    def write_head(self, force: bool = False) -> StoredHead | None:
        """The archive head (stamped by the TSAs, when configured), after a pass that sealed
        something: at most once per `head_interval` unless `force`d (an export's snapshot)."""
        now = self.clock()
        if not force and self._head_at is not None and now - self._head_at < self.head_interval:
            return None
        try:
            head = write_head(self.engine, self.store, self.signing_key, self.retain_until, now)
        except Exception as e:  # sealed records are safe without it; the next pass writes one
            log.error("seal.head_failed", error=type(e).__name__, detail=str(e)[:300])
            return None
        self._head_at = now
        if head is not None and self.timestamper is not None:
            try:
                if not self.timestamper.stamp_head(self.store, head.key, head.data, head.retain_until):
                    log.warning("seal.head_unstamped", head=head.key)
            except Exception as e:  # storing a token failed: the next head is stamped again
                log.error("seal.stamp_failed", head=head.key, error=type(e).__name__, detail=str(e)[:300])
        if head is not None and self.publisher is not None:
            self.publisher.publish(head.head.streams, self.signing_key)
        return head

    def _previous_checkpoint(self, seg: Any) -> Checkpoint | None:
        """The checkpoint of the segment before `seg` (published first: checkpoints go out in order)."""
        if seg.first_seq == 0:
            return None
        mine = self._last_cp.get(seg.stream)
        if mine is not None and mine.tree_size == seg.first_seq:
            return mine  # the one this sealer just published: no read of the store on the hot path
        with self.engine.connect() as conn:
            prev = conn.execute(sa.select(segments.c.id, segments.c.checkpoint_key).where(
                segments.c.stream == seg.stream, segments.c.last_seq == seg.first_seq - 1)).one()
        if prev.checkpoint_key is None:
            self._publish_checkpoint(prev.id)
            return self._previous_checkpoint(seg)
        return SignedCheckpoint.from_json(self.store.get(prev.checkpoint_key), prev.checkpoint_key).checkpoint

    # -- housekeeping -----------------------------------------------------------------------

    def _purge_sealed_inbox(self) -> None:
        """Drop raw-body ciphertext once every event of the body is sealed.

        The sealed ``change`` and ``envelope`` records re-create the body byte for byte, and
        unlike the inbox copy they are encrypted per data subject (so erasure can reach them).
        """
        unsealed = sa.select(events.c.id).where(events.c.inbox_id == inbox.c.id, events.c.segment_id.is_(None))
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(inbox).where(inbox.c.state == "normalized", ~sa.exists(unsealed))
                .values(ciphertext=None, state="sealed", purged_at=utcnow())
            )

"""Re-verify the archive from the object store alone (plus our public key).

For every stream, every segment and every checkpoint is re-read and checked in this order;
each failure cites its step number, the stream, the object and (where there is one) the first
bad seq:

  (1) record hash — each record_hash = SHA-256(prev_hash ‖ canonical(record));
  (2) chain link — each prev_hash equals the previous record's hash, seqs are contiguous from 0
      across segments, and the segment's metadata agrees with its rows;
  (3) Merkle root — the RFC 6962 root recomputed over all records so far equals the root (and
      the head hash) in the checkpoint of that tree size;
  (4) checkpoint signature — Ed25519 (ECDSA P-256 for a key in KMS) over the checkpoint with our key;
  (5) Object Lock — every object is COMPLIANCE-locked and has exactly one version (no overwrite
      or delete marker on top of it);
  (6) consistency — checkpoints grow strictly and each is a prefix of the next (RFC 9162
      consistency proof between successive checkpoints verifies), and the newest checkpoint
      (and the SQL head, when given) covers every record;
  (7) objects — every byte of every segment is what its checkpoint signed (SHA-256 of the object:
      data, statistics, footer and metadata alike), the footer's chain head, root and tree size
      are those recomputed from its rows, and each checkpoint names the one before it (a missing
      checkpoint is named by the tree size its successor gives);
  (8) archive head — the newest signed archive head lists every stream with its tree head: a
      stream it names that the store lacks, or holds fewer records of, or whose root at that
      size differs, is named;
  (9) timestamps — every RFC 3161 token under timestamps/ stamps the exact bytes of the head it
      sits beside and comes from a TSA whose certificate was given (`tsa_roots`); given any, at
      least one head must carry such a token. The newest stamped head's time is reported;
  (10) latest — each checkpoint a holder outside the archive was given (`latest`: C2SP notes,
      signature checked by the caller) must be consistent with the store: the store holds at
      least its tree size, and an RFC 9162 consistency proof from it to the store's tree
      verifies (a copy cut back below it names the missing seqs).

A segment deleted after its retention ended is accepted only where a disposition certificate
signed with our key accounts for it: its leaf hashes stand in for the records (so every
checkpoint's root is still recomputed) and its chain heads must link to the neighbours.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from archiver import keyhistory
from archiver.checkpoint import ORIGIN_V1, SignedCheckpoint
from archiver.crypto import PublicKey
from archiver.errors import ObjectStoreError, VerificationError
from archiver.heads import ArchiveHead
from archiver.heads import newest as newest_head
from archiver.keyhistory import KeyHistory
from archiver.merkle import CompactRange, consistency_proof, hash_leaf, perfect_range_hash, verify_consistency
from archiver.notes import NoteCheckpoint
from archiver.objectstore import ObjectStore
from archiver.records import GENESIS, canonical_parts, join_canonical, link
from archiver.segments import decode_columns
from archiver.timestamps import PREFIX as TOKENS
from archiver.timestamps import check_token, head_of
from policies.disposition import load_certificates

_SEG = re.compile(r"^records/stream=([^/]+)/date=[^/]+/seg-(\d+)-(\d+)\.parquet$")
_CP = re.compile(r"^checkpoints/stream=([^/]+)/(\d+)\.json$")


@dataclass(frozen=True, slots=True)
class Failure:
    step: int
    stream: str
    item: str
    message: str
    seq: int | None = None

    def __str__(self) -> str:
        at = f" seq={self.seq}" if self.seq is not None else ""
        return f"({self.step}) stream={self.stream} {self.item}{at}: {self.message}"


@dataclass
class StreamResult:
    stream: str
    segments: int = 0
    records: int = 0
    checkpoints: int = 0
    disposed: int = 0  # segments deleted after retention, accounted for by a signed certificate
    root: str = ""
    roots: dict[int, str] = field(default_factory=dict)  # tree size -> root of each checkpoint that verified


@dataclass
class HeadResult:
    key: str | None = None  # the newest archive head checked (None: the store holds none)
    time: str | None = None
    streams: int = 0
    tokens: int = 0  # RFC 3161 tokens found (verified, when TSA certificates were given)
    stamped: str | None = None  # the newest head with a verified token …
    stamped_at: str | None = None  # … and the TSA's time for it


@dataclass
class Report:
    streams: list[StreamResult] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    head: HeadResult = field(default_factory=HeadResult)

    @property
    def ok(self) -> bool:
        # An archive with nothing in it verifies nothing: say so rather than pass.
        return not self.failures and bool(self.streams)

    @property
    def records(self) -> int:
        return sum(s.records for s in self.streams)


class Verifier:
    def __init__(self, store: ObjectStore, public_key: PublicKey, check_locks: bool = True,
                 tsa_roots: list[x509.Certificate] | None = None) -> None:
        self.store = store
        self.public_key = public_key
        self.check_locks = check_locks
        self.tsa_roots = tsa_roots

    def verify(self, expected_sizes: dict[str, int] | None = None, only: Iterable[str] | None = None,
               latest: dict[str, NoteCheckpoint] | None = None) -> Report:
        """Verify every stream found in the store (or `only` those).

        `expected_sizes` (stream -> tree size from SQL, read before the store is listed) catches
        a copy with its newest segments *and* checkpoints removed, which the objects alone cannot
        reveal; streams that grew since the snapshot (a live archive) are not findings.
        """
        segs: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
        cps: dict[str, list[str]] = defaultdict(list)
        report = Report()
        for key in self.store.list_keys("records/"):
            if m := _SEG.match(key):
                segs[m[1]].append((int(m[2]), int(m[3]), key))
            else:
                report.failures.append(Failure(2, "?", key, "unexpected object under records/"))
        for key in self.store.list_keys("checkpoints/"):
            if m := _CP.match(key):
                cps[m[1]].append(key)
        try:
            self.history = keyhistory.load(self.store, self.public_key)
        except (ValueError, KeyError, TypeError) as e:
            report.failures.append(Failure(4, "?", keyhistory.PREFIX, f"key history does not verify: {e}"))
            self.history = KeyHistory(self.public_key)
        disposed: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
        certs, bad = self._certificates()
        for key in bad:
            report.failures.append(Failure(4, "?", key, "disposition certificate does not verify"))
        for cert in certs:
            for obj in cert["objects"]:
                if obj.get("kind") == "segment":
                    disposed[obj["stream"]][obj["first_seq"]] = obj
        head = self._newest_head(report)
        self._check_timestamps(report)  # (9)
        names = sorted(set(segs) | set(cps) | set(expected_sizes or {}) | set(head.streams if head else ())
                       | set(latest or {}))
        if only is not None:
            names = [n for n in names if n in set(only)]
        for name in names:
            result, failures = self._verify_stream(name, sorted(segs[name]), sorted(cps[name]),
                                                   (expected_sizes or {}).get(name), disposed[name],
                                                   (latest or {}).get(name))
            report.streams.append(result)
            report.failures.extend(failures)
            if head is not None and name in head.streams:
                report.failures.extend(self._check_head(report.head.key or "", head.streams[name], result))
        return report

    def _certificates(self) -> tuple[list[dict[str, Any]], list[str]]:
        """Disposition certificates that verify under a key of the history, and those under none."""
        return load_certificates(self.store, list(self.history.keys.values()))

    def _key(self, key_id: str, signed_at: str | None) -> PublicKey:
        try:
            return self.history.key_for(key_id, signed_at)
        except ValueError as e:
            raise VerificationError(str(e)) from e

    def _newest_head(self, report: Report) -> ArchiveHead | None:
        """(8): the newest archive head, verified; None when there is none (or it does not verify)."""
        key = newest_head(self.store)
        if key is None:
            return None
        report.head.key = key
        try:
            data = self.store.get(key)
            claimed = json.loads(data)["head"]
            head = ArchiveHead.verified(data, self._key(str(claimed["key_id"]), str(claimed["time"])), key)
        except (ValueError, KeyError, TypeError) as e:  # a hostile store: a finding, never a crash
            report.failures.append(Failure(8, "?", key, f"malformed archive head: {type(e).__name__}"))
            return None
        except (VerificationError, ObjectStoreError) as e:
            report.failures.append(Failure(8, "?", key, str(e)))
            return None
        report.head.time, report.head.streams = head.time, len(head.streams)
        if self.check_locks:
            ret = self.store.retention(key)
            if ret.mode != "COMPLIANCE" or ret.retain_until is None:
                report.failures.append(Failure(8, "?", key, f"object lock is {ret.mode!r}, expected COMPLIANCE"))
        return head

    def _check_timestamps(self, report: Report) -> None:
        """(9): each token stamps its head's bytes, from a TSA of `tsa_roots`."""
        heads: dict[str, bytes | None] = {}
        for key in sorted(self.store.list_keys(TOKENS)):
            report.head.tokens += 1
            if self.tsa_roots is None:
                continue  # nothing to check them against: counted, not trusted
            head_key = head_of(key)
            if head_key not in heads:
                try:
                    heads[head_key] = self.store.get(head_key)
                except ObjectStoreError:
                    heads[head_key] = None
            data = heads[head_key]
            if data is None:
                report.failures.append(Failure(9, "?", key, f"stamps {head_key}, which the store does not hold"))
                continue
            try:
                stamp = check_token(self.store.get(key), data, self.tsa_roots)
            except (ValueError, ObjectStoreError) as e:
                report.failures.append(Failure(9, "?", key, str(e)))
                continue
            if report.head.stamped is None or head_key > report.head.stamped:
                report.head.stamped, report.head.stamped_at = head_key, stamp.time.isoformat()
        if self.tsa_roots is not None and report.head.stamped is None:
            report.failures.append(Failure(9, "?", TOKENS, "no archive head carries a timestamp from the given TSAs"))

    @staticmethod
    def _check_head(key: str, entry: dict[str, Any], result: StreamResult) -> list[Failure]:
        size, root = entry["tree_size"], entry["root_hash"]
        if result.records == 0 and result.segments == 0 and result.checkpoints == 0:
            return [Failure(8, result.stream, key, f"the archive head lists this stream with {size} records; "
                                                  "the store has none of it (stream removed)")]
        if result.records < size:
            return [Failure(8, result.stream, key, f"the archive head lists {size} records; the store holds "
                                                  f"{result.records} (seq {result.records}..{size - 1} missing)",
                            result.records)]
        if result.roots.get(size) != root:
            return [Failure(8, result.stream, key, f"no verified checkpoint of tree size {size} with the head's "
                                                  f"root {root[:16]}…")]
        return []

    # -- one stream -------------------------------------------------------------------------

    def _verify_stream(self, stream: str, segs: list[tuple[int, int, str]], cp_keys: list[str],
                       expected_size: int | None, disposed: dict[int, dict[str, Any]] | None = None,
                       latest: NoteCheckpoint | None = None) -> tuple[StreamResult, list[Failure]]:
        res = StreamResult(stream, segments=len(segs), checkpoints=len(cp_keys))
        fails: list[Failure] = []
        checkpoints = self._load_checkpoints(stream, cp_keys, fails)  # (4)
        if self.check_locks:
            self._check_objects(stream, [k for _, _, k in segs] + cp_keys, fails)  # (5)

        tree = CompactRange()
        nodes: dict[tuple[int, int], bytes] = {}
        prev = GENESIS
        objects: dict[str, str] = {}  # segment key -> SHA-256 of the bytes read
        by_size = {cp.checkpoint.tree_size: (key, cp) for key, cp in checkpoints}
        broken = False
        present = {first for first, _, _ in segs}
        gone = [(first, d["last_seq"], d["key"]) for first, d in (disposed or {}).items() if first not in present]
        for first, last, key in sorted(segs + gone):
            if broken:
                break
            if first not in present:
                broken = not self._disposed(stream, key, (disposed or {})[first], tree, nodes, prev, by_size, fails)
                if not broken:
                    prev = bytes.fromhex((disposed or {})[first]["head_hash"])
                    res.disposed += 1
                continue
            if first != tree.size:
                fails.append(Failure(2, stream, key, f"expected segment to start at seq {tree.size}, "
                                                     f"found seq {first}", tree.size))
                break
            try:
                data = self.store.get(key)
                objects[key] = hashlib.sha256(data).hexdigest()
                cols, meta = decode_columns(data)
                del data
                parts = canonical_parts(cols)
            except (ValueError, ObjectStoreError) as e:
                fails.append(Failure(2, stream, key, f"unreadable segment: {e}", first))
                break
            if meta.get("prev_hash") != prev.hex() or meta.get("first_seq") != first or meta.get("last_seq") != last:
                fails.append(Failure(2, stream, key, "segment metadata does not match its position in the chain", first))
                break
            for part, rec_seq, rec_stream, rec_prev, rec_hash in zip(
                parts, cols["seq"], cols["stream"], cols["prev_hash"], cols["record_hash"], strict=True
            ):
                seq = tree.size
                if rec_seq != seq or rec_stream != stream:
                    fails.append(Failure(2, stream, key, f"expected seq {seq} of {stream}, found seq "
                                                         f"{rec_seq} of {rec_stream}", seq))
                    broken = True
                    break
                if rec_prev != prev:  # (2)
                    fails.append(Failure(2, stream, key, f"prev_hash {(rec_prev or b'').hex()[:16]}… does "
                                                         f"not link to {prev.hex()[:16]}…", seq))
                    broken = True
                    break
                canon = join_canonical(part, prev)
                if link(prev, canon) != rec_hash:  # (1)
                    fails.append(Failure(1, stream, key, "record hash does not match its content", seq))
                    broken = True
                    break
                prev = rec_hash
                for lvl, idx, h in tree.append(hash_leaf(canon)):
                    nodes[(lvl, idx)] = h
                if tree.size in by_size:  # (3)
                    self._check_root(stream, tree, prev, *by_size[tree.size], fails)
            if not broken and tree.size != last + 1:
                fails.append(Failure(2, stream, key, f"segment named up to seq {last} holds rows up to "
                                                     f"{tree.size - 1}", tree.size))
                broken = True
            if not broken:
                footer = {"stream": stream, "head_hash": prev.hex(), "root_hash": tree.root().hex(),
                          "tree_size": tree.size}
                wrong = sorted(f for f, v in footer.items() if meta.get(f) != v)
                if wrong:
                    fails.append(Failure(7, stream, key, f"footer {', '.join(wrong)} differ from the records'", last))
        res.records, res.root = tree.size, tree.root().hex()
        if not broken:
            self._check_growth(stream, checkpoints, tree, nodes, expected_size, fails)  # (6)
        if latest is not None:
            fails += self._check_latest(stream, latest, tree, nodes)  # (10)
        self._check_commitments(stream, checkpoints, segs, objects, fails)  # (7)
        bad = {f.item for f in fails if f.step in (3, 6)}  # roots recomputed otherwise, or not consistent
        res.roots = {cp.checkpoint.tree_size: cp.checkpoint.root_hash for key, cp in checkpoints
                     if cp.checkpoint.tree_size <= tree.size and key not in bad}
        return res, fails

    @staticmethod
    def _check_latest(stream: str, note: NoteCheckpoint, tree: CompactRange,
                      nodes: dict[tuple[int, int], bytes]) -> list[Failure]:
        item = f"published checkpoint {note.origin} @ {note.tree_size}"
        if note.tree_size > tree.size:
            return [Failure(10, stream, item, f"the holder's checkpoint covers {note.tree_size} records; the store "
                                              f"holds {tree.size}: seq {tree.size}..{note.tree_size - 1} missing",
                            tree.size)]
        if note.tree_size == 0:
            return []
        try:
            proof = consistency_proof(note.tree_size, tree.size, perfect_range_hash(lambda lvl, idx: nodes[(lvl, idx)]))
            verify_consistency(note.tree_size, tree.size, proof, note.root, tree.root())
        except (VerificationError, KeyError) as e:
            return [Failure(10, stream, item, f"the store's tree is not consistent with it (history rewritten): {e}")]
        return []

    def _check_commitments(self, stream: str, checkpoints: list[tuple[str, SignedCheckpoint]],
                           segs: list[tuple[int, int, str]], objects: dict[str, str], fails: list[Failure]) -> None:
        """(7): each v2 checkpoint's segment bytes and its link to the checkpoint before it."""
        by_end = {last + 1: key for _, last, key in segs}
        by_size = {cp.checkpoint.tree_size: cp.checkpoint for _, cp in checkpoints}
        for key, scp in checkpoints:
            c = scp.checkpoint
            if c.origin == ORIGIN_V1:
                continue
            if c.segment != by_end.get(c.tree_size, c.segment):
                fails.append(Failure(7, stream, key, f"signs segment {c.segment}, the store's segment ending at "
                                                     f"seq {c.tree_size - 1} is {by_end[c.tree_size]}"))
            elif c.segment in objects and objects[c.segment] != c.segment_sha256:
                fails.append(Failure(7, stream, c.segment or key, f"object bytes have SHA-256 {objects[c.segment][:16]}…, "
                                                                  f"checkpoint {key} signed {str(c.segment_sha256)[:16]}…"))
            if c.previous_size is None:
                if any(size < c.tree_size for size in by_size):
                    fails.append(Failure(7, stream, key, "claims to be the first checkpoint, but earlier ones exist"))
                continue
            before = by_size.get(c.previous_size)
            if before is None:
                fails.append(Failure(7, stream, f"checkpoints/stream={stream}/ (tree size {c.previous_size})",
                                     f"missing: {key} names the checkpoint of tree size {c.previous_size} "
                                     "before it", c.previous_size - 1))
            elif before.digest() != c.previous_sha256:
                fails.append(Failure(7, stream, key, f"does not link to the checkpoint of tree size {c.previous_size}"))

    def _disposed(self, stream: str, key: str, entry: dict[str, Any], tree: CompactRange,
                  nodes: dict[tuple[int, int], bytes], prev: bytes,
                  by_size: dict[int, tuple[str, SignedCheckpoint]], fails: list[Failure]) -> bool:
        """Stand a certificate's leaf hashes in for a disposed segment. Returns False when it fails."""
        first, last, leaves = entry["first_seq"], entry["last_seq"], entry.get("leaf_hashes") or []
        item = f"{key} (disposed)"
        if first != tree.size or len(leaves) != last - first + 1:
            fails.append(Failure(2, stream, item, f"certificate covers seq {first}-{last} with {len(leaves)} leaves; "
                                                  f"the chain is at {tree.size}", tree.size))
            return False
        if entry["prev_hash"] != prev.hex():
            fails.append(Failure(2, stream, item, "certificate's chain start does not link to the previous record", first))
            return False
        for leaf in leaves:
            for lvl, idx, h in tree.append(bytes.fromhex(leaf)):
                nodes[(lvl, idx)] = h
            if tree.size in by_size and tree.size != last + 1:
                cp_key, cp = by_size[tree.size]
                if cp.checkpoint.root_hash != tree.root().hex():
                    fails.append(Failure(3, stream, cp_key, "root mismatch inside a disposed segment", tree.size - 1))
        if tree.root().hex() != entry["root_hash"]:
            fails.append(Failure(3, stream, item, "certificate's leaf hashes do not give its root", last))
            return False
        if tree.size in by_size:
            self._check_root(stream, tree, bytes.fromhex(entry["head_hash"]), *by_size[tree.size], fails)
        return True

    def _load_checkpoints(self, stream: str, keys: list[str], fails: list[Failure]) -> list[tuple[str, SignedCheckpoint]]:
        out = []
        for key in keys:
            try:
                cp = SignedCheckpoint.from_json(self.store.get(key), key)
                cp.verify(self._key(cp.checkpoint.key_id, cp.checkpoint.time), key)
                if cp.checkpoint.stream != stream:
                    raise VerificationError(f"checkpoint names stream {cp.checkpoint.stream}")
            except (VerificationError, ObjectStoreError) as e:
                fails.append(Failure(4, stream, key, str(e)))
                continue
            out.append((key, cp))
        return out

    def _check_objects(self, stream: str, keys: list[str], fails: list[Failure]) -> None:
        versions: dict[str, int] = defaultdict(int)
        for prefix in (f"records/stream={stream}/", f"checkpoints/stream={stream}/"):
            for v in self.store.list_versions(prefix):
                versions[v.key] += 1
                if v.is_delete_marker:
                    fails.append(Failure(5, stream, v.key, "a delete marker hides the locked version"))
        for key in keys:
            if versions.get(key, 1) > 1:
                fails.append(Failure(5, stream, key, f"{versions[key]} versions: something was written over "
                                                     "the locked original"))
            ret = self.store.retention(key)
            if ret.mode != "COMPLIANCE" or ret.retain_until is None:
                fails.append(Failure(5, stream, key, f"object lock is {ret.mode!r} until {ret.retain_until}, "
                                                     "expected COMPLIANCE"))

    def _check_root(self, stream: str, tree: CompactRange, head: bytes, key: str, cp: SignedCheckpoint,
                    fails: list[Failure]) -> None:
        c = cp.checkpoint
        if c.root_hash != tree.root().hex():
            fails.append(Failure(3, stream, key, f"root mismatch: checkpoint {c.root_hash[:16]}…, "
                                                 f"recomputed {tree.root().hex()[:16]}…", tree.size - 1))
        if c.head_hash != head.hex():
            fails.append(Failure(3, stream, key, f"head mismatch: checkpoint {c.head_hash[:16]}…, "
                                                 f"recomputed {head.hex()[:16]}…", tree.size - 1))

    def _check_growth(self, stream: str, checkpoints: list[tuple[str, SignedCheckpoint]], tree: CompactRange,
                      nodes: dict[tuple[int, int], bytes], expected_size: int | None, fails: list[Failure]) -> None:
        hash_range = perfect_range_hash(lambda lvl, idx: nodes[(lvl, idx)])
        previous: tuple[str, SignedCheckpoint] | None = None
        for key, cp in checkpoints:
            size = cp.checkpoint.tree_size
            if size > tree.size:
                fails.append(Failure(6, stream, key, f"checkpoint covers {size} records, only {tree.size} found",
                                     tree.size))
                continue
            if previous is not None:
                pkey, prev_cp = previous
                p = prev_cp.checkpoint
                if size <= p.tree_size:
                    fails.append(Failure(6, stream, key, f"tree size {size} does not grow past {pkey} ({p.tree_size})"))
                    continue
                try:
                    proof = consistency_proof(p.tree_size, size, hash_range)
                    verify_consistency(p.tree_size, size, proof, bytes.fromhex(p.root_hash),
                                       bytes.fromhex(cp.checkpoint.root_hash))
                except (VerificationError, ValueError) as e:  # ValueError: a root that is not hex
                    fails.append(Failure(6, stream, key, f"not consistent with {pkey}: {e}"))
            previous = (key, cp)
        if checkpoints and checkpoints[-1][1].checkpoint.tree_size < tree.size:
            fails.append(Failure(6, stream, checkpoints[-1][0], f"newest checkpoint covers "
                                 f"{checkpoints[-1][1].checkpoint.tree_size} of {tree.size} records"))
        if not checkpoints and tree.size:
            fails.append(Failure(6, stream, f"checkpoints/stream={stream}/", "no checkpoint signs these records"))
        # Only a store *behind* the database is a finding (a truncated copy). A store ahead of the
        # snapshot is a live archive that sealed more while it was being verified.
        if expected_size is not None and tree.size < expected_size:
            fails.append(Failure(6, stream, f"records/stream={stream}/",
                                 f"the archive database records {expected_size} records, the store holds {tree.size}",
                                 min(expected_size, tree.size)))

"""Regulator export bundles: everything in a scope, in the formats review platforms ingest, with
proof that nothing was altered or left out.

A bundle is produced from a *snapshot*: per number, the newest signed checkpoint when the export
starts. Only records under those checkpoints are exported, so a re-run of the same snapshot gives
the same set and every record carries an inclusion proof to a checkpoint in the bundle. Work is
streamed conversation by conversation (memory stays flat whatever the size; there is no cap), and
natives, texts and images are split into folders of at most 1,000 files and, optionally, volumes.

Layout::

    manifest.json  manifest.sig           signed (Ed25519 over the exact bytes of manifest.json)
    custody.json  README.txt              chain of custody, cover letter
    heads/head.json  head.N.tsr           the signed archive head of the snapshot, its RFC 3161 tokens
    records/records.jsonl  records.parquet   every record: metadata, decrypted content, control number
    proofs/<stream>.jsonl                 sealed record bytes (ciphertext) + RFC 6962 inclusion proof
    checkpoints/<stream>.json             the signed checkpoints of the snapshot
    VOL001/DATA/<PREFIX>.dat  .opt        Concordance/Relativity load files (þ ¶, UTF-8 BOM)
    VOL001/NATIVES/0001/<BATES>.rsmf      one RSMF per conversation per UTC day (+ attachments as children)
    VOL001/TEXT/0001/<BATES>.txt          extracted text;  VOL001/IMAGES/0001/<BATES>.tif  slip sheets
    transcripts/<conversation>.html       human-readable, offline, attachments linked
    reports/completeness.json             completeness reports and coverage limits for the scope
    ledgers/consent.jsonl  templates.jsonl    ledger extracts
    audit/access_trail.jsonl              every audit-stream entry that touched the scope
    review/evidence.jsonl  sampling.json  supervision: sealed policy versions, seed commitments, the
                                          messages' review items and actions; ended months' seeds
    review/report.json                    coverage and effectiveness of the production's items
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from ulid import ULID

from archiver import keyhistory
from archiver.checkpoint import key_id
from archiver.crypto import Signer
from archiver.db import events, segments, stream_tenants
from archiver.errors import KeyDestroyedError
from archiver.heads import StoredHead
from archiver.identity import IdentityBook
from archiver.keys import KeyRing
from archiver.media import open_media
from archiver.normalize import AUDIT_STREAM, append_audit
from archiver.objectstore import ObjectStore
from archiver.proofs import ProofService
from archiver.records import format_ts
from archiver.segments import sealed_records
from archiver.sqlutil import as_utc
from archiver.timestamps import PREFIX as TOKENS
from audit import views
from audit.index import SearchIndex
from exporters import loadfile, rsmf, transcript
from exporters.sinks import Entry, HashingWriter
from exporters.spool import Spool
from exporters.verify_bundle import ROTATIONS
from policies.cursors import read_cursor

FORMAT = "strongroom.bundle/1"
FOLDER_FILES = 1000
RECORD_FIELDS = ("stream", "seq", "kind", "natural_key", "tenant", "wamid", "ref_wamid", "conversation", "direction",
                 "origin", "type", "status", "template_name", "template_language")


@functools.cache
def generator() -> str:
    try:
        return f"strongroom/{package_version('strongroom')}"
    except Exception:
        return "strongroom"


@dataclass
class ExportScope:
    matter: str
    query: str | None = None  # the reviewers' language; None: every message in scope
    tenants: list[str] | None = None  # None: every tenant
    streams: list[str] = field(default_factory=list)
    conversations: list[str] = field(default_factory=list)
    start: datetime | None = None  # sent time, inclusive
    end: datetime | None = None  # exclusive

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["start"] = self.start.isoformat() if self.start else None
        d["end"] = self.end.isoformat() if self.end else None
        return d


@dataclass
class Custody:
    requested_by: str
    approved_by: str | None = None
    request_ref: str | None = None  # subpoena, FINRA 8210 request, audit letter …
    requesting_party: str | None = None
    purpose: str | None = None


@dataclass
class Result:
    export_id: str
    manifest: dict[str, Any]  # manifest.json but its file list (in the bundle)
    manifest_sha256: str


class _Bundle:
    """Tracks every file written (path, size, SHA-256 in the spool; record counts here)."""

    def __init__(self, sink: Any, spool: Spool) -> None:
        self.sink, self.spool = sink, spool
        self.counts: dict[str, int] = {}

    @contextmanager
    def file(self, path: str, streaming: bool = False) -> Iterator[HashingWriter]:
        if self.spool.has_file(path):
            raise ValueError(f"{path} written twice")
        with self.sink.open(path, streaming=streaming) as raw:
            w = HashingWriter(raw)
            yield w
        self.spool.add_file(Entry(path, w.size, w.hexdigest()))

    def manifest(self, head: dict[str, Any]) -> bytes:
        """manifest.json: `head` and every file written, streamed from the spool into the text."""
        text = _pretty({**head, "files": "\0files\0"})
        before, after = text.split(b'"\\u0000files\\u0000"')
        out = bytearray(before + b"[")
        for i, e in enumerate(self.spool.files()):
            doc = {"path": e.path, "sha256": e.sha256, "size": e.size,
                   **({"records": self.counts[e.path]} if e.path in self.counts else {})}
            out += (b"\n" if i == 0 else b",\n") + b"    " + json.dumps(doc, ensure_ascii=False, sort_keys=True).encode()
        out += b"\n  ]" + after
        return bytes(out)

    def put(self, path: str, data: bytes, count: int | None = None) -> None:
        self.spool.add_file(Entry(path, len(data), hashlib.sha256(data).hexdigest()))  # a repeat fails the run
        self.sink.put(path, data)
        if count is not None:
            self.counts[path] = count


class Exporter:
    def __init__(self, engine: sa.Engine, keyring: KeyRing, store: ObjectStore, signing_key: Signer,
                 index: SearchIndex, bates_prefix: str = "SR", volume_documents: int | None = None,
                 period: str = "day", head: Callable[[], StoredHead | None] | None = None) -> None:
        """`head` writes (and has the TSAs stamp) a fresh archive head: the snapshot is taken from
        it, and it goes into the bundle with its RFC 3161 tokens."""
        if not bates_prefix.isalnum():
            raise ValueError("the Bates prefix must be letters and digits")
        if period not in ("day", "month"):
            raise ValueError("an RSMF period is a day or a month")
        self.period = period
        self.head = head
        self.engine, self.keyring, self.store, self.signing_key = engine, keyring, store, signing_key
        self.index, self.prefix, self.volume_documents = index, bates_prefix.upper(), volume_documents

    # -- scope ------------------------------------------------------------------------------------

    def snapshot(self, scope: ExportScope, head: StoredHead | None = None,
                 audit: str | None = None) -> dict[str, tuple[int, bytes]]:
        """Per number: (tree size, signed checkpoint JSON) of its newest published checkpoint, or
        of the checkpoint `head` names for it. The audit stream only when asked for (`audit`)."""
        with self.engine.connect() as conn:
            q = sa.select(segments.c.stream, sa.func.max(segments.c.last_seq)).where(
                segments.c.checkpoint_key.is_not(None),
                segments.c.stream == audit if audit else segments.c.stream != AUDIT_STREAM).group_by(segments.c.stream)
            if scope.streams:
                q = q.where(segments.c.stream.in_(scope.streams))
            if scope.tenants is not None:  # a tenant's bundle holds its own numbers' checkpoints only
                q = q.where(segments.c.stream.in_(sa.select(stream_tenants.c.stream).where(
                    stream_tenants.c.tenant.in_(sorted(scope.tenants)))))
            tops: list[tuple[str, int]] = [(r[0], r[1]) for r in conn.execute(q)]
            if head is not None:  # the head's sizes (it was made from the same rows, maybe a moment ago)
                tops = [(st, head.head.streams[st]["tree_size"] - 1) for st, _ in tops if st in head.head.streams]
            out = {}
            for stream, last in tops:
                key = conn.execute(sa.select(segments.c.checkpoint_key).where(
                    segments.c.stream == stream, segments.c.last_seq == last)).scalar_one()
                out[stream] = (last + 1, self.store.get(key))
        return out

    def participants(self, phones: list[str], start: datetime | None = None, end: datetime | None = None,
                     tenants: Iterable[str] | None = None) -> tuple[list[str], list[int]]:
        """The conversations (data subject ids) of whoever held each phone number in [start, end),
        within `tenants` when given, and the positions of the numbers that name none.

        A scope names conversations by subject id, so a production never stores a phone number in
        clear; a number reassigned in the range resolves to each of its holders. Within `tenants`,
        another tenant's number cannot be told from an unknown one."""
        book = IdentityBook(self.engine)  # the blind index reads a number as people type it (digits only)
        held = [book.holders("wa", self.keyring.blind_index("wa", phone), start, end) for phone in phones]
        if tenants is not None:
            with self.engine.connect() as conn:
                mine = set(conn.execute(sa.select(events.c.conversation).distinct().where(
                    events.c.conversation.in_(sorted({s for h in held for s in h})),
                    events.c.tenant.in_(sorted(tenants)))).scalars())
            held = [[s for s in h if s in mine] for h in held]
        return sorted({s for h in held for s in h}), [i for i, h in enumerate(held) if not h]

    def _visible(self, scope: ExportScope) -> Callable[[str | None], bool]:
        tenants = set(scope.tenants) if scope.tenants is not None else None
        return lambda t: tenants is None or (t is not None and t in tenants)

    def _matched(self, scope: ExportScope, snap: dict[str, tuple[int, bytes]], spool: Spool) -> None:
        """Spool the query's hits under the snapshot."""
        if scope.query is None:
            return
        self.index.update()
        cursor = None
        while True:
            page = self.index.search(scope.query, tenants=set(scope.tenants) if scope.tenants is not None else None,
                                     limit=500, cursor=cursor, start=scope.start, end=scope.end)
            spool.add_matched((h["stream"], h["seq"]) for h in page.items
                              if (not scope.streams or h["stream"] in scope.streams)
                              and (not scope.conversations or h["conversation"] in scope.conversations)
                              and h["stream"] in snap and h["seq"] < snap[h["stream"]][0])
            cursor = page.next_cursor
            if cursor is None:
                return

    def _conversations(self, scope: ExportScope, snap: dict[str, tuple[int, bytes]], spool: Spool) -> list[str]:
        if scope.query is not None:
            with self.engine.connect() as conn:
                found: set[str] = set()
                for stream in spool.matched_streams():
                    for seqs in spool.matched_seqs(stream):
                        found.update(c for c in conn.execute(sa.select(events.c.conversation).where(
                            events.c.stream == stream, events.c.seq.in_(seqs))).scalars() if c)
            return sorted(found)
        q = sa.select(events.c.conversation).distinct().where(
            events.c.kind == "message", events.c.seq.is_not(None), events.c.conversation.is_not(None),
            events.c.stream.in_(list(snap)))
        if scope.conversations:
            q = q.where(events.c.conversation.in_(scope.conversations))
        if scope.tenants is not None:
            q = q.where(events.c.tenant.in_(scope.tenants))
        if scope.start:
            q = q.where(events.c.event_time >= scope.start)
        if scope.end:
            q = q.where(events.c.event_time < scope.end)
        with self.engine.connect() as conn:
            return sorted(conn.execute(q).scalars())

    # -- the run ----------------------------------------------------------------------------------

    def run(self, scope: ExportScope, sink: Any, custody: Custody, actor: str, export_id: str | None = None,
            progress: Callable[[int, int], None] | None = None) -> Result:
        export_id = export_id or str(ULID())
        started = datetime.now(UTC)
        head = self.head() if self.head is not None else None
        snap = self.snapshot(scope, head)
        spool, sheets = Spool(), loadfile.SlipSheets(self.prefix)
        try:
            self._matched(scope, snap, spool)
            convs = self._conversations(scope, snap, spool)
            b = _Bundle(sink, spool)
            state = _RunState(self, b, scope, snap, spool, sheets, export_id)
            state.evidence_snap = self.snapshot(ExportScope(scope.matter, streams=[AUDIT_STREAM]), head, AUDIT_STREAM)
            for i, conv in enumerate(convs, start=1):
                state.conversation(conv)
                if progress:
                    progress(i, len(convs))
            state.finish_streams()
            sheets.close()
            self._reports(b, state)
            self._ledgers(b, state)
            self._trail(b, state, scope.tenants)
            self._review(b, state, scope.tenants)
            for stream, seq in state.evidence:  # proven like the messages (after the trail chose by them)
                spool.add_record(stream, seq)
            self._proofs(b, state)
            counts = state.counts()
            custody_doc = self._custody(custody, scope, snap, export_id, started, state, actor)
            b.put("custody.json", _pretty(custody_doc))
            b.put("README.txt", _cover_letter(scope, export_id, counts, self.prefix, state).encode())
            proven_snap = {**snap, **state.evidence_snap}
            for stream, (_size, cp) in sorted(proven_snap.items()):
                b.put(f"checkpoints/{stream}.json", cp)
            head_doc = self._head(b, head)
            rotations = keyhistory.statements(self.store)
            if rotations:  # the key history, so checkpoints signed before a rotation verify
                b.put(ROTATIONS, _pretty_list([json.loads(r) for r in rotations]))
            produced, signing_key = datetime.now(UTC), self.signing_key
            manifest = {
                "format": FORMAT, "export_id": export_id, "generator": generator(), "matter": scope.matter,
                "query": scope.query, "scope": scope.as_dict(),
                "time_range": {"start": scope.start.isoformat() if scope.start else None,
                               "end": scope.end.isoformat() if scope.end else None, "axis": "sent (event_time), UTC"},
                "produced_at": produced.isoformat(), "produced_at_utc": format_ts(produced),
                "key_id": key_id(signing_key.public_key()),
                "snapshot": {s: {"tree_size": size, "checkpoint": f"checkpoints/{s}.json"}
                             for s, (size, _) in sorted(proven_snap.items())},
                "counts": counts, "bates": {"prefix": self.prefix, "first": state.first_bates(),
                                            "last": state.last_bates()},
                **({"head": head_doc} if head_doc else {}),
            }
            data = b.manifest(manifest)
            with sink.open("manifest.json") as f:
                f.write(data)
            with sink.open("manifest.sig") as f:
                f.write(base64.b64encode(signing_key.sign(data)) + b"\n")
            ids_total, ids = spool.n_records, spool.record_ids(1000)
        finally:
            try:
                sink.close()
            finally:
                sheets.close()
                spool.close()
        digest = hashlib.sha256(data).hexdigest()
        append_audit(self.engine, self.keyring, "audit", "export", actor, {
            "export_id": export_id, "matter": scope.matter, "scope": scope.as_dict(), "counts": counts,
            "manifest_sha256": digest, "custody": asdict(custody), "ids_total": ids_total, "ids": ids})
        return Result(export_id, manifest, digest)

    def _head(self, b: _Bundle, head: StoredHead | None) -> dict[str, Any] | None:
        """The archive head the snapshot was taken from, and its RFC 3161 tokens, into the bundle."""
        if head is None:
            return None
        b.put("heads/head.json", head.data)
        tokens = []
        for i, key in enumerate(sorted(self.store.list_keys(f"{TOKENS}{head.key}/")), start=1):
            b.put(f"heads/head.{i}.tsr", self.store.get(key))
            tokens.append(f"heads/head.{i}.tsr")
        return {"path": "heads/head.json", "key": head.key, "timestamps": tokens}

    # -- after the conversations -----------------------------------------------------------------

    def _proofs(self, b: _Bundle, st: _RunState) -> None:
        proofs = ProofService(self.engine)
        for stream in st.spool.streams():
            size, _ = st.snap.get(stream) or st.evidence_snap[stream]
            path = f"proofs/{stream}.jsonl"
            n = 0
            with b.file(path, streaming=True) as w:
                for (seq, leaf, proof), (seq2, sealed) in zip(proofs.inclusions(stream, st.spool.seqs(stream), size),
                                                              self._sealed(stream, st.spool.seqs(stream)), strict=True):
                    assert seq == seq2
                    key = None if f"{stream}/{seq}" in st.sealed_only else self.keyring.key_for_sealed(sealed)
                    w.write(b'{"stream":%s,"seq":%d,"tree_size":%d,"leaf_hash":"%s","path":[%s],"sealed_record":%s,'
                            b'"content_key":%s}\n' % (
                        json.dumps(stream).encode(), seq, size, leaf.hex().encode(),
                        b",".join(b'"%s"' % h.hex().encode() for h in proof),
                        b'"%s"' % base64.b64encode(sealed) if sealed is not None else b"null",
                        b'"%s"' % base64.b64encode(key) if key is not None else b"null"))
                    n += 1
            b.counts[path] = n

    def _sealed(self, stream: str, seqs: Iterator[int]) -> Iterator[tuple[int, bytes | None]]:
        """(seq, canonical sealed bytes) for `seqs` (ascending), one segment in memory at a time,
        only the wanted rows decoded; None where the segment was disposed after retention (its leaf
        hash still proves the record)."""
        with self.engine.connect() as conn:
            segs = conn.execute(sa.select(segments.c.first_seq, segments.c.last_seq, segments.c.object_key,
                                          segments.c.disposed_at).where(segments.c.stream == stream)
                                .order_by(segments.c.first_seq)).all()
        batch: list[int] = []
        seg_i = 0

        def flush() -> Iterator[tuple[int, bytes | None]]:
            seg = segs[seg_i] if seg_i < len(segs) else None
            found: Iterator[tuple[int, bytes]] = iter(())
            if seg is not None and seg.disposed_at is None and batch:
                found = sealed_records(self.store.get(seg.object_key), batch)  # ascending, like `batch`
            at, sealed = next(found, (None, None))
            for q in batch:
                while at is not None and at < q:
                    at, sealed = next(found, (None, None))
                yield q, sealed if at == q else None
            batch.clear()

        for seq in seqs:
            while seg_i < len(segs) and seq > segs[seg_i].last_seq:
                yield from flush()
                seg_i += 1
            batch.append(seq)
        yield from flush()

    def _provable(self, st: _RunState, r: Any) -> bool:
        """A sealed record under the snapshot (so the bundle carries its inclusion proof)."""
        snap = st.snap.get(r.stream) or st.evidence_snap.get(r.stream)
        return r.seq is not None and snap is not None and r.seq < snap[0]

    def _evidence(self, st: _RunState, r: Any, disclose: bool = True) -> str:
        """Prove this sealed record in the bundle (its content key disclosed unless `disclose` is
        false: an extract that shows less than the record). Returns its id."""
        st.evidence.append((r.stream, r.seq))
        if not disclose:
            st.sealed_only.add(f"{r.stream}/{r.seq}")
        return f"{r.stream}/{r.seq}"

    def _reports(self, b: _Bundle, st: _RunState) -> None:
        """The newest sealed completeness report of each number and day of the scope, each with the
        id of its sealed record (proven in proofs/) and the wamid lists it compared."""
        from policies.completeness import COVERAGE_LIMITS

        reports = []
        with self.engine.connect() as conn:
            for day in sorted(st.days):
                for stream in sorted(st.streams):
                    rows = [r for r in conn.execute(sa.select(events).where(
                        events.c.stream == AUDIT_STREAM, events.c.kind == "completeness_report",
                        events.c.natural_key.like(f"completeness:{stream}:{day}:%")).order_by(events.c.id))
                        if self._provable(st, r)]
                    if rows:
                        rep = json.loads(self.keyring.open_record(rows[-1]))
                        reports.append({"record": self._evidence(st, rows[-1]), **rep})
        missing = sorted({(d, s) for d in st.days for s in st.streams} -
                         {(r["day"], r["stream"]) for r in reports})
        b.put("reports/completeness.json", _pretty({
            "coverage_limits": COVERAGE_LIMITS, "reports": reports,
            "days_without_report": [{"day": d, "stream": s} for d, s in missing],
            "note": "A day without a sealed report was never reconciled: run `strongroom completeness --day`. "
                    "Each report is a sealed record (its id under `record`, its proof in proofs/)."}),
            count=len(reports))

    def _ledgers(self, b: _Bundle, st: _RunState) -> None:
        """Consent and template ledger extracts: the sealed ledger records themselves, each with its id."""
        with self.engine.connect() as conn:
            consent = [r for r in conn.execute(sa.select(events).where(
                events.c.kind == "consent",
                events.c.conversation.in_(sorted(st.conversations)) if st.conversations else sa.false())
                .order_by(events.c.event_time, events.c.id)) if r.stream in st.snap and self._provable(st, r)]
            tenants = sorted(st.tenants)
            templates = [r for r in conn.execute(sa.select(events).where(
                events.c.kind == "template_ledger", events.c.tenant.in_(tenants))
                .order_by(events.c.event_time, events.c.id)) if self._provable(st, r)] if tenants else []
        for path, rows in (("ledgers/consent.jsonl", consent), ("ledgers/templates.jsonl", templates)):
            lines = [_line({"record": self._evidence(st, r), **self._entry(r)}) for r in rows]
            b.put(path, b"".join(lines), count=len(lines))

    def _entry(self, r: Any) -> dict[str, Any]:
        """A ledger record's sealed entry; `{"erased": true}` once its subject was crypto-shredded
        (the record is still proven; its key is gone, so none is disclosed)."""
        try:
            doc: dict[str, Any] = json.loads(self.keyring.open_record(r))
        except KeyDestroyedError:
            return {"erased": True}
        return doc

    def _trail(self, b: _Bundle, st: _RunState, tenants: list[str] | None) -> None:
        """Audit-stream entries that named a record, conversation or number of the scope.

        In a tenant's bundle (`tenants`), an entry shows what it did to the scope and nothing else:
        its ids reduced to the scope's, its query kept only when its principal saw no other tenant,
        and the details of other kinds of entry withheld (the scope values they touched are named)."""
        keys = st.conversations | set(st.snap)

        def in_scope(v: str) -> bool:
            return v in keys or st.spool.has_record(v)

        n = 0
        with b.file("audit/access_trail.jsonl", streaming=True) as w, self.engine.connect() as conn:
            for r in conn.execute(sa.select(events).where(events.c.stream == AUDIT_STREAM,
                                                          events.c.kind.in_(["access", "audit", "access_denied"]))
                                  .order_by(events.c.id)).yield_per(2000):
                try:
                    doc = json.loads(self.keyring.open_record(r))
                except KeyDestroyedError:
                    continue
                if _touches(doc.get("details"), in_scope) and self._provable(st, r):
                    if tenants is not None:  # an extract: the record is proven, its content not disclosed
                        doc = {**_scoped_entry(doc, in_scope, set(tenants)), "redacted": True}
                    rid = self._evidence(st, r, disclose=tenants is None)
                    w.write(_line({"record": rid, "natural_key": r.natural_key, **doc}))
                    n += 1
        b.counts["audit/access_trail.jsonl"] = n

    def _review(self, b: _Bundle, st: _RunState, tenants: list[str] | None) -> None:
        """Supervision evidence for the bundle's messages (review/): the sealed policy versions and
        seed commitments, the sealed review items of these messages and every sealed action on
        them (review/evidence.jsonl, each proven), the seeds of months that have ended (so an
        examiner recomputes every draw: `verify_bundle`), and the messages the flagger had not yet
        reached when the bundle was made. In a tenant's bundle only its own items and actions."""
        from review.reads import review_report
        from review.supervision import review_items, review_seeds

        kinds = ("review.policy", "review.seed")
        with self.engine.connect() as conn:
            items = [i for i in conn.execute(sa.select(review_items, events.c.seq).join(
                events, events.c.id == review_items.c.event_id).where(
                review_items.c.conversation.in_(sorted(st.conversations)) if st.conversations else sa.false()))
                if i.stream in st.snap and st.spool.has_record(f"{i.stream}/{i.seq}")]
            keys = {f"review_item:{i.policy}:{i.stream}:{i.natural_key}" for i in items}
            ids = {i.id for i in items}
            rows = [r for r in conn.execute(sa.select(events).where(
                events.c.stream == AUDIT_STREAM, sa.or_(events.c.kind == "review_item", events.c.type.like("review.%")))
                .order_by(events.c.id))
                    if self._provable(st, r)]
            this_month = datetime.now(UTC).strftime("%Y-%m")
            seeds = [{"policy": s.policy, "month": s.month, "seed": s.seed} for s in conn.execute(
                sa.select(review_seeds).where(review_seeds.c.month < this_month).order_by(
                    review_seeds.c.policy, review_seeds.c.month))]
            cursor = read_cursor(conn, "review")
            pending = [f"{r.stream}/{r.seq}" for r in conn.execute(sa.select(events.c.stream, events.c.seq).where(
                events.c.kind == "message", events.c.id > cursor,
                events.c.conversation.in_(sorted(st.conversations)) if st.conversations else sa.false()))
                if r.seq is not None and st.spool.has_record(f"{r.stream}/{r.seq}")]
        entries: list[dict[str, Any]] = []
        withheld = set()
        for r in rows:
            if r.kind == "review_item" and r.natural_key not in keys:
                continue
            doc = json.loads(self.keyring.open_record(r))
            details = doc.get("details") or {}
            if r.kind != "review_item" and r.type not in kinds and details.get("item") not in ids:
                continue  # an action on an item of messages outside the bundle
            if tenants is not None and r.type == "review.policy" and not _policy_within(
                    details.get("document") or {}, set(tenants), st.snap):
                withheld.add(details.get("policy"))  # a policy that names another tenant or its numbers
                continue
            # (an item's sealed content names its message by natural_key; an action is keyed as itself)
            head = {"record": self._evidence(st, r)} if r.kind == "review_item" else {
                "record": self._evidence(st, r), "natural_key": r.natural_key}
            entries.append({**head, **doc})
        if withheld:  # (their seed commitments and seeds go with them; this tenant's items and actions stay)
            entries = [e for e in entries if not (e.get("action") == "review.seed"
                                                  and e["details"].get("policy") in withheld)]
            seeds = [s for s in seeds if s["policy"] not in withheld]
        b.put("review/evidence.jsonl", b"".join(_line(e) for e in entries), count=len(entries))
        b.put("review/report.json", _pretty(review_report(items)))
        b.put("review/sampling.json", _pretty({
            "rule": "a message is sampled by a policy version iff SHA-256(seed 0x1f policy@version 0x1f stream "
                    "0x1f natural_key) / 2^256 < sample_rate; the version is the newest stored at or before the "
                    "message's sent time (the first for an older message); the month's seed (UTC, by sent time) "
                    "is committed (review.seed: its SHA-256) before the month begins",
            "seeds": seeds, "seeds_withheld": "the seeds of the current month, until it ends",
            "not_yet_considered": pending, "tenants": tenants,
            "policies_withheld": "policies whose population names another tenant or its numbers are left out of "
                                 "a tenant's bundle" if withheld else None}))

    def _custody(self, custody: Custody, scope: ExportScope, snap: dict[str, tuple[int, bytes]], export_id: str,
                 started: datetime, st: _RunState, actor: str) -> dict[str, Any]:
        return {
            "matter": {"matter": scope.matter, "request_ref": custody.request_ref,
                       "requesting_party": custody.requesting_party, "purpose": custody.purpose},
            "requested_by": custody.requested_by, "approved_by": custody.approved_by, "produced_by": actor,
            "scope": {**scope.as_dict(), "snapshot": {s: size for s, (size, _) in snap.items()},
                      "time_zone": "UTC", "date_axis": "sent (event_time)"},
            "collection": {"source": "strongroom WhatsApp Business archive (Cloud API webhooks, coexistence echoes, "
                                     "history import, send log)", "generator": generator(), "export_id": export_id,
                           "started_at": started.isoformat(), "finished_at": datetime.now(UTC).isoformat()},
            "integrity": {"file_hash": "SHA-256", "record_proofs": "RFC 6962 inclusion proofs to Ed25519-signed "
                          "checkpoints (proofs/, checkpoints/)", "manifest_signature": "Ed25519 over manifest.json "
                          "(manifest.sig)", "signing_key_id": key_id(self.signing_key.public_key())},
            "transfers": [{"from": "strongroom", "to": custody.requested_by, "at": datetime.now(UTC).isoformat(),
                           "method": "bundle written by the producing system", "purpose": custody.purpose}],
            "exceptions": {"erased_or_disposed_records": st.spool.withheld()},
            "certification": ("I, ____, a qualified person, certify that the files listed in manifest.json were "
                              "copied from the archive by the process described here, and that each file's SHA-256 "
                              "and each record's inclusion proof were verified with `strongroom verify-bundle` "
                              "(FRE 902(14))."),
        }


class _RunState:
    """Per-run accumulators and the streaming writers (JSONL, Parquet, DAT, OPT)."""

    PARQUET_SCHEMA = pa.schema([(f, pa.int64() if f == "seq" else pa.string()) for f in RECORD_FIELDS] + [
        ("id", pa.string()), ("event_time", pa.timestamp("us", tz="UTC")), ("received_at", pa.timestamp("us", tz="UTC")),
        ("role", pa.string()), ("bates", pa.string()), ("content_json", pa.string())])

    def __init__(self, exporter: Exporter, b: _Bundle, scope: ExportScope, snap: dict[str, tuple[int, bytes]],
                 spool: Spool, sheets: loadfile.SlipSheets, export_id: str) -> None:
        self.x, self.b, self.scope, self.snap, self.export_id = exporter, b, scope, snap, export_id
        self.spool, self.sheets = spool, sheets
        # per conversation, number, tenant or day; what grows with the records lives in the spool
        self.conversations: set[str] = set()
        self.streams: set[str] = set()
        self.tenants: set[str] = set()
        self.days: set[str] = set()
        self.evidence: list[tuple[str, int]] = []  # sealed records behind reports, ledgers and the trail
        self.sealed_only: set[str] = set()  # of those, the ids whose content key is not disclosed
        self.evidence_snap: dict[str, tuple[int, bytes]] = {}  # the audit stream's checkpoint
        self.n_docs = 0
        self.n_messages = self.n_records = self.n_events = self.n_attachments = self.n_rsmf = 0
        self.volume = 0
        self._dat: loadfile.DatWriter | None = None
        self._opt: loadfile.OptWriter | None = None
        self._vol_cm: list[Any] = []
        self._jsonl_cm = b.file("records/records.jsonl", streaming=True)
        self._jsonl = self._jsonl_cm.__enter__()
        self._pq_cm = b.file("records/records.parquet", streaming=True)
        self._pq_raw = self._pq_cm.__enter__()
        self._pq = pq.ParquetWriter(_Unseekable(self._pq_raw), self.PARQUET_SCHEMA, compression="zstd")
        self._rows: list[dict[str, Any]] = []

    # volumes and control numbers

    def _next_bates(self) -> str:
        if self.volume == 0 or (self.x.volume_documents and self.n_docs % self.x.volume_documents == 0):
            self._open_volume()
        self.n_docs += 1
        return loadfile.bates(self.x.prefix, self.n_docs)

    def _vol(self) -> str:
        return f"VOL{self.volume:03d}"

    def _folder(self) -> str:
        return f"{(self.n_docs - 1) // FOLDER_FILES + 1:04d}"

    def _open_volume(self) -> None:
        self._close_volume()
        self.volume += 1
        dat_cm = self.b.file(f"{self._vol()}/DATA/{self.x.prefix}.dat", streaming=True)
        opt_cm = self.b.file(f"{self._vol()}/DATA/{self.x.prefix}.opt", streaming=True)
        self._vol_cm = [(dat_cm, f"{self._vol()}/DATA/{self.x.prefix}.dat"), (opt_cm, f"{self._vol()}/DATA/{self.x.prefix}.opt")]
        self._dat = loadfile.DatWriter(dat_cm.__enter__())
        self._opt = loadfile.OptWriter(opt_cm.__enter__(), self._vol())

    def _close_volume(self) -> None:
        if not self._vol_cm:
            return
        assert self._dat is not None and self._opt is not None
        rows = {self._vol_cm[0][1]: self._dat.rows, self._vol_cm[1][1]: self._opt.rows}
        for cm, path in self._vol_cm:
            cm.__exit__(None, None, None)
            self.b.counts[path] = rows[path]
        self._vol_cm = []

    def first_bates(self) -> str | None:
        return loadfile.bates(self.x.prefix, 1) if self.n_docs else None

    def last_bates(self) -> str | None:
        return loadfile.bates(self.x.prefix, self.n_docs) if self.n_docs else None

    # one conversation

    def conversation(self, conv: str) -> None:
        with self.x.engine.connect() as conn:
            rows, gaps = views.thread_rows(conn, conv, self.x._visible(self.scope), start=self.scope.start,
                                           end=self.scope.end, sealed_only=True)
        rows = [r for r in rows if r.stream in self.snap and r.seq < self.snap[r.stream][0]
                and (not self.scope.streams or r.stream in self.scope.streams)]
        gaps = [g for g in gaps if g.stream in self.snap and g.seq < self.snap[g.stream][0]]
        if self.scope.query is not None:
            matched = self.spool.matched_among((r.stream, r.seq) for r in rows if r.kind == "message")
            keep = {r.wamid for r in rows if (r.stream, r.seq) in matched and r.wamid}
            rows = [r for r in rows if (r.stream, r.seq) in matched
                    or (r.kind != "message" and (r.ref_wamid in keep or (r.kind == "status" and r.wamid in keep)))]
        if not rows:
            return
        self.conversations.add(conv)
        items = views.thread_items(self.x.keyring, rows, gaps)
        business = rows[0].stream
        contact = _contact(items) or conv
        by_day: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for it in items:
            key = it["at"].date().isoformat() if it["at"] else "undated"
            by_day[key[:7] if self.x.period == "month" and it["at"] else key].append(it)
        slices, natives = [], {}
        for day in sorted(by_day):
            chunks = [by_day[day][i:i + rsmf.MAX_EVENTS] for i in range(0, len(by_day[day]), rsmf.MAX_EVENTS)]
            for part, chunk in enumerate(chunks, start=1):
                bates, paths = self._slice(conv, business, contact, day, part, len(chunks), chunk)
                natives.update(paths)
                slices.append({"day": day + (f" part {part}/{len(chunks)}" if len(chunks) > 1 else ""),
                               "bates": bates, "items": chunk})
        self.days.update(it["at"].date().isoformat() for it in items if it["at"])
        html = transcript.render(conv, business, contact, slices, {k: "../" + v for k, v in natives.items()},
                                 self.export_id, generator())
        self.b.put(f"transcripts/{conv}.html", html)

    def _slice(self, conv: str, business: str, contact: str, day: str, part: int, parts: int,
               items: list[dict[str, Any]]) -> tuple[str, dict[str, str]]:
        attachments: dict[str, rsmf.Attachment] = {}
        for it in items:
            for a in it.get("attachments", []):
                c = a.get("content") or {}
                if a["kind"] != "media" or not c.get("object_key"):
                    continue
                try:
                    data = open_media(self.x.keyring, a["stream"], c["media_id"], self._subject_keys(a),
                                      self.x.store.get(c["object_key"]))
                except KeyDestroyedError:
                    self.spool.withhold(a["id"] or a["natural_key"])
                    continue
                name = rsmf.attachment_name(a, len(attachments) + 1)
                attachments[a["natural_key"]] = rsmf.Attachment(name, c.get("filename") or name, data,
                                                                c.get("mime_type"))
        doc = rsmf.build(rsmf.Slice(conv, business, contact, day, part, parts, items, attachments, generator()))
        parent = self._next_bates()
        folder, vol = self._folder(), self._vol()
        family = [parent] + [self._next_bates() for _ in doc.attachments]
        native = f"{vol}/NATIVES/{folder}/{parent}.rsmf"
        self.b.put(native, doc.eml)
        self.b.put(f"{vol}/TEXT/{folder}/{parent}.txt", doc.text.encode())
        self.b.put(f"{vol}/IMAGES/{folder}/{parent}.tif",
                   self.sheets.get(parent))
        assert self._dat is not None and self._opt is not None
        times = [e["timestamp"] for e in doc.manifest["events"] if e.get("timestamp")]
        common = {"GROUPID": parent, "BEGATTACH": family[0], "ENDATTACH": family[-1], "CUSTODIAN": f"WhatsApp Business "
                  f"{business}", "PLATFORM": "whatsapp", "CONVERSATION_ID": conv,
                  "EVENTCOLLECTIONID": doc.manifest["eventcollectionid"], "TIMEZONE": "UTC"}
        self._dat.row({**common, "BEGDOC": parent, "ENDDOC": parent, "FROM": f"WhatsApp Business {business}",
                       "TO": contact, "SUBJECT": f"WhatsApp: {contact} / {business} {day} (UTC)",
                       "PARTICIPANTS": f"WhatsApp Business {business}; {contact}", "MSG_COUNT": doc.event_count,
                       "BEGINDATE": times[0] if times else "", "ENDDATE": times[-1] if times else "",
                       "DATESENT": _us_date(times[0]) if times else "", "TIMESENT": times[0][11:19] if times else "",
                       "FILENAME": f"{parent}.rsmf", "FILEEXT": "rsmf", "FILESIZE": len(doc.eml), "PGCOUNT": 1,
                       "SHA256HASH": hashlib.sha256(doc.eml).hexdigest(), "NATIVEPATH": _rel(native),
                       "TEXTPATH": _rel(f"{vol}/TEXT/{folder}/{parent}.txt"), "RSMF_VERSION": rsmf.VERSION,
                       "RECORD_IDS": ";".join(it["record"]["id"] or "" for it in items)})
        self._opt.page(parent, _rel(f"{vol}/IMAGES/{folder}/{parent}.tif"), True, 1)
        paths: dict[str, str] = {}
        by_name = {a.name: k for k, a in attachments.items()}
        for child, att in zip(family[1:], doc.attachments, strict=True):
            cfolder, cvol = self._folder_of(child), self._vol()
            ext = att.name.rsplit(".", 1)[-1]
            path = f"{cvol}/NATIVES/{cfolder}/{child}.{ext}"
            self.b.put(path, att.data)
            self.b.put(f"{cvol}/TEXT/{cfolder}/{child}.txt", att.display.encode())
            self.b.put(f"{cvol}/IMAGES/{cfolder}/{child}.tif",
                       self.sheets.get(child))
            self._dat.row({**common, "BEGDOC": child, "ENDDOC": child, "PARENT_BATES": parent,
                           "FILENAME": att.display, "FILEEXT": ext, "FILESIZE": len(att.data), "PGCOUNT": 1,
                           "SHA256HASH": hashlib.sha256(att.data).hexdigest(), "NATIVEPATH": _rel(path),
                           "TEXTPATH": _rel(f"{cvol}/TEXT/{cfolder}/{child}.txt"),
                           "RECORD_IDS": self._media_id(items, by_name[att.name])})
            self._opt.page(child, _rel(f"{cvol}/IMAGES/{cfolder}/{child}.tif"), True, 1)
            paths[by_name[att.name]] = path
        self.n_rsmf += 1
        self.n_events += doc.event_count
        self.n_attachments += len(doc.attachments)
        for it in items:
            self._records(it, parent, paths)
        return parent, paths

    def _folder_of(self, bates: str) -> str:
        return f"{(int(bates[len(self.x.prefix):]) - 1) // FOLDER_FILES + 1:04d}"

    @staticmethod
    def _media_id(items: list[dict[str, Any]], natural_key: str) -> str:
        for it in items:
            for a in it.get("attachments", []):
                if a["natural_key"] == natural_key:
                    return str(a["id"])
        return ""

    def _subject_keys(self, view: dict[str, Any]) -> str:
        with self.x.engine.connect() as conn:
            return str(conn.execute(sa.select(events.c.subject_key_id).where(
                events.c.stream == view["stream"], events.c.natural_key == view["natural_key"])).scalar_one())

    def _records(self, it: dict[str, Any], bates: str, natives: dict[str, str]) -> None:
        """The item's records: messages (edits, revokes and reactions are messages too), what is
        attached to them (statuses, media, media gaps), and markers."""
        found = [it["record"]]
        if "marker" not in it:
            for key in ("statuses", "versions", "reactions", "attachments"):
                found += it[key]
        for v in found:
            role = "message" if v["kind"] == "message" else "marker" if "marker" in it else "attached"
            self._record(v, role, bates, natives.get(v["natural_key"]))

    def _record(self, v: dict[str, Any], role: str, bates: str, native: str | None) -> None:
        rid = v["id"]
        if v["conversation"] is not None:  # the conversation's own record: reached only through it
            self.spool.add_new_record(v["stream"], v["seq"])
        elif not self.spool.add_record(v["stream"], v["seq"]):  # a gap or attachment may be reached twice
            return
        self.streams.add(v["stream"])
        if v.get("tenant"):
            self.tenants.add(v["tenant"])
        c = v["content"]
        if isinstance(c, dict) and (c.get("erased") or c.get("disposed")):
            self.spool.withhold(rid)
        content_json = json.dumps(c, ensure_ascii=False, default=_default, separators=(",", ":"))
        head = {"id": rid, **{k: v[k] for k in RECORD_FIELDS}, "event_time": _iso(v["event_time"]),
                "received_at": _iso(v["received_at"]), "role": role, "bates": bates, "native": native}
        # the content is encoded once, for the JSONL line and the Parquet column alike
        self._jsonl.write(_line(head)[:-2] + b',"content":' + content_json.encode() + b"}\n")
        self.n_records += 1
        if v["kind"] == "message" and role == "message":
            self.n_messages += 1
        self._rows.append({**{k: v[k] for k in RECORD_FIELDS}, "id": rid, "event_time": v["event_time"],
                           "received_at": v["received_at"], "role": role, "bates": bates,
                           "content_json": content_json})
        if len(self._rows) >= 5000:
            self._flush_parquet()

    def _flush_parquet(self) -> None:
        if self._rows:
            self._pq.write_table(pa.Table.from_pylist(self._rows, schema=self.PARQUET_SCHEMA))
            self._rows = []

    def finish_streams(self) -> None:
        self._flush_parquet()
        self._pq.close()
        self._pq_cm.__exit__(None, None, None)
        self._jsonl_cm.__exit__(None, None, None)
        self.b.counts["records/records.jsonl"] = self.n_records
        self.b.counts["records/records.parquet"] = self.n_records
        if self.volume == 0:
            self._open_volume()  # an empty production still has its (header-only) load files
        self._close_volume()

    def counts(self) -> dict[str, int]:
        return {"messages": self.n_messages, "records": self.n_records, "conversations": len(self.conversations),
                "documents": self.n_docs, "rsmf_files": self.n_rsmf, "rsmf_events": self.n_events,
                "attachments": self.n_attachments, "withheld": self.spool.n_withheld(), "volumes": self.volume}


class _Unseekable:
    """pyarrow writes Parquet sequentially to any object with write/tell/close."""

    def __init__(self, w: HashingWriter) -> None:
        self.w = w
        self.closed = False

    def write(self, data: bytes) -> int:
        return self.w.write(bytes(data))

    def tell(self) -> int:
        return self.w.tell()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _contact(items: list[dict[str, Any]]) -> str | None:
    """The other party's number, from the first message that names it."""
    for it in items:
        c = it["record"].get("content")
        if not isinstance(c, dict):
            continue
        msg = c.get("message") if isinstance(c.get("message"), dict) else None
        req = c.get("request") if isinstance(c.get("request"), dict) else None
        if it["record"]["direction"] == "inbound" and msg and msg.get("from"):
            return str(msg["from"])
        if msg and msg.get("to"):
            return str(msg["to"])
        if req and req.get("to"):
            return str(req["to"])
    return None


def _strings(details: Any) -> Iterator[str]:
    """Every string anywhere in a JSON value."""
    stack = [details]
    while stack:
        d = stack.pop()
        if isinstance(d, dict):
            stack += list(d.values())
        elif isinstance(d, list):
            stack += d
        elif isinstance(d, str):
            yield d


def _scoped_entry(doc: dict[str, Any], in_scope: Callable[[str], bool], tenants: set[str]) -> dict[str, Any]:
    """An audit entry as a tenant's bundle may show it: what it did to the scope, nothing of others."""
    details = doc.get("details") or {}
    out: dict[str, Any] = {k: doc[k] for k in ("kind", "action", "actor", "at") if k in doc}
    if doc.get("kind") != "access":
        out["details_withheld"] = "the entry may name other tenants' records; these of the scope it touched:"
        out["touches"] = sorted({v for v in _strings(details) if in_scope(v)})
        return out
    seen = details.get("tenants")
    own = isinstance(seen, list) and set(seen) <= tenants
    ids = [i for i in details.get("ids", []) if isinstance(i, str) and in_scope(i)]
    out["details"] = {k: details.get(k) for k in ("role", "via", "break_glass")} | {
        "tenants": seen if own else "all (an all-tenant principal)", "ids": ids, "ids_in_scope": len(ids),
        "query": details.get("query") if own else "withheld: the principal could see other tenants"}
    return out


def _touches(details: Any, named: Callable[[str], bool]) -> bool:
    """Does an audit entry's details name something of the scope (a record id, conversation, number)?"""
    return any(named(v) for v in _strings(details))


def _policy_within(doc: dict[str, Any], tenants: set[str], streams: Iterable[str]) -> bool:
    """Whether a review policy's population names only these tenants and numbers (or all)."""
    pop = doc.get("population") or {}
    return (not pop.get("tenants") or set(pop["tenants"]) <= tenants) and \
        (not pop.get("numbers") or set(pop["numbers"]) <= set(streams))


def _iso(t: datetime | None) -> str | None:
    t = as_utc(t)
    return t.isoformat() if t else None


def _us_date(ts: str) -> str:
    return f"{ts[5:7]}/{ts[8:10]}/{ts[0:4]}"


def _rel(path: str) -> str:
    return ".\\" + path.replace("/", "\\")


def _line(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False, default=_default, separators=(",", ":")).encode() + b"\n"


def _default(o: Any) -> Any:
    if isinstance(o, datetime):
        return as_utc(o).isoformat()
    if isinstance(o, bytes):
        return o.hex()
    return str(o)


def _pretty_list(docs: list[Any]) -> bytes:
    return json.dumps(docs, ensure_ascii=False, indent=2, sort_keys=True).encode() + b"\n"


def _pretty(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False, indent=2, sort_keys=True, default=_default).encode() + b"\n"


def _cover_letter(scope: ExportScope, export_id: str, counts: dict[str, int], prefix: str, st: _RunState) -> str:
    return f"""strongroom production {export_id}
Matter: {scope.matter}
Query: {scope.query or '(none: every message in scope)'}
Scope: {json.dumps(scope.as_dict(), ensure_ascii=False)}
Control numbers: {st.first_bates() or '-'} .. {st.last_bates() or '-'} (prefix {prefix}, contiguous, no gaps)
Counts: {json.dumps(counts)}

Contents: RSMF 2.0 natives (one per conversation per UTC day) with attachments as family members,
Concordance/Relativity DAT (UTF-8 with BOM; column 0x14, quote U+00FE, newline U+00AE, multi-value ;)
and OPT (one slip-sheet image per document), extracted text, JSONL and Parquet of every record,
HTML transcripts, completeness reports with coverage limits, consent and template ledger extracts,
and the access audit trail for the scope. Times are UTC.

Verify offline with the archive's public key (no database or object store needed):
    strongroom verify-bundle <this directory> --public-key strongroom.pub
or  python -m exporters.verify_bundle <this directory> strongroom.pub
It checks manifest.sig, every file's size and SHA-256, the record counts, the signed checkpoints
and every record's inclusion proof, and names anything that fails.

Records whose content was crypto-shredded (GDPR erasure) or disposed after retention are listed
in custody.json under exceptions; their sealed hashes are still proven.
"""


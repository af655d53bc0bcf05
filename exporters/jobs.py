"""Export jobs for the auditor API: run in the background, kept encrypted until downloaded.

A job's bundle is one zip written through `EncryptedZipSink` under its own data key
(``export:<id>``), so the server never holds a production in clear on disk; the download
decrypts it on the fly. A job interrupted by a restart is marked failed (submit it again: the
snapshot is taken when a job starts).
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import structlog
from ulid import ULID

from archiver import crypto
from archiver.db import metadata
from archiver.errors import InvalidInput, RateLimited
from archiver.keys import KeyRing
from archiver.normalize import append_audit
from archiver.sqlutil import as_utc, utcnow
from exporters.bundle import Custody, Exporter, ExportScope
from exporters.sinks import EncryptedZipSink, read_encrypted

log = structlog.get_logger("strongroom.exports")
Ts = sa.DateTime(timezone=True)

exports = sa.Table(
    "exports", metadata,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("matter", sa.String(200), nullable=False),
    sa.Column("requested_by", sa.String(200), nullable=False),
    sa.Column("principal_id", sa.String(200), nullable=False),
    sa.Column("scope", sa.Text, nullable=False),  # AES-GCM of its JSON (a query can name a person)
    sa.Column("state", sa.String(16), nullable=False),  # queued | running | done | failed
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("finished_at", Ts, nullable=True),
    sa.Column("error", sa.String(400), nullable=True),
    sa.Column("manifest_sha256", sa.String(64), nullable=True),
    sa.Column("counts", sa.Text, nullable=True),
    sa.Column("size", sa.BigInteger, nullable=True),
)

# After production the bundle changes hands: each download is a transfer in its chain of custody
# (custody.json inside the signed bundle records the production itself).
export_transfers = sa.Table(
    "export_transfers", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("export_id", sa.String(26), sa.ForeignKey("exports.id"), nullable=False),
    sa.Column("at", Ts, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("method", sa.String(100), nullable=False),
    sa.Column("manifest_sha256", sa.String(64), nullable=False),
    sa.Index("ix_export_transfers_export", "export_id", "id"),
)


@dataclass(frozen=True)
class ExportLimits:
    """How much one principal may have: jobs under way, bundles kept, and for how long."""

    active: int = 2  # queued or running
    stored: int = 10  # finished bundles still on the server
    ttl: timedelta = timedelta(days=7)  # then the stored bundle is deleted (the job row stays, `expired`)


class ExportJobs:
    def __init__(self, engine: sa.Engine, keyring: KeyRing, directory: Path,
                 exporter: Callable[[], Exporter], limits: ExportLimits | None = None) -> None:
        self.engine, self.keyring, self.directory, self.exporter = engine, keyring, directory, exporter
        self.limits = limits or ExportLimits()
        self._threads: dict[str, threading.Thread] = {}

    def expire(self, now: datetime | None = None) -> int:
        """Delete stored bundles older than the TTL (audited); returns how many."""
        now = now or utcnow()
        with self.engine.connect() as conn:
            old = conn.execute(sa.select(exports.c.id).where(exports.c.state == "done",
                                                             exports.c.finished_at < now - self.limits.ttl)).scalars().all()
        for job_id in old:
            self._remove(job_id, "expired", "system:exports", {"ttl_seconds": self.limits.ttl.total_seconds()})
        return len(old)

    def delete(self, job_id: str, actor: str) -> None:
        """Delete a finished bundle from the server (its job, transfers and the audit trail stay)."""
        self._remove(job_id, "deleted", actor, {})

    def _remove(self, job_id: str, state: str, actor: str, details: dict[str, Any]) -> None:
        for leftover in self.directory.glob(f"{job_id}.zip.enc*"):
            leftover.unlink(missing_ok=True)
        self._set(job_id, state=state)
        append_audit(self.engine, self.keyring, "audit", f"export.{state}", actor, {"export_id": job_id, **details})

    def _check_quota(self, principal_id: str) -> None:
        with self.engine.connect() as conn:
            counts: dict[str, int] = dict(conn.execute(sa.select(exports.c.state, sa.func.count()).where(
                exports.c.principal_id == principal_id, exports.c.state.in_(["queued", "running", "done"]))
                .group_by(exports.c.state)).all())
        if counts.get("queued", 0) + counts.get("running", 0) >= self.limits.active:
            raise RateLimited(f"{self.limits.active} exports of yours are under way: wait for one to finish", 60)
        if counts.get("done", 0) >= self.limits.stored:
            raise RateLimited(f"{self.limits.stored} finished bundles of yours are stored: download and delete "
                              f"one (DELETE /api/v1/exports/ID), or wait for them to expire", 3600)

    def recover(self) -> int:
        """Jobs a restart interrupted are failed, not silently resumed from another snapshot."""
        with self.engine.begin() as conn:
            return conn.execute(exports.update().where(exports.c.state.in_(["queued", "running"]))
                                .values(state="failed", error="interrupted by a restart: submit again",
                                        finished_at=utcnow())).rowcount

    def _seal_scope(self, job_id: str, scope: ExportScope) -> str:
        nonce, sealed = crypto.encrypt(self.keyring.data_key(f"export:{job_id}"), json.dumps(scope.as_dict()).encode(),
                                       f"export-scope|{job_id}".encode())
        return f"aesgcm:{base64.b64encode(nonce).decode()}:{base64.b64encode(sealed).decode()}"

    def _open_scope(self, job_id: str, stored: str) -> Any:
        if not stored.startswith("aesgcm:"):
            return json.loads(stored)  # a job from before scopes were encrypted
        _, nonce, sealed = stored.split(":")
        key = self.keyring.data_key(f"export:{job_id}", create=False)
        return json.loads(crypto.decrypt(key, base64.b64decode(nonce), base64.b64decode(sealed),
                                         f"export-scope|{job_id}".encode()))

    def path(self, job_id: str) -> Path:
        return self.directory / f"{job_id}.zip.enc"

    def submit(self, scope: ExportScope, custody: Custody, actor: str, principal_id: str) -> str:
        self.expire()
        self._check_quota(principal_id)
        job_id = str(ULID())
        with self.engine.begin() as conn:
            conn.execute(exports.insert().values(id=job_id, matter=scope.matter, requested_by=custody.requested_by,
                                                 principal_id=principal_id, scope=self._seal_scope(job_id, scope),
                                                 state="queued", created_at=utcnow()))
        append_audit(self.engine, self.keyring, "audit", "export.requested", actor,
                     {"export_id": job_id, "scope": scope.as_dict(), "custody": asdict(custody)})
        t = threading.Thread(target=self._run, args=(job_id, scope, custody, actor), name=f"export-{job_id}",
                             daemon=True)
        self._threads[job_id] = t
        t.start()
        return job_id

    def wait(self, job_id: str, timeout: float | None = None) -> None:
        t = self._threads.get(job_id)
        if t is not None:
            t.join(timeout)

    def _run(self, job_id: str, scope: ExportScope, custody: Custody, actor: str) -> None:
        self._set(job_id, state="running")
        try:
            sink = EncryptedZipSink(self.path(job_id), self.keyring.data_key(f"export:{job_id}"), job_id.encode())
            result = self.exporter().run(scope, sink, custody, actor, export_id=job_id)
            self._set(job_id, state="done", finished_at=utcnow(), manifest_sha256=result.manifest_sha256,
                      counts=json.dumps(result.manifest["counts"]), size=self.path(job_id).stat().st_size)
        except Exception as e:  # the type only: a message could carry query text
            log.error("export.failed", export=job_id, error=type(e).__name__)
            for leftover in self.directory.glob(f"{job_id}.zip.enc*"):  # a partial bundle is no bundle
                leftover.unlink(missing_ok=True)
            self._set(job_id, state="failed", finished_at=utcnow(), error=type(e).__name__)

    def _set(self, job_id: str, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(exports.update().where(exports.c.id == job_id).values(**values))

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(exports).where(exports.c.id == job_id)).first()
            if r is None:
                return None
            transfers = conn.execute(sa.select(export_transfers).where(export_transfers.c.export_id == job_id)
                                     .order_by(export_transfers.c.id)).all()
        return {"id": r.id, "matter": r.matter, "requested_by": r.requested_by, "principal_id": r.principal_id,
                "scope": self._open_scope(r.id, r.scope), "state": r.state, "created_at": as_utc(r.created_at),
                "finished_at": as_utc(r.finished_at), "error": r.error, "manifest_sha256": r.manifest_sha256,
                "counts": json.loads(r.counts) if r.counts else None, "size": r.size,
                "transfers": [{"at": as_utc(t.at), "to": t.actor, "method": t.method,
                               "manifest_sha256": t.manifest_sha256} for t in transfers]}

    def record_transfer(self, job_id: str, actor: str, method: str) -> None:
        """A hand-over of the finished bundle, before its bytes leave (no record, no download)."""
        with self.engine.begin() as conn:
            digest = conn.execute(sa.select(exports.c.manifest_sha256).where(exports.c.id == job_id)).scalar_one()
            conn.execute(export_transfers.insert().values(export_id=job_id, at=utcnow(), actor=actor, method=method,
                                                          manifest_sha256=digest))

    def hand_over(self, job_id: str, recorded_by: str, to: str, method: str) -> None:
        """A hand-over that did not go through us (the downloaded bundle given on, by courier, to a
        regulator's portal): a transfer in the job's chain of custody, and sealed on the audit stream."""
        to, method = " ".join(to.split())[:200], " ".join(method.split())[:100]
        if not to or not method:
            raise InvalidInput("a hand-over names who received the bundle and how")
        job = self.get(job_id)
        if job is None or job["state"] not in ("done", "deleted", "expired") or not job["manifest_sha256"]:
            raise InvalidInput("only a finished export changes hands")
        self.record_transfer(job_id, to, method)
        append_audit(self.engine, self.keyring, "audit", "export.transfer", recorded_by,
                     {"export_id": job_id, "to": to, "method": method, "manifest_sha256": job["manifest_sha256"]})

    def mine(self, principal_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """A principal's exports, newest first (state and counts; no scope: it can name a person)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(exports.c.id, exports.c.matter, exports.c.requested_by, exports.c.state,
                                          exports.c.created_at, exports.c.finished_at, exports.c.counts,
                                          exports.c.size).where(exports.c.principal_id == principal_id)
                                .order_by(exports.c.created_at.desc(), exports.c.id.desc()).limit(limit)).all()
        return [{"id": r.id, "matter": r.matter, "requested_by": r.requested_by, "state": r.state,
                 "created_at": as_utc(r.created_at), "finished_at": as_utc(r.finished_at),
                 "counts": json.loads(r.counts) if r.counts else None, "size": r.size} for r in rows]

    def download(self, job_id: str) -> Iterator[bytes]:
        """The bundle zip, decrypted chunk by chunk."""
        return read_encrypted(self.path(job_id), self.keyring.data_key(f"export:{job_id}", create=False),
                              job_id.encode())

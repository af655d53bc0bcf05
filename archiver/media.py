"""Attachments: fetch every media object from the Graph API into WORM storage, or record a gap.

For each job the normaliser queued (one per media id per stream):

1. take the URL the webhook carried, if any; otherwise (or when it has expired) ask
   ``GET {graph}/{media-id}`` for a fresh one (URLs live ~5 minutes, media ids ~7 days);
2. download it with the bearer token, check the bytes against Meta's SHA-256 (hex or base64);
3. encrypt under the message's subject keys (AAD binds stream + media id), PUT the ciphertext
   as ``media/stream=<id>/<sha256 of the object>.bin`` with Object Lock COMPLIANCE;
4. in one transaction: mark the job stored and add a sealed ``media`` record linking wamid,
   media id, object key, object hash and the plaintext hash; its event time is the message's
   time, so history-imported media is filed by message time, not import time.

Failures retry with exponential backoff. A media id that still fails after `max_attempts`, or
whose 7-day lifetime has passed, becomes a sealed ``gap`` record (``media_unavailable``) —
never a silent hole. Addressing objects by the hash of their ciphertext (not the plaintext)
avoids revealing which known file the archive holds and lets two subjects send the same file.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa
import structlog

from archiver.crypto import NONCE_SIZE, decrypt, encrypt
from archiver.db import media
from archiver.errors import KeyDestroyedError, StrongroomError
from archiver.keys import KeyRing
from archiver.normalize import append_events, system_builder
from archiver.objectstore import ObjectStore
from archiver.records import canonical_json
from archiver.sqlutil import Row, as_utc, utcnow

log = structlog.get_logger("strongroom.media")
MEDIA_FORMAT = b"SRM1"  # object = MEDIA_FORMAT ‖ nonce ‖ AES-GCM ciphertext
MEDIA_ID_LIFETIME = timedelta(days=7)  # Meta: media ids from webhooks expire after 7 days
MAX_MEDIA_BYTES = 110 * 1024 * 1024  # documents reach 100 MB


class MediaError(StrongroomError):
    """One fetch attempt failed (the message is short and carries no content)."""


def media_key(stream: str, object_sha256: str) -> str:
    return f"media/stream={stream}/{object_sha256}.bin"


def media_aad(stream: str, media_id: str) -> bytes:
    return f"strongroom.media/1|{stream}|{media_id}".encode()


def open_media(keyring: KeyRing, stream: str, media_id: str, subject_key_id: str, obj: bytes) -> bytes:
    """Decrypt a stored media object (raises KeyDestroyedError once a subject is shredded)."""
    if not obj.startswith(MEDIA_FORMAT):
        raise MediaError("not a strongroom media object")
    nonce, ct = obj[len(MEDIA_FORMAT):len(MEDIA_FORMAT) + NONCE_SIZE], obj[len(MEDIA_FORMAT) + NONCE_SIZE:]
    return decrypt(keyring.content_key(subject_key_id.split(","), create=False), nonce, ct,
                   media_aad(stream, media_id))


def sha256_matches(data: bytes, expected: str | None) -> bool:
    """Meta's sha256 arrives as hex (history) or base64 (live webhooks); accept either."""
    if not expected:
        return True  # nothing to check against; we still record our own hash
    digest = hashlib.sha256(data).digest()
    candidates = {digest.hex(), base64.b64encode(digest).decode(), base64.urlsafe_b64encode(digest).decode()}
    return expected.strip().lower() in {c.lower() for c in candidates} or expected.strip() in candidates


class GraphClient:
    """The two Graph API calls a media download needs, with the bearer token on both."""

    def __init__(self, base_url: str, token: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(timeout=timeout, headers={"Authorization": f"Bearer {token}"},
                                    follow_redirects=True)

    def media_info(self, media_id: str, phone_number_id: str | None) -> dict[str, Any]:
        params = {"phone_number_id": phone_number_id} if phone_number_id else None
        r = self._client.get(f"{self.base_url}/{media_id}", params=params)
        if r.status_code != 200:
            raise MediaError(f"media info: HTTP {r.status_code}")
        info = r.json()
        if not isinstance(info, dict) or not isinstance(info.get("url"), str):
            raise MediaError("media info: no url in the answer")
        return info

    def download(self, url: str) -> bytes:
        with self._client.stream("GET", url) as r:
            if r.status_code != 200:
                raise MediaError(f"download: HTTP {r.status_code}")
            chunks, size = [], 0
            for chunk in r.iter_bytes():
                size += len(chunk)
                if size > MAX_MEDIA_BYTES:
                    raise MediaError("download: larger than any WhatsApp media")
                chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self._client.close()


@dataclass(frozen=True, slots=True)
class MediaPolicy:
    max_attempts: int = 8
    retry_base: timedelta = timedelta(seconds=30)
    retry_cap: timedelta = timedelta(hours=1)
    claim_for: timedelta = timedelta(minutes=10)  # a crashed fetcher's job is retried after this


class MediaFetcher:
    def __init__(self, engine: sa.Engine, store: ObjectStore, keyring: KeyRing, graph: GraphClient | None,
                 retain_until: Callable[[str, datetime], tuple[datetime, str]], policy: MediaPolicy | None = None,
                 concurrency: int = 4) -> None:
        self.engine = engine
        self.store = store
        self.keyring = keyring
        self.graph = graph
        self.retain_until = retain_until
        self.policy = policy or MediaPolicy()
        self.concurrency = concurrency

    def close(self) -> None:
        if self.graph is not None:
            self.graph.close()

    def run_once(self, limit: int = 64) -> int:
        """Fetch up to `limit` due jobs concurrently. Returns how many were attempted."""
        jobs = self._claim(limit)
        if not jobs:
            return 0
        if self.concurrency > 1 and len(jobs) > 1:
            with ThreadPoolExecutor(self.concurrency) as pool:
                list(pool.map(self._process, jobs))
        else:
            for job in jobs:
                self._process(job)
        return len(jobs)

    def _claim(self, limit: int) -> list[Row]:
        """Due jobs, each claimed by pushing its next attempt out (so replicas don't collide)."""
        now = utcnow()
        with self.engine.begin() as conn:
            rows = conn.execute(sa.select(media).where(media.c.state == "pending", media.c.next_attempt_at <= now)
                                .order_by(media.c.next_attempt_at, media.c.id).limit(limit)).all()
            claimed = []
            for r in rows:
                done = conn.execute(sa.update(media).where(media.c.id == r.id,
                                                           media.c.next_attempt_at == r.next_attempt_at)
                                    .values(next_attempt_at=now + self.policy.claim_for))
                if done.rowcount == 1:
                    claimed.append(r)
        return claimed

    def _fetch(self, job: Row) -> tuple[bytes, dict[str, Any]]:
        if self.graph is None:
            raise MediaError("no Graph API token configured")
        errors = []
        if job.url:  # webhooks may carry the URL directly; it expires within minutes
            try:
                data = self.graph.download(job.url)
                if sha256_matches(data, job.meta_sha256):
                    return data, {"source": "webhook_url"}
                errors.append("webhook url: sha256 mismatch")
            except (MediaError, httpx.HTTPError) as e:
                errors.append(f"webhook url: {type(e).__name__}: {e}"[:80])
        if job.media_id.startswith("url:"):
            raise MediaError("; ".join(errors) or "no media id and no usable url")
        info = self.graph.media_info(job.media_id, job.stream if job.stream.isdigit() else None)
        data = self.graph.download(info["url"])
        for expected in (job.meta_sha256, info.get("sha256")):
            if not sha256_matches(data, expected if isinstance(expected, str) else None):
                raise MediaError("sha256 of the download does not match Meta's")
        return data, {"source": "graph", "graph_mime_type": info.get("mime_type")}

    def _process(self, job: Row) -> None:
        try:
            data, how = self._fetch(job)
            self._store(job, data, how)
        except (MediaError, httpx.HTTPError, ValueError) as e:
            self._failed(job, f"{type(e).__name__}: {e}"[:200])
        except KeyDestroyedError:  # the person was erased before their attachment was fetched
            with self.engine.begin() as conn:
                conn.execute(sa.update(media).where(media.c.id == job.id).values(state="erased", updated_at=utcnow()))
        except Exception as e:
            # Our own storage or database failed, not Meta: retry later without spending an
            # attempt, so an outage on our side never turns attachments into gaps early.
            log.error("media.store_failed", media_row=job.id, error=type(e).__name__)
            self._failed(job, type(e).__name__, ours=True)

    def _store(self, job: Row, data: bytes, how: dict[str, Any]) -> None:
        key_ids = job.subject_key_id.split(",")
        nonce, ct = encrypt(self.keyring.content_key(key_ids, create=False), data, media_aad(job.stream, job.media_id))
        obj = MEDIA_FORMAT + nonce + ct
        obj_sha = hashlib.sha256(obj).hexdigest()
        key = media_key(job.stream, obj_sha)
        now = utcnow()
        until, _rule = self.retain_until(job.stream, now)
        version_id = self.store.put_locked(key, obj, until).version_id
        record = {
            "media_id": job.media_id, "wamid": job.wamid, "message": job.message_key, "object_key": key,
            "object_version": version_id, "object_sha256": obj_sha, "sha256": hashlib.sha256(data).hexdigest(),
            "meta_sha256": job.meta_sha256, "mime_type": job.mime_type, "size": len(data),
            "fetched_at": now.isoformat(), **how,
        }
        self._finish(job, "stored", "media", f"media:{job.media_id}", record, key_ids,
                     object_key=key, version_id=version_id, retain_until=until, size=len(data), last_error=None)
        log.info("media.stored", media_row=job.id, size=len(data))

    def _failed(self, job: Row, error: str, ours: bool = False) -> None:
        now = utcnow()
        message_time = as_utc(job.message_time) or as_utc(job.created_at)
        expired = message_time is not None and now - message_time > MEDIA_ID_LIFETIME
        # Without a token nothing was tried: wait (until the id expires) instead of spending attempts.
        attempts = job.attempts + (0 if self.graph is None or ours else 1)
        log.warning("media.attempt_failed", media_row=job.id, attempt=attempts, error=error[:80])
        if attempts >= self.policy.max_attempts or expired:
            attempts = max(attempts, 1)
            record = {"gap": "media_unavailable", "media_id": job.media_id, "wamid": job.wamid,
                      "message": job.message_key, "attempts": attempts, "last_error": error,
                      "media_id_expired": expired, "detected_at": now.isoformat()}
            self._finish(job, "gap", "gap", f"gap:media:{job.media_id}", record, [], attempts=attempts,
                         last_error=error)
            return
        delay = min(self.policy.retry_base * (2 ** max(attempts - 1, 0)), self.policy.retry_cap)
        if self.graph is None:
            delay = self.policy.retry_cap
        elif ours:
            delay = max(delay, timedelta(minutes=1))
        with self.engine.begin() as conn:
            conn.execute(sa.update(media).where(media.c.id == job.id).values(
                attempts=attempts, last_error=error, next_attempt_at=now + delay, updated_at=now))

    def _finish(self, job: Row, state: str, kind: str, natural_key: str, record: dict[str, Any],
                key_ids: list[str], **values: Any) -> None:
        now = utcnow()
        b = system_builder(self.keyring, now)
        b.add(job.stream, natural_key, kind, canonical_json(record), key_ids, wamid=job.wamid, ref_wamid=job.wamid,
              type="media_unavailable" if kind == "gap" else job.mime_type,
              status="permanent" if kind == "gap" else "stored",
              event_time=as_utc(job.message_time) or now)
        with self.engine.begin() as conn:
            append_events(conn, b)
            conn.execute(sa.update(media).where(media.c.id == job.id).values(state=state, updated_at=now, **values))


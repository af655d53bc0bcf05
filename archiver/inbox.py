"""The durable inbox: a webhook is acknowledged only after its raw bytes are committed.

`Inbox.receive` checks ``X-Hub-Signature-256`` (HMAC-SHA256 of the exact raw bytes with the
app secret, constant-time compare), encrypts the bytes with AES-256-GCM under the month's inbox
key, and commits them. A body Meta redelivers (same SHA-256) is not stored twice; each delivery
attempt is still logged in `inbox_deliveries`.
"""

from __future__ import annotations

import hashlib
import hmac
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass

import sqlalchemy as sa

from archiver.crypto import decrypt, encrypt
from archiver.db import inbox, inbox_deliveries
from archiver.errors import WebhookRejected
from archiver.keys import KeyRing
from archiver.sqlutil import Row, insert_for, utcnow

SIGNATURE_PREFIX = "sha256="


@dataclass(frozen=True, slots=True)
class Receipt:
    inbox_id: int
    body_sha256: str
    duplicate: bool


def inbox_aad(body_sha256: str) -> bytes:
    return f"strongroom.inbox/1|{body_sha256}".encode()


def check_signature(body: bytes, header: str | None, app_secrets: list[bytes]) -> str:
    """Raise `WebhookRejected(401)` unless `header` is a valid signature of `body`.

    Several secrets may be configured (secret rotation, several subscribed apps). Returns the
    signature in normal form (``sha256=<64 lowercase hex>``).
    """
    if not header:
        raise WebhookRejected(401, "missing X-Hub-Signature-256")
    if not header.startswith(SIGNATURE_PREFIX):
        raise WebhookRejected(401, "X-Hub-Signature-256 must start with 'sha256='")
    offered = header[len(SIGNATURE_PREFIX) :].strip().lower()
    if not offered.isascii():  # compare_digest takes ASCII strings only; no valid signature is anything else
        raise WebhookRejected(401, "X-Hub-Signature-256 does not match the body")
    ok = False
    for secret in app_secrets:
        expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
        ok |= hmac.compare_digest(expected, offered)
    if not ok:
        raise WebhookRejected(401, "X-Hub-Signature-256 does not match the body")
    return SIGNATURE_PREFIX + offered


class Inbox:
    def __init__(self, engine: sa.Engine, keyring: KeyRing, app_secrets: list[bytes]) -> None:
        if not app_secrets or any(not s for s in app_secrets):
            raise ValueError("at least one non-empty app secret is required")
        self.engine = engine
        self.keyring = keyring
        self.app_secrets = app_secrets

    def prepare(self, body: bytes, signature_header: str | None) -> dict[str, object]:
        """Check the signature and encrypt: the row to commit. Raises `WebhookRejected`."""
        signature = check_signature(body, signature_header, self.app_secrets)
        digest = hashlib.sha256(body).hexdigest()
        now = utcnow()
        key_id = f"inbox:{now:%Y-%m}"
        nonce, ciphertext = encrypt(self.keyring.data_key(key_id), body, inbox_aad(digest))
        return {"body_sha256": digest, "received_at": now, "size": len(body), "signature": signature,
                "key_id": key_id, "nonce": nonce, "ciphertext": ciphertext}

    def commit(self, rows: list[dict[str, object]]) -> list[Receipt]:
        """Commit prepared rows in one transaction (one fsync). Redeliveries are counted, not stored.

        One batched upsert for the distinct bodies (a body delivered k times in the batch adds
        k to its delivery count) and one batched insert for the delivery log.
        """
        counts: dict[object, int] = {}
        unique: dict[object, dict[str, object]] = {}
        for row in rows:
            counts[row["body_sha256"]] = counts.get(row["body_sha256"], 0) + 1
            unique.setdefault(row["body_sha256"], row)
        values = [{**row, "deliveries": counts[sha]} for sha, row in unique.items()]
        with self.engine.begin() as conn:
            stmt = insert_for(conn, inbox)
            stmt = stmt.on_conflict_do_update(
                index_elements=["body_sha256"],
                set_={"deliveries": inbox.c.deliveries + stmt.excluded.deliveries},
            ).returning(inbox.c.id, inbox.c.body_sha256, inbox.c.deliveries, sort_by_parameter_order=True)
            stored = {r.body_sha256: r for r in conn.execute(stmt, values)}
            conn.execute(sa.insert(inbox_deliveries), [
                {"inbox_id": stored[row["body_sha256"]].id, "received_at": row["received_at"]} for row in rows
            ])
        receipts, seen = [], set()
        for row in rows:
            sha = row["body_sha256"]
            got = stored[sha]
            earlier = got.deliveries > counts[sha] or sha in seen  # stored before, or earlier in batch
            seen.add(sha)
            receipts.append(Receipt(got.id, str(sha), earlier))
        return receipts

    def receive(self, body: bytes, signature_header: str | None) -> Receipt:
        """Verify, encrypt and commit `body`. Returns only once the commit is durable."""
        return self.commit([self.prepare(body, signature_header)])[0]

    def read_body(self, row: Row) -> bytes:
        """Decrypt a stored body (row with key_id, nonce, ciphertext, body_sha256)."""
        key = self.keyring.data_key(row.key_id, create=False)
        return decrypt(key, row.nonce, row.ciphertext, inbox_aad(row.body_sha256))


class GroupCommitter:
    """Group commit for concurrent deliveries: one writer thread, one transaction per batch.

    Each caller gets its receipt only after the transaction holding its row has committed, so
    the acknowledgement to Meta still means "durable"; under load, many deliveries share one
    fsync instead of paying one each.
    """

    def __init__(self, inbox: Inbox, max_batch: int = 256) -> None:
        self.inbox = inbox
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[dict[str, object], Future[Receipt]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="inbox-group-commit", daemon=True)
        self._thread.start()

    def submit(self, body: bytes, signature_header: str | None) -> Future[Receipt]:
        """Queue a delivery; the future resolves once it is committed. Raises `WebhookRejected`."""
        fut: Future[Receipt] = Future()
        self._queue.put((self.inbox.prepare(body, signature_header), fut))
        return fut

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            try:
                receipts = self.inbox.commit([row for row, _ in batch])
            except Exception as e:  # every caller of the failed batch gets the error (and a 5xx)
                for _, fut in batch:
                    fut.set_exception(e)
                continue
            for (_, fut), receipt in zip(batch, receipts, strict=True):
                fut.set_result(receipt)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

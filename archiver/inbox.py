"""The durable inbox: a webhook is acknowledged only after its raw bytes are committed.

`Inbox.receive` checks ``X-Hub-Signature-256`` (HMAC-SHA256 of the exact raw bytes with the
app secret, constant-time compare), encrypts the bytes with AES-256-GCM under the month's inbox
key, and commits them. A body Meta redelivers (same SHA-256) is not stored twice; each delivery
attempt is still logged in `inbox_deliveries`.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import sqlalchemy as sa

from archiver.crypto import decrypt, encrypt
from archiver.db import inbox, inbox_deliveries
from archiver.errors import WebhookRejected
from archiver.keys import KeyRing
from archiver.sqlutil import insert_for, utcnow

SIGNATURE_PREFIX = "sha256="


@dataclass(frozen=True, slots=True)
class Receipt:
    inbox_id: int
    body_sha256: str
    duplicate: bool


def inbox_aad(body_sha256: str) -> bytes:
    return f"strongroom.inbox/1|{body_sha256}".encode()


def check_signature(body: bytes, header: str | None, app_secrets: list[bytes]) -> None:
    """Raise `WebhookRejected(401)` unless `header` is a valid signature of `body`.

    Several secrets may be configured (secret rotation, several subscribed apps).
    """
    if not header:
        raise WebhookRejected(401, "missing X-Hub-Signature-256")
    if not header.startswith(SIGNATURE_PREFIX):
        raise WebhookRejected(401, "X-Hub-Signature-256 must start with 'sha256='")
    offered = header[len(SIGNATURE_PREFIX) :].strip().lower()
    ok = False
    for secret in app_secrets:
        expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
        ok |= hmac.compare_digest(expected, offered)
    if not ok:
        raise WebhookRejected(401, "X-Hub-Signature-256 does not match the body")


class Inbox:
    def __init__(self, engine: sa.Engine, keyring: KeyRing, app_secrets: list[bytes]) -> None:
        if not app_secrets or any(not s for s in app_secrets):
            raise ValueError("at least one non-empty app secret is required")
        self.engine = engine
        self.keyring = keyring
        self.app_secrets = app_secrets

    def receive(self, body: bytes, signature_header: str | None) -> Receipt:
        """Verify, encrypt and commit `body`. Returns only once the commit is durable."""
        check_signature(body, signature_header, self.app_secrets)
        digest = hashlib.sha256(body).hexdigest()
        now = utcnow()
        key_id = f"inbox:{now:%Y-%m}"
        nonce, ciphertext = encrypt(self.keyring.data_key(key_id), body, inbox_aad(digest))
        with self.engine.begin() as conn:
            stmt = insert_for(conn, inbox).values(
                body_sha256=digest, received_at=now, size=len(body),
                signature=signature_header, key_id=key_id, nonce=nonce, ciphertext=ciphertext,
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=["body_sha256"],
                set_={"deliveries": inbox.c.deliveries + 1},
            ).returning(inbox.c.id, inbox.c.deliveries)
            row = conn.execute(stmt).one()
            conn.execute(sa.insert(inbox_deliveries).values(inbox_id=row.id, received_at=now))
        return Receipt(row.id, digest, row.deliveries > 1)

    def read_body(self, row: sa.Row) -> bytes:  # type: ignore[type-arg]
        """Decrypt a stored body (row with key_id, nonce, ciphertext, body_sha256)."""
        key = self.keyring.data_key(row.key_id, create=False)
        return decrypt(key, row.nonce, row.ciphertext, inbox_aad(row.body_sha256))

"""Re-creation (SEC 17a-4, R-9): the original webhook body, byte for byte, from sealed records.

A body is sealed as its `change` records (the exact bytes of each change) plus one `envelope`
record per stream holding the literal text around them. Re-joining them in document order
gives back the bytes Meta signed; its SHA-256 must equal the envelope's `body_sha256`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from archiver.errors import VerificationError
from archiver.jsonspans import join_pieces

Record = Mapping[str, Any]
Opener = Callable[[Record], bytes]  # decrypts a record's content


def recreate_body(envelope: Record, by_key: Mapping[tuple[str, str], Record], open_content: Opener) -> bytes:
    """The original body behind `envelope`; `by_key` maps (stream, natural_key) to records.

    Raises:
        VerificationError: a change record is missing or the result does not hash to the
            body's recorded SHA-256.
    """
    skeleton = json.loads(open_content(envelope))
    changes = []
    for c in skeleton["changes"]:
        rec = by_key.get((c["stream"], c["natural_key"]))
        if rec is None:
            raise VerificationError(f"change record {c['natural_key']} of body {skeleton['body_sha256']} is missing")
        changes.append(open_content(rec).decode("utf-8"))
    body = join_pieces(skeleton["pieces"], changes).encode("utf-8")
    if hashlib.sha256(body).hexdigest() != skeleton["body_sha256"]:
        raise VerificationError(f"re-created body does not hash to {skeleton['body_sha256']}")
    return body

"""Publish each stream's newest checkpoint to holders outside the archive, as it is made.

A holder is an HTTPS endpoint of the firm's designated third party or auditor (SEC 17a-4(f)
"undertaking" party, an external auditor, a witness service): it receives a POST of the C2SP
checkpoint note (`archiver.notes`) and keeps the newest one per origin. Later, `strongroom verify
--latest NOTE` proves a copy of the archive consistent with what the holder has, so a copy cut
back (its newest segments and checkpoints removed) or rewritten fails offline.

Publishing rides on the archive head (after a sealing pass, at most once per head interval) and
never stops sealing: a holder that is down is told the newer checkpoint after the next pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import httpx
import structlog

from archiver.crypto import Signer
from archiver.errors import ConfigurationError
from archiver.notes import body, sign_note

log = structlog.get_logger("strongroom.publish")
CONTENT_TYPE = "text/x.tlog.checkpoint; charset=utf-8"


def origin(log_origin: str, stream: str) -> str:
    """The origin line of a stream's checkpoints: ``<log origin>/<stream>``."""
    return f"{log_origin}/{stream}"


def stream_of(origin_line: str, log_origin: str) -> str | None:
    prefix = log_origin + "/"
    return origin_line[len(prefix):] if origin_line.startswith(prefix) else None


def note_for(log_origin: str, stream: str, tree_size: int, root_hex: str, key: Signer) -> str:
    return sign_note(body(origin(log_origin, stream), tree_size, bytes.fromhex(root_hex)), log_origin, key)


class Publisher:
    def __init__(self, urls: Iterable[str], log_origin: str, timeout: float = 5.0) -> None:
        self.urls = [u.strip() for u in urls if u.strip()]
        for u in self.urls:
            if not u.startswith(("https://", "http://")):
                raise ConfigurationError(f"STRONGROOM_PUBLISH_URLS: {u!r} is not an http(s) URL")
        self.log_origin = log_origin
        self.timeout = timeout
        self._told: dict[tuple[str, str], int] = {}  # (holder, stream) -> the tree size it has

    def publish(self, streams: dict[str, dict[str, Any]], key: Signer) -> int:
        """Tell every holder each stream's checkpoint it does not have yet. Returns notes delivered."""
        sent, down = 0, set()
        for stream, head in sorted(streams.items()):
            note: str | None = None
            for url in self.urls:
                if url in down or self._told.get((url, stream)) == head["tree_size"]:
                    continue  # a holder that failed is not waited on again this round
                note = note or note_for(self.log_origin, stream, head["tree_size"], head["root_hash"], key)
                try:
                    httpx.post(url, content=note.encode(), headers={"Content-Type": CONTENT_TYPE},
                               timeout=self.timeout).raise_for_status()
                except httpx.HTTPError as e:
                    log.warning("publish.failed", holder=url, stream=stream, error=type(e).__name__)
                    down.add(url)
                    continue
                self._told[(url, stream)] = head["tree_size"]
                sent += 1
        return sent

"""Denied access is evidence: every refused API request becomes part of a sealed access event.

HIPAA 164.312(b) and GDPR Art 32 expect failed and refused access to be recorded, not only
granted reads. A refused request (401, 403, a 404 to an authenticated reader — another tenant's
record looks exactly like a missing one —, 429 at sign-in or from the rate limit) is counted under
(who, address, route, reason): `who` is the principal when one was authenticated, else the
presented credential's kind and a short hash of it (never the secret), or the name a sign-in gave.
Once a minute (at the next refusal after the window, and from a timer while the app is served) the
counts go to the audit stream as ``access_denied`` events, one per key with its
count and first and last time (the audit-trail route and bundles' trails show them).

An attacker cannot flood the stream: a window holds at most `max_keys` distinct keys; what comes
after is counted per address alone (``"route": "*"``), and past `max_keys` addresses in one
window everything else is one ``overflow`` count. So 10,000 refused requests from one address in a
minute seal a handful of events, and any number of requests seal at most 2 × `max_keys` + 1.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

log = structlog.get_logger("strongroom.denied")

Key = tuple[str, str, str, str]  # (who, address, route, reason)
DENIED_KIND = "access_denied"  # audit-stream kind of the sealed counts


@dataclass
class _Count:
    n: int
    first: datetime
    last: datetime


def presented(authorization: str | None) -> str:
    """Who a refused request claimed to be, without the secret: the credential's kind and a short hash."""
    if not authorization:
        return "anonymous"
    token = authorization.split(" ", 1)[-1].strip()
    kind = "api_key" if token.startswith("sr_") else "session" if token.startswith("srs_") else \
        "jwt" if token.count(".") == 2 else "token"
    return f"{kind}:{hashlib.sha256(token.encode()).hexdigest()[:12]}"


class DeniedLog:
    def __init__(self, write: Callable[[list[dict[str, object]]], None], window: float = 60.0,
                 max_keys: int = 500) -> None:
        """`write` seals a batch of events' details (one audit record each)."""
        self.write, self.window, self.max_keys = write, window, max_keys
        self._lock = threading.Lock()
        self._counts: dict[Key, _Count] = {}
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def note(self, who: str, address: str, route: str, reason: str) -> None:
        now = datetime.now(UTC)
        with self._lock:
            key: Key = (who[:200], address[:64], route[:200], reason[:80])
            if key not in self._counts and len(self._counts) >= self.max_keys:
                key = ("*", address[:64], "*", "many")  # bounded: per address from here on
                if key not in self._counts and len(self._counts) >= 2 * self.max_keys:
                    key = ("*", "*", "*", "overflow")
            c = self._counts.get(key)
            if c is None:
                self._counts[key] = _Count(1, now, now)
            else:
                c.n, c.last = c.n + 1, now
        if self._thread is None and time.monotonic() - self._started >= self.window:
            self.flush()  # unserved (a test, a script): inline; served, the timer flushes off the event loop

    def flush(self) -> int:
        """Seal what was counted (one event per key). Returns the events written."""
        with self._lock:
            counts, self._counts, self._started = self._counts, {}, time.monotonic()
        if not counts:
            return 0
        batch: list[dict[str, object]] = [
            {"who": who, "address": address, "route": route, "reason": reason, "count": c.n,
             "first_at": c.first.isoformat(), "last_at": c.last.isoformat()}
            for (who, address, route, reason), c in sorted(counts.items())]
        try:
            self.write(batch)
        except Exception as e:  # the counts are not lost: they go with the next flush
            log.error("denied.flush_failed", error=type(e).__name__, events=len(batch))
            with self._lock:
                for (who, address, route, reason), c in counts.items():
                    key = (who, address, route, reason)
                    mine = self._counts.get(key)
                    self._counts[key] = c if mine is None else _Count(c.n + mine.n, c.first, mine.last)
            return 0
        return len(batch)

    def start(self) -> None:
        """Flush once per window even when no refusal comes to trigger it (the served app's lifespan)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="denied-log", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.window):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self.flush()

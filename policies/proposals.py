"""Four eyes: irreversible decisions are proposals that a second person approves.

An erasure, a retention schedule change, a hold release, a KEK or signing-key rotation is
*proposed* by one principal with the role it needs, with a reason, and carried out only when a
*different* principal with that role approves it (with a reason) before it expires; either may be
rejected instead. The proposal, the decision and the outcome are each sealed on the audit stream.
A proposal's parameters can name a person (an erasure's phone number): they are kept encrypted
under a system key, and the sealed records and listings carry a summary without them.

Both people are named principals (API key, session or OIDC), never a unix user: the CLI signs in
(`strongroom login`) for these. Firm-wide decisions need all-tenant principals. In regulated mode
the direct commands refuse and name the proposal to make instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from ulid import ULID

from archiver.crypto import decrypt, encrypt
from archiver.db import Ts, metadata
from archiver.errors import ConflictError, Forbidden, InvalidInput, NotFound
from archiver.keys import KeyRing
from archiver.normalize import append_audit
from archiver.sqlutil import as_utc, utcnow

PROPOSALS_KEY = "system:proposals"
DEFAULT_TTL = timedelta(hours=72)

proposals = sa.Table(
    "proposals",
    metadata,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("action", sa.String(40), nullable=False),
    sa.Column("summary", sa.String(400), nullable=False),  # never personal data
    sa.Column("nonce", sa.LargeBinary, nullable=False),
    sa.Column("params", sa.LargeBinary, nullable=False),  # AES-GCM under PROPOSALS_KEY
    sa.Column("proposer_id", sa.String(26), nullable=False),
    sa.Column("proposer", sa.String(200), nullable=False),
    sa.Column("reason", sa.String(1000), nullable=False),
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("expires_at", Ts, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # proposed | executed | failed | rejected | expired
    sa.Column("decided_by", sa.String(200)),
    sa.Column("decided_at", Ts),
    sa.Column("decision_reason", sa.String(1000)),
    sa.Column("result", sa.Text),  # JSON, no personal data
)


@dataclass(frozen=True)
class Action:
    roles: frozenset[str]
    summary: Callable[[dict[str, Any]], str]  # what the listing and the sealed records say (no personal data)
    check: Callable[[dict[str, Any]], None]  # raises InvalidInput for parameters that cannot work


def _erasure_check(p: dict[str, Any]) -> None:
    if sum(1 for k in ("phone", "bsuid", "subject") if p.get(k)) != 1:
        raise InvalidInput("an erasure names exactly one of phone, bsuid or subject")


def _schedule_check(p: dict[str, Any]) -> None:
    if not isinstance(p.get("schedule"), dict):
        raise InvalidInput("a retention schedule proposal carries the schedule document under `schedule`")
    from policies.retention import RetentionSchedule

    RetentionSchedule.from_dict(p["schedule"])  # validated now, not at approval


def _hold_check(p: dict[str, Any]) -> None:
    if not isinstance(p.get("hold"), str) or not isinstance(p.get("release_reason", ""), str):
        raise InvalidInput("a hold release names the hold (`hold`) and may give a `release_reason`")


def _rotation_check(p: dict[str, Any]) -> None:
    if set(p) - {"to"} or not isinstance(p.get("to", ""), str):
        raise InvalidInput("a key rotation takes at most `to` (for a key in KMS: the new key)")


ACTIONS: dict[str, Action] = {
    "erasure": Action(frozenset({"compliance"}), lambda p: "GDPR Art 17 erasure of one data subject"
                      + (f" ({p['subject']})" if p.get("subject") else ""), _erasure_check),
    "retention_schedule": Action(frozenset({"compliance"}), lambda p: "store a new retention schedule "
                                 f"(default tags {sorted(p['schedule'].get('default_tags') or [])})", _schedule_check),
    "hold_release": Action(frozenset({"compliance"}), lambda p: f"release legal hold {p['hold']}", _hold_check),
    "kek_rotation": Action(frozenset({"admin"}), lambda p: "rotate the key-encryption key (destroys the old one)"
                           + (f" to {p['to']}" if p.get("to") else ""), _rotation_check),
    "signing_rotation": Action(frozenset({"admin"}), lambda p: "rotate the checkpoint-signing key"
                               + (f" to {p['to']}" if p.get("to") else ""), _rotation_check),
}


class Proposals:
    def __init__(self, engine: sa.Engine, keyring: KeyRing,
                 execute: Callable[[str, dict[str, Any], str], dict[str, Any]]) -> None:
        """`execute(action, params, actor)` carries an approved proposal out; returns its outcome."""
        self.engine, self.keyring, self.execute = engine, keyring, execute

    def _audit(self, action: str, actor: str, details: dict[str, Any]) -> None:
        append_audit(self.engine, self.keyring, "audit", f"proposal.{action}", actor, details)

    @staticmethod
    def _named(p: Any) -> None:
        if getattr(p, "via", None) == "cli":  # the shell's operator, nobody in particular
            raise Forbidden("four-eyes decisions are made by named principals: sign in (`strongroom login`)")
        if p.tenants is not None:
            raise Forbidden("a firm-wide decision needs an all-tenant principal")

    def propose(self, p: Any, action: str, params: dict[str, Any], reason: str,
                ttl: timedelta = DEFAULT_TTL, now: datetime | None = None) -> dict[str, Any]:
        spec = ACTIONS.get(action)
        if spec is None:
            raise InvalidInput(f"unknown action {action!r}; one of {sorted(ACTIONS)}")
        self._named(p)
        if p.role not in spec.roles:
            raise Forbidden(f"a {action} proposal is made by {'/'.join(sorted(spec.roles))}, not {p.role}")
        if not reason.strip():
            raise InvalidInput("a proposal gives its reason")
        spec.check(params)
        now = now or utcnow()
        pid = str(ULID())
        nonce, sealed = encrypt(self.keyring.data_key(PROPOSALS_KEY), json.dumps(params).encode(), pid.encode())
        row = {"id": pid, "action": action, "summary": spec.summary(params)[:400], "nonce": nonce, "params": sealed,
               "proposer_id": p.id, "proposer": p.actor, "reason": reason[:1000], "created_at": now,
               "expires_at": now + ttl, "state": "proposed"}
        with self.engine.begin() as conn:
            conn.execute(sa.insert(proposals).values(**row))
        self._audit("proposed", p.actor, {"proposal": pid, "action": action, "summary": row["summary"],
                                          "reason": row["reason"], "expires_at": row["expires_at"].isoformat()})
        return self._view(row)

    def _open(self, pid: str, now: datetime) -> Any:
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(proposals).where(proposals.c.id == pid)).first()
        if r is None:
            raise NotFound(f"no proposal {pid}")
        if r.state == "proposed" and as_utc(r.expires_at) <= now:
            self._finish(pid, "expired", "system:four-eyes", now, "not decided in time", None)
            raise ConflictError(f"proposal {pid}", "proposed", "expired")
        if r.state != "proposed":
            raise ConflictError(f"proposal {pid}", "proposed", r.state)
        return r

    def _finish(self, pid: str, state: str, actor: str, now: datetime, reason: str | None,
                result: dict[str, Any] | None) -> bool:
        with self.engine.begin() as conn:
            n = conn.execute(sa.update(proposals).where(proposals.c.id == pid, proposals.c.state == "proposed")
                             .values(state=state, decided_by=actor, decided_at=now, decision_reason=reason,
                                     result=json.dumps(result, default=str) if result is not None else None)).rowcount
        if n:
            self._audit(state, actor, {"proposal": pid, "reason": reason, "result": result})
        return bool(n)

    def approve(self, p: Any, pid: str, reason: str, now: datetime | None = None) -> dict[str, Any]:
        now = now or utcnow()
        self._named(p)
        r = self._open(pid, now)
        if p.id == r.proposer_id or p.actor == r.proposer:
            raise Forbidden("four eyes: a proposal is approved by someone other than its proposer")
        if p.role not in ACTIONS[r.action].roles:
            raise Forbidden(f"a {r.action} is approved by {'/'.join(sorted(ACTIONS[r.action].roles))}, not {p.role}")
        if not reason.strip():
            raise InvalidInput("an approval gives its reason")
        with self.engine.begin() as conn:  # claim it: a second approver at the same moment finds it decided
            claimed = conn.execute(sa.update(proposals).where(proposals.c.id == pid, proposals.c.state == "proposed")
                                   .values(state="executing", decided_by=p.actor, decided_at=now,
                                           decision_reason=reason[:1000])).rowcount
        if not claimed:
            raise ConflictError(f"proposal {pid}", "proposed", "decided")
        self._audit("approved", p.actor, {"proposal": pid, "action": r.action, "proposer": r.proposer,
                                          "reason": reason[:1000]})
        params = json.loads(decrypt(self.keyring.data_key(PROPOSALS_KEY), r.nonce, r.params, pid.encode()))
        try:
            result = self.execute(r.action, params, f"{p.actor} (approving {r.proposer}'s proposal {pid})")
            state = "executed"
        except Exception as e:  # the decision stands; its failure is recorded, and may be proposed again
            result, state = {"error": type(e).__name__, "detail": str(e)[:300]}, "failed"
        with self.engine.begin() as conn:
            conn.execute(sa.update(proposals).where(proposals.c.id == pid).values(
                state=state, result=json.dumps(result, default=str)))
        self._audit(state, p.actor, {"proposal": pid, "action": r.action, "result": result})
        with self.engine.connect() as conn:
            return self._view(conn.execute(sa.select(proposals).where(proposals.c.id == pid)).one()._mapping)

    def reject(self, p: Any, pid: str, reason: str, now: datetime | None = None) -> dict[str, Any]:
        now = now or utcnow()
        self._named(p)
        r = self._open(pid, now)
        if p.role not in ACTIONS[r.action].roles:
            raise Forbidden(f"a {r.action} is decided by {'/'.join(sorted(ACTIONS[r.action].roles))}, not {p.role}")
        if not self._finish(pid, "rejected", p.actor, now, reason[:1000] or "rejected", None):
            raise ConflictError(f"proposal {pid}", "proposed", "decided")
        with self.engine.connect() as conn:
            return self._view(conn.execute(sa.select(proposals).where(proposals.c.id == pid)).one()._mapping)

    def expire(self, now: datetime | None = None) -> int:
        """Mark proposals not decided in time as expired (each sealed). Returns how many."""
        now = now or utcnow()
        with self.engine.connect() as conn:
            due = conn.execute(sa.select(proposals.c.id).where(proposals.c.state == "proposed",
                                                               proposals.c.expires_at <= now)).scalars().all()
        return sum(self._finish(pid, "expired", "system:four-eyes", now, "not decided in time", None) for pid in due)

    def list(self, state: str | None = None) -> list[dict[str, Any]]:
        self.expire()
        q = sa.select(proposals).order_by(proposals.c.created_at)
        if state:
            q = q.where(proposals.c.state == state)
        with self.engine.connect() as conn:
            return [self._view(r._mapping) for r in conn.execute(q)]

    @staticmethod
    def _view(r: Any) -> dict[str, Any]:
        keys = ("id", "action", "summary", "proposer", "reason", "created_at", "expires_at", "state", "decided_by",
                "decided_at", "decision_reason")
        out = {k: r.get(k) for k in keys}
        out["result"] = json.loads(r["result"]) if r.get("result") else None
        return out

"""Review of the items supervision made: claim, release, assign, note, escalate, close.

Every action is a row of `review_actions` (the item's trail) and a sealed ``review.<action>``
event on the audit stream, with who and when; opening an item is not among them (FINRA 3110:
a view alone is not a review). An item is closed only with a disposition and a reason:

- ``no_issue`` — reviewed, nothing to act on;
- ``issue_action_taken`` — a problem, and what was done about it is in the reason;
- ``false_positive`` — the lexicon matched wrongly; the term is named (``term``), which feeds the
  per-term false-positive rate of the effectiveness review.

Escalation moves an item to the second level (``level`` 2), unassigned: there only a compliance
officer (the registered principal supervising the reviewers, `SECOND_LEVEL`) who did not escalate
it may claim and close it. Nobody reviews their own messages: a reviewer named as staff on the
item's number (`set_staff`) may not claim, be assigned, or close it.

`bulk` applies one action to many items, each its own checked, sealed action (one refused item
does not stop, or undo, the others).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from ulid import ULID

from archiver.db import metadata
from archiver.errors import ConflictError, Forbidden, InvalidInput, NotFound
from archiver.keys import KeyRing
from archiver.normalize import append_audit
from archiver.sqlutil import utcnow
from review.supervision import review_items

Ts = sa.DateTime(timezone=True)
DISPOSITIONS = ("no_issue", "issue_action_taken", "false_positive")
SECOND_LEVEL = frozenset({"compliance"})  # who reviews escalated items
ACTIONS = ("claim", "release", "assign", "note", "escalate", "close")

review_actions = sa.Table(
    "review_actions", metadata,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("item_id", sa.String(26), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),  # claim | release | assign | note | escalate | close
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("at", Ts, nullable=False),
    sa.Column("details", sa.Text, nullable=False),  # JSON (reason, disposition, note, to)
    sa.Index("ix_review_actions_item", "item_id", "at"),
)

# who sends from a number: their own messages are not theirs to review
review_staff = sa.Table(
    "review_staff", metadata,
    sa.Column("stream", sa.String(128), primary_key=True),
    sa.Column("person", sa.String(200), primary_key=True),  # a principal's name
)


class ReviewQueue:
    def __init__(self, engine: sa.Engine, keyring: KeyRing) -> None:
        self.engine, self.keyring = engine, keyring

    def set_staff(self, stream: str, people: list[str], actor: str) -> None:
        """The people who send from `stream` (they may not review its items)."""
        with self.engine.begin() as conn:
            conn.execute(review_staff.delete().where(review_staff.c.stream == stream))
            if people:
                conn.execute(review_staff.insert(), [{"stream": stream, "person": n} for n in sorted(set(people))])
        append_audit(self.engine, self.keyring, "audit", "review.staff", actor, {"stream": stream, "people": people})

    def _item(self, conn: sa.Connection, item_id: str) -> Any:
        item = conn.execute(sa.select(review_items).where(review_items.c.id == item_id[:26])).first()
        if item is None:
            raise NotFound("no such review item")
        return item

    def _not_own(self, conn: sa.Connection, item: Any, name: str) -> None:
        own = conn.execute(sa.select(review_staff.c.person).where(review_staff.c.stream == item.stream,
                                                                  review_staff.c.person == name)).first()
        if own is not None:
            raise Forbidden("nobody reviews their own messages: this number's items go to another reviewer")

    def _second_level(self, conn: sa.Connection, item: Any, who: Any) -> None:
        if who.role not in SECOND_LEVEL:
            raise Forbidden("this item was escalated: a compliance officer reviews it at the second level")
        if action_by(conn, item.id, "escalate", who.actor):
            raise Forbidden("who escalated an item does not review it at the second level")

    def _act(self, item_id: str, who: Any, action: str, details: dict[str, Any], reviewer: str | None = None,
             **values: Any) -> dict[str, Any]:
        """Check and apply one action in one transaction, then seal it. `reviewer`: who will review
        the item (they may not be staff on its number)."""
        now = utcnow()
        with self.engine.begin() as conn:
            item = self._item(conn, item_id)
            if who.tenants is not None and item.tenant not in who.tenants:
                raise NotFound("no such review item")  # another tenant's item is as missing as none
            if item.state != "open":
                raise ConflictError(f"review item {item.id}", "open", item.state)
            if reviewer is not None:
                self._not_own(conn, item, reviewer)
            if action in ("claim", "release", "close", "escalate") and item.assignee not in (None, who.name):
                raise Forbidden(f"this item is held by {item.assignee}")
            if action == "escalate" and item.level >= 2:
                raise InvalidInput("this item is at the second level already: close it there")
            if item.level >= 2 and action in ("claim", "assign", "close"):
                self._second_level(conn, item, who)
            if action == "close" and details["disposition"] == "false_positive" \
                    and details["term"] not in [h["term"] for h in json.loads(item.hits)]:
                raise InvalidInput("a false positive names the term that matched wrongly: one of the item's hits")
            if values:
                conn.execute(sa.update(review_items).where(review_items.c.id == item.id).values(**values))
            conn.execute(review_actions.insert().values(id=str(ULID()), item_id=item.id, action=action,
                                                        actor=who.actor, at=now, details=json.dumps(details)))
        append_audit(self.engine, self.keyring, "audit", f"review.{action}", who.actor,
                     {"item": item.id, "policy": item.policy, "policy_version": item.policy_version,
                      "record": f"{item.stream}:{item.natural_key}", **details}, now)
        return {"id": item.id, "action": action, **details}

    def claim(self, item_id: str, who: Any) -> dict[str, Any]:
        return self._act(item_id, who, "claim", {}, reviewer=who.name, assignee=who.name)

    def release(self, item_id: str, who: Any) -> dict[str, Any]:
        return self._act(item_id, who, "release", {}, assignee=None)

    def assign(self, item_id: str, who: Any, to: str) -> dict[str, Any]:
        return self._act(item_id, who, "assign", {"to": to[:200]}, reviewer=to[:200], assignee=to[:200])

    def note(self, item_id: str, who: Any, text: str) -> dict[str, Any]:
        if not text.strip():
            raise InvalidInput("a note needs text")
        return self._act(item_id, who, "note", {"note": text.strip()[:4000]})

    def escalate(self, item_id: str, who: Any, reason: str) -> dict[str, Any]:
        if not reason.strip():
            raise InvalidInput("an escalation gives its reason")
        return self._act(item_id, who, "escalate", {"reason": reason.strip()[:2000]}, level=2, assignee=None)

    def close(self, item_id: str, who: Any, disposition: str, reason: str, term: str | None = None) -> dict[str, Any]:
        """Close with a disposition and a reason (a false positive names the term that misfired)."""
        if disposition not in DISPOSITIONS:
            raise InvalidInput(f"a review closes with a disposition: one of {', '.join(DISPOSITIONS)}")
        if not reason.strip():
            raise InvalidInput("a review closes with a reason")
        details: dict[str, Any] = {"disposition": disposition, "reason": reason.strip()[:2000]}
        if disposition == "false_positive":
            details["term"] = term  # (checked against the item's hits in `_act`)
        return self._act(item_id, who, "close", details, reviewer=who.name, state="closed", disposition=disposition,
                         closed_by=who.actor, closed_at=utcnow(), assignee=None, fp_term=details.get("term"))

    def do(self, item_id: str, who: Any, action: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """`action` with the fields a form or request body gave (disposition, reason, term, note, to)."""
        def text(name: str) -> str:
            return str(fields.get(name) or "")

        if action == "close":
            return self.close(item_id, who, text("disposition"), text("reason"), text("term") or None)
        if action == "escalate":
            return self.escalate(item_id, who, text("reason"))
        if action == "note":
            return self.note(item_id, who, text("note"))
        if action == "assign":
            return self.assign(item_id, who, text("to").strip())
        if action in ("claim", "release"):
            return self.claim(item_id, who) if action == "claim" else self.release(item_id, who)
        raise NotFound("no such review action")

    @staticmethod
    def bulk(ids: list[str], do: Callable[[str], dict[str, Any]]) -> list[dict[str, Any]]:
        """`do` (one action) on each item, one by one: [{id, ok, …}], with the refusal's reason
        where it was refused; the others go on."""
        out = []
        for item_id in dict.fromkeys(ids):  # (each id once, in the order given)
            try:
                out.append({"ok": True, **do(item_id)})
            except (ConflictError, Forbidden, InvalidInput, NotFound) as e:
                out.append({"id": item_id[:26], "ok": False, "error": str(e)})
        return out

    def trail(self, item_id: str) -> list[dict[str, Any]]:
        """Every action on the item, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(review_actions).where(review_actions.c.item_id == item_id[:26])
                                .order_by(review_actions.c.at, review_actions.c.id)).all()
        return [{"action": r.action, "actor": r.actor, "at": r.at, **json.loads(r.details)} for r in rows]


def action_by(conn: sa.Connection, item_id: str, action: str, actor: str) -> bool:
    """Whether `actor` took `action` on the item."""
    return conn.execute(sa.select(review_actions.c.id).where(
        review_actions.c.item_id == item_id, review_actions.c.action == action,
        review_actions.c.actor == actor).limit(1)).first() is not None

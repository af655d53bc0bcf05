"""`strongroom demo`: a realistic day of a coexistence number, posted to a running service.

Everything goes through the real front door: each body is serialised and signed (HMAC-SHA256 with
the app secret) exactly as Meta sends it, and posted to the webhook. The day, on one number of a
broker, all of it from today (UTC):

- Ana writes through WhatsApp (Cloud API messages, a photo of a trade ticket), a broker answers
  from the WhatsApp Business App on his phone (echoes), Ana edits her message and reacts;
- a second client, Ben, writes in German and later sends STOP (an opt-out the consent ledger records);
- the history import brings a chat from three weeks ago (how coexistence back-fills old chats);
- delivery and read statuses arrive for a message the business sent through the Cloud API
  (Meta never sends the content of API sends: without the send log that message is a visible gap);
- a template is approved.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterator
from typing import Any

from strongroom import payloads as p

ANA, BEN = "15557010001", "491701234567"


def day_bodies(now: int | None = None) -> list[tuple[str, bytes]]:
    """(what it is, signed-to-be body) for the day, oldest first."""
    t = (now or int(time.time())) - 6 * 3600  # the day started six hours ago
    history = {ANA: [
        {"from": ANA, "id": "wamid.DEMO.H1", "timestamp": str(t - 21 * 86400), "type": "text",
         "text": {"body": "Hi, I opened the account today, when can I start trading?"},
         "history_context": {"status": "READ"}},
        {"from": p.BUSINESS, "id": "wamid.DEMO.H2", "timestamp": str(t - 21 * 86400 + 600), "type": "text",
         "text": {"body": "Welcome Ana! As soon as the deposit clears, usually tomorrow."},
         "history_context": {"status": "READ"}}]}
    return [
        ("history import: a chat from three weeks ago", p.history_chunk(2, 1, 100, history)),
        ("template approved", p.template_status("APPROVED", "trade_confirmation", "en", t)),
        ("Ana, through the Cloud API", p.inbound(p.text("wamid.DEMO.A1", ANA, t + 60,
                                                        "Hello, please buy 100 shares of ACME at market open"),
                                                 name="Ana")),
        ("the broker answers from the Business App (an echo)",
         p.echo("wamid.DEMO.A2", ANA, t + 300, "Good morning Ana, 100 ACME at the open, confirmed.")),
        ("Ana edits her message", p.inbound({"from": ANA, "id": "wamid.DEMO.A3", "timestamp": str(t + 420),
                                             "type": "edit", "edit": {"original_message_id": "wamid.DEMO.A1",
                                                                      "message": {"type": "text", "text": {
                                                                          "body": "Hello, please buy 120 shares "
                                                                                  "of ACME at market open"}}}},
                                            name="Ana")),
        ("Ana sends a photo of the ticket", p.inbound(p.image("wamid.DEMO.A4", ANA, t + 3600, "demo-media-1",
                                                              hashlib.sha256(b"demo").hexdigest(),
                                                              caption="trade ticket"), name="Ana")),
        ("statuses of a Cloud API send whose content only the send log has",
         p.statuses(("wamid.DEMO.S1", ANA, "sent", t + 3700), ("wamid.DEMO.S1", ANA, "delivered", t + 3701),
                    ("wamid.DEMO.S1", ANA, "read", t + 3900))),
        ("Ana reacts", p.inbound({"from": ANA, "id": "wamid.DEMO.A5", "timestamp": str(t + 4000), "type": "reaction",
                                  "reaction": {"message_id": "wamid.DEMO.A2", "emoji": "\U0001f44d"}}, name="Ana")),
        ("Ben writes in German", p.inbound(p.text("wamid.DEMO.B1", BEN, t + 7200,
                                                  "Guten Tag, bitte rufen Sie mich wegen meines Depots zur\u00fcck"),
                                           name="Ben")),
        ("the broker answers Ben from the app", p.echo("wamid.DEMO.B2", BEN, t + 7500,
                                                       "Gerne, ich rufe Sie um 15 Uhr an.")),
        ("Ben opts out", p.inbound(p.text("wamid.DEMO.B3", BEN, t + 9000, "STOP"), name="Ben")),
    ]


def post_day(base_url: str, app_secret: str, now: int | None = None) -> Iterator[str]:
    """Post the day to `base_url`'s webhook; yields a line per body and what to try next."""
    import httpx

    from archiver.errors import Unavailable

    url, bodies = f"{base_url}/webhooks/whatsapp", day_bodies(now)
    with httpx.Client(timeout=30) as client:
        for what, body in bodies:
            sig = "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
            try:
                r = client.post(url, content=body, headers={"X-Hub-Signature-256": sig,
                                                            "Content-Type": "application/json"})
            except httpx.HTTPError as e:
                raise Unavailable(f"no strongroom service answered at {base_url} ({type(e).__name__}): "
                                  "start it with `make run` (or `strongroom serve`) first") from e
            if r.status_code != 200:
                raise Unavailable(f"the webhook answered {r.status_code} for {what!r}: {_detail(r.json())}")
            yield f"posted: {what}"
    yield ""
    yield f"{len(bodies)} signed webhooks acknowledged; the worker seals them within seconds. Now try:"
    yield "  strongroom search 'shares OR depots'          # messages from the API, the app and the history"
    yield "  strongroom search 'origin:app'                # what staff typed on the phone (echoes)"
    yield "  strongroom completeness --day $(date -u +%F)  # after the 15-minute grace: the API send whose content " \
          "never arrived is a gap"
    yield "  strongroom consent show --stream " + p.PNID + " --phone " + BEN + "   # Ben's STOP"
    yield "  strongroom export --out demo-bundle --matter DEMO --requested-by you && " \
          "strongroom verify-bundle demo-bundle --public-key <(strongroom keys public)"


def _detail(doc: Any) -> str:
    return str(doc.get("detail", doc)) if isinstance(doc, dict) else str(doc)

"""Human-readable transcripts: one self-contained HTML page per conversation (no scripts, no
remote resources), readable offline, with provenance, versions, statuses, attachment links and
gap markers. Every value is HTML-escaped."""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Any

from exporters.rsmf import _body_of

CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:2em;max-width:60em;color:#111}
h1{font-size:1.3em}h2{font-size:1.05em;margin-top:2em;border-bottom:1px solid #999}
.m{margin:.6em 0;padding:.4em .6em;border-left:4px solid #888}.out{border-color:#2b6cb0;background:#f3f8fd}
.in{border-color:#2f855a;background:#f4fbf6}.meta{color:#555;font-size:.85em}.gap{border-color:#c53030;
background:#fff5f5;font-weight:bold}.del{text-decoration:line-through}.badge{font-size:.75em;padding:0 .4em;
border:1px solid #999;border-radius:3px;margin-left:.4em}pre{white-space:pre-wrap;margin:.2em 0;font:inherit}"""


def _t(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "time unknown"


def render(conversation: str, business: str, contact: str, slices: list[dict[str, Any]],
           native_paths: dict[str, str], export_id: str, generator: str) -> bytes:
    """`slices`: [{"day", "bates", "items"}]; `native_paths`: media natural_key -> path relative to the page."""
    out = [f"<!doctype html><html lang=en><meta charset=utf-8><title>WhatsApp {escape(contact)} / "
           f"{escape(business)}</title><style>{CSS}</style>",
           f"<h1>WhatsApp conversation: {escape(contact)} with business number {escape(business)}</h1>",
           f"<p class=meta>Conversation {escape(conversation)} · export {escape(export_id)} · {escape(generator)}. "
           "Times are UTC. Origins: <b>API</b> Cloud API, <b>App</b> WhatsApp Business app (echo), "
           "<b>History</b> history import. Red entries are gaps the archive knows about.</p>"]
    for sl in slices:
        out.append(f"<h2>{escape(sl['day'])} <span class=badge>{escape(sl['bates'])}</span></h2>")
        for it in sl["items"]:
            rec = it["record"]
            if "marker" in it:
                out.append(f"<div class='m gap'>{escape(it['marker'].upper())}: {escape(str(rec['type'] or rec['kind']))}"
                           f" <span class=meta>{_t(rec['event_time'])} · record {escape(str(rec['id']))}</span></div>")
                continue
            outgoing = rec["direction"] == "outbound"
            who = f"Business {business}" if outgoing else contact
            badges = "".join(f"<span class=badge>{escape(b)}</span>" for b in
                             [str(rec["origin"] or "").upper(), str(rec["type"] or ""),
                              f"template {rec['template_name']}" if rec["template_name"] else ""] if b)
            body = escape(_body_of(rec))
            out.append(f"<div class='m {'out' if outgoing else 'in'}'><div class=meta>{escape(who)} · "
                       f"{_t(rec['event_time'])}{badges}</div><pre data-record='{escape(str(rec['id']))}' "
                       f"class='{'del' if it['revoked'] else ''}'>{body}</pre>")
            for v in it["versions"]:
                label = "deleted for everyone" if v["type"] == "revoke" else "edited"
                text = "" if v["type"] == "revoke" else f": <pre data-record='{escape(str(v['id']))}'>{escape(_body_of(v))}</pre>"
                out.append(f"<div class=meta>{label} at {_t(v['event_time'])}{text}</div>")
            for a in it["attachments"]:
                if a["natural_key"] in native_paths:
                    c = a.get("content") or {}
                    out.append(f"<div class=meta>attachment: <a href='{escape(native_paths[a['natural_key']])}'>"
                               f"{escape(str(c.get('mime_type') or 'file'))}, {escape(str(c.get('size') or '?'))} bytes"
                               f"</a></div>")
                else:
                    out.append("<div class='m gap'>attachment not archived (Meta did not deliver the media)</div>")
            for r in it["reactions"]:
                emoji = ((r.get("content") or {}).get("message") or {}).get("reaction", {}).get("emoji") or "(removed)"
                out.append(f"<div class=meta>reaction {escape(emoji)} at {_t(r['event_time'])}</div>")
            if it["statuses"]:
                out.append("<div class=meta>" + " · ".join(f"{escape(s['status'] or '')} {_t(s['event_time'])}"
                                                            for s in it["statuses"]) + "</div>")
            out.append(f"<div class=meta>record {escape(str(rec['id']))} · received {_t(rec['received_at'])} · "
                       f"wamid {escape(str(rec['wamid']))}</div></div>")
    out.append("</html>\n")
    return "\n".join(out).encode()

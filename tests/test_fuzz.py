"""Webhook fuzzing (issue 14, finding 4): thousands of signed, mutated bodies — lone surrogates in
`entry[].id` and `changes[].field`, deep nesting, huge numbers, duplicate keys, wrong types,
truncated and non-JSON bytes — posted over HTTP between ordinary messages of another number.

After it: no 5xx was answered; every body is sealed (as typed records and its raw changes, or
whole as an `unparsed` record) or quarantined and counted; the other number's messages were
sealed all along (no body stopped the pipeline); the archive verifies.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from archiver.db import events, inbox
from archiver.normalize import QUARANTINED
from strongroom import payloads as p
from strongroom.app import create_app
from strongroom.cli import app as cli_app
from strongroom.runtime import Archive
from strongroom.settings import Settings
from tests.conftest import FIXTURES, sign, subprocess_env

pytestmark = pytest.mark.slow

BASES = [json.loads(f.read_bytes()) for f in sorted((FIXTURES / "webhooks").glob("*.json"))]
NASTY: list[Any] = ["\ud800", "\udfff", "a\udbffz", "\x00", "", "9" * 5000, 10**40, -1, 1e308, None, True, [], {},
                    "\u202e", "\U0001f600", "' OR 1=1 --", "../../etc/passwd", {"$ne": 1}, [[[[[]]]]]]
CONTROL = "998877665544"  # an ordinary number whose messages must keep being sealed


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = value
    return doc


@st.composite
def mutated_body(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["leaf", "leaf", "targeted", "rename", "duplicate_key", "deep", "huge_number",
                                 "truncate", "bytes", "bad_utf8", "type_swap"]))
    doc = json.loads(json.dumps(draw(st.sampled_from(BASES))))
    if kind in ("leaf", "type_swap"):
        for _ in range(draw(st.integers(1, 4))):
            path = draw(st.sampled_from(_paths(doc)))
            value = draw(st.sampled_from(NASTY)) if kind == "leaf" else draw(st.sampled_from([[], {}, "x", 0]))
            doc = _set(doc, path, copy.deepcopy(value))  # never the shared object itself
    elif kind == "targeted":  # what the review used: a lone surrogate where the pipeline keys things
        entry = doc["entry"][0]
        where = draw(st.sampled_from(["entry_id", "field", "pnid", "wamid"]))
        bad = draw(st.sampled_from(["\ud800", "\udfff" * 3, "1\ud800"]))
        change = entry["changes"][0]
        if where == "entry_id":
            entry["id"] = bad
        elif where == "field":
            change["field"] = bad
        elif where == "pnid" and isinstance(change.get("value"), dict):
            change["value"].setdefault("metadata", {})["phone_number_id"] = bad
        elif isinstance(change.get("value"), dict) and change["value"].get("messages"):
            change["value"]["messages"][0]["id"] = bad
    elif kind == "rename":
        path = draw(st.sampled_from([q for q in _paths(doc) if q and isinstance(q[-1], str)] or [()]))
        if path:
            parent = doc
            for part in path[:-1]:
                parent = parent[part]
            parent[draw(st.sampled_from(NASTY[:6] + ["entry", "changes", "value"]))] = parent.pop(path[-1])
    text = json.dumps(doc)  # ensure_ascii: a lone surrogate travels as \\ud800, as Meta would escape it
    if kind == "duplicate_key":
        text = text.replace('"id":', '"id": "duplicate", "id":', draw(st.integers(1, 3)))
    elif kind == "deep":
        depth = draw(st.integers(50, 5000))
        text = text.replace('"value":', '"value": ' + "[" * depth + "1" + "]" * depth + ', "v":', 1)
    elif kind == "huge_number":
        text = text.replace('"timestamp":', '"timestamp": 1' + "0" * draw(st.integers(20, 4000)) + ', "t":', 1)
    elif kind == "truncate":
        text = text[:draw(st.integers(0, max(len(text) - 1, 0)))]
    data = text.encode()
    if kind == "bytes":
        data = draw(st.binary(max_size=2048))
    elif kind == "bad_utf8":
        data = data[:10] + b"\xff\xfe\xc3(" + data[10:]
    return data


def _control(i: int) -> bytes:
    value = {"contacts": [{"profile": {"name": "Ctl"}, "wa_id": "16505550900"}],
             "messages": [p.text(f"wamid.ctl{i}", "16505550900", 1_764_000_000 + i, f"control message {i}")]}
    return p.body(p.envelope(p.change("messages", value, pnid=CONTROL)))


def _sealed_controls(archive: Archive) -> int:
    with archive.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).where(
            events.c.stream == CONTROL, events.c.kind == "message", events.c.seq.is_not(None))).scalar_one())


@pytest.mark.parametrize(("sql_url", "n"), [("sqlite", 5000), ("postgresql", 1500)], indirect=["sql_url"])
def test_thousands_of_mutated_signed_bodies_never_stop_the_pipeline(
        archive: Archive, make_settings: Callable[..., Settings], n: int, tmp_path: Path) -> None:
    client = TestClient(create_app(archive))
    bodies: list[bytes] = []
    statuses: dict[int, int] = {}
    controls = 0

    @given(body=mutated_body())
    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    def post(body: bytes) -> None:
        nonlocal controls
        r = client.post("/webhooks/whatsapp", content=body, headers={"X-Hub-Signature-256": sign(body)})
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code == 200, (r.status_code, r.text[:300])  # signed: kept, whatever its shape
        bodies.append(body)
        if len(bodies) % 250 == 0:  # between the fuzz, an ordinary number keeps talking…
            ctl = _control(controls)
            assert client.post("/webhooks/whatsapp", content=ctl, headers={"X-Hub-Signature-256": sign(ctl)}
                               ).status_code == 200
            controls += 1
            archive.process_pending()  # …and is sealed, whatever came before it
            assert _sealed_controls(archive) == controls, "a fuzzed body stopped sealing for another number"

    post()
    assert len(bodies) >= n and statuses == {200: len(bodies)}
    archive.process_pending()
    assert _sealed_controls(archive) == controls >= n // 250

    with archive.engine.connect() as conn:
        states = dict(conn.execute(sa.select(inbox.c.state, sa.func.count()).group_by(inbox.c.state)).all())
        unsealed = conn.execute(sa.select(sa.func.count()).where(events.c.seq.is_(None))).scalar_one()
        kept = set(conn.execute(sa.select(events.c.inbox_id).where(events.c.seq.is_not(None))
                                .distinct()).scalars())
        ids = dict(conn.execute(sa.select(inbox.c.id, inbox.c.state)).all())
    assert states.get("pending", 0) == 0 and unsealed == 0, states
    lost = [i for i, state in ids.items() if state != QUARANTINED and i not in kept]
    assert not lost, f"bodies neither sealed nor quarantined: {lost[:10]}"
    # quarantined bodies (if any) are counted where an operator looks
    env = subprocess_env(make_settings()) | {"STRONGROOM_SESSION_FILE": str(tmp_path / "none.json")}
    listed = CliRunner().invoke(cli_app, ["quarantine", "list"], env=env)
    assert json.loads(listed.stdout)["quarantined"] == states.get(QUARANTINED, 0)
    assert listed.exit_code == (1 if states.get(QUARANTINED) else 0)
    report = archive.verifier().verify(expected_sizes=archive.expected_sizes())
    assert report.ok, [str(f) for f in report.failures][:5]

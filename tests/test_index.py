"""The encrypted search index over sealed records: the query language end to end, exact counts,
stable pages, tenants, purge on erasure, rebuild, and no plaintext on disk."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime

import pytest
from typer.testing import CliRunner

from audit.searchlang import QuerySyntaxError
from strongroom import payloads as p
from strongroom.cli import app
from strongroom.runtime import Archive
from strongroom.settings import Settings
from tests.conftest import ingest, subprocess_env

T = 1_764_000_000
ALICE, BOB = "16505550301", "16505550302"
CANARY = "CANARY-idx-\u00e9t\u00e9-91c2"


def _corpus(archive: Archive) -> None:
    ingest(archive,
           p.inbound(p.text("wamid.i1", ALICE, T, "Please confirm the trade at market open")),
           p.inbound(p.text("wamid.i2", ALICE, T + 60, "the order for 300 shares is filled")),
           p.inbound(p.text("wamid.i3", BOB, T + 120, f"call me on my cell, not here {CANARY}")),
           p.inbound(p.image("wamid.i4", BOB, T + 180, "m-idx", "x", caption="statement for March")),
           p.echo("wamid.i5", ALICE, T + 240, "Trade confirmed from the app"),
           p.history_chunk(1, 1, 100, {BOB: [p.text("wamid.i6", BOB, T - 86400 * 30, "old chat about shares")]}))


def _wamids(archive: Archive, query: str, **kw: object) -> list[str]:
    return [h["wamid"] for h in archive.search_index().search(query, **kw).items]  # type: ignore[arg-type]


def test_the_query_language_over_the_archive(archive: Archive) -> None:
    _corpus(archive)
    index = archive.search_index()
    assert index.update() == 6
    assert index.update() == 0  # incremental
    assert _wamids(archive, "trade") == ["wamid.i1", "wamid.i5"]
    assert _wamids(archive, "trade AND origin:app") == ["wamid.i5"]
    assert _wamids(archive, '"market open"') == ["wamid.i1"]
    assert _wamids(archive, "confirm w/2 trade") == ["wamid.i1"]
    assert _wamids(archive, "trade pre/1 confirmed") == ["wamid.i5"]
    assert _wamids(archive, "shar*") == ["wamid.i6", "wamid.i2"]  # oldest first: the history import
    assert _wamids(archive, "shares AND NOT origin:history") == ["wamid.i2"]
    assert _wamids(archive, "has:attachment") == ["wamid.i4"]
    assert _wamids(archive, "cell w/4 call") == ["wamid.i3"] and _wamids(archive, "cell w/3 call") == []
    sent = datetime.fromtimestamp(T, tz=None).date().isoformat()
    assert set(_wamids(archive, f"sent:{sent}..{sent} AND (trade OR shares)")) <= {"wamid.i1", "wamid.i2", "wamid.i5"}
    page = index.search("trade OR shares OR statement")
    assert page.total == 5 and page.query == "(trade OR shares OR statement)"
    with pytest.raises(QuerySyntaxError):
        index.search("trade AND")
    with pytest.raises(ValueError, match="unknown filter"):
        index.search("trade", filters={"text": "x"})


def test_pages_are_stable_while_messages_arrive(archive: Archive) -> None:
    _corpus(archive)
    index = archive.search_index()
    index.update()
    first = index.search("trade OR shares OR statement OR cell", limit=2)
    assert first.total == 6 and len(first.items) == 2 and first.next_cursor
    # a new (older-dated, late-captured) match arrives between pages
    ingest(archive, p.inbound(p.text("wamid.late", ALICE, T - 10, "late trade message")))
    index.update()
    second = index.search("trade OR shares OR statement OR cell", limit=2, cursor=first.next_cursor)
    rest = []
    page = second
    while True:
        rest += [h["wamid"] for h in page.items]
        if not page.next_cursor:
            break
        page = index.search("trade OR shares OR statement OR cell", limit=2, cursor=page.next_cursor)
    seen = [h["wamid"] for h in first.items] + rest
    assert len(seen) == len(set(seen)) == 6  # nothing repeated, nothing skipped that was there before
    assert second.total == 7  # counts are exact and current
    with pytest.raises(ValueError):
        index.search("trade", cursor="not-a-cursor")


def test_tenants_see_only_their_own(archive: Archive) -> None:
    _corpus(archive)
    index = archive.search_index()
    index.update()
    assert index.search("trade", tenants={p.WABA}).total == 2
    assert index.search("trade", tenants={"another-waba"}).total == 0
    assert index.search("trade", tenants=set()).total == 0


def test_an_erased_subject_leaves_the_index_and_rebuild_agrees(archive: Archive) -> None:
    archive.schedules.store({"default_days": 1}, "test", datetime.now().astimezone())
    _corpus(archive)
    index = archive.search_index()
    index.update()
    assert _wamids(archive, "cell") == ["wamid.i3"]
    archive.erasure().request("dpo:dan", phone=BOB)
    index.update()
    assert _wamids(archive, "cell") == [] and _wamids(archive, "statement") == []
    assert _wamids(archive, "trade") == ["wamid.i1", "wamid.i5"]  # Alice is untouched
    before = [h["wamid"] for h in index.search("trade OR shares OR cell").items]
    assert index.rebuild() == 3  # Alice's three messages; nothing of Bob comes back
    assert [h["wamid"] for h in index.search("trade OR shares OR cell").items] == before


def test_the_index_file_holds_no_plaintext(archive: Archive) -> None:
    _corpus(archive)
    index = archive.search_index()
    index.update()
    assert _wamids(archive, "cell") == ["wamid.i3"]
    files = [f for f in index.path.parent.iterdir() if f.is_file()]
    assert files
    for f in files:
        data = f.read_bytes()
        for needle in (CANARY.encode(), b"CANARY-idx", b"market open", json.dumps(CANARY).encode()):
            assert needle not in data, f"plaintext in {f.name}"


def test_the_search_cli_is_audited(archive: Archive, make_settings: Callable[..., Settings]) -> None:
    _corpus(archive)
    env = subprocess_env(make_settings())
    result = CliRunner().invoke(app, ["search", "trade", "--json", "--limit", "1"], env=env)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["total"] == 2 and len(doc["items"]) == 1 and doc["next_cursor"]
    bad = CliRunner().invoke(app, ["search", "trade AND ("], env=env)
    assert bad.exit_code == 2 and "position" in bad.output
    import sqlalchemy as sa

    from archiver.db import events

    with archive.engine.connect() as conn:
        actions = conn.execute(sa.select(events.c.type).where(events.c.stream == "audit")).scalars().all()
    assert "search" in actions


EQUIVALENCE_QUERIES = [
    "trade", "TRADE", "shar*", "tr?de", "s*", '"market open"', '"the order for"', "trade OR shares", "trade AND shares",
    "NOT trade", "NOT (trade OR shares)", "trade AND NOT origin:app", "origin:history", "participant:zzz",
    "has:attachment", "has:image", "type:im*", "direction:inbound AND (cell OR statement)", "e-mail",
    "sent:2025-11-24..2025-11-25", "archived:2000-01-01", "NOT has:attachment AND NOT direction:outbound",
    "template:x* OR status:read", "confirm w/2 trade", "participant:0*", "number:1*", "conversation:0* AND trade",
    '"the tr*"', '"order for 300"', '"for 3=="', "30= OR cell", "NOT participant:0*", f"number:{p.PNID}",
]


@pytest.mark.parametrize("sql_url", ["postgresql"], indirect=True)
def test_queries_run_in_sql_select_exactly_what_the_word_level_check_selects(archive: Archive) -> None:
    _corpus(archive)
    index = archive.search_index()
    index.update()
    for q in EQUIVALENCE_QUERIES:
        for limit in (2, 50):
            pages = []
            for exact_in_sql in (True, False):
                got, cursor, total = [], None, None
                while True:
                    page = index.search(q, limit=limit, cursor=cursor, exact_in_sql=exact_in_sql)
                    got += [h["wamid"] for h in page.items]
                    total, cursor = page.total, page.next_cursor
                    if cursor is None:
                        break
                pages.append((total, got))
            assert pages[0] == pages[1], q
            assert pages[0][0] == len(pages[0][1])
    assert index.search("trade").total == 2 and index.search("NOT trade").total == 4
    alice = index.search("trade").items[0]["conversation"]
    assert index.search(f"participant:{alice.lower()}").total == 3  # fields ignore case, like words

"""Search latency: strongroom's encrypted DuckDB index vs PostgreSQL tsvector+GIN and SQLite FTS5.

One corpus (bench/corpus.py), loaded into all three in the same run. Every query asks for what the
auditor API returns: the exact total and the first page of 50, oldest first. Three classes:
keyword (common, mid and rare words), phrase, and participant + one month. Our timings include
opening the encrypted index file for each query, as the API does.

    python bench/search.py [--messages 1000000] [--repeat 3]

Also prints the index build rate (tokenising + columnar insert + sorted compaction; decrypting
sealed records, which the worker also does, is measured by bench/seal.py's peers, not here) and
the index size against the corpus.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corpus import PHRASES, START, _vocab, contacts, generate  # noqa: E402

from archiver import crypto  # noqa: E402
from archiver.db import make_engine, migrate  # noqa: E402
from archiver.keys import KeyRing  # noqa: E402
from audit.index import SearchIndex  # noqa: E402

PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sr-bench-search-"))
    engine = make_engine(f"sqlite:///{tmp / 'keys.db'}")
    migrate(engine)
    crypto.ensure_secret_file(tmp / "kek.key")
    crypto.ensure_secret_file(tmp / "bi.key")
    keyring = KeyRing(engine, crypto.LocalKek.from_file(tmp / "kek.key"),
                      crypto.BlindIndex(crypto.read_secret_file(tmp / "bi.key")))
    index = SearchIndex(tmp / "index" / "search.duckdb", engine, keyring)

    pg = psycopg.connect(PG, autocommit=True)
    db = f"sr_bench_{int(time.time())}"
    pg.execute(f'CREATE DATABASE "{db}"')
    pgc = psycopg.connect(PG.rsplit("/", 1)[0] + f"/{db}", autocommit=True)
    pgc.execute("CREATE TABLE docs (doc_id bigint PRIMARY KEY, tenant text, conversation text, event_time timestamp, "
                "text text, tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', text)) STORED)")
    lite = sqlite3.connect(tmp / "fts.db")
    lite.executescript("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                       "CREATE TABLE docs (doc_id INTEGER PRIMARY KEY, tenant TEXT, conversation TEXT, "
                       "event_time TEXT, text TEXT);"
                       "CREATE VIRTUAL TABLE fts USING fts5(text, content='docs', content_rowid='doc_id', "
                       "tokenize='unicode61');")

    t_gen = t_ours = t_pg = t_lite = 0.0
    corpus_bytes = 0
    t0 = time.perf_counter()
    for docs in generate(args.messages):
        t_gen += time.perf_counter() - t0
        corpus_bytes += sum(len(d[19].encode()) + 200 for d in docs)  # text + metadata, roughly
        t0 = time.perf_counter()
        with index.connect() as con:
            con.execute("BEGIN")
            index.insert(con, docs)
            con.execute("COMMIT")
        t_ours += time.perf_counter() - t0
        t0 = time.perf_counter()
        with pgc.cursor().copy("COPY docs (doc_id, tenant, conversation, event_time, text) FROM STDIN") as cp:
            for d in docs:
                cp.write_row((d[0], d[4], d[6], d[15], d[19]))
        t_pg += time.perf_counter() - t0
        t0 = time.perf_counter()
        lite.executemany("INSERT INTO docs VALUES (?, ?, ?, ?, ?)",
                         [(d[0], d[4], d[6], d[15].isoformat(sep=" "), d[19]) for d in docs])
        lite.commit()
        t_lite += time.perf_counter() - t0
        t0 = time.perf_counter()
    t0 = time.perf_counter()
    with index.connect() as con:
        SearchIndex.compact(con, force=True)
    t_ours += time.perf_counter() - t0
    t0 = time.perf_counter()
    pgc.execute("CREATE INDEX docs_tsv ON docs USING gin (tsv)")
    pgc.execute("CREATE INDEX docs_conv ON docs (conversation, event_time)")
    pgc.execute("CREATE INDEX docs_time ON docs (event_time, doc_id)")
    pgc.execute("VACUUM ANALYZE docs")
    t_pg += time.perf_counter() - t0
    t0 = time.perf_counter()
    lite.executescript("INSERT INTO fts(fts) VALUES ('rebuild'); CREATE INDEX docs_conv ON docs(conversation, "
                       "event_time); CREATE INDEX docs_time ON docs(event_time, doc_id); ANALYZE;")
    t_lite += time.perf_counter() - t0
    size = sum(f.stat().st_size for f in index.path.parent.rglob("*") if f.is_file())
    n = args.messages
    print(f"corpus: {n:,} messages generated in {t_gen:.0f} s (~{corpus_bytes / 1e6:.0f} MB of text + metadata)")
    print(f"index build: strongroom {n / t_ours:,.0f} msg/s ({t_ours:.0f} s), PostgreSQL COPY+GIN {n / t_pg:,.0f} "
          f"msg/s ({t_pg:.0f} s), SQLite FTS5 {n / t_lite:,.0f} msg/s ({t_lite:.0f} s)")
    print(f"index size: strongroom {size / 1e6:.0f} MB (encrypted; {size / corpus_bytes:.2f}× the corpus)")

    rng = random.Random(7)
    vocab = _vocab(42)["en"][0]
    keywords = vocab[:4] + vocab[20:24] + vocab[-4:] + ["aktien", "facture", "cartera", "statement", "margin"]
    people = contacts()
    participants = []
    for _ in range(10):
        who = people[int(rng.paretovariate(1.2) * 37) % len(people)]
        month = START + timedelta(days=30 * rng.randint(0, 5))
        participants.append((who, month, month + timedelta(days=31)))

    def ours_kw(w: str) -> Callable[[], int]:
        return lambda: index.search(w, limit=50).total

    def ours_phrase(ph: str) -> Callable[[], int]:
        return lambda: index.search(f'"{ph}"', limit=50).total

    def ours_part(who: str, a: datetime, b: datetime) -> Callable[[], int]:
        return lambda: index.search(f"participant:{who}", limit=50, start=a, end=b).total

    def pg_run(where: str, params: tuple[object, ...]) -> Callable[[], int]:
        def run() -> int:
            total = pgc.execute(f"SELECT count(*) FROM docs WHERE {where}", params).fetchone()[0]
            pgc.execute(f"SELECT * FROM docs WHERE {where} ORDER BY event_time, doc_id LIMIT 50", params).fetchall()
            return total  # type: ignore[no-any-return]
        return run

    def lite_run(match: str) -> Callable[[], int]:
        def run() -> int:
            total = lite.execute("SELECT count(*) FROM fts WHERE fts MATCH ?", (match,)).fetchone()[0]
            lite.execute("SELECT d.* FROM docs d JOIN fts ON fts.rowid = d.doc_id WHERE fts MATCH ? "
                         "ORDER BY d.event_time, d.doc_id LIMIT 50", (match,)).fetchall()
            return total  # type: ignore[no-any-return]
        return run

    def lite_part(who: str, a: datetime, b: datetime) -> Callable[[], int]:
        def run() -> int:
            p = (who, a.isoformat(sep=" "), b.isoformat(sep=" "))
            w = "conversation = ? AND event_time >= ? AND event_time < ?"
            total = lite.execute(f"SELECT count(*) FROM docs WHERE {w}", p).fetchone()[0]
            lite.execute(f"SELECT * FROM docs WHERE {w} ORDER BY event_time, doc_id LIMIT 50", p).fetchall()
            return total  # type: ignore[no-any-return]
        return run

    classes = {
        "keyword": [(ours_kw(w), pg_run("tsv @@ to_tsquery('simple', %s)", (w,)), lite_run(f'"{w}"'))
                    for w in keywords],
        "phrase": [(ours_phrase(ph), pg_run("tsv @@ phraseto_tsquery('simple', %s)", (ph,)), lite_run(f'"{ph}"'))
                   for ph in PHRASES],
        "participant+date": [(ours_part(*x), pg_run("conversation = %s AND event_time >= %s AND event_time < %s", x),
                              lite_part(*x)) for x in participants],
    }
    print(f"\nlatency per query (exact total + first page of 50, oldest first), {args.repeat} runs each; ms")
    print(f"{'class':18} {'system':12} {'p50':>8} {'p95':>8}   ratio p50 (peer / strongroom)")
    mismatches = 0
    for name, queries in classes.items():
        timings: dict[str, list[float]] = {"strongroom": [], "PostgreSQL": [], "SQLite FTS5": []}
        for runs in queries:
            totals = []
            for system, fn in zip(timings, runs, strict=True):
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    total = fn()
                    timings[system].append((time.perf_counter() - t0) * 1000)
                totals.append(total)
            # PostgreSQL's 'simple' parser splits words as we do; FTS5's unicode61 also splits at '_'
            if name != "phrase" and totals[0] != totals[1]:
                mismatches += 1
                print(f"  totals differ for a {name} query: {totals}")
        base = statistics.median(timings["strongroom"])
        for system, xs in timings.items():
            ratio = "" if system == "strongroom" else f"   {statistics.median(xs) / base:6.2f}×"
            print(f"{name:18} {system:12} {pct(xs, 0.5):8.1f} {pct(xs, 0.95):8.1f}{ratio}")
    print(f"\nkeyword/participant queries whose totals differ from PostgreSQL's: {mismatches}")
    pgc.close()
    pg.execute(f'DROP DATABASE "{db}" WITH (FORCE)')
    pg.close()


if __name__ == "__main__":
    main()

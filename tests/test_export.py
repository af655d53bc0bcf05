"""Regulator export bundles on PostgreSQL + SeaweedFS: a scenario with every message kind exports,
verifies offline with only the public key, and any tampering is named; RSMF validates against
Relativity's schema; the DAT parses with an independent CSV parser; counts equal the query's."""

from __future__ import annotations

import csv
import email
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from archiver import crypto, merkle
from archiver.db import segments
from archiver.proofs import ProofService
from archiver.records import canonical
from archiver.sealer import TILE_WIDTH
from archiver.segments import decode_segment, sealed_records
from exporters import verify_bundle as vb
from exporters.bundle import Custody, ExportScope
from exporters.loadfile import COLUMN, QUOTE, SlipSheets, slip_sheet
from exporters.sinks import DirectorySink, Entry
from exporters.spool import Spool
from strongroom import payloads as p
from strongroom.cli import app
from strongroom.runtime import Archive, open_archive
from strongroom.settings import Settings
from tests.conftest import REPO, RSMF, ingest, subprocess_env
from tests.graph_standin import GraphStandIn

NOW = int(time.time()) - 3600
ALICE, BOB = "16505550601", "16505550602"
CANARY = "CANARY-export-\u00e9t\u00e9-77aa"


@pytest.fixture
def exp_archive(make_settings: Callable[..., Settings], graph: GraphStandIn) -> Iterator[Archive]:
    a = open_archive(make_settings(graph_base_url=graph.base_url, graph_token=graph.token,
                                   media_retry_base_seconds=0, media_max_attempts=1))
    yield a
    a.close()


def scenario(archive: Archive, graph: GraphStandIn, webhook_body: Callable[[str], bytes]) -> None:
    photo = b"\xff\xd8\xff JPEG " + os.urandom(3000)
    m = graph.add("m-ok", photo)
    graph.add("m-bad", b"x" * 10, always_fail=True)
    ingest(archive,
           p.inbound(p.text("wamid.e1", ALICE, NOW, f"Please confirm the trade {CANARY}")),
           p.echo("wamid.e2", ALICE, NOW + 60, "Trade confirmed from the app"),
           p.statuses(("wamid.e2", ALICE, "delivered", NOW + 61), ("wamid.e2", ALICE, "read", NOW + 90)),
           p.inbound({"from": ALICE, "id": "wamid.e3", "timestamp": str(NOW + 120), "type": "edit",
                      "edit": {"original_message_id": "wamid.e1",
                               "message": {"type": "text", "text": {"body": "Please confirm the trade now"}}}}),
           p.inbound({"from": ALICE, "id": "wamid.e4", "timestamp": str(NOW + 130), "type": "reaction",
                      "reaction": {"message_id": "wamid.e2", "emoji": "\U0001f44d"}}),
           p.inbound({"from": ALICE, "id": "wamid.e5", "timestamp": str(NOW + 140), "type": "revoke",
                      "revoke": {"original_message_id": "wamid.e1"}}),
           p.inbound(p.image("wamid.e6", ALICE, NOW + 150, "m-ok", m.sha256, caption="the ticket")),
           p.inbound(p.image("wamid.e7", BOB, NOW + 200, "m-bad", "00")),
           p.inbound(p.text("wamid.e8", BOB, NOW + 210, "statement for March please",
                            context={"from": BOB, "id": "wamid.e7"})),
           p.history_chunk(1, 1, 100, {BOB: [p.text("wamid.e9", BOB, NOW - 86400 * 3, "old trade chat")]}),
           webhook_body("unsupported_131060"))
    archive.send_log().record([p.send("wamid.e10", BOB, NOW + 300, template=("trade_confirmation", "en"))],
                              tenant=p.WABA)
    archive.process_pending()
    archive.search_index().update()


def produce(archive: Archive, out: Path, **scope: Any) -> Any:
    return archive.exporter().run(ExportScope("SEC-2026-001", **scope), DirectorySink(out),
                                  Custody("examiner@sec.example", "cco@firm.example", "SEC subpoena 26-17"),
                                  "test:auditor")


def public_key(archive: Archive) -> Any:
    return vb.load_public_key(crypto.public_key_pem(archive.public_key))


@pytest.mark.parametrize("sql_url", ["postgresql"], indirect=True)
def test_a_bundle_of_every_kind_verifies_offline_and_names_any_tampering(
        exp_archive: Archive, graph: GraphStandIn, webhook_body: Callable[[str], bytes], tmp_path: Path) -> None:
    scenario(exp_archive, graph, webhook_body)
    out = tmp_path / "bundle"
    result = produce(exp_archive, out)
    counts = result.manifest["counts"]
    assert counts["messages"] == 11 and counts["attachments"] == 1 and counts["conversations"] == 3
    key = public_key(exp_archive)
    assert vb.verify(out, key) == []
    records = [json.loads(x) for x in (out / "records/records.jsonl").read_text().splitlines()]
    kinds = {(r["kind"], r["type"]) for r in records}
    print(sorted(kinds, key=str))
    assert {("message", "text"), ("message", "edit"), ("message", "revoke"), ("message", "reaction"),
            ("message", "image"), ("media", "image/jpeg"), ("gap", "media_unavailable")} <= kinds
    assert any(r["origin"] == "history" for r in records) and any(r["origin"] == "app" for r in records)
    assert any(CANARY in json.dumps(r["content"], ensure_ascii=False) for r in records)  # the production is readable

    # every file: flip one byte → verification fails naming that file
    for f in sorted(x for x in out.rglob("*") if x.is_file()):
        rel = f.relative_to(out).as_posix()
        bad = tmp_path / "bad"
        shutil.copytree(out, bad)
        data = bytearray((bad / rel).read_bytes() or b"\n")  # an empty file gets a byte
        data[len(data) // 2] ^= 0x01
        (bad / rel).write_bytes(bytes(data))
        failures = vb.verify(bad, key)
        assert failures, f"flipping a byte of {rel} went unnoticed"
        named = "manifest.json" if rel in ("manifest.json", "manifest.sig") else rel
        assert any(named in x for x in failures), (rel, failures)
        shutil.rmtree(bad)

    def broken(change: Callable[[Path], None]) -> list[str]:
        bad = tmp_path / "bad"
        shutil.rmtree(bad, ignore_errors=True)
        shutil.copytree(out, bad)
        change(bad)
        return vb.verify(bad, key)

    native = next(out.glob("VOL001/NATIVES/*/*.jpg")).relative_to(out).as_posix()
    assert any(native in x and "missing" in x for x in broken(lambda b: (b / native).unlink()))
    lines = (out / "records/records.jsonl").read_text().splitlines(keepends=True)
    fails = broken(lambda b: (b / "records/records.jsonl").write_text("".join(lines[:3] + lines[4:])))
    assert any("records/records.jsonl" in x and "differs" in x for x in fails)  # named, and not parsed further
    assert any("manifest.json: counts.records" in x for x in fails)

    def edit_manifest(b: Path) -> None:
        m = json.loads((b / "manifest.json").read_text())
        m["counts"]["messages"] -= 1
        (b / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")

    assert broken(edit_manifest)[0].startswith("manifest.json: signature")
    assert any("not listed" in x for x in broken(lambda b: (b / "extra.txt").write_text("x")))
    wrong_key = vb.load_public_key(crypto.public_key_pem(
        __import__("cryptography.hazmat.primitives.asymmetric.ed25519", fromlist=["x"])
        .Ed25519PrivateKey.generate().public_key()))
    assert vb.verify(out, wrong_key)[0].startswith("manifest.json: signature")

    # the same bundle zipped verifies too (the API's download)
    zpath = tmp_path / "bundle.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for f in out.rglob("*"):
            if f.is_file():
                z.write(f, f.relative_to(out).as_posix())
    assert vb.verify(zpath, key) == []


@pytest.mark.parametrize("sql_url", ["postgresql"], indirect=True)
def test_rsmf_load_files_and_counts_meet_what_review_platforms_check(
        exp_archive: Archive, graph: GraphStandIn, webhook_body: Callable[[str], bytes], tmp_path: Path) -> None:
    scenario(exp_archive, graph, webhook_body)
    out = tmp_path / "bundle"
    result = produce(exp_archive, out)
    schema = json.loads((RSMF / "rsmf_schema_2_0_0.json").read_text())
    sample = email.message_from_bytes((RSMF / "sample3.rsmf").read_bytes())
    rsmfs = sorted(out.glob("VOL*/NATIVES/*/*.rsmf"))
    assert len(rsmfs) == result.manifest["counts"]["rsmf_files"] >= 3  # per conversation per UTC day
    events_total = 0
    for path in rsmfs:
        msg = email.message_from_bytes(path.read_bytes())
        assert msg.get_content_type() == sample.get_content_type() == "multipart/mixed"
        for header in ("From", "To", "X-RSMF-Version", "X-RSMF-EventCount", "MIME-Version"):
            assert msg[header] and sample[header], header
        assert msg["X-RSMF-Version"] == "2.0.0"
        parts = [p_ for p_ in msg.walk() if p_.get_content_disposition() == "attachment"]
        assert len(parts) == 1 and parts[0].get_filename() == "rsmf.zip"
        assert parts[0]["Content-Transfer-Encoding"] == "base64"
        z = zipfile.ZipFile(io.BytesIO(parts[0].get_payload(decode=True)))
        manifest = json.loads(z.read("rsmf_manifest.json"))
        jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker()).validate(manifest)
        assert int(msg["X-RSMF-EventCount"]) == len(manifest["events"])
        events_total += len(manifest["events"])
        referenced = {a["id"] for e in manifest["events"] for a in e.get("attachments", [])}
        assert referenced <= set(z.namelist()) and set(z.namelist()) - {"rsmf_manifest.json"} == referenced
        participants = {x["id"] for x in manifest["participants"]}
        assert all(e.get("participant") in participants for e in manifest["events"] if e["type"] == "message")
        body = next(p_ for p_ in msg.walk() if p_.get_content_type() == "text/plain").get_payload(decode=True)
        assert body  # the extracted text, in time order
        assert path.read_bytes().isascii()  # 7-bit transport
    assert events_total == result.manifest["counts"]["rsmf_events"]
    edited = [e for f in rsmfs for e in _events(f) if e.get("edits")]
    assert edited and edited[0]["edits"][0]["new"].endswith("now")
    assert any(e.get("deleted") for f in rsmfs for e in _events(f))
    assert any(e.get("read_receipts") for f in rsmfs for e in _events(f))

    # DAT through an independent CSV parser configured for ¶ (0x14) and þ
    dat = next(out.glob("VOL001/DATA/*.dat")).read_bytes()
    assert dat.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(dat.decode("utf-8-sig"), newline=""), delimiter=COLUMN, quotechar=QUOTE))
    header, docs = rows[0], rows[1:]
    assert all(len(r) == len(header) for r in docs)
    doc = [dict(zip(header, r, strict=True)) for r in docs]
    numbers = [int(d["BEGDOC"][2:]) for d in doc]
    assert numbers == list(range(1, len(doc) + 1))  # contiguous control numbers
    for d in doc:
        native = out / d["NATIVEPATH"].lstrip(".\\").replace("\\", "/")
        assert native.is_file() and hashlib.sha256(native.read_bytes()).hexdigest() == d["SHA256HASH"]
        assert native.stem == d["BEGDOC"]
        assert (out / d["TEXTPATH"].lstrip(".\\").replace("\\", "/")).is_file()
    children = [d for d in doc if d["PARENT_BATES"]]
    assert children and all(d["BEGATTACH"] <= d["BEGDOC"] <= d["ENDATTACH"] for d in children)
    opt = next(out.glob("VOL001/DATA/*.opt")).read_bytes().decode("ascii").splitlines()
    assert len(opt) == len(doc) and all(len(x.split(",")) == 7 and x.split(",")[3] == "Y" for x in opt)
    assert result.manifest["counts"]["documents"] == len(doc)
    assert (out / "reports/completeness.json").is_file() and (out / "ledgers/templates.jsonl").is_file()
    assert list((out / "transcripts").glob("*.html"))
    html = next((out / "transcripts").glob("*.html")).read_text()
    assert "<script" not in html and "http" not in html.split("</style>", 1)[1].split("href")[0]


def _events(path: Path) -> list[dict[str, Any]]:
    msg = email.message_from_bytes(path.read_bytes())
    part = next(p_ for p_ in msg.walk() if p_.get_filename() == "rsmf.zip")
    return json.loads(zipfile.ZipFile(io.BytesIO(part.get_payload(decode=True))).read("rsmf_manifest.json"))["events"]


@pytest.mark.parametrize("sql_url", ["postgresql"], indirect=True)
def test_counts_equal_the_querys_and_the_cli_exports_and_verifies(
        exp_archive: Archive, graph: GraphStandIn, webhook_body: Callable[[str], bytes], tmp_path: Path,
        make_settings: Callable[..., Settings]) -> None:
    scenario(exp_archive, graph, webhook_body)
    total = exp_archive.search_index().search("trade").total
    result = produce(exp_archive, tmp_path / "q", query="trade")
    assert result.manifest["counts"]["messages"] == total == 4
    assert vb.verify(tmp_path / "q", public_key(exp_archive)) == []
    # a message that arrives later is not in the snapshot of a re-run's query count, only in a new one
    env = subprocess_env(make_settings())
    pub = tmp_path / "strongroom.pub"
    pub.write_bytes(crypto.public_key_pem(exp_archive.public_key))
    r = CliRunner().invoke(app, ["export", "--out", str(tmp_path / "cli"), "--matter", "FINRA 8210",
                                 "--requested-by", "finra@example", "--query", "trade OR statement",
                                 "--volume-documents", "2"], env=env)
    assert r.exit_code == 0, r.output
    made = json.loads(r.stdout)
    assert made["counts"]["messages"] == exp_archive.search_index().search("trade OR statement").total
    assert made["counts"]["volumes"] >= 2
    ok = CliRunner().invoke(app, ["verify-bundle", str(tmp_path / "cli"), "--public-key", str(pub)], env=env)
    assert ok.exit_code == 0 and "bundle verifies" in ok.output
    (tmp_path / "cli" / "README.txt").write_text("changed")
    bad = CliRunner().invoke(app, ["verify-bundle", str(tmp_path / "cli"), "--public-key", str(pub)], env=env)
    assert bad.exit_code == 1 and "README.txt" in bad.output
    assert vb.main([str(tmp_path / "q"), str(pub)]) == 0  # the standalone module
    # by a participant's phone number, as people type it: only that person's conversation
    alice, unresolved = exp_archive.exporter().participants([ALICE])
    assert len(alice) == 1 and unresolved == []
    r = CliRunner().invoke(app, ["export", "--out", str(tmp_path / "alice"), "--matter", "M", "--requested-by", "r",
                                 "--participant", f"+{ALICE[0]} ({ALICE[1:4]}) {ALICE[4:]}"], env=env)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["counts"]["conversations"] == 1
    lines = [json.loads(x) for x in (tmp_path / "alice" / "records/records.jsonl").read_text().splitlines()]
    assert lines and {x["conversation"] for x in lines} <= {alice[0], None}
    assert vb.verify(tmp_path / "alice", public_key(exp_archive)) == []
    r = CliRunner().invoke(app, ["export", "--out", str(tmp_path / "nobody"), "--matter", "M", "--requested-by", "r",
                                 "--participant", "+1 999 555 0000"], env=env)
    assert r.exit_code == 2 and "no archived conversation" in r.output
    empty = produce(exp_archive, tmp_path / "none", conversations=["no-such-subject"])
    assert empty.manifest["counts"]["messages"] == 0 and vb.verify(tmp_path / "none", public_key(exp_archive)) == []
    assert (tmp_path / "none" / "VOL001/DATA/SR.dat").read_bytes().count(b"\r\n") == 1  # the header row only


@pytest.mark.parametrize("sql_url", ["postgresql"], indirect=True)
def test_an_encrypted_bundle_holds_no_plaintext_and_decrypts_to_a_verifying_zip(
        exp_archive: Archive, graph: GraphStandIn, webhook_body: Callable[[str], bytes], tmp_path: Path) -> None:
    from exporters.sinks import EncryptedZipSink, read_encrypted

    scenario(exp_archive, graph, webhook_body)
    key = os.urandom(32)
    enc = tmp_path / "x.zip.enc"
    exp_archive.exporter().run(ExportScope("M"), EncryptedZipSink(enc, key, b"job-1"), Custody("r"), "test")
    assert CANARY.encode() not in enc.read_bytes() and not list(tmp_path.glob("*.spool*"))
    zpath = tmp_path / "x.zip"
    zpath.write_bytes(b"".join(read_encrypted(enc, key, b"job-1")))
    assert vb.verify(zpath, public_key(exp_archive)) == []
    with pytest.raises(Exception):  # noqa: B017  (any tampering fails authentication)
        data = bytearray(enc.read_bytes())
        data[100] ^= 1
        enc.write_bytes(bytes(data))
        b"".join(read_encrypted(enc, key, b"job-1"))


@pytest.mark.parametrize("sql_url", ["sqlite"], indirect=True)
def test_proofs_and_sealed_bytes_stream_segment_by_segment(make_settings: Callable[..., Settings]) -> None:
    """The bundle's proofs come from a bounded tile cache and from segments decoded a few rows at a
    time; both must give exactly what the one-record paths give, across segment and tile-row edges."""
    a = open_archive(make_settings(seal_batch_max=97))
    try:
        for b in range(7):
            ingest(a, p.inbound(*[p.text(f"wamid.s{b}-{i}", ALICE, NOW + b * 100 + i, f"m {i}") for i in range(100)]))
        with a.engine.connect() as conn:
            segs = conn.execute(sa.select(segments).where(segments.c.stream == p.PNID)
                                .order_by(segments.c.first_seq)).all()
        assert len(segs) > 3
        size = segs[-1].last_seq + 1
        assert size > 2 * TILE_WIDTH
        root = bytes.fromhex(json.loads(a.store.get(segs[-1].checkpoint_key))["checkpoint"]["root_hash"])
        wanted = list(range(0, size, 3)) + [size - 1]
        service = ProofService(a.engine)
        streamed = list(service.inclusions(p.PNID, iter(wanted), size, cache_chunks=1))
        assert [s for s, _, _ in streamed] == wanted
        for seq, leaf, path in streamed:
            assert leaf == service.leaf_hash(p.PNID, seq) and path == service.inclusion(p.PNID, seq, size)
            assert merkle.root_from_inclusion_proof(seq, size, leaf, path) == root
        sealed = list(a.exporter()._sealed(p.PNID, iter(wanted)))
        assert [s for s, _ in sealed] == wanted
        assert all(data is not None and merkle.hash_leaf(data) == leaf
                   for (_, data), (_, leaf, _) in zip(sealed, streamed, strict=True))
        data = a.store.get(segs[1].object_key)
        rows = decode_segment(data)[0]
        some = {r["seq"] for r in rows[::4]}
        assert list(sealed_records(data, some, batch_rows=5)) == [(r["seq"], canonical(r)) for r in rows
                                                                  if r["seq"] in some]
    finally:
        a.close()


def test_the_spool_remembers_records_and_files_once_and_in_order() -> None:
    spool = Spool()
    try:
        for seq in (5, 1, 3):
            spool.add_new_record("S", seq)
        assert spool.add_record("S", 9) and not spool.add_record("S", 9) and not spool.add_record("S", 3)
        assert spool.n_records == 4 and list(spool.seqs("S")) == [1, 3, 5, 9] and spool.streams() == ["S"]
        assert spool.has_record("S/5") and not spool.has_record("S/6") and not spool.has_record("nonsense")
        assert spool.record_ids(2) == ["S/1", "S/3"]
        spool.add_matched([("S", 1), ("T", 2)])
        assert spool.matched_among([("S", 1), ("S", 2), ("T", 2)]) == {("S", 1), ("T", 2)}
        spool.add_file(Entry("b", 1, "00"))
        spool.add_file(Entry("a", 2, "11"))
        assert [e.path for e in spool.files()] == ["a", "b"] and spool.has_file("a")
        spool.add_file(Entry("a", 3, "22"))
        with pytest.raises(ValueError, match="twice"):
            spool.flush()
        spool.withhold("S/3")
        spool.withhold("S/3")
        assert spool.withheld() == ["S/3"] and spool.n_withheld() == 1
        where = Path(spool.db.execute("PRAGMA database_list").fetchone()[2])
        assert where.exists()
    finally:
        spool.close()
    assert not where.exists()


def test_a_directory_sink_writes_in_the_background_and_reports_the_first_failure(tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path / "b", budget=10)
    for i in range(50):
        sink.put(f"d{i % 3}/f{i}", b"x" * 7)  # over the budget after one: waits for the writers
    sink.close()
    assert sorted(f.name for f in (tmp_path / "b").rglob("f*")) == sorted(f"f{i}" for i in range(50))
    bad = DirectorySink(tmp_path / "c")
    (tmp_path / "c" / "blocker").write_bytes(b"a file where a folder must go")
    bad.put("blocker/inner", b"x")  # fails in a writer thread …
    with pytest.raises(OSError):
        for i in range(100):
            bad.put(f"later{i}", b"x")  # … and the next write or the close says so
            time.sleep(0.01)
        bad.close()
    with pytest.raises(OSError):
        bad.close()  # closing again (the exporter's `finally`) still reports it


def test_slip_sheets_come_in_control_number_order_from_the_helper() -> None:
    sheets = SlipSheets("SR", ahead=4)
    try:
        assert sheets.get("SR0000001") == slip_sheet("SR0000001")
        assert sheets.get("SR0000002").startswith(b"II*\x00")
        with pytest.raises(RuntimeError, match="control number"):
            sheets.get("SR0000009")  # the third sheet is SR0000003
    finally:
        sheets.close()
    assert sheets._proc is None


def test_an_rsmf_to_header_encodes_a_non_ascii_name_but_never_the_address() -> None:
    from email import policy

    from exporters import rsmf

    doc = rsmf.build(rsmf.Slice("01SUBJECT", p.PNID, 'Zoë "Z" Müller', "2026-11", 1, 1, [], {}, "strongroom/test"))
    to = email.message_from_bytes(doc.eml, policy=policy.default)["To"]
    assert to.addresses[0].display_name == 'Zoë "Z" Müller'
    assert to.addresses[0].addr_spec.endswith("@wa.invalid")
    assert doc.eml.isascii()


def test_the_slip_sheet_helper_stops_when_its_exporter_dies() -> None:
    code = ("import time; from exporters.loadfile import SlipSheets; s = SlipSheets('SR', ahead=2); "
            "s.get('SR0000001'); print(s._proc.pid, flush=True); time.sleep(120)")
    exporter = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                                cwd=REPO)
    helper = int(exporter.stdout.readline())  # type: ignore[union-attr]
    exporter.kill()  # no chance to stop its helper
    exporter.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{helper}/status").read_text()
        except OSError:
            return  # gone
        if "\nState:\tZ" in state:
            return  # exited, waiting to be reaped by init
        time.sleep(0.2)
    pytest.fail("the slip-sheet helper outlived its exporter")


def _forge(out: Path, dest: Path, signing_key: Any, edits: dict[str, Callable[[bytes], bytes]]) -> Path:
    """What an insider holding the signing key can do: edit files, fix their manifest entries, re-sign."""
    import base64

    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(out, dest)
    manifest = json.loads((dest / "manifest.json").read_bytes())
    for rel, edit in edits.items():
        data = edit((dest / rel).read_bytes())
        assert data != (dest / rel).read_bytes(), f"the forgery of {rel} changed nothing"
        (dest / rel).write_bytes(data)
        for f in manifest["files"]:
            if f["path"] == rel:
                f.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    raw = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    (dest / "manifest.json").write_bytes(raw)
    (dest / "manifest.sig").write_bytes(base64.b64encode(signing_key.sign(raw)) + b"\n")
    return dest


def _edit_rsmf(old: str, new: str) -> Callable[[bytes], bytes]:
    """Change an RSMF's event body inside rsmf.zip (the text part left as it was)."""
    import base64
    import email.policy

    def edit(data: bytes) -> bytes:
        msg = email.message_from_bytes(data, policy=email.policy.default)
        part = next(x for x in msg.walk() if x.get_filename() == "rsmf.zip")
        zipped = part.get_payload(decode=True)
        buf = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(zipped)) as z, zipfile.ZipFile(buf, "w") as w:
            for name in z.namelist():
                body = z.read(name)
                w.writestr(name, body.replace(old.encode(), new.encode()) if name == "rsmf_manifest.json" else body)
        was = base64.encodebytes(zipped).replace(b"\n", b"\r\n")
        assert was in data
        return data.replace(was, base64.encodebytes(buf.getvalue()).replace(b"\n", b"\r\n"))
    return edit


@pytest.mark.parametrize("sql_url", ["sqlite"], indirect=True)
def test_content_forged_by_an_insider_with_the_signing_key_fails_naming_the_record_and_file(
        exp_archive: Archive, graph: GraphStandIn, webhook_body: Callable[[str], bytes], tmp_path: Path) -> None:
    """Issue 15: edit a message's content, fix the manifest's hashes and re-sign it with the real key."""
    scenario(exp_archive, graph, webhook_body)
    out = tmp_path / "bundle"
    produce(exp_archive, out)
    key, sk = public_key(exp_archive), exp_archive.signing_key
    assert vb.verify(out, key) == []
    proofs = [json.loads(x) for f in (out / "proofs").glob("*.jsonl") for x in f.read_text().splitlines()]
    assert proofs and all("content_key" in pr for pr in proofs)
    assert sum(pr["content_key"] is not None for pr in proofs) >= 10
    records = [json.loads(x) for x in (out / "records/records.jsonl").read_text().splitlines()]
    target = next(r for r in records if r["wamid"] == "wamid.e1" and r["type"] == "text")
    rid, original = target["id"], "Please confirm the trade"
    forged = "Please SELL 900 shares"

    def swap(data: bytes) -> bytes:
        return data.replace(original.encode(), forged.encode())

    fails = vb.verify(_forge(out, tmp_path / "f1", sk, {"records/records.jsonl": swap}), key)
    assert any(f"records/records.jsonl: record {rid}: content differs" in x for x in fails), fails

    def parquet_swap(data: bytes) -> bytes:
        t = pq.read_table(io.BytesIO(data))
        col = [c.replace(original, forged) for c in t.column("content_json").to_pylist()]
        buf = io.BytesIO()
        pq.write_table(t.set_column(t.schema.get_field_index("content_json"), "content_json", pa.array(col)), buf)
        return buf.getvalue()

    fails = vb.verify(_forge(out, tmp_path / "f2", sk, {"records/records.parquet": parquet_swap}), key)
    assert any(f"records/records.parquet: record {rid}: content differs" in x for x in fails), fails

    rsmf_file = next(f for f in out.glob("VOL001/NATIVES/*/*.rsmf")
                     if any(original in ev.get("body", "") for ev in vb._rsmf_parts(f.read_bytes())[1]["events"]))
    rel = rsmf_file.relative_to(out).as_posix()
    fails = vb.verify(_forge(out, tmp_path / "f3", sk, {rel: _edit_rsmf(original, forged)}), key)
    assert any(f"{rel}: record {rid}: text differs" in x for x in fails), fails

    txt = rel.replace("/NATIVES/", "/TEXT/").replace(".rsmf", ".txt")
    fails = vb.verify(_forge(out, tmp_path / "f4", sk, {txt: swap}), key)
    assert any(f"{txt}: extracted text differs" in x for x in fails), fails

    html = next(f for f in (out / "transcripts").glob("*.html") if original.encode() in f.read_bytes())
    hrel = html.relative_to(out).as_posix()
    fails = vb.verify(_forge(out, tmp_path / "f5", sk, {hrel: swap}), key)
    assert any(f"{hrel}: record {rid}: text differs" in x for x in fails), fails

    native = next(out.glob("VOL001/NATIVES/*/*.jpg")).relative_to(out).as_posix()
    fails = vb.verify(_forge(out, tmp_path / "f6", sk, {native: lambda d: d[:-1] + bytes([d[-1] ^ 1])}), key)
    assert any(native in x and "differs from sealed media record" in x for x in fails), fails

    # a key withheld for a record whose content is listed: the content is unprovable, and says so
    def drop_key(data: bytes) -> bytes:
        lines = [json.loads(x) for x in data.decode().splitlines()]
        for pr in lines:
            if f"{pr['stream']}/{pr['seq']}" == rid:
                pr["content_key"] = None
        return "".join(json.dumps(x) + "\n" for x in lines).encode()

    proof_file = f"proofs/{target['stream']}.jsonl"
    fails = vb.verify(_forge(out, tmp_path / "f7", sk, {proof_file: drop_key}), key)
    assert any(f"record {rid} lists content its bundle discloses no key for" in x for x in fails), fails
    # a key of another record does not open this one
    other = next(pr["content_key"] for pr in proofs if pr["content_key"] and f"{pr['stream']}/{pr['seq']}" != rid)

    def wrong_key(data: bytes) -> bytes:
        lines = [json.loads(x) for x in data.decode().splitlines()]
        for pr in lines:
            if f"{pr['stream']}/{pr['seq']}" == rid:
                pr["content_key"] = other
        return "".join(json.dumps(x) + "\n" for x in lines).encode()

    fails = vb.verify(_forge(out, tmp_path / "f8", sk, {proof_file: wrong_key}), key)
    assert any(f"record {rid}" in x and "does not open" in x for x in fails), fails


@pytest.mark.parametrize("sql_url", ["sqlite"], indirect=True)
def test_reports_ledgers_and_trail_are_proven_and_a_report_is_recomputed_from_the_bundle(
        exp_archive: Archive, graph: GraphStandIn, webhook_body: Callable[[str], bytes], tmp_path: Path) -> None:
    """Issue 15, item 2: a dropped message is caught by the sealed report of its day."""
    from datetime import UTC, datetime, timedelta

    scenario(exp_archive, graph, webhook_body)
    day = datetime.fromtimestamp(NOW, UTC).date()
    exp_archive.reconciler().run(day, now=datetime.now(UTC) + timedelta(days=1))
    exp_archive.process_pending()
    produce(exp_archive, tmp_path / "first")  # an audited production: the next one's trail names it
    out = tmp_path / "bundle"
    produce(exp_archive, out)
    key, sk = public_key(exp_archive), exp_archive.signing_key
    assert vb.verify(out, key) == []
    reports = json.loads((out / "reports/completeness.json").read_text())["reports"]
    assert reports and all(r["record"].startswith("audit/") for r in reports)
    rep = next(r for r in reports if r["day"] == day.isoformat() and r["archived_wamids"])
    trail = [json.loads(x) for x in (out / "audit/access_trail.jsonl").read_text().splitlines()]
    assert trail and all(t["record"] for t in trail)
    proofs = {json.loads(x)["seq"] for x in (out / "proofs/audit.jsonl").read_text().splitlines()}
    assert {int(r["record"].split("/")[1]) for r in reports} <= proofs

    # an insider drops one of the day's messages from records.jsonl (and fixes the counts): caught
    records = (out / "records/records.jsonl").read_text().splitlines(keepends=True)
    victim = next(i for i, x in enumerate(records) if json.loads(x)["wamid"] == rep["archived_wamids"][0]
                  and json.loads(x)["stream"] == rep["stream"])

    def drop(data: bytes) -> bytes:
        return "".join(records[:victim] + records[victim + 1:]).encode()

    bad = _forge(out, tmp_path / "d1", sk, {"records/records.jsonl": drop})
    m = json.loads((bad / "manifest.json").read_text())
    m["counts"]["records"] -= 1
    m["counts"]["messages"] -= json.loads(records[victim])["role"] == "message"
    for f in m["files"]:
        if f["path"] == "records/records.jsonl":
            f["records"] -= 1
    raw = json.dumps(m, indent=2, sort_keys=True).encode() + b"\n"
    (bad / "manifest.json").write_bytes(raw)
    import base64
    (bad / "manifest.sig").write_bytes(base64.b64encode(sk.sign(raw)) + b"\n")
    fails = vb.verify(bad, key)
    assert any(f"report {rep['record']}" in x and "are not in the bundle" in x for x in fails), fails

    # a report, a trail entry edited: each differs from its sealed record
    fails = vb.verify(_forge(out, tmp_path / "d2", sk, {"reports/completeness.json": lambda d: d.replace(
        b'"open_gaps": ', b'"open_gaps": 1', 1) if b'"open_gaps": 0' in d else d + b" "}), key)
    assert any("reports/completeness.json" in x for x in fails), fails
    first = trail[0]

    def edit_trail(data: bytes) -> bytes:
        lines = data.decode().splitlines()
        doc = json.loads(lines[0])
        doc["actor"] = "somebody-else"
        return "\n".join([json.dumps(doc)] + lines[1:]).encode() + b"\n"

    fails = vb.verify(_forge(out, tmp_path / "d3", sk, {"audit/access_trail.jsonl": edit_trail}), key)
    assert any(f"audit/access_trail.jsonl: entry {first['record']}: differs" in x for x in fails), fails


@pytest.mark.parametrize("sql_url", ["sqlite"], indirect=True)
def test_an_erased_subjects_records_and_ledger_entries_are_proven_without_keys(
        exp_archive: Archive, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    exp_archive.schedules.store({"default_days": 1}, "test", datetime.now(UTC))  # no statutory obligation
    ingest(exp_archive, p.inbound(p.text("wamid.z1", BOB, NOW, "erase me please")),
           p.inbound(p.text("wamid.z2", BOB, NOW + 5, "STOP")), p.inbound(p.text("wamid.z3", ALICE, NOW + 9, "keep")))
    exp_archive.process_pending()
    assert exp_archive.consent().sync()  # the STOP is an opt-out on the consent ledger
    exp_archive.process_pending()
    assert exp_archive.erasure().request("dpo:dan", phone=BOB).outcome == "granted"
    exp_archive.process_pending()
    out = tmp_path / "bundle"
    produce(exp_archive, out)
    key = public_key(exp_archive)
    assert vb.verify(out, key) == []
    records = [json.loads(x) for x in (out / "records/records.jsonl").read_text().splitlines()]
    erased = [r for r in records if r["content"] == {"erased": True}]
    assert erased and any(r["content"] != {"erased": True} for r in records)
    consent = [json.loads(x) for x in (out / "ledgers/consent.jsonl").read_text().splitlines()]
    assert consent and all(c == {"record": c["record"], "erased": True} for c in consent)  # BOB's, shredded
    proofs = {f"{x['stream']}/{x['seq']}": x for f in (out / "proofs").glob("*.jsonl")
              for x in map(json.loads, f.read_text().splitlines())}
    assert all(proofs[r["id"]]["content_key"] is None for r in erased)

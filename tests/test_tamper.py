"""Tampering with a copy of the archive makes `verify` fail and name the item (R-12, R-13)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from archiver.checkpoint import SignedCheckpoint
from archiver.crypto import public_key_pem
from archiver.objectstore import DirectoryObjectStore
from archiver.segments import decode_segment, encode_segment
from audit.verify import Report, Verifier
from strongroom.app import create_app
from strongroom.runtime import Archive
from tests.conftest import sign

STREAM = "1122334455667"


@pytest.fixture
def copy(archive: Archive, webhook_body: Callable[[str], bytes], tmp_path: Path) -> Path:
    """Three sealing rounds (three segments, three checkpoints) downloaded to a directory."""
    client = TestClient(create_app(archive))
    for i in range(3):
        body = webhook_body("multi_entry").replace(b"wamid.multi1", f"wamid.t{i}".encode())
        body = body.replace(b"wamid.out9", f"wamid.o{i}".encode()).replace(b"wamid.img1", f"wamid.i{i}".encode())
        assert client.post("/webhooks/whatsapp", content=body, headers={"X-Hub-Signature-256": sign(body)}).status_code == 200
        archive.process_pending()
    archive.sealer().write_head(force=True)  # as the sealer does once its head interval has passed
    root = tmp_path / "copy"
    for key in archive.store.list_keys(""):
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(archive.store.get(key))
    return root


def _verify(archive: Archive, root: Path, expected: dict[str, int] | None = None) -> Report:
    return Verifier(DirectoryObjectStore(root), archive.public_key, check_locks=False).verify(expected_sizes=expected)


def _segments(root: Path) -> list[Path]:
    return sorted((root / "records" / f"stream={STREAM}").rglob("*.parquet"))


def _rewrite(path: Path, mutate: Callable[[list[dict]], list[dict]]) -> None:  # type: ignore[type-arg]
    records, meta = decode_segment(path.read_bytes())
    meta.pop("schema", None)
    path.write_bytes(encode_segment(mutate(records), meta))


def _only_failure(report: Report) -> str:
    assert not report.ok
    return "\n".join(str(f) for f in report.failures)


def test_untouched_copy_verifies(archive: Archive, copy: Path) -> None:
    report = _verify(archive, copy, archive.expected_sizes())
    assert report.ok, [str(f) for f in report.failures]
    assert len(_segments(copy)) == 3


def test_byte_flip_in_a_segment(archive: Archive, copy: Path) -> None:
    seg = _segments(copy)[1]
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0x01
    seg.write_bytes(bytes(data))
    text = _only_failure(_verify(archive, copy))
    assert str(seg.relative_to(copy)) in text


def test_dropped_row(archive: Archive, copy: Path) -> None:
    seg = _segments(copy)[1]
    first = decode_segment(seg.read_bytes())[0][0]["seq"]
    _rewrite(seg, lambda rows: rows[:1] + rows[2:])
    report = _verify(archive, copy)
    f = report.failures[0]
    assert (f.step, f.stream, f.item, f.seq) == (2, STREAM, str(seg.relative_to(copy)), first + 1)


def test_swapped_rows(archive: Archive, copy: Path) -> None:
    seg = _segments(copy)[0]
    _rewrite(seg, lambda rows: [rows[1], rows[0]] + rows[2:])
    f = _verify(archive, copy).failures[0]
    assert (f.stream, f.item, f.seq) == (STREAM, str(seg.relative_to(copy)), 0)


def test_swapped_rows_with_renumbered_seqs(archive: Archive, copy: Path) -> None:
    seg = _segments(copy)[0]

    def swap(rows: list[dict]) -> list[dict]:  # type: ignore[type-arg]
        rows[0], rows[1] = rows[1], rows[0]
        rows[0]["seq"], rows[1]["seq"] = 0, 1
        return rows

    _rewrite(seg, swap)
    f = _verify(archive, copy).failures[0]
    assert (f.step, f.item, f.seq) == (2, str(seg.relative_to(copy)), 0)
    assert "does not link" in f.message


def test_edited_content_with_consistent_chain_is_caught_by_the_checkpoint(archive: Archive, copy: Path) -> None:
    """An attacker who rewrites a record *and* recomputes the whole chain still cannot sign."""
    from archiver.records import GENESIS, canonical, link

    seg = _segments(copy)[0]

    def rechain(rows: list[dict]) -> list[dict]:  # type: ignore[type-arg]
        rows[0]["type"] = "forged"
        prev = GENESIS
        for r in rows:
            r["prev_hash"] = prev
            prev = r["record_hash"] = link(prev, canonical(r))
        return rows

    records, meta = decode_segment(seg.read_bytes())
    records = rechain(records)
    meta.update(head_hash=records[-1]["record_hash"].hex())
    meta.pop("schema")
    seg.write_bytes(encode_segment(records, meta))
    report = _verify(archive, copy)
    assert any(f.step == 3 and "root mismatch" in f.message and f.item.endswith(f"{meta['last_seq']:012d}.json")
               for f in report.failures), [str(f) for f in report.failures]


def test_edited_checkpoint(archive: Archive, copy: Path) -> None:
    cp_path = sorted((copy / "checkpoints" / f"stream={STREAM}").glob("*.json"))[1]
    doc = json.loads(cp_path.read_text())
    doc["checkpoint"]["root_hash"] = "00" * 32
    cp_path.write_text(json.dumps(doc))
    f = _verify(archive, copy).failures[0]
    assert (f.step, f.item) == (4, str(cp_path.relative_to(copy)))
    assert "signature does not verify" in f.message


def test_checkpoint_signed_by_another_key(archive: Archive, copy: Path) -> None:
    cp_path = sorted((copy / "checkpoints" / f"stream={STREAM}").glob("*.json"))[0]
    cp = SignedCheckpoint.from_json(cp_path.read_bytes())
    cp_path.write_bytes(SignedCheckpoint.sign(cp.checkpoint, Ed25519PrivateKey.generate()).to_json())
    assert "signature does not verify" in _only_failure(_verify(archive, copy))


def test_removed_middle_segment(archive: Archive, copy: Path) -> None:
    seg = _segments(copy)[1]
    first = decode_segment(seg.read_bytes())[0][0]["seq"]
    seg.unlink()
    f = _verify(archive, copy).failures[0]
    assert f.step == 2 and f.seq == first and "found seq" in f.message


def test_removed_newest_segment_and_checkpoint(archive: Archive, copy: Path) -> None:
    _segments(copy)[-1].unlink()
    sorted((copy / "checkpoints" / f"stream={STREAM}").glob("*.json"))[-1].unlink()
    # the archive head written after the last pass names the records the copy lacks
    failures = _verify(archive, copy).failures
    assert any(f.step == 8 and f.stream == STREAM and "missing" in f.message for f in failures), failures
    shutil.rmtree(copy / "heads")
    assert _verify(archive, copy).ok is True  # without heads the objects alone cannot show a clean cut …
    text = _only_failure(_verify(archive, copy, archive.expected_sizes()))  # … the database can
    assert f"stream={STREAM}" in text and "(6)" in text


def test_a_whole_stream_removed_is_named_by_the_archive_head(archive: Archive, copy: Path) -> None:
    shutil.rmtree(copy / "records" / f"stream={STREAM}")
    shutil.rmtree(copy / "checkpoints" / f"stream={STREAM}")
    failures = _verify(archive, copy).failures
    assert any(f.step == 8 and f.stream == STREAM and "stream removed" in f.message for f in failures), failures


def test_a_parquet_statistics_edit_is_caught_by_the_object_hash(archive: Archive, copy: Path) -> None:
    """Rows untouched, a max statistic in the footer lowered so a query engine skips the row group."""
    import pyarrow.parquet as pq

    seg = _segments(copy)[1]
    data = bytearray(seg.read_bytes())
    footer_len = int.from_bytes(data[-8:-4], "little")
    start = len(data) - 8 - footer_len
    md = pq.ParquetFile(seg).metadata
    col = next(i for i in range(md.num_columns) if md.schema.column(i).name == "wamid")
    top = md.row_group(0).column(col).statistics.max.encode()
    at = bytes(data[start:]).find(top)
    assert at >= 0
    data[start + at + len(top) - 1] -= 1  # "wamid.t1" -> "wamid.t0": DuckDB would skip wamid.t1
    seg.write_bytes(bytes(data))
    before = decode_segment(seg.read_bytes())[0]
    assert [r["wamid"] for r in before] and pq.ParquetFile(seg).metadata.row_group(0).column(col).statistics.max != top.decode()
    failures = _verify(archive, copy).failures
    assert [(f.step, f.item) for f in failures] == [(7, str(seg.relative_to(copy)))], failures
    assert "SHA-256" in failures[0].message


def test_a_missing_middle_checkpoint_is_named(archive: Archive, copy: Path) -> None:
    cps = sorted((copy / "checkpoints" / f"stream={STREAM}").glob("*.json"))
    middle = SignedCheckpoint.from_json(cps[1].read_bytes()).checkpoint
    cps[1].unlink()
    failures = _verify(archive, copy).failures
    assert any(f.step == 7 and f"tree size {middle.tree_size}" in f.message and "missing" in f.message
               for f in failures), failures


def test_an_edited_footer_field_is_named(archive: Archive, copy: Path) -> None:
    seg = _segments(copy)[0]
    records, meta = decode_segment(seg.read_bytes())
    meta.pop("schema", None)
    meta["root_hash"] = "ab" * 32
    seg.write_bytes(encode_segment(records, meta))
    failures = _verify(archive, copy).failures
    assert any(f.step == 7 and f.item == str(seg.relative_to(copy)) and "footer root_hash" in f.message
               for f in failures), failures


def test_removed_newest_checkpoint(archive: Archive, copy: Path) -> None:
    sorted((copy / "checkpoints" / f"stream={STREAM}").glob("*.json"))[-1].unlink()
    assert "newest checkpoint covers" in _only_failure(_verify(archive, copy))


def test_cli_verify_from_dir_exits_nonzero_and_names_the_item(archive: Archive, copy: Path, tmp_path: Path) -> None:
    pub = tmp_path / "public.pem"
    pub.write_bytes(public_key_pem(archive.public_key))
    cmd = [sys.executable, "-m", "strongroom", "verify", "--from-dir", str(copy), "--public-key", str(pub)]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    seg = _segments(copy)[2]
    data = bytearray(seg.read_bytes())
    data[100] ^= 0xFF
    seg.write_bytes(bytes(data))
    bad = subprocess.run(cmd + ["--stream", STREAM], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert seg.name in bad.stderr.replace("\n", "") and f"stream={STREAM}" in bad.stderr


def test_empty_archive_does_not_verify(archive: Archive, tmp_path: Path) -> None:
    # Nothing to check is not the same as everything checked out.
    (tmp_path / "empty").mkdir()
    assert _verify(archive, tmp_path / "empty").ok is False
    shutil.rmtree(tmp_path / "empty")


def test_validly_signed_but_malformed_checkpoint_is_reported_not_crashed(archive: Archive, copy: Path) -> None:
    """A verifier facing a hostile source (R-16) reports; it does not raise."""
    cp_path = sorted((copy / "checkpoints" / f"stream={STREAM}").glob("*.json"))[1]
    cp = SignedCheckpoint.from_json(cp_path.read_bytes()).checkpoint
    from dataclasses import replace

    forged = replace(cp, root_hash="not-hex")
    cp_path.write_bytes(SignedCheckpoint.sign(forged, archive.signing_key).to_json())
    report = _verify(archive, copy)
    assert not report.ok and any(f.item == str(cp_path.relative_to(copy)) for f in report.failures)


@pytest.mark.parametrize("garbage", [b"[]", b"not json", b'{"head": 1}', b'{"head": {"key_id": "x"}}'])
def test_a_malformed_archive_head_is_a_finding_not_a_crash(archive: Archive, copy: Path, garbage: bytes) -> None:
    newest = sorted((copy / "heads").rglob("*.json"))[-1]
    newest.write_bytes(garbage)
    failures = _verify(archive, copy).failures
    assert [(f.step, f.item) for f in failures] == [(8, str(newest.relative_to(copy)))], failures

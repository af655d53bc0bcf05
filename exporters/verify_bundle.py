"""Offline verification of a strongroom export bundle, with nothing but the archive's public key.

Standalone on purpose: it needs only the Python standard library and ``cryptography`` (plus
``pyarrow`` to count Parquet rows, if installed), so a regulator can copy this one file and run

    python verify_bundle.py BUNDLE_DIR_OR_ZIP strongroom.pub

It checks, and names whatever fails:
1. ``manifest.sig``: Ed25519 over the exact bytes of ``manifest.json``;
2. every file the manifest lists: present, same size, same SHA-256; and no file it does not list;
3. record counts: JSONL lines, DAT rows, OPT lines, Parquet rows, and the manifest's totals;
4. every signed checkpoint of the snapshot (Ed25519, key id, origin);
5. every record: an RFC 6962 inclusion proof from SHA-256(0x00 ‖ sealed record) to its number's
   checkpoint root, and the record's metadata in ``records.jsonl`` equal to the sealed record's.

Files are hashed as streams and the proven records are kept in a temporary SQLite file (stdlib),
so memory does not grow with the number of records. A hostile bundle cannot fool or exhaust it:
a zip with two entries of one name (one for the verifier, one for `unzip`), a link or other
non-regular entry, or a manifest over 64 MiB is refused before anything is read; a listed file
is read only when its stored size is the manifest's, and never past that size; only files whose
hash verified are parsed further.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

ALLOWED_EXTRA = {"manifest.json", "manifest.sig", "transfers.jsonl"}
MAX_MANIFEST = 64 * 1024 * 1024  # a production of millions of records has a manifest of a few MB


class BundleRefused(ValueError):
    """The bundle's container itself is malformed or hostile; nothing in it was trusted."""
CHECKPOINT_ORIGIN = "strongroom.checkpoint/1"
BOUND_FIELDS = ("stream", "seq", "kind", "natural_key", "tenant", "wamid", "ref_wamid", "conversation", "direction",
                "origin", "type", "status", "template_name", "template_language")


class _Source:
    """A bundle directory or zip file: its regular files, each name once, with their sizes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip = zipfile.ZipFile(path) if path.is_file() else None
        self.sizes: dict[str, int] = {}
        if self.zip is not None:
            for info in self.zip.infolist():
                if info.is_dir():
                    continue
                mode = info.external_attr >> 16
                if mode and (mode & 0o170000) not in (0, 0o100000):  # a link, device, fifo…
                    raise BundleRefused(f"{info.filename}: not a regular file")
                if info.filename in self.sizes:
                    raise BundleRefused(f"{info.filename}: two entries of this name (one would be verified, "
                                        "the other extracted)")
                self.sizes[info.filename] = info.file_size
        else:
            for p in sorted(path.rglob("*")):
                name = p.relative_to(path).as_posix()
                if p.is_symlink() or (not p.is_dir() and not p.is_file()):
                    raise BundleRefused(f"{name}: not a regular file")
                if p.is_file():
                    self.sizes[name] = p.stat().st_size

    def names(self) -> list[str]:
        return list(self.sizes)

    def exists(self, name: str) -> bool:
        return name in self.sizes

    def open(self, name: str) -> IO[bytes]:
        return self.zip.open(name) if self.zip is not None else (self.path / name).open("rb")

    def read(self, name: str, limit: int | None = None) -> bytes:
        """The whole file; `BundleRefused` when it is larger than `limit`."""
        if limit is not None and self.sizes[name] > limit:
            raise BundleRefused(f"{name}: {self.sizes[name]} bytes, more than {limit} allowed")
        with self.open(name) as f:
            data = f.read() if limit is None else f.read(limit + 1)
        if limit is not None and len(data) > limit:
            raise BundleRefused(f"{name}: more than {limit} bytes")
        return data

    def lines(self, name: str) -> Iterator[bytes]:
        with self.open(name) as f:
            for line in f:
                if line.strip():
                    yield line


def _count(src: _Source, path: str) -> int | None:
    """Records in a file by its kind (None: not countable here)."""
    if path.endswith(".jsonl"):
        return sum(1 for _ in src.lines(path))
    if path.endswith(".dat") or path.endswith(".opt"):  # one record per CRLF line (DAT: after its header)
        with src.open(path) as fh:
            lines = sum(chunk.count(b"\r\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
        return lines - 1 if path.endswith(".dat") else lines
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            return None
        with src.open(path) as fh:
            return int(pq.ParquetFile(fh).metadata.num_rows)
    if path.endswith(".json"):
        return len(json.loads(src.read(path)).get("reports", []))
    return None


def _key_id(pk: Ed25519PublicKey) -> str:
    return hashlib.sha256(pk.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()[:16]


def _canonical(doc: dict[str, Any]) -> bytes:
    try:
        import rfc8785

        return rfc8785.dumps(doc)
    except ImportError:  # the checkpoint holds only ASCII strings and integers: sorted compact JSON is RFC 8785
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_from_inclusion(index: int, size: int, leaf_hash: bytes, path: list[bytes]) -> bytes:
    """RFC 9162 §2.1.3.2."""
    if index >= size:
        raise ValueError(f"leaf index {index} outside tree size {size}")
    fn, sn, r = index, size - 1, leaf_hash
    for p in path:
        if sn == 0:
            raise ValueError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = _node(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ValueError("inclusion proof is too short")
    return r


def _bound(rec: dict[str, Any]) -> bytes:
    """What binds a listed record to its sealed one: its metadata fields and sent time."""
    t = rec.get("event_time")
    when = datetime.fromisoformat(str(t).replace("Z", "+00:00")).isoformat() if t is not None else None
    return hashlib.sha256(json.dumps([rec.get(f) for f in BOUND_FIELDS] + [when]).encode()).digest()[:16]


class _Proven:
    """The records whose inclusion proof verified, with a digest of their sealed metadata: kept in a
    throw-away SQLite file, so a bundle of any size verifies in the same memory."""

    _ABSENT = b""  # disposed after retention: proven by its leaf hash, no sealed bytes to compare

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="verify-bundle-")
        self.db = sqlite3.connect(str(Path(self._dir.name) / "proven.sqlite"), isolation_level=None)
        self.db.executescript("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; BEGIN;"
                              "CREATE TABLE proven (stream TEXT, seq INTEGER, bound BLOB, PRIMARY KEY (stream, seq))"
                              " WITHOUT ROWID;")
        self._pending: list[tuple[str, int, bytes]] = []

    def add(self, stream: str, seq: int, bound: bytes | None) -> None:
        self._pending.append((stream, seq, self._ABSENT if bound is None else bound))
        if len(self._pending) >= 10_000:
            self._flush()

    def _flush(self) -> None:
        self.db.executemany("INSERT OR REPLACE INTO proven VALUES (?, ?, ?)", self._pending)
        self._pending.clear()

    def get(self, stream: Any, seq: Any) -> tuple[bool, bytes | None]:
        """(proven?, digest of the sealed metadata or None when disposed)."""
        if self._pending:
            self._flush()
        if not isinstance(stream, str) or not isinstance(seq, int):
            return False, None
        row = self.db.execute("SELECT bound FROM proven WHERE stream = ? AND seq = ?", (stream, seq)).fetchone()
        if row is None:
            return False, None
        return True, (None if row[0] == self._ABSENT else bytes(row[0]))

    def close(self) -> None:
        self.db.close()
        self._dir.cleanup()


def verify(bundle: Path, public_key: Ed25519PublicKey) -> list[str]:
    """Every failure found, each naming the file or record; empty when the bundle verifies."""
    proven = _Proven()
    try:
        return _verify(bundle, public_key, proven)
    except (BundleRefused, zipfile.BadZipFile) as e:
        return [f"bundle refused: {e}"]
    finally:
        proven.close()


def _verify(bundle: Path, public_key: Ed25519PublicKey, proven: _Proven) -> list[str]:
    src = _Source(bundle)
    failures: list[str] = []
    if not src.exists("manifest.json") or not src.exists("manifest.sig"):
        return ["manifest.json or manifest.sig: missing"]
    data = src.read("manifest.json", MAX_MANIFEST)
    try:
        public_key.verify(base64.b64decode(src.read("manifest.sig", 1024).strip(), validate=True), data)
    except (InvalidSignature, ValueError):
        return ["manifest.json: signature does not verify with this public key (manifest edited or wrong key)"]
    manifest = json.loads(data)

    # 2. files: read only those of the listed size, and never past it
    listed = {f["path"]: f for f in manifest["files"]}
    intact: set[str] = set()
    for path, f in sorted(listed.items()):
        if not src.exists(path):
            failures.append(f"{path}: missing")
            continue
        if src.sizes[path] != f["size"]:
            failures.append(f"{path}: content differs from the manifest (size {src.sizes[path]} vs {f['size']})")
            continue
        h, size = hashlib.sha256(), 0
        with src.open(path) as fh:
            while size <= f["size"] and (chunk := fh.read(min(1 << 20, f["size"] + 1 - size))):
                h.update(chunk)
                size += len(chunk)
        if size != f["size"] or h.hexdigest() != f["sha256"]:
            failures.append(f"{path}: content differs from the manifest (size {size} vs {f['size']}, SHA-256)")
            continue
        intact.add(path)
    for name in sorted(set(src.names()) - set(listed) - ALLOWED_EXTRA):
        failures.append(f"{name}: not listed in the manifest")

    # 3. counts (of the files that are what the manifest says: nothing else is parsed)
    for path, f in sorted(listed.items()):
        if "records" not in f or path not in intact:
            continue
        try:
            n = _count(src, path)
        except Exception as e:  # a damaged file is a finding, never a crash
            failures.append(f"{path}: unreadable ({type(e).__name__})")
            continue
        if n is not None and n != f["records"]:
            failures.append(f"{path}: holds {n} records, the manifest says {f['records']}")

    # 4. checkpoints
    roots: dict[str, tuple[int, bytes]] = {}
    for stream, snap in sorted(manifest.get("snapshot", {}).items()):
        name = snap["checkpoint"]
        try:
            if name not in intact:
                raise ValueError("not a file of the bundle whose hash verified")
            doc = json.loads(src.read(name))
            cp = doc["checkpoint"]
            if cp.get("origin") != CHECKPOINT_ORIGIN or cp.get("key_id") != _key_id(public_key):
                raise ValueError("foreign origin or key")
            public_key.verify(base64.b64decode(doc["signature"]), _canonical(cp))
            if cp["stream"] != stream or cp["tree_size"] != snap["tree_size"]:
                raise ValueError("checkpoint is for another stream or size")
            roots[stream] = (cp["tree_size"], bytes.fromhex(cp["root_hash"]))
        except Exception as e:  # malformed, foreign, edited: all the same finding
            failures.append(f"{name}: checkpoint does not verify ({type(e).__name__}: {e})")

    # 5. records and their proofs
    for path in sorted(p for p in listed if p.startswith("proofs/") and p.endswith(".jsonl")):
        if path not in intact:
            continue
        for i, line in enumerate(src.lines(path), start=1):
            try:
                pr = json.loads(line)
            except ValueError:
                failures.append(f"{path}: line {i} is not JSON")
                continue
            where = f"{path}: record {pr.get('stream')}/{pr.get('seq')}"
            try:
                stream, seq = pr["stream"], int(pr["seq"])
                size, root = roots[stream]
                leaf = bytes.fromhex(pr["leaf_hash"])
                record = None
                if pr.get("sealed_record") is not None:
                    raw = base64.b64decode(pr["sealed_record"], validate=True)
                    if hashlib.sha256(b"\x00" + raw).digest() != leaf:
                        raise ValueError("sealed record does not hash to its leaf")
                    record = json.loads(raw)
                if pr["tree_size"] != size or root_from_inclusion(seq, size, leaf, [bytes.fromhex(h) for h in
                                                                                    pr["path"]]) != root:
                    raise ValueError("inclusion proof does not lead to the signed checkpoint root")
                proven.add(stream, seq, _bound(record) if record is not None else None)
            except Exception as e:
                failures.append(f"{where}: {type(e).__name__}: {e}")
    n_records = n_messages = 0
    if "records/records.jsonl" in intact:
        for i, line in enumerate(src.lines("records/records.jsonl"), start=1):
            try:
                rec = json.loads(line)
            except ValueError:
                failures.append(f"records/records.jsonl: line {i} is not JSON")
                continue
            n_records += 1
            n_messages += rec.get("kind") == "message" and rec.get("role") == "message"
            found, s = proven.get(rec.get("stream"), rec.get("seq"))
            if not found:
                failures.append(f"records/records.jsonl: record {rec.get('id')} has no verified inclusion proof")
                continue
            if s is None:
                continue  # disposed after retention: existence is proven, content is listed as withheld
            try:
                same = _bound(rec) == s
            except (ValueError, TypeError):
                same = False
            if not same:
                failures.append(f"records/records.jsonl: record {rec.get('id')} differs from its sealed record "
                                f"(fields {', '.join(BOUND_FIELDS)}, event_time)")
    counts = manifest.get("counts", {})
    if counts.get("records") != n_records:
        failures.append(f"manifest.json: counts.records is {counts.get('records')}, records.jsonl has {n_records}")
    if counts.get("messages") != n_messages:
        failures.append(f"manifest.json: counts.messages is {counts.get('messages')}, records.jsonl has {n_messages}")
    return failures


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    key = load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: verify_bundle.py BUNDLE_DIR_OR_ZIP PUBLIC_KEY.pem", file=sys.stderr)
        return 2
    failures = verify(Path(args[0]), load_public_key(Path(args[1]).read_bytes()))
    for f in failures:
        print(f"FAIL {f}")
    print("bundle verifies" if not failures else f"{len(failures)} failure(s)")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())

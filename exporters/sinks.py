"""Where a bundle's files go, each hashed (SHA-256) and measured as it is written.

- `DirectorySink`: plain files under a directory (the CLI's `--out`, the production itself).
- `EncryptedZipSink`: one zip, encrypted at rest in chunks (AES-GCM) under an export data key,
  for bundles produced by the API and kept on the server until downloaded. Long-running files
  (JSONL, Parquet, load files) are spooled encrypted and added at the end; small finished files
  go straight in. Nothing of the bundle touches the disk in clear.
"""

from __future__ import annotations

import hashlib
import os
import threading
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Protocol

from archiver.crypto import NONCE_SIZE, decrypt, encrypt

CHUNK = 1024 * 1024
_MAGIC = b"SRX1"


@dataclass
class Entry:
    path: str
    size: int
    sha256: str


class Writer(Protocol):
    """Where bundle bytes go: a file, or one of the wrappers below (hashing, encrypting, buffering)."""

    def write(self, data: bytes, /) -> int: ...
    def flush(self) -> None: ...


class HashingWriter:
    """Wraps a binary stream: counts bytes and hashes them on the way through."""

    def __init__(self, raw: Writer) -> None:
        self.raw, self.size, self._h = raw, 0, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self._h.update(data)
        self.size += len(data)
        self.raw.write(data)
        return len(data)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        self.raw.flush()

    def tell(self) -> int:
        return self.size

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def safe_path(path: str) -> str:
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise ValueError(f"not a bundle-relative path: {path!r}")
    return str(p)


class DirectorySink:
    """Files under a directory. Whole files (`put`) are written by a few threads: creating a file
    is mostly waiting on the file system (half a millisecond here), and a production creates
    several per document. At most `budget` bytes wait to be written; the first failure is raised
    by the next `put` or by `close`."""

    def __init__(self, root: Path, writers: int = 2, budget: int = 64 * 1024 * 1024) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        if any(root.iterdir()):
            raise FileExistsError(f"{root} is not empty: a bundle goes into a new directory")
        self._pool = ThreadPoolExecutor(writers, thread_name_prefix="bundle-writer")
        self._budget, self._pending = budget, 0
        self._cond = threading.Condition()
        self._failure: BaseException | None = None

    @contextmanager
    def open(self, path: str, streaming: bool = False) -> Iterator[Writer]:
        target = self.root / safe_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("xb") as f:
            yield f

    def put(self, path: str, data: bytes) -> None:
        target = self.root / safe_path(path)
        with self._cond:
            self._cond.wait_for(lambda: self._failure is not None or self._pending == 0
                                or self._pending + len(data) <= self._budget)
            if self._failure is not None:
                raise self._failure
            self._pending += len(data)
        self._pool.submit(self._write, target, data)

    def _write(self, target: Path, data: bytes) -> None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("xb") as f:
                f.write(data)
        except BaseException as e:
            with self._cond:
                self._failure = self._failure or e
        finally:
            with self._cond:
                self._pending -= len(data)
                self._cond.notify_all()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._failure is not None:
            raise self._failure


class EncryptedWriter:
    """Chunked AES-GCM: each 1 MiB chunk is sealed with its index (and a last-chunk flag) as AAD,
    so chunks cannot be reordered, dropped or the file truncated without detection."""

    def __init__(self, raw: IO[bytes], key: bytes, label: bytes) -> None:
        self.raw, self.key, self.label = raw, key, label
        self._buf = bytearray()
        self._n = 0
        raw.write(_MAGIC)

    def _emit(self, data: bytes, last: bool) -> None:
        nonce, ct = encrypt(self.key, data, self.label + b"|%d|%d" % (self._n, last))
        self.raw.write(len(ct).to_bytes(4, "big") + nonce + ct)
        self._n += 1

    def write(self, data: bytes) -> int:
        self._buf += data
        while len(self._buf) > CHUNK:
            self._emit(bytes(self._buf[:CHUNK]), False)
            del self._buf[:CHUNK]
        return len(data)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._emit(bytes(self._buf), True)
        self._buf.clear()
        self.raw.close()


def decrypt_chunks(raw: IO[bytes], key: bytes, label: bytes) -> Iterator[bytes]:
    """The plaintext of an `EncryptedWriter` file, chunk by chunk (raises on any tampering)."""
    if raw.read(len(_MAGIC)) != _MAGIC:
        raise ValueError("not an encrypted bundle file")
    n, last = 0, False
    while not last:
        head = raw.read(4 + NONCE_SIZE)
        if len(head) < 4 + NONCE_SIZE:
            raise ValueError("encrypted bundle file is truncated")
        size = int.from_bytes(head[:4], "big")
        ct = raw.read(size)
        try:
            data = decrypt(key, head[4:], ct, label + b"|%d|%d" % (n, 0))
        except Exception:
            data = decrypt(key, head[4:], ct, label + b"|%d|%d" % (n, 1))
            last = True
        yield data
        n += 1


class EncryptedZipSink:
    """A bundle as one encrypted zip at `path` (see module docstring)."""

    def __init__(self, path: Path, key: bytes, label: bytes) -> None:
        self.path, self.key, self.label = path, key, label
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._out = EncryptedWriter(path.open("xb"), key, label)
        self._zip = zipfile.ZipFile(self._out, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True)
        self._spools: list[tuple[str, Path, int]] = []
        self._n = 0

    def put(self, path: str, data: bytes) -> None:
        self._zip.writestr(_info(safe_path(path)), data)

    @contextmanager
    def open(self, path: str, streaming: bool = False) -> Iterator[Writer]:
        name = safe_path(path)
        if not streaming:
            buf = _Buffer()
            yield buf
            self._zip.writestr(_info(name), bytes(buf.data))
            return
        self._n += 1
        n = self._n  # several spools are open at once
        spool = self.path.with_name(f"{self.path.name}.spool{n}")
        w = EncryptedWriter(spool.open("xb"), self.key, self.label + b"|spool%d" % n)
        try:
            yield w
        finally:
            w.close()
        self._spools.append((name, spool, n))

    def close(self) -> None:
        for name, spool, n in self._spools:
            with spool.open("rb") as raw, self._zip.open(_info(name), "w", force_zip64=True) as entry:
                for chunk in decrypt_chunks(raw, self.key, self.label + b"|spool%d" % n):
                    entry.write(chunk)
            os.unlink(spool)
        self._zip.close()
        self._out.close()


class _Buffer:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, b: bytes) -> int:
        self.data += b
        return len(b)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass


def _info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # reproducible entries
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def read_encrypted(path: Path, key: bytes, label: bytes) -> Iterator[bytes]:
    with path.open("rb") as raw:
        yield from decrypt_chunks(raw, key, label)


"""Envelope encryption, blind indexes and key files.

- Content is encrypted with AES-256-GCM under a *content key*; the content key of a record is
  derived (HKDF-SHA256) from the data keys of every data subject the record is about, so
  destroying any one subject's data key makes the record unreadable (crypto-shredding).
- Data keys are wrapped by the key-encryption key (KEK): a local key file in the embedded
  default, AWS KMS in production (same `Kek` interface).
- Phone numbers and user ids used for lookup are blind-indexed with HMAC-SHA256 under a
  secret key, never plain-hashed (a plain hash of a phone number is reversible by enumeration).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from archiver.errors import ConfigurationError, StrongroomError

# One set of signature checks, in the standalone verifier (re-exported here)
from exporters.verify_bundle import PublicKey as PublicKey
from exporters.verify_bundle import load_public_key as _load_public_key
from exporters.verify_bundle import verify_signature as verify_signature


class Signer(Protocol):
    """What signs checkpoints, heads, notes, certificates and manifests: a key in this process
    (Ed25519, `load_signing_key`), on an HSM (`archiver.providers.Pkcs11Signer`, Ed25519) or in AWS KMS
    (`archiver.providers.KmsSigner`, ECDSA P-256). The signature's algorithm is the key's."""

    def sign(self, data: bytes) -> bytes: ...

    def public_key(self) -> PublicKey: ...

NONCE_SIZE = 12
KEY_SIZE = 32


class DecryptionError(StrongroomError):
    """Ciphertext failed authentication: wrong key, wrong associated data, or tampering."""


def encrypt(key: bytes, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
    nonce = os.urandom(NONCE_SIZE)
    return nonce, AESGCM(key).encrypt(nonce, plaintext, aad)


def decrypt(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, aad)
    except InvalidTag as e:
        raise DecryptionError("ciphertext failed authentication") from e


def derive_content_key(data_keys: list[tuple[str, bytes]]) -> bytes:
    """Content key for a record about the subjects whose (key_id, data_key) are given."""
    if not data_keys:
        raise ValueError("a content key needs at least one data key")
    ordered = sorted(data_keys)
    ikm = b"".join(k for _, k in ordered)
    info = ("strongroom.content-key/1|" + ",".join(i for i, _ in ordered)).encode()
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=info).derive(ikm)


def record_key(content_key: bytes, aad: bytes) -> bytes:
    """The key of one record: HMAC-SHA256(content key, "strongroom.record-key/1|" ‖ aad).

    Records sealed since bundles disclose keys are encrypted under it (`aad` names the record:
    `records.content_aad`), so the key a bundle discloses for a record opens that record and
    nothing else, and a verifier can decrypt the sealed ciphertext itself (HMAC is a PRF: one
    record's key says nothing of another's, nor of the subjects' content key)."""
    return hmac.new(content_key, b"strongroom.record-key/1|" + aad, hashlib.sha256).digest()


class Kek(Protocol):
    """Wraps and unwraps data keys. Implementations: `LocalKek` (one file), `KekRing` (the file
    versions of a rotation), KMS and PKCS#11 (production; issue 16)."""

    @property
    def kek_id(self) -> str: ...

    def wrap_with_id(self, data_key: bytes, key_id: str) -> tuple[bytes, str]:
        """The wrapped key and the id of the KEK version that wrapped it (stored beside it)."""
        ...

    def unwrap(self, wrapped: bytes, key_id: str, kek_id: str | None = None) -> bytes: ...


class LocalKek:
    """A KEK held in a local 0600 key file (the embedded default)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ConfigurationError(f"KEK must be {KEY_SIZE} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self.kek_id = "local:" + hashlib.sha256(b"kek-id|" + key).hexdigest()[:16]

    @classmethod
    def from_file(cls, path: Path) -> LocalKek:
        return cls(read_secret_file(path))

    def wrap(self, data_key: bytes, key_id: str) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, data_key, key_id.encode())

    def wrap_with_id(self, data_key: bytes, key_id: str) -> tuple[bytes, str]:
        return self.wrap(data_key, key_id), self.kek_id

    def unwrap(self, wrapped: bytes, key_id: str, kek_id: str | None = None) -> bytes:
        if kek_id is not None and kek_id != self.kek_id:
            raise DecryptionError(f"data key {key_id} is wrapped by KEK {kek_id}, not {self.kek_id}")
        try:
            return self._aead.decrypt(wrapped[:NONCE_SIZE], wrapped[NONCE_SIZE:], key_id.encode())
        except InvalidTag as e:
            raise DecryptionError(f"data key {key_id} does not unwrap under this KEK") from e


class KekRing:
    """The local KEK and, while a rotation is under way, its successor (`<kek file>.next`).

    New data keys are wrapped by the successor as soon as it exists; a data key is unwrapped by
    the version its row names. Both files are looked at (two `stat`s) at every use, so a rotation
    started by another process takes effect here at once, and a destroyed version is gone from
    this process too. `strongroom keys rotate-kek` re-wraps every data key, then replaces the KEK
    file by its successor: the old version then exists nowhere, and neither does any data key it
    alone wrapped — in a database backup included (crypto-shredding that survives backups)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.next_path = path.with_name(path.name + ".next")
        self._stamp: tuple[Any, ...] | None = None
        self._by_id: dict[str, LocalKek] = {}
        self._wrapper: LocalKek | None = None

    def _load(self) -> LocalKek:
        def stamp(p: Path) -> tuple[int, int] | None:
            try:
                st = p.stat()
            except FileNotFoundError:
                return None
            return st.st_ino, st.st_mtime_ns

        now = (stamp(self.path), stamp(self.next_path))
        if now != self._stamp or self._wrapper is None:
            current = LocalKek.from_file(self.path)
            successor = LocalKek.from_file(self.next_path) if now[1] is not None else None
            self._by_id = {k.kek_id: k for k in (current, successor) if k is not None}
            self._wrapper, self._stamp = successor or current, now
        return self._wrapper

    @property
    def kek_id(self) -> str:
        return self._load().kek_id

    @property
    def versions(self) -> list[str]:
        self._load()
        return list(self._by_id)

    def wrap_with_id(self, data_key: bytes, key_id: str) -> tuple[bytes, str]:
        kek = self._load()
        return kek.wrap(data_key, key_id), kek.kek_id

    def begin_rotation(self, to: str | None = None) -> bool:
        """Write the successor (``.next``, 0600, fsync'd) unless it is there (True: a rotation resumed)."""
        if to is not None:
            raise ConfigurationError("a local KEK is rotated to a key generated here (no --to)")
        if self.next_path.exists():
            return True
        tmp = self.next_path.with_name(self.next_path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        _write_new_0600(tmp, os.urandom(KEY_SIZE))
        os.replace(tmp, self.next_path)
        return False

    def retire(self) -> tuple[list[str], str]:
        """Overwrite the KEK file and replace it by its successor: the old version exists nowhere."""
        from archiver.records import format_ts
        from archiver.sqlutil import utcnow

        if not self.next_path.exists():
            return [], format_ts(utcnow())
        old = [k for k in self.versions if k != self.kek_id]
        size = self.path.stat().st_size  # (what a file can do; an HSM or KMS destroys properly)
        with self.path.open("r+b") as f:
            f.write(b"\0" * size)
            f.flush()
            os.fsync(f.fileno())
        os.replace(self.next_path, self.path)
        return old, format_ts(utcnow())

    def unwrap(self, wrapped: bytes, key_id: str, kek_id: str | None = None) -> bytes:
        self._load()
        if kek_id is None:
            for kek in self._by_id.values():
                try:
                    return kek.unwrap(wrapped, key_id)
                except DecryptionError:
                    continue
            raise DecryptionError(f"data key {key_id} does not unwrap under any KEK this archive holds")
        version = self._by_id.get(kek_id)
        if version is None:
            raise DecryptionError(f"data key {key_id} is wrapped by KEK {kek_id}, which this archive no longer "
                                  "holds (a rotation destroyed it)")
        return version.unwrap(wrapped, key_id, kek_id)


class BlindIndex:
    """HMAC-SHA256 blind index for identifiers used in lookups (phone numbers, BSUIDs)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ConfigurationError("blind-index key must be at least 32 bytes")
        self._key = key

    def __call__(self, namespace: str, value: str) -> str:
        if namespace == "wa":  # phone numbers: digits only, so "+1 650-555-1234" == "16505551234"
            value = "".join(ch for ch in value if ch.isdigit()) or value
        mac = hmac.new(self._key, f"{namespace}:{value}".encode(), hashlib.sha256)
        return "bi_" + mac.hexdigest()[:40]


# --- key files --------------------------------------------------------------------------------


def _write_new_0600(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_secret_file(path: Path, data: bytes | None = None) -> bool:
    """Create `path` (mode 0600) holding `data`, or 32 random bytes, unless it exists.

    Returns True if this call created it.
    """
    try:
        _write_new_0600(path, os.urandom(KEY_SIZE) if data is None else data)
        return True
    except FileExistsError:
        return False


def read_secret_file(path: Path) -> bytes:
    if not path.exists():
        raise ConfigurationError(f"key file {path} does not exist")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigurationError(
            f"key file {path} has mode {mode:o}; it must not be readable by group or others "
            f"(chmod 600 {path})"
        )
    return path.read_bytes()


def public_key_path(signing_key_path: Path) -> Path:
    """Where the signing key's public half is kept beside it (``….pub``): what a process that
    does not sign (a read-only CLI command, a reviewer's workstation) uses instead of the key."""
    return signing_key_path.with_suffix(".pub")


def write_public_key(signing_key_path: Path, public_key: PublicKey) -> None:
    """Write (or replace, atomically) the ``.pub`` beside the signing key."""
    path = public_key_path(signing_key_path)
    tmp = path.with_suffix(".pub.tmp")
    tmp.unlink(missing_ok=True)
    _write_new_0600(tmp, public_key_pem(public_key))  # (0600 like all of keys/: hand it out with `keys public`)
    os.replace(tmp, path)


def ensure_signing_key(path: Path) -> bool:
    """Create an Ed25519 private key (PKCS#8 PEM, 0600) and its ``.pub`` unless it exists. True if created.

    An existing key without a ``.pub`` (a data dir from before there were any) gets one."""
    if path.exists():
        if not public_key_path(path).exists():
            write_public_key(path, load_signing_key(path).public_key())
        return False
    if public_key_path(path).exists():  # never a new key beside the published one's public half
        raise ConfigurationError(f"the signing key {path} is missing but its public key {public_key_path(path)} "
                                 "is here: restore the key from its backup (read-only commands run without it)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        _write_new_0600(path, pem)
    except FileExistsError:
        return False
    write_public_key(path, key.public_key())
    return True


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(read_secret_file(path), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"{path} is not an Ed25519 private key")
    return key


class SignerUnavailable(ConfigurationError):
    """This process was opened without the signing key (a read-only command) and was asked to sign."""


class SigningKeyFile:
    """The signing key, read again when its file changes: a rotation (`strongroom keys
    rotate-signing`) takes effect in processes already running at their next signature.

    With ``signing=False`` (read-only commands) the private key is never read: `public_key`
    comes from the ``.pub`` beside it and `get` refuses."""

    def __init__(self, path: Path, signing: bool = True) -> None:
        self.path = path
        self.signing = signing
        self._stamp: tuple[int, int] | None = None
        self._key: Ed25519PrivateKey | None = None

    def get(self) -> Ed25519PrivateKey:
        if not self.signing:
            raise SignerUnavailable("this command runs without the signing key (it only reads); the worker "
                                    "seals what it recorded")
        st = self.path.stat()
        stamp = (st.st_ino, st.st_mtime_ns)
        if self._key is None or stamp != self._stamp:
            self._key, self._stamp = load_signing_key(self.path), stamp
        return self._key

    # -- rotation (`strongroom keys rotate-signing`): successor, then promote or abandon ----------

    @property
    def _next_path(self) -> Path:
        return self.path.with_suffix(".new")

    def successor(self, to: str | None = None) -> Ed25519PrivateKey:
        """A new key, written beside the key in force (``….new``, 0600, fsync'd), not yet in force."""
        if to is not None:
            raise ConfigurationError("a signing key file is rotated to a key generated here (no --to)")
        new = Ed25519PrivateKey.generate()
        self._next_path.unlink(missing_ok=True)  # one a failed rotation left behind is never reused
        _write_new_0600(self._next_path, new.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
        return new

    def promote(self) -> str:
        """The successor in force; the old private key moves to ``retired/`` (keep it offline or destroy it)."""
        from exporters.verify_bundle import _key_id

        old = self.get()
        retired = self.path.parent / "retired" / f"signing-{_key_id(old.public_key())}.pem"
        retired.parent.mkdir(mode=0o700, exist_ok=True)
        os.link(self.path, retired)
        os.replace(self._next_path, self.path)  # running processes sign with it from their next signature
        write_public_key(self.path, self.get().public_key())
        return f"moved to {retired}"

    def abandon(self) -> None:
        self._next_path.unlink(missing_ok=True)

    def public_key(self) -> PublicKey:
        pub = public_key_path(self.path)
        if self.signing:
            return self.get().public_key()
        if pub.exists():
            return load_public_key(pub.read_bytes())
        if self.path.exists():  # a data dir from before there were .pub files (its next start writes one)
            return load_signing_key(self.path).public_key()
        raise ConfigurationError(f"{pub} does not exist: copy it from the archive's host "
                                 "(`strongroom keys public`) to run read-only commands here")


def public_key_pem(public_key: PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(pem: bytes) -> PublicKey:
    """An archive's public key (Ed25519, or ECDSA P-256 for a key in KMS) from PEM."""
    try:
        return _load_public_key(pem)
    except ValueError as e:
        raise ConfigurationError("not an Ed25519 or ECDSA P-256 public key") from e

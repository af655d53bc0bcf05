"""Key providers outside the data dir: an HSM (PKCS#11, `python-pkcs11`) and AWS KMS (`KmsKek`,
`KmsSigner`, below).

In the HSM (PKCS#11, `python-pkcs11`): the KEK as an AES-256 key and the Ed25519
signing key, both created on the token non-extractable and sensitive, used only through it.

`STRONGROOM_KEY_PROVIDER=pkcs11` with `STRONGROOM_PKCS11_MODULE` (the vendor's library; SoftHSM2's
``/usr/lib/softhsm/libsofthsm2.so`` in the tests), `STRONGROOM_PKCS11_TOKEN` (its label) and the
user PIN in `STRONGROOM_PKCS11_PIN` or `_PIN_FILE`. On first use the two keys are generated on
the token (labels ``strongroom-kek`` and ``strongroom-signing``); nothing of them is ever in
this process's memory or on its disk. Data keys are wrapped with AES-256-GCM on the token (a
12-byte random nonce, the data key's id as associated data): the same format as the file KEK.

A PKCS#11 session is not for concurrent use: each operation takes the one session's lock.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from archiver.crypto import NONCE_SIZE, DecryptionError, PublicKey, Signer, SignerUnavailable, verify_signature
from archiver.errors import ConfigurationError

KEK_LABEL, SIGNING_LABEL = "strongroom-kek", "strongroom-signing"
ED25519_OID = "1.3.101.112"


_OPEN: dict[tuple[str, str], Token] = {}
_OPEN_LOCK = threading.Lock()


def token(module: Path, label: str, pin: str) -> Token:
    """The process's logged-in session on a token (PKCS#11 logs an application in once per token)."""
    with _OPEN_LOCK:
        t = _OPEN.get((str(module), label))
        if t is None:
            t = _OPEN[(str(module), label)] = Token(module, label, pin)
        return t


class Token:
    """One logged-in session on a PKCS#11 token (get it with `token`)."""

    def __init__(self, module: Path, label: str, pin: str) -> None:
        try:
            import pkcs11
        except ImportError as e:  # pragma: no cover - pinned in pyproject
            raise ConfigurationError("the pkcs11 key provider needs python-pkcs11") from e
        if not module.exists():
            raise ConfigurationError(f"PKCS#11 module {module} does not exist (STRONGROOM_PKCS11_MODULE)")
        try:
            self.token = pkcs11.lib(str(module)).get_token(token_label=label)
            self.session = self.token.open(user_pin=pin, rw=True)
        except pkcs11.exceptions.PKCS11Error as e:
            raise ConfigurationError(f"PKCS#11 token {label!r}: {type(e).__name__} (label, PIN or module)") from e
        self.lock = threading.Lock()
        self.label = label

    def key(self, object_class: Any, label: str) -> Any:
        import pkcs11

        try:
            return self.session.get_key(object_class=object_class, label=label)
        except pkcs11.exceptions.NoSuchKey:
            return None

    def close(self) -> None:
        self.session.close()


NEXT = ".next"  # the label suffix of a key being rotated in (a successor not yet in force)


def _now_iso() -> str:
    """Now, as every record time is written (`archiver.records.format_ts`)."""
    from archiver.records import format_ts
    from archiver.sqlutil import utcnow

    return format_ts(utcnow())


class Pkcs11Kek:
    """The KEK: an AES-256 key on the token (`archiver.crypto.Kek`), rotated on the token.

    A rotation generates the successor (label ``strongroom-kek.next``, a fresh CKA_ID), which wraps
    from then on in every process (each wrap looks the key up); every data key is re-wrapped; then
    the old key object is destroyed on the token (C_DestroyObject) and the successor takes the
    label. A data key names its KEK version by the key's CKA_ID, so it unwraps under exactly that
    key, or not at all once the token has destroyed it."""

    def __init__(self, token: Token) -> None:
        self.t = token
        self._cache: dict[str, Any] = {}
        with token.lock:
            if not self._find():
                self._generate(KEK_LABEL)

    def _id_of(self, key: Any) -> str:
        from pkcs11 import Attribute

        ident = bytes(key[Attribute.ID] or b"").hex()
        return f"pkcs11:{self.t.label}:{KEK_LABEL}{':' + ident if ident else ''}"

    def _find(self) -> dict[str, tuple[str, Any]]:
        """kek id -> (label, key) of every KEK version on the token (call under the lock)."""
        from pkcs11 import Attribute, ObjectClass

        found = {}
        for label in (KEK_LABEL, KEK_LABEL + NEXT):
            for key in self.t.session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label}):
                found[self._id_of(key)] = (label, key)
        self._cache = {k: v[1] for k, v in found.items()}
        return found

    def _generate(self, label: str) -> Any:
        from pkcs11 import Attribute, KeyType

        return self.t.session.generate_key(KeyType.AES, 256, store=True, label=label, id=os.urandom(8), template={
            Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: True, Attribute.ENCRYPT: True,
            Attribute.DECRYPT: True})

    def _wrapper(self) -> tuple[str, Any]:
        """(id, key) of the version that wraps: the successor while a rotation is under way."""
        found = self._find()
        for want in (KEK_LABEL + NEXT, KEK_LABEL):
            for kid, (label, key) in found.items():
                if label == want:
                    return kid, key
        raise ConfigurationError(f"PKCS#11 token {self.t.label!r} holds no {KEK_LABEL} key")

    @property
    def kek_id(self) -> str:
        with self.t.lock:
            return self._wrapper()[0]

    @property
    def versions(self) -> list[str]:
        with self.t.lock:
            return list(self._find())

    def wrap_with_id(self, data_key: bytes, key_id: str) -> tuple[bytes, str]:
        from pkcs11 import Mechanism
        from pkcs11.mechanisms import GCMParams

        nonce = os.urandom(NONCE_SIZE)
        with self.t.lock:
            kid, key = self._wrapper()
            sealed = key.encrypt(data_key, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, key_id.encode()))
        return nonce + bytes(sealed), kid

    def unwrap(self, wrapped: bytes, key_id: str, kek_id: str | None = None) -> bytes:
        import pkcs11
        from pkcs11 import Mechanism
        from pkcs11.mechanisms import GCMParams

        with self.t.lock:
            if kek_id is not None and kek_id not in self._cache:
                self._find()
            keys = list(self._cache.values()) if kek_id is None else (
                [self._cache[kek_id]] if kek_id in self._cache else [])
            if not keys:
                raise DecryptionError(f"data key {key_id} is wrapped by KEK {kek_id}, which the token no longer "
                                      "holds (a rotation destroyed it)")
            for key in keys:
                try:
                    return bytes(key.decrypt(wrapped[NONCE_SIZE:], mechanism=Mechanism.AES_GCM,
                                             mechanism_param=GCMParams(wrapped[:NONCE_SIZE], key_id.encode())))
                except pkcs11.exceptions.PKCS11Error:
                    continue
        raise DecryptionError(f"data key {key_id} does not unwrap under {kek_id or 'any KEK on the token'}")

    def begin_rotation(self, to: str | None = None) -> bool:
        """Generate the successor on the token (True: one was already there, a rotation resumed)."""
        if to is not None:
            raise ConfigurationError("a KEK on a PKCS#11 token is rotated to a key generated on it (no --to)")
        with self.t.lock:
            if any(label == KEK_LABEL + NEXT for label, _ in self._find().values()):
                return True
            self._generate(KEK_LABEL + NEXT)
            self._find()
            return False

    def retire(self) -> tuple[list[str], str]:
        """Destroy every version but the successor on the token, which takes the KEK's label.
        Returns (destroyed ids, when): from then on no data key they wrapped exists anywhere."""
        from pkcs11 import Attribute

        with self.t.lock:
            found = self._find()
            successor = [key for label, key in found.values() if label == KEK_LABEL + NEXT]
            if not successor:
                return [], _now_iso()
            destroyed = [kid for kid, (label, _) in found.items() if label == KEK_LABEL]
            for kid in destroyed:
                found[kid][1].destroy()
            successor[0][Attribute.LABEL] = KEK_LABEL
            self._find()
        return destroyed, _now_iso()


class Pkcs11Signer(Ed25519PrivateKey):
    """The Ed25519 signing key on the token. It signs checkpoints, heads, certificates, manifests
    and notes like a key object would; its private half cannot be read (`private_bytes` refuses).

    Unpinned (`label=None`) it signs with the key in force, looked up at every signature, so a
    rotation made by another process takes effect here at once: the key labelled
    ``strongroom-signing``, or its successor (``….next``) if a rotation got as far as destroying
    the old one. `successor`, `promote` and `abandon` are the rotation's steps on the token."""

    def __init__(self, token: Token, label: str | None = None) -> None:
        self.t = token
        self.label = label
        self._ident: bytes | None = None
        self._priv: Any = None
        self._public: Ed25519PublicKey | None = None
        with token.lock:
            if self._pair(label or SIGNING_LABEL) is None:
                self._generate(label or SIGNING_LABEL)
            self._current()

    def _pair(self, label: str) -> tuple[Any, Any] | None:
        from pkcs11 import ObjectClass

        priv = self.t.key(ObjectClass.PRIVATE_KEY, label)
        pub = self.t.key(ObjectClass.PUBLIC_KEY, label)
        return None if priv is None or pub is None else (priv, pub)

    def _generate(self, label: str) -> None:
        from pkcs11 import Attribute, KeyType, Mechanism
        from pkcs11.util.ec import encode_named_curve_parameters

        params = self.t.session.create_domain_parameters(
            KeyType.EC_EDWARDS, {Attribute.EC_PARAMS: encode_named_curve_parameters(ED25519_OID)}, local=True)
        params.generate_keypair(store=True, label=label, id=os.urandom(8), mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
                                private_template={Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: True,
                                                  Attribute.SIGN: True})

    def _current(self) -> Any:
        """The private key in force (call under the lock); its public half is loaded when it changes."""
        from pkcs11 import Attribute

        pair = self._pair(self.label) if self.label else (self._pair(SIGNING_LABEL) or self._pair(SIGNING_LABEL + NEXT))
        if pair is None:
            raise ConfigurationError(f"PKCS#11 token {self.t.label!r} holds no {self.label or SIGNING_LABEL} key pair")
        priv, pub = pair
        ident = bytes(priv[Attribute.ID] or b"")
        if ident != self._ident or self._public is None:
            point = bytes(pub[Attribute.EC_POINT])
            # EC_POINT is a DER OCTET STRING around the 32-byte key (some tokens give it bare)
            raw = point[2:] if len(point) == 34 and point[:2] == b"\x04\x20" else point
            self._public, self._ident = Ed25519PublicKey.from_public_bytes(raw), ident
        self._priv = priv
        return priv

    def sign(self, data: bytes | bytearray | memoryview) -> bytes:
        from pkcs11 import Mechanism

        with self.t.lock:
            return bytes(self._current().sign(bytes(data), mechanism=Mechanism.EDDSA))

    def public_key(self) -> Ed25519PublicKey:
        with self.t.lock:
            self._current()
            assert self._public is not None
            return self._public

    # -- rotation on the token ------------------------------------------------------------------

    def successor(self, to: str | None = None) -> Pkcs11Signer:
        """A new key pair on the token (label ``….next``), not yet in force."""
        if to is not None:
            raise ConfigurationError("a signing key on a PKCS#11 token is rotated to a pair generated on it (no --to)")
        self.abandon()  # a successor a failed rotation left behind is never reused
        return Pkcs11Signer(self.t, SIGNING_LABEL + NEXT)

    def promote(self) -> str:
        """The successor in force: the old pair is destroyed on the token, the new one takes the label."""
        from pkcs11 import Attribute

        with self.t.lock:
            nxt, old = self._pair(SIGNING_LABEL + NEXT), self._pair(SIGNING_LABEL)
            if nxt is None:
                raise ConfigurationError("no successor signing key on the token")
            for obj in old or ():
                obj.destroy()
            for obj in nxt:
                obj[Attribute.LABEL] = SIGNING_LABEL
            self._current()
        return "destroyed on the token"

    def abandon(self) -> None:
        """Destroy a successor that was not put in force."""
        with self.t.lock:
            for obj in self._pair(SIGNING_LABEL + NEXT) or ():
                obj.destroy()

    def private_bytes(self, *args: Any, **kwargs: Any) -> bytes:
        raise ConfigurationError("the signing key lives in the HSM and cannot be exported")

    def private_bytes_raw(self) -> bytes:
        raise ConfigurationError("the signing key lives in the HSM and cannot be exported")

    def __copy__(self) -> Pkcs11Signer:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Pkcs11Signer:
        return self


REPLACES_TAG = "strongroom:replaces"  # on a KMS key rotated in: the key it replaces (until that is deleted)
KMS_DELETION_DAYS = 30  # the longest pending window KMS allows: a mistaken rotation can still be undone


def _kms(region: str, endpoint_url: str | None) -> Any:
    import boto3

    return boto3.client("kms", region_name=region, endpoint_url=endpoint_url)


def _enabled_key(client: Any, key_id: str, what: str, setting: str, usage: str, spec: str | None = None
                 ) -> dict[str, Any]:
    """A KMS key's metadata, if it is enabled and of the usage (and key spec) asked for.

    Raises:
        ConfigurationError: unreachable, unknown, disabled or of another kind, naming `setting`.
    """
    try:
        meta: dict[str, Any] = client.describe_key(KeyId=key_id)["KeyMetadata"]
    except Exception as e:
        raise ConfigurationError(f"{what} {key_id}: {type(e).__name__} ({setting}, credentials)") from e
    if meta.get("KeyUsage") != usage or (spec and meta.get("KeySpec") != spec) or meta.get("KeyState") != "Enabled":
        raise ConfigurationError(f"{what} {key_id} is not an enabled {spec + ' ' if spec else ''}{usage} key")
    return meta


def _require_alias(key_id: str, what: str) -> None:
    if not key_id.startswith("alias/"):
        raise ConfigurationError(f"to rotate the {what} in KMS, name it by an alias (alias/…) in the settings: "
                                 "a rotation moves the alias to the new key")


class KmsKek:
    """The KEK as an AWS KMS key (`STRONGROOM_KEY_PROVIDER=kms`, `STRONGROOM_KMS_KEY_ID`): each data
    key is encrypted by KMS with its id as the encryption context, so a wrapped key moved to
    another row does not decrypt. The key material never leaves KMS.

    Named by an alias, it can be rotated (`strongroom keys rotate-kek --to NEW_KEY`): the new key
    is tagged with the one it replaces and the alias moved to it (every process resolves the alias
    at each wrap), every data key re-wrapped, and the old key scheduled for deletion (30 days, the
    longest KMS allows); its deletion date is when a shredded key is gone from every backup."""

    def __init__(self, key_id: str, region: str, endpoint_url: str | None = None) -> None:
        self.client = _kms(region, endpoint_url)
        self.key_id = key_id
        self._target()

    def _describe(self, key_id: str) -> dict[str, Any]:
        return _enabled_key(self.client, key_id, "KMS key", "STRONGROOM_KMS_KEY_ID", "ENCRYPT_DECRYPT")

    def _target(self) -> str:
        """The ARN the configured id (or alias) names now."""
        return str(self._describe(self.key_id)["Arn"])

    @property
    def kek_id(self) -> str:
        return f"kms:{self._target()}"

    @property
    def versions(self) -> list[str]:
        current = self._target()
        old = self._replaces(current)
        return [f"kms:{current}"] + ([f"kms:{old}"] if old else [])

    def _replaces(self, arn: str) -> str | None:
        tags = self.client.list_resource_tags(KeyId=arn).get("Tags", [])
        return next((t["TagValue"] for t in tags if t["TagKey"] == REPLACES_TAG), None)

    def wrap_with_id(self, data_key: bytes, key_id: str) -> tuple[bytes, str]:
        arn = self._target()
        blob = self.client.encrypt(KeyId=arn, Plaintext=data_key,
                                   EncryptionContext={"strongroom_key_id": key_id})["CiphertextBlob"]
        return bytes(blob), f"kms:{arn}"

    def unwrap(self, wrapped: bytes, key_id: str, kek_id: str | None = None) -> bytes:
        arn = kek_id[len("kms:"):] if kek_id and kek_id.startswith("kms:") else self._target()
        if kek_id is not None and not kek_id.startswith("kms:"):
            raise DecryptionError(f"data key {key_id} is wrapped by KEK {kek_id}, not a KMS key")
        try:
            return bytes(self.client.decrypt(CiphertextBlob=wrapped, KeyId=arn,
                                             EncryptionContext={"strongroom_key_id": key_id})["Plaintext"])
        except (self.client.exceptions.InvalidCiphertextException, self.client.exceptions.KMSInvalidStateException,
                self.client.exceptions.DisabledException, self.client.exceptions.NotFoundException) as e:
            raise DecryptionError(f"data key {key_id} does not unwrap under kms:{arn} ({type(e).__name__})") from e

    def begin_rotation(self, to: str | None = None) -> bool:
        """Move the alias to `to` (tagged with the key it replaces). True: it was there already (resumed)."""
        _require_alias(self.key_id, "KEK")
        if not to:
            raise ConfigurationError("a KMS KEK is rotated to a key your KMS administrators created: --to KEY")
        new, current = str(self._describe(to)["Arn"]), self._target()
        if new == current:
            return True
        self.client.tag_resource(KeyId=new, Tags=[{"TagKey": REPLACES_TAG, "TagValue": current}])
        self.client.update_alias(AliasName=self.key_id, TargetKeyId=new)
        return False

    def retire(self) -> tuple[list[str], str]:
        """Schedule the replaced key's deletion. Returns ([its id], the date it is deleted)."""
        current = self._target()
        old = self._replaces(current)
        if old is None:
            return [], _now_iso()
        meta = self.client.describe_key(KeyId=old)["KeyMetadata"]
        if meta.get("KeyState") == "PendingDeletion":  # a resumed rotation got this far
            when = meta["DeletionDate"]
        else:
            when = self.client.schedule_key_deletion(KeyId=meta["KeyId"],
                                                     PendingWindowInDays=KMS_DELETION_DAYS)["DeletionDate"]
        self.client.untag_resource(KeyId=current, TagKeys=[REPLACES_TAG])
        from archiver.records import format_ts
        from archiver.sqlutil import as_utc

        return [f"kms:{old}"], format_ts(as_utc(when))


KMS_RAW_MAX = 4096  # KMS signs a message of at most this many bytes itself; a longer one by its digest


class KmsSigner:
    """The signing key as an AWS KMS asymmetric key (`STRONGROOM_KMS_SIGNING_KEY_ID`; KeySpec
    ``ECC_NIST_P256``, KeyUsage ``SIGN_VERIFY``). KMS has no Ed25519 here, so the archive's
    signatures are ECDSA P-256 over SHA-256 (DER), its public key a P-256 SPKI; both verifiers and
    C2SP notes (signature type 0x02) take either kind of key.

    A message of up to 4 KiB is sent as ``RAW``, a longer one (a bundle manifest) as its SHA-256
    ``DIGEST``: the same signature either way. Every signature KMS returns is checked against the
    key's public half before it is used, so a misbehaving endpoint (or a key swapped under the same
    alias) fails the write instead of storing a signature nobody can verify.

    Named by an alias, the key in force is resolved at each signature: a rotation (`strongroom
    keys rotate-signing --to NEW_KEY`) moves the alias and disables the old key.
    """

    ALGORITHM = "ECDSA_SHA_256"

    def __init__(self, key_id: str, region: str, endpoint_url: str | None = None) -> None:
        self.client = _kms(region, endpoint_url)
        self.key_id = key_id
        self.region, self.endpoint_url = region, endpoint_url
        self.arn = self.uuid = ""
        self._public: PublicKey | None = None
        self._pending: KmsSigner | None = None
        self._resolve()

    def _resolve(self) -> PublicKey:
        from exporters.verify_bundle import decode_key

        meta = _enabled_key(self.client, self.key_id, "KMS signing key", "STRONGROOM_KMS_SIGNING_KEY_ID",
                            "SIGN_VERIFY", "ECC_NIST_P256")
        if meta["Arn"] != self.arn or self._public is None:
            der = self.client.get_public_key(KeyId=meta["Arn"])["PublicKey"]
            try:
                self._public = decode_key(bytes(der))
            except ValueError as e:
                raise ConfigurationError(f"KMS signing key {self.key_id}: its public key is not P-256") from e
            self.arn, self.uuid = meta["Arn"], meta["KeyId"]
        return self._public

    def sign(self, data: bytes) -> bytes:
        data = bytes(data)
        public = self._resolve() if self.key_id.startswith("alias/") else self._public
        assert public is not None
        if len(data) <= KMS_RAW_MAX:
            message, kind = data, "RAW"
        else:
            message, kind = hashlib.sha256(data).digest(), "DIGEST"
        sig = bytes(self.client.sign(KeyId=self.arn, Message=message, MessageType=kind,
                                     SigningAlgorithm=self.ALGORITHM)["Signature"])
        try:
            verify_signature(public, sig, data)
        except InvalidSignature:
            raise ConfigurationError(f"KMS key {self.arn} returned a signature its public key does not verify "
                                     f"({kind} message): nothing was signed") from None
        return sig

    def public_key(self) -> PublicKey:
        if self.key_id.startswith("alias/"):
            return self._resolve()
        assert self._public is not None
        return self._public

    # -- rotation: the alias moves ----------------------------------------------------------------

    def successor(self, to: str | None = None) -> KmsSigner:
        _require_alias(self.key_id, "signing key")
        if not to:
            raise ConfigurationError("a KMS signing key is rotated to a key your KMS administrators created: --to KEY")
        new = KmsSigner(to, self.region, self.endpoint_url)
        self._resolve()
        if new.arn == self.arn:
            raise ConfigurationError(f"{to} is the signing key in force already")
        self._pending = new
        return new

    def promote(self) -> str:
        new, old = self._pending, self.uuid
        if new is None:
            raise ConfigurationError("no successor signing key to put in force")
        self.client.update_alias(AliasName=self.key_id, TargetKeyId=new.arn)
        self.client.disable_key(KeyId=old)  # it can sign nothing more, in any process
        self._resolve()
        return f"disabled in KMS ({old})"

    def abandon(self) -> None:
        self._pending = None  # (the new key is the administrators' to keep or delete)


class FixedSigner:
    """`Archive.key_file`'s shape for a signer outside the data dir (HSM, KMS): the one in force.
    With ``signing=False`` (read-only commands) `get` refuses; only the public half is used.
    A rotation (`successor`, `promote`, `abandon`) is the provider's own."""

    def __init__(self, signer: Signer, signing: bool = True) -> None:
        self.signer = signer
        self.signing = signing

    def get(self) -> Signer:
        if not self.signing:
            raise SignerUnavailable("this command runs without the signing key (it only reads); the worker "
                                    "seals what it recorded")
        return self.signer

    def public_key(self) -> PublicKey:
        return self.signer.public_key()

    def successor(self, to: str | None = None) -> Signer:
        signer: Any = self.get()
        return signer.successor(to)  # type: ignore[no-any-return]

    def promote(self) -> str:
        signer: Any = self.get()
        return signer.promote()  # type: ignore[no-any-return]

    def abandon(self) -> None:
        signer: Any = self.get()
        signer.abandon()

"""Key providers outside the data dir: an HSM (PKCS#11, `python-pkcs11`) and AWS KMS (`KmsKek`, below).

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

import os
import threading
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from archiver.crypto import NONCE_SIZE, DecryptionError
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


class Pkcs11Kek:
    """The KEK: an AES-256 key on the token (`archiver.crypto.Kek`)."""

    def __init__(self, token: Token) -> None:
        from pkcs11 import Attribute, KeyType, ObjectClass

        self.t = token
        with token.lock:
            key = token.key(ObjectClass.SECRET_KEY, KEK_LABEL)
            if key is None:
                key = token.session.generate_key(KeyType.AES, 256, store=True, label=KEK_LABEL, template={
                    Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: True, Attribute.ENCRYPT: True,
                    Attribute.DECRYPT: True})
            self._key = key
            self._id = bytes(key[Attribute.ID] or b"").hex()
        self._kek_id = f"pkcs11:{token.label}:{KEK_LABEL}{':' + self._id if self._id else ''}"

    @property
    def kek_id(self) -> str:
        return self._kek_id

    def wrap_with_id(self, data_key: bytes, key_id: str) -> tuple[bytes, str]:
        from pkcs11 import Mechanism
        from pkcs11.mechanisms import GCMParams

        nonce = os.urandom(NONCE_SIZE)
        with self.t.lock:
            sealed = self._key.encrypt(data_key, mechanism=Mechanism.AES_GCM,
                                       mechanism_param=GCMParams(nonce, key_id.encode()))
        return nonce + bytes(sealed), self._kek_id

    def unwrap(self, wrapped: bytes, key_id: str, kek_id: str | None = None) -> bytes:
        import pkcs11
        from pkcs11 import Mechanism
        from pkcs11.mechanisms import GCMParams

        if kek_id is not None and kek_id != self._kek_id:
            raise DecryptionError(f"data key {key_id} is wrapped by KEK {kek_id}, not {self._kek_id}")
        try:
            with self.t.lock:
                return bytes(self._key.decrypt(wrapped[NONCE_SIZE:], mechanism=Mechanism.AES_GCM,
                                               mechanism_param=GCMParams(wrapped[:NONCE_SIZE], key_id.encode())))
        except pkcs11.exceptions.PKCS11Error as e:
            raise DecryptionError(f"data key {key_id} does not unwrap under {self._kek_id}") from e


class Pkcs11Signer(Ed25519PrivateKey):
    """The Ed25519 signing key on the token. It signs checkpoints, heads, certificates, manifests
    and notes like a key object would; its private half cannot be read (`private_bytes` refuses)."""

    def __init__(self, token: Token) -> None:
        from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
        from pkcs11.util.ec import encode_named_curve_parameters

        self.t = token
        with token.lock:
            priv = token.key(ObjectClass.PRIVATE_KEY, SIGNING_LABEL)
            pub = token.key(ObjectClass.PUBLIC_KEY, SIGNING_LABEL)
            if priv is None or pub is None:
                params = token.session.create_domain_parameters(
                    KeyType.EC_EDWARDS, {Attribute.EC_PARAMS: encode_named_curve_parameters(ED25519_OID)}, local=True)
                pub, priv = params.generate_keypair(store=True, label=SIGNING_LABEL,
                                                    mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
                                                    private_template={Attribute.EXTRACTABLE: False,
                                                                      Attribute.SENSITIVE: True,
                                                                      Attribute.SIGN: True})
            point = bytes(pub[Attribute.EC_POINT])
        self._priv = priv
        # EC_POINT is a DER OCTET STRING around the 32-byte key (some tokens give it bare)
        raw = point[2:] if len(point) == 34 and point[:2] == b"\x04\x20" else point
        self._public = Ed25519PublicKey.from_public_bytes(raw)

    def sign(self, data: bytes | bytearray | memoryview) -> bytes:
        from pkcs11 import Mechanism

        with self.t.lock:
            return bytes(self._priv.sign(bytes(data), mechanism=Mechanism.EDDSA))

    def public_key(self) -> Ed25519PublicKey:
        return self._public

    def private_bytes(self, *args: Any, **kwargs: Any) -> bytes:
        raise ConfigurationError("the signing key lives in the HSM and cannot be exported")

    def private_bytes_raw(self) -> bytes:
        raise ConfigurationError("the signing key lives in the HSM and cannot be exported")

    def __copy__(self) -> Pkcs11Signer:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Pkcs11Signer:
        return self


class Pkcs11SigningKey:
    """`Archive.key_file`'s shape for the HSM: the signer in force (rotation happens on the token)."""

    def __init__(self, signer: Pkcs11Signer) -> None:
        self.signer = signer

    def get(self) -> Ed25519PrivateKey:
        return self.signer


class KmsKek:
    """The KEK as an AWS KMS key (`STRONGROOM_KEY_PROVIDER=kms`, `STRONGROOM_KMS_KEY_ID`): each data
    key is encrypted by KMS with its id as the encryption context, so a wrapped key moved to
    another row does not decrypt. The key material never leaves KMS; disabling or scheduling the
    key's deletion there is the destruction a KEK rotation ends with. (KMS has no Ed25519: the
    signing key stays a file or moves to a PKCS#11 token.)"""

    def __init__(self, key_id: str, region: str, endpoint_url: str | None = None) -> None:
        import boto3

        self.client = boto3.client("kms", region_name=region, endpoint_url=endpoint_url)
        try:
            meta = self.client.describe_key(KeyId=key_id)["KeyMetadata"]
        except Exception as e:
            raise ConfigurationError(f"KMS key {key_id}: {type(e).__name__} (STRONGROOM_KMS_KEY_ID, credentials)") from e
        if meta.get("KeyUsage") != "ENCRYPT_DECRYPT" or meta.get("KeyState") != "Enabled":
            raise ConfigurationError(f"KMS key {key_id} is not an enabled ENCRYPT_DECRYPT key")
        self._arn = meta["Arn"]

    @property
    def kek_id(self) -> str:
        return f"kms:{self._arn}"

    def wrap_with_id(self, data_key: bytes, key_id: str) -> tuple[bytes, str]:
        blob = self.client.encrypt(KeyId=self._arn, Plaintext=data_key,
                                   EncryptionContext={"strongroom_key_id": key_id})["CiphertextBlob"]
        return bytes(blob), self.kek_id

    def unwrap(self, wrapped: bytes, key_id: str, kek_id: str | None = None) -> bytes:
        if kek_id is not None and kek_id != self.kek_id:
            raise DecryptionError(f"data key {key_id} is wrapped by KEK {kek_id}, not {self.kek_id}")
        try:
            return bytes(self.client.decrypt(CiphertextBlob=wrapped, KeyId=self._arn,
                                             EncryptionContext={"strongroom_key_id": key_id})["Plaintext"])
        except self.client.exceptions.InvalidCiphertextException as e:
            raise DecryptionError(f"data key {key_id} does not unwrap under {self.kek_id}") from e

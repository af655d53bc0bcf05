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


class KmsKek:
    """The KEK as an AWS KMS key (`STRONGROOM_KEY_PROVIDER=kms`, `STRONGROOM_KMS_KEY_ID`): each data
    key is encrypted by KMS with its id as the encryption context, so a wrapped key moved to
    another row does not decrypt. The key material never leaves KMS; disabling or scheduling the
    key's deletion there is the destruction a KEK rotation ends with."""

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
    """

    ALGORITHM = "ECDSA_SHA_256"

    def __init__(self, key_id: str, region: str, endpoint_url: str | None = None) -> None:
        import boto3

        from exporters.verify_bundle import decode_key

        self.client = boto3.client("kms", region_name=region, endpoint_url=endpoint_url)
        try:
            meta = self.client.describe_key(KeyId=key_id)["KeyMetadata"]
            der = self.client.get_public_key(KeyId=meta["Arn"])["PublicKey"]
        except Exception as e:
            raise ConfigurationError(f"KMS signing key {key_id}: {type(e).__name__} "
                                     "(STRONGROOM_KMS_SIGNING_KEY_ID, credentials)") from e
        if (meta.get("KeyUsage") != "SIGN_VERIFY" or meta.get("KeySpec") != "ECC_NIST_P256"
                or meta.get("KeyState") != "Enabled"):
            raise ConfigurationError(f"KMS signing key {key_id} is not an enabled ECC_NIST_P256 SIGN_VERIFY key")
        try:
            self._public = decode_key(bytes(der))
        except ValueError as e:
            raise ConfigurationError(f"KMS signing key {key_id}: its public key is not P-256") from e
        self.arn: str = meta["Arn"]

    def sign(self, data: bytes) -> bytes:
        data = bytes(data)
        if len(data) <= KMS_RAW_MAX:
            message, kind = data, "RAW"
        else:
            message, kind = hashlib.sha256(data).digest(), "DIGEST"
        sig = bytes(self.client.sign(KeyId=self.arn, Message=message, MessageType=kind,
                                     SigningAlgorithm=self.ALGORITHM)["Signature"])
        try:
            verify_signature(self._public, sig, data)
        except InvalidSignature:
            raise ConfigurationError(f"KMS key {self.arn} returned a signature its public key does not verify "
                                     f"({kind} message): nothing was signed") from None
        return sig

    def public_key(self) -> PublicKey:
        return self._public


class FixedSigner:
    """`Archive.key_file`'s shape for a signer outside the data dir (HSM, KMS): the one in force.
    With ``signing=False`` (read-only commands) `get` refuses; only the public half is used."""

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

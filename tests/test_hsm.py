"""Keys in an HSM (issue 16, item 1): the whole pipeline with the PKCS#11 provider on a real
SoftHSM2 token (Debian `softhsm2`, installed by .ci/run): seal, verify, erasure, export,
verify-bundle, with the KEK and the Ed25519 signing key created on the token non-extractable."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from archiver import crypto
from archiver.db import data_keys, events
from archiver.errors import KeyDestroyedError
from exporters import verify_bundle as vb
from exporters.bundle import Custody, ExportScope
from exporters.sinks import DirectorySink
from strongroom import payloads as p
from strongroom.runtime import open_archive
from strongroom.settings import Settings
from tests.conftest import ingest

SOFTHSM = Path("/usr/lib/softhsm/libsofthsm2.so")
T = int(datetime.now(UTC).timestamp()) - 3600


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not SOFTHSM.exists() or shutil.which("softhsm2-util") is None:
        pytest.fail("SoftHSM2 is not installed (apt-get install softhsm2; .ci/run does it)")
    d = tmp_path_factory.mktemp("softhsm")
    (d / "tokens").mkdir()
    conf = d / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {d / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)  # read when the library initialises, once per process
    yield d


def _token(label: str) -> None:
    """A new token. The library lists the tokens it found when it was initialised: close what this
    process has open on it and initialise it again, as a service started after the token would be."""
    import pkcs11

    from archiver import providers

    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", "12345678",
                    "--pin", "87654321"], check=True, capture_output=True, env=os.environ)
    with providers._OPEN_LOCK:
        for t in providers._OPEN.values():
            t.close()
        providers._OPEN.clear()
    lib = pkcs11.lib(str(SOFTHSM))
    if lib.initialized:
        lib.reinitialize()


@pytest.mark.parametrize("sql_url", ["sqlite"], indirect=True)
def test_the_pipeline_with_keys_in_a_softhsm2_token(tokens: Path, make_settings: Callable[..., Settings],
                                                   tmp_path: Path) -> None:
    label = f"sr-{uuid.uuid4().hex[:8]}"
    _token(label)
    settings = make_settings(key_provider="pkcs11", pkcs11_module=SOFTHSM, pkcs11_token=label,
                             pkcs11_pin="87654321")
    a = open_archive(settings)
    try:
        assert not settings.key_path("kek").exists() and not settings.key_path("signing").exists()
        a.schedules.store({"default_days": 1}, "test", datetime.now(UTC))
        ingest(a, p.inbound(p.text("wamid.h1", "16505550881", T, "sealed under the HSM")),
               p.inbound(p.text("wamid.h2", "16505550882", T + 1, "erase me")))
        a.process_pending()
        with a.engine.connect() as conn:
            keks = set(conn.execute(sa.select(data_keys.c.kek_id)).scalars())
        assert keks == {a.keyring.kek.kek_id} and next(iter(keks)).startswith(f"pkcs11:{label}:")
        report = a.verifier().verify(a.expected_sizes())
        assert report.ok, [str(f) for f in report.failures]
        assert a.erasure().request("dpo:dan", phone="16505550882").outcome == "granted"
        a.process_pending()
        out = tmp_path / "bundle"
        a.exporter().run(ExportScope("HSM-1"), DirectorySink(out), Custody("examiner@sec.example"), "t")
        assert vb.verify(out, vb.load_public_key(crypto.public_key_pem(a.public_key))) == []
        with a.engine.connect() as conn:
            erased = conn.execute(sa.select(events).where(events.c.wamid == "wamid.h2")).one()
            kept = conn.execute(sa.select(events).where(events.c.wamid == "wamid.h1")).one()
        with pytest.raises(KeyDestroyedError):
            a.keyring.open_record(erased)
        assert b"sealed under the HSM" in a.keyring.open_record(kept)

        # the keys never leave the token: non-extractable, sensitive, and the signer refuses to export
        import pkcs11
        from pkcs11 import Attribute, ObjectClass

        session = a.keyring.kek.t.session  # type: ignore[attr-defined]
        for cls, name in ((ObjectClass.SECRET_KEY, "strongroom-kek"), (ObjectClass.PRIVATE_KEY, "strongroom-signing")):
            key = session.get_key(object_class=cls, label=name)
            assert key[Attribute.EXTRACTABLE] is False and key[Attribute.SENSITIVE] is True
            with pytest.raises(pkcs11.exceptions.PKCS11Error):
                key[Attribute.VALUE]
        with pytest.raises(Exception, match="cannot be exported"):
            a.signing_key.private_bytes_raw()
    finally:
        a.close()

    # a fresh process of the same archive finds its keys on the token and reads what it sealed
    again = open_archive(settings)
    try:
        assert again.verifier().verify(again.expected_sizes()).ok
        with again.engine.connect() as conn:
            kept = conn.execute(sa.select(events).where(events.c.wamid == "wamid.h1")).one()
        assert b"sealed under the HSM" in again.keyring.open_record(kept)
        assert json.loads(again.keyring.open_record(kept))
    finally:
        again.close()


@pytest.mark.parametrize("sql_url", ["sqlite"], indirect=True)
def test_the_kek_and_the_signing_key_rotate_on_the_token(tokens: Path, make_settings: Callable[..., Settings],
                                                          sql_url: str, tmp_path: Path) -> None:
    """Both keys rotate on the token: the old KEK object is destroyed (a backup's wrapped key for a
    subject erased since stays unreadable), the old signing pair is destroyed and history verifies."""
    import sqlite3

    import pkcs11
    from pkcs11 import Attribute, ObjectClass

    label = f"sr-{uuid.uuid4().hex[:8]}"
    _token(label)
    settings = make_settings(key_provider="pkcs11", pkcs11_module=SOFTHSM, pkcs11_token=label, pkcs11_pin="87654321")
    db_file, backup = sql_url.removeprefix("sqlite:///"), tmp_path / "backup.db"
    a = open_archive(settings)
    try:
        a.schedules.store({"default_days": 1}, "test", datetime.now(UTC))
        ingest(a, p.inbound(p.text("wamid.r1", "16505550883", T, "kept across rotations")),
               p.inbound(p.text("wamid.r2", "16505550884", T + 1, "erased before the rotation")))
        a.process_pending()
        old_kek, old_signing = a.keyring.kek.kek_id, crypto.public_key_pem(a.public_key)
        with sqlite3.connect(db_file) as src, sqlite3.connect(backup) as dst:
            src.backup(dst)  # last night's backup
        assert a.erasure().request("dpo:dan", phone="16505550884").outcome == "granted"

        rotated = a.rotate_kek("admin:ann")
        assert rotated.old_kek_ids == [old_kek] and rotated.new_kek_id != old_kek and rotated.rewrapped >= 1
        session = a.keyring.kek.t.session  # type: ignore[attr-defined]
        keks = list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY}))
        assert [k[Attribute.LABEL] for k in keks] == ["strongroom-kek"]  # the old one destroyed, the new one named
        assert keks[0][Attribute.EXTRACTABLE] is False
        with a.engine.connect() as conn:
            assert set(conn.execute(sa.select(data_keys.c.kek_id).where(data_keys.c.wrapped.is_not(None)))
                       .scalars()) == {rotated.new_kek_id}

        done = a.rotate_signing("admin:ann")
        assert done["old_key"] == "destroyed on the token" and done["new_key_id"] != done["old_key_id"]
        assert crypto.public_key_pem(a.public_key) != old_signing
        privs = list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}))
        assert len(privs) == 1 and privs[0][Attribute.LABEL] == "strongroom-signing"
        with pytest.raises(pkcs11.exceptions.PKCS11Error):
            privs[0][Attribute.VALUE]
        ingest(a, p.inbound(p.text("wamid.r3", "16505550883", T + 2, "sealed by the new key")))
        a.process_pending()
        report = a.verifier().verify(a.expected_sizes())
        assert report.ok, [str(f) for f in report.failures]
    finally:
        a.close()

    with sqlite3.connect(backup) as src, sqlite3.connect(db_file) as dst:
        src.backup(dst)  # the backup restored: the erased subject's key is in it, under the destroyed KEK
    restored = open_archive(settings)
    try:
        with restored.engine.connect() as conn:
            erased = conn.execute(sa.select(events).where(events.c.wamid == "wamid.r2")).one()
        with pytest.raises(crypto.DecryptionError, match="no longer holds"):
            restored.keyring.open_record(erased)
    finally:
        restored.close()


def test_a_wrong_pin_or_token_fails_the_start_by_name(tokens: Path, make_settings: Callable[..., Settings]) -> None:
    from archiver.errors import ConfigurationError

    label = f"sr-{uuid.uuid4().hex[:8]}"
    _token(label)
    with pytest.raises(ConfigurationError, match=f"{label}.*PinIncorrect"):
        open_archive(make_settings(key_provider="pkcs11", pkcs11_module=SOFTHSM, pkcs11_token=label,
                                   pkcs11_pin="00000000"))
    with pytest.raises(ConfigurationError, match="NoSuchToken"):
        open_archive(make_settings(key_provider="pkcs11", pkcs11_module=SOFTHSM, pkcs11_token=label + "-absent",
                                   pkcs11_pin="87654321"))
    with pytest.raises(ConfigurationError, match="needs STRONGROOM_PKCS11_PIN"):
        open_archive(make_settings(key_provider="pkcs11", pkcs11_module=SOFTHSM, pkcs11_token=label))


KMS_CHECK = r"""
import base64, hashlib, json, sys
from datetime import UTC, datetime
from pathlib import Path
import boto3, sqlalchemy as sa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from moto import mock_aws
from archiver import crypto
from archiver.crypto import DecryptionError
from archiver.db import data_keys, events
from archiver.errors import ConfigurationError, KeyDestroyedError
from archiver.notes import ECDSA, body, parse_vkey, sign_note, verify_note, vkey
from archiver.providers import KmsSigner
from exporters import verify_bundle as vb
from exporters.bundle import Custody, ExportScope
from exporters.sinks import DirectorySink
from strongroom import payloads as p
from strongroom.runtime import open_archive
from strongroom.settings import Settings
from tests.conftest import ingest
from tests.test_hsm import teach_moto_digest_signing, teach_moto_key_states

settings_doc, t, out = json.loads(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
with mock_aws(config={"core": {"passthrough": {"urls": [r"http://127\.0\.0\.1:\d+.*"]}}}):
    kms = boto3.client("kms", region_name="us-east-1")
    meta = kms.create_key(KeyUsage="ENCRYPT_DECRYPT", Description="strongroom KEK")["KeyMetadata"]
    sign_meta = kms.create_key(KeyUsage="SIGN_VERIFY", KeySpec="ECC_NIST_P256",
                               Description="strongroom signing")["KeyMetadata"]
    # moto signs a DIGEST message as if it were the message; the signer's own check refuses that
    signer = KmsSigner(sign_meta["Arn"], "us-east-1")
    signer.sign(b"a checkpoint")  # RAW (up to 4 KiB): fine on moto as on KMS
    try:
        signer.sign(b"m" * 5000)
        raise AssertionError("a signature that does not verify was accepted")
    except ConfigurationError as e:
        assert "does not verify" in str(e), e
    teach_moto_digest_signing()
    teach_moto_key_states()
    kms.create_alias(AliasName="alias/strongroom-kek", TargetKeyId=meta["KeyId"])
    kms.create_alias(AliasName="alias/strongroom-signing", TargetKeyId=sign_meta["KeyId"])
    settings = Settings(**settings_doc, key_provider="kms", kms_key_id="alias/strongroom-kek",
                        kms_signing_key_id="alias/strongroom-signing")
    import tests.conftest
    tests.conftest.sign.__defaults__ = (settings.secret("app_secret"),)  # this archive's, not this process's
    a = open_archive(settings)
    try:
        assert not settings.key_path("kek").exists() and not settings.key_path("signing").exists()
        assert isinstance(a.public_key, ec.EllipticCurvePublicKey)
        a.schedules.store({"default_days": 1}, "test", datetime.now(UTC))
        ingest(a, p.inbound(p.text("wamid.m1", "16505550891", t, "wrapped by KMS")),
               p.inbound(p.text("wamid.m2", "16505550892", t + 1, "erase me")))
        a.process_pending()
        with a.engine.connect() as conn:
            rows = conn.execute(sa.select(data_keys)).all()
            msg = conn.execute(sa.select(events).where(events.c.wamid == "wamid.m1")).one()
        assert rows and {r.kek_id for r in rows} == {"kms:" + meta["Arn"]}, rows
        assert b"wrapped by KMS" in a.keyring.open_record(msg)
        report = a.verifier().verify(a.expected_sizes())
        assert report.ok, [str(f) for f in report.failures]
        try:  # a wrapped key moved to another id does not decrypt (the encryption context binds it)
            a.keyring.kek.unwrap(rows[0].wrapped, "subj:someone-else", rows[0].kek_id)
            raise AssertionError("unwrapped under another id")
        except DecryptionError:
            pass
        # every checkpoint is an ECDSA P-256 signature by the KMS key
        cp_key = next(k for k in a.store.list_keys("checkpoints/"))
        cp = json.loads(a.store.get(cp_key))
        a.public_key.verify(base64.b64decode(cp["signature"]), vb._canonical(cp["checkpoint"]),
                            ec.ECDSA(hashes.SHA256()))
        # the erasure certificate, the bundle manifest (over 4 KiB: a DIGEST signature) and the checks
        with a.engine.connect() as conn:
            backup = conn.execute(sa.select(data_keys).where(data_keys.c.wrapped.is_not(None))).all()
        assert a.erasure().request("dpo:dan", phone="16505550892").outcome == "granted"
        a.process_pending()
        a.exporter().run(ExportScope("KMS-1"), DirectorySink(out), Custody("examiner@sec.example"), "t")
        assert (out / "manifest.json").stat().st_size > 4096
        pem = crypto.public_key_pem(a.public_key)
        assert b"BEGIN PUBLIC KEY" in pem
        assert vb.verify(out, vb.load_public_key(pem)) == []
        with a.engine.connect() as conn:
            erased = conn.execute(sa.select(events).where(events.c.wamid == "wamid.m2")).one()
        try:
            a.keyring.open_record(erased)
            raise AssertionError("an erased subject's record opened")
        except KeyDestroyedError:
            pass
        # a C2SP note signed by the KMS key: signature type 0x02, checked by the verifier key alone
        text = body("archive.example/strongroom/x", 3, hashlib.sha256(b"r").digest())
        note = sign_note(text, "archive.example/strongroom", a.signing_key)
        name, kind, key = parse_vkey(vkey("archive.example/strongroom", a.public_key))
        assert kind == ECDSA and verify_note(note, name, key).tree_size == 3
        try:
            verify_note(note.replace("\n3\n", "\n4\n"), name, key)
            raise AssertionError("an edited note verified")
        except ValueError:
            pass

        # KEK rotation: the alias moves, every data key is re-wrapped, the old key is scheduled for deletion
        kek2 = kms.create_key(KeyUsage="ENCRYPT_DECRYPT", Description="strongroom KEK 2")["KeyMetadata"]
        r = a.rotate_kek("admin:ann", to=kek2["Arn"])
        assert r.old_kek_ids == ["kms:" + meta["Arn"]] and r.new_kek_id == "kms:" + kek2["Arn"], r
        old_state = kms.describe_key(KeyId=meta["Arn"])["KeyMetadata"]
        assert old_state["KeyState"] == "PendingDeletion" and r.destroyed_at.startswith(
            old_state["DeletionDate"].date().isoformat())
        with a.engine.connect() as conn:
            assert set(conn.execute(sa.select(data_keys.c.kek_id).where(data_keys.c.wrapped.is_not(None)))
                       .scalars()) == {r.new_kek_id}
        erased_key = next(row for row in backup if row.key_id not in {
            k for k in a.engine.connect().execute(sa.select(data_keys.c.key_id)
                                                  .where(data_keys.c.wrapped.is_not(None))).scalars()})
        try:  # last night's backup holds the erased subject's key, under a key KMS no longer uses
            a.keyring.kek.unwrap(erased_key.wrapped, erased_key.key_id, erased_key.kek_id)
            raise AssertionError("a shredded key came back from a backup")
        except DecryptionError:
            pass
        assert a.rotate_kek("admin:ann", to=kek2["Arn"]).resumed  # a rerun finds it done

        # signing rotation: the alias moves to the new key, the old one is disabled, history verifies
        sign2 = kms.create_key(KeyUsage="SIGN_VERIFY", KeySpec="ECC_NIST_P256")["KeyMetadata"]
        done = a.rotate_signing("admin:ann", to=sign2["Arn"])
        assert kms.describe_key(KeyId=sign_meta["Arn"])["KeyMetadata"]["KeyState"] == "Disabled"
        ingest(a, p.inbound(p.text("wamid.m3", "16505550891", t + 2, "signed by the second KMS key")))
        a.process_pending()
        fresh = open_archive(settings)
        try:
            with fresh.engine.connect() as conn:
                kept = conn.execute(sa.select(events).where(events.c.wamid == "wamid.m1")).one()
            assert b"wrapped by KMS" in fresh.keyring.open_record(kept)
            assert crypto.public_key_pem(fresh.public_key) != pem and done["new_key_id"] != done["old_key_id"]
            report = fresh.verifier().verify(fresh.expected_sizes())
            assert report.ok, [str(f) for f in report.failures]
        finally:
            fresh.engine.dispose()
    finally:
        a.close()
    kms.disable_key(KeyId=kek2["KeyId"])
    try:
        open_archive(settings)
        raise AssertionError("started on a disabled KMS key")
    except ConfigurationError as e:
        assert "not an enabled" in str(e), e
print("kms ok")
"""


def teach_moto_key_states() -> None:
    """moto 5.2 decrypts and signs with a key that is disabled or pending deletion; KMS refuses
    (KMSInvalidStateException / DisabledException). Make moto refuse as KMS does."""
    from moto.core.exceptions import JsonRESTError
    from moto.kms.models import KmsBackend

    def refusing(name: str) -> None:
        real = getattr(KmsBackend, name)

        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = real(self, *args, **kwargs)
            arn = result[1] if name == "decrypt" else result[0]
            key = self.keys[self.any_id_to_key_id(arn)]
            if key.key_state != "Enabled":
                raise JsonRESTError("DisabledException" if key.key_state == "Disabled" else
                                    "KMSInvalidStateException", f"{arn} is {key.key_state}")
            return result

        setattr(KmsBackend, name, call)

    refusing("decrypt")
    refusing("sign")


def teach_moto_digest_signing() -> None:
    """moto 5.2 ignores ``MessageType=DIGEST`` in KMS ``Sign`` (it signs the 32-byte digest as a
    message); KMS signs the digest as the hash of the message. Make moto do what KMS does."""
    import base64

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, utils
    from moto.kms.responses import KmsResponse

    raw_sign = KmsResponse.sign

    def sign(self: Any) -> str:
        if self._get_param("MessageType") != "DIGEST":
            return raw_sign(self)
        key = self.kms_backend.describe_key(self._get_param("KeyId"))
        sig = key.private_key.private_key.sign(self._get_param("Message"),
                                               ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        return json.dumps({"KeyId": key.arn, "Signature": base64.b64encode(sig).decode(),
                           "SigningAlgorithm": self._get_param("SigningAlgorithm")})

    KmsResponse.sign = sign  # type: ignore[method-assign]


@pytest.mark.parametrize("sql_url", ["sqlite"], indirect=True)
def test_the_pipeline_with_keys_in_aws_kms_on_moto(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """The KEK and the (ECDSA P-256) signing key in KMS: seal, verify, erasure, export, verify-bundle.
    Unit test on moto (KMS's API shape; SeaweedFS, at 127.0.0.1, passed through to the real store),
    in a child process: moto's patching of botocore must not reach the other tests of this worker."""
    import sys

    settings = make_settings()
    doc = {k: (v.get_secret_value() if hasattr(v, "get_secret_value") else str(v) if isinstance(v, Path) else v)
           for k, v in settings.model_dump().items()
           if v is not None and k not in ("key_provider", "kms_key_id", "kms_signing_key_id")}
    done = subprocess.run([sys.executable, "-c", KMS_CHECK, json.dumps(doc), str(T), str(tmp_path / "bundle")],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1],
                          env={k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")})
    assert done.returncode == 0 and "kms ok" in done.stdout, done.stdout[-2000:] + done.stderr[-3000:]

"""Evidence that needs no trust in us (issue 15): time from outside (RFC 3161 tokens from a real
TSA), the latest state held by someone else (published C2SP checkpoints), key rotation."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from archiver.objectstore import DirectoryObjectStore
from archiver.timestamps import PREFIX as TOKENS
from audit.verify import Report, Verifier
from strongroom.app import create_app
from strongroom.runtime import Archive, open_archive
from strongroom.settings import Settings
from tests.conftest import sign
from tests.tsa import LocalTSA


def _download(archive: Archive, root: Path) -> Path:
    for key in archive.store.list_keys(""):
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(archive.store.get(key))
    return root


def _deliver(archive: Archive, webhook_body: Callable[[str], bytes], rounds: int, start: int = 0) -> None:
    client = TestClient(create_app(archive))
    for i in range(start, start + rounds):
        body = webhook_body("multi_entry").replace(b"wamid.multi1", f"wamid.v{i}".encode())
        body = body.replace(b"wamid.out9", f"wamid.w{i}".encode()).replace(b"wamid.img1", f"wamid.x{i}".encode())
        assert client.post("/webhooks/whatsapp", content=body,
                           headers={"X-Hub-Signature-256": sign(body)}).status_code == 200
        archive.process_pending()


@pytest.fixture
def stamped(make_settings: Callable[..., Settings], tsa: LocalTSA) -> Iterator[Archive]:
    a = open_archive(make_settings(tsa_urls=tsa.url, head_interval_seconds=0))
    yield a
    a.close()


def _verify(archive: Archive, root: Path, roots: list | None) -> Report:  # type: ignore[type-arg]
    return Verifier(DirectoryObjectStore(root), archive.public_key, check_locks=False, tsa_roots=roots).verify()


def test_every_archive_head_is_stamped_by_the_tsa_and_verify_checks_the_tokens(
        stamped: Archive, webhook_body: Callable[[str], bytes], tsa: LocalTSA, tmp_path: Path) -> None:
    before = tsa.requests
    _deliver(stamped, webhook_body, 2)
    assert tsa.requests - before >= 2  # one head per sealing pass (interval 0), each stamped
    tokens = sorted(stamped.store.list_keys(TOKENS))
    assert tokens and all(stamped.store.retention(k).mode == "COMPLIANCE" for k in tokens)
    live = Verifier(stamped.store, stamped.public_key, tsa_roots=[tsa.ca]).verify(stamped.expected_sizes())
    assert live.ok, [str(f) for f in live.failures]
    assert live.head.stamped and live.head.stamped_at and live.head.tokens == len(tokens)

    copy = _download(stamped, tmp_path / "copy")
    assert _verify(stamped, copy, [tsa.ca]).ok

    # a token moved onto another head: it stamps other bytes
    a, b = tokens[0], tokens[-1]
    assert a.rsplit("/", 1)[0] != b.rsplit("/", 1)[0]
    (copy / b).write_bytes((copy / a).read_bytes())
    fails = _verify(stamped, copy, [tsa.ca]).failures
    assert [(f.step, f.item) for f in fails] == [(9, b)] and "other data" in fails[0].message
    (copy / b).write_bytes(stamped.store.get(b))

    # a token from a TSA nobody vouched for
    other = LocalTSA("a TSA nobody trusts")
    try:
        fails = _verify(stamped, copy, [other.ca]).failures
        assert fails and all(f.step == 9 for f in fails)
        assert any("none of the given certificates" in f.message for f in fails)
        assert any("no archive head carries a timestamp" in f.message for f in fails)
    finally:
        other.close()
    # without TSA certificates the tokens are counted, not trusted, and nothing fails for them
    assert _verify(stamped, copy, None).ok


def test_a_tsa_that_is_down_never_stops_sealing(
        stamped: Archive, webhook_body: Callable[[str], bytes], tsa: LocalTSA) -> None:
    tsa.down = True
    try:
        _deliver(stamped, webhook_body, 1)
    finally:
        tsa.down = False
    assert stamped.expected_sizes() and not list(stamped.store.list_keys(TOKENS))
    report = Verifier(stamped.store, stamped.public_key, tsa_roots=[tsa.ca]).verify(stamped.expected_sizes())
    assert [f.step for f in report.failures] == [9]  # unstamped, and said so
    _deliver(stamped, webhook_body, 1, start=1)  # the next head is stamped
    assert Verifier(stamped.store, stamped.public_key, tsa_roots=[tsa.ca]).verify(stamped.expected_sizes()).ok


def test_a_bundle_carries_its_snapshots_archive_head_and_tokens(
        stamped: Archive, webhook_body: Callable[[str], bytes], tsa: LocalTSA, tmp_path: Path) -> None:
    from archiver import crypto
    from exporters import verify_bundle as vb
    from exporters.bundle import Custody, ExportScope
    from exporters.sinks import DirectorySink

    _deliver(stamped, webhook_body, 2)
    out = tmp_path / "bundle"
    result = stamped.exporter().run(ExportScope("M-1"), DirectorySink(out), Custody("examiner@sec.example"), "t")
    head = result.manifest["head"]
    assert head["timestamps"] and (out / head["path"]).exists()
    key = vb.load_public_key(crypto.public_key_pem(stamped.public_key))
    assert vb.verify(out, key, [tsa.ca]) == []
    assert vb.verify(out, key) == []  # no TSA certificates given: the head is checked, the tokens are not
    other = LocalTSA("a TSA nobody trusts")
    try:
        fails = vb.verify(out, key, [other.ca])
    finally:
        other.close()
    assert any(head["timestamps"][0] in f and "none of the given certificates" in f for f in fails), fails
    assert any("no timestamp from the given TSAs" in f for f in fails)
    # the standalone verifier, as a regulator runs it
    pub = tmp_path / "strongroom.pub"
    pub.write_bytes(crypto.public_key_pem(stamped.public_key))
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "exporters/verify_bundle.py", str(out), str(pub), "--tsa-cert",
                           str(tsa.ca_pem)], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0 and "bundle verifies" in done.stdout, done.stdout + done.stderr


class Holder:
    """An outside holder of checkpoints: an HTTP endpoint keeping the newest note per origin."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.notes: dict[str, str] = {}
        holder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                note = self.rfile.read(int(self.headers["Content-Length"])).decode()
                origin, size = note.split("\n")[:2]
                if origin not in holder.notes or int(holder.notes[origin].split("\n")[1]) <= int(size):
                    holder.notes[origin] = note
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/checkpoints"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def holder() -> Iterator[Holder]:
    h = Holder()
    yield h
    h.close()


def test_a_copy_cut_back_fails_against_the_checkpoint_an_outside_holder_keeps(
        make_settings: Callable[..., Settings], holder: Holder, webhook_body: Callable[[str], bytes],
        tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from typer.testing import CliRunner

    from archiver import crypto
    from archiver.notes import cosign, parse_vkey, verify_note, vkey
    from strongroom.cli import app

    archive = open_archive(make_settings(publish_urls=holder.url, head_interval_seconds=0,
                                         log_origin="archive.firm.example/strongroom"))
    try:
        _deliver(archive, webhook_body, 3)
        stream = "1122334455667"
        origin = f"archive.firm.example/strongroom/{stream}"
        note = holder.notes[origin]
        assert note.startswith(f"{origin}\n{archive.expected_sizes()[stream]}\n")
        name, _kind, pub = parse_vkey(vkey("archive.firm.example/strongroom", archive.public_key))
        assert verify_note(note, name, pub).tree_size == archive.expected_sizes()[stream]
        copy = _download(archive, tmp_path / "copy")
    finally:
        archive.close()
    (tmp_path / "latest.note").write_text(note)
    (tmp_path / "k.pem").write_bytes(crypto.public_key_pem(archive.public_key))
    runner = CliRunner()
    args = ["verify", "--from-dir", str(copy), "--public-key", str(tmp_path / "k.pem"), "--latest",
            str(tmp_path / "latest.note"), "--log-origin", "archive.firm.example/strongroom"]
    assert runner.invoke(app, args).exit_code == 0

    # the newest segment, its checkpoint and every head removed: only the holder's note shows it
    seg = sorted((copy / "records" / f"stream={stream}").rglob("*.parquet"))[-1]
    first = int(seg.name.split("-")[1])
    seg.unlink()
    sorted((copy / "checkpoints" / f"stream={stream}").glob("*.json"))[-1].unlink()
    shutil.rmtree(copy / "heads")
    assert _verify(archive, copy, None).ok
    result = runner.invoke(app, args)
    size = int(note.split("\n")[1])
    assert result.exit_code == 1 and f"seq {first}..{size - 1} missing" in result.output, result.output

    # a note not signed by the archive's key is refused before anything is compared
    forged = note.replace(f"\n{size}\n", f"\n{size + 5}\n")
    (tmp_path / "forged.note").write_text(forged)
    result = runner.invoke(app, [*args[:-3], str(tmp_path / "forged.note"), *args[-2:]])
    assert result.exit_code != 0 and "does not verify" in result.output

    # a witness's cosignature, when one is required
    wkey = Ed25519PrivateKey.generate()
    wv = vkey("witness.example/w1", wkey.public_key(), kind=0x04)
    (tmp_path / "cosigned.note").write_text(cosign(note, "witness.example/w1", wkey, 1_800_000_000))
    ok = runner.invoke(app, [*args[:-3], str(tmp_path / "cosigned.note"), *args[-2:], "--witness", wv])
    assert "missing" in ok.output  # the cosignature verified; the cut copy still fails on its own
    bare = runner.invoke(app, [*args, "--witness", wv])
    assert bare.exit_code != 0 and "no cosignature by witness witness.example/w1" in bare.output


def test_signing_key_rotation_keeps_history_verifiable_and_refuses_the_retired_key_afterwards(
        make_settings: Callable[..., Settings], webhook_body: Callable[[str], bytes], tmp_path: Path) -> None:
    import json
    import time
    from dataclasses import replace

    from typer.testing import CliRunner

    from archiver import crypto, keyhistory
    from archiver.checkpoint import SignedCheckpoint, key_id
    from exporters import verify_bundle as vb
    from exporters.bundle import Custody, ExportScope
    from exporters.sinks import DirectorySink
    from strongroom.cli import app
    from tests.conftest import subprocess_env

    settings = make_settings(head_interval_seconds=0)
    archive = open_archive(settings)
    try:
        _deliver(archive, webhook_body, 2)  # history under key 1
        key1 = archive.signing_key
        runner = CliRunner()
        env = subprocess_env(settings)
        done = runner.invoke(app, ["keys", "rotate-signing"], env=env)
        assert done.exit_code == 0, done.output
        key2 = archive.signing_key  # the running archive picks up the new key file
        assert key_id(key2.public_key()) != key_id(key1.public_key())
        assert (settings.keys_dir / "retired" / f"signing-{key_id(key1.public_key())}.pem").exists()
        history = keyhistory.load(archive.store, key1.public_key())
        retired_at = history.retired[key_id(key1.public_key())]
        time.sleep(max(0.0, (keyhistory.GRACE.total_seconds())))  # past the retirement
        _deliver(archive, webhook_body, 2, start=2)  # new checkpoints under key 2
        cps = [SignedCheckpoint.from_json(archive.store.get(k)) for k in archive.store.list_keys("checkpoints/")]
        signers = {c.checkpoint.key_id for c in cps}
        assert signers == {key_id(key1.public_key()), key_id(key2.public_key())}

        # everything verifies, from either key as the anchor
        for anchor in (key1.public_key(), key2.public_key()):
            report = Verifier(archive.store, anchor).verify(archive.expected_sizes())
            assert report.ok, [str(f) for f in report.failures]
        out = tmp_path / "bundle"
        archive.exporter().run(ExportScope("M-rot"), DirectorySink(out), Custody("examiner@sec.example"), "t")
        assert (out / "keys/rotations.json").exists()
        for anchor in (key1.public_key(), key2.public_key()):
            assert vb.verify(out, vb.load_public_key(crypto.public_key_pem(anchor))) == []
        history_doc = json.loads(runner.invoke(app, ["keys", "history"], env=env).output)
        assert history_doc["current_key_id"] == key_id(key2.public_key()) and len(history_doc["keys"]) == 2

        # a checkpoint signed by key 1 after its retirement (the retired key stolen): refused
        copy = _download(archive, tmp_path / "copy")
        newest = sorted((copy / "checkpoints").rglob("*.json"))[-1]
        cp = SignedCheckpoint.from_json(newest.read_bytes()).checkpoint
        forged = replace(cp, key_id=key_id(key1.public_key()))
        assert forged.time > retired_at
        newest.write_bytes(SignedCheckpoint.sign(forged, key1).to_json())
        fails = _verify(archive, copy, None).failures
        assert any(f.step == 4 and "after its retirement" in f.message and f.item == str(newest.relative_to(copy))
                   for f in fails), fails
    finally:
        archive.close()


def test_a_bundle_is_checked_against_the_holders_newer_checkpoint_with_a_proof_from_the_archive(
        make_settings: Callable[..., Settings], holder: Holder, webhook_body: Callable[[str], bytes],
        tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from archiver import crypto
    from exporters import verify_bundle as vb
    from exporters.bundle import Custody, ExportScope
    from exporters.sinks import DirectorySink
    from strongroom.cli import app
    from tests.conftest import subprocess_env

    origin = "archive.firm.example/strongroom"
    settings = make_settings(publish_urls=holder.url, head_interval_seconds=0, log_origin=origin)
    archive = open_archive(settings)
    stream = "1122334455667"
    try:
        _deliver(archive, webhook_body, 2)
        out = tmp_path / "bundle"
        result = archive.exporter().run(ExportScope("M-2"), DirectorySink(out), Custody("examiner@sec.example"), "t")
        snap = result.manifest["snapshot"][stream]["tree_size"]
        _deliver(archive, webhook_body, 2, start=2)
        note = holder.notes[f"{origin}/{stream}"]
        held = int(note.split("\n")[1])
        assert held > snap
        env = subprocess_env(settings)
        got = CliRunner().invoke(app, ["proof", "consistency", "--stream", stream, "--from", str(snap), "--to",
                                       str(held)], env=env)
        assert got.exit_code == 0, got.output
        proof = json.loads(got.output)
        assert proof["from_size"] == snap and proof["to_size"] == held and proof["proof"]
    finally:
        archive.close()
    key = vb.load_public_key(crypto.public_key_pem(archive.public_key))
    latest = vb.Latest([note], origin, [], [])
    fails = vb.verify(out, key, latest=latest)
    assert any("no consistency proof" in f and f"--from {snap} --to {held}" in f for f in fails), fails
    assert vb.verify(out, key, latest=vb.Latest([note], origin, [proof], [])) == []
    bent = {**proof, "proof": ["00" * 32] + proof["proof"][1:]}
    fails = vb.verify(out, key, latest=vb.Latest([note], origin, [bent], []))
    assert any("is not consistent with the holder's checkpoint" in f for f in fails), fails
    # the standalone verifier, with the files a regulator has
    (tmp_path / "note").write_text(note)
    (tmp_path / "proof.json").write_text(json.dumps(proof))
    (tmp_path / "k.pem").write_bytes(crypto.public_key_pem(archive.public_key))
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "exporters/verify_bundle.py", str(out), str(tmp_path / "k.pem"),
                           "--latest", str(tmp_path / "note"), "--consistency", str(tmp_path / "proof.json"),
                           "--log-origin", origin], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0 and "bundle verifies" in done.stdout, done.stdout + done.stderr


def test_the_verifiers_take_ed25519_or_p256_keys_and_nothing_else() -> None:
    """ECDSA P-256 (a signing key in AWS KMS) and Ed25519 verify; RSA, P-384 and junk are refused as a
    ValueError (never another exception a caller would not catch); a C2SP note round-trips with type 0x02."""
    import hashlib

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    from archiver.notes import ECDSA, body, parse_vkey, sign_note, verify_note, vkey
    from exporters import verify_bundle as vb

    class P256:  # what KmsSigner does, with a local key
        def __init__(self) -> None:
            self.k = ec.generate_private_key(ec.SECP256R1())

        def sign(self, data: bytes) -> bytes:
            return self.k.sign(data, ec.ECDSA(hashes.SHA256()))

        def public_key(self) -> ec.EllipticCurvePublicKey:
            return self.k.public_key()

    for signer in (P256(), ed25519.Ed25519PrivateKey.generate()):
        pub = signer.public_key()
        assert vb.decode_key(vb._raw_key(pub)) == pub
        vb.verify_signature(pub, signer.sign(b"manifest"), b"manifest")
        with pytest.raises(InvalidSignature):
            vb.verify_signature(pub, signer.sign(b"manifest"), b"manifest, edited")
        text = body("archive.example/x", 7, hashlib.sha256(b"r").digest())
        name, kind, key = parse_vkey(vkey("archive.example", pub))
        assert verify_note(sign_note(text, "archive.example", signer), name, key).tree_size == 7
        assert (kind == ECDSA) == isinstance(pub, ec.EllipticCurvePublicKey)
    for other in (rsa.generate_private_key(public_exponent=65537, key_size=2048), ec.generate_private_key(ec.SECP384R1())):
        der = other.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        with pytest.raises(ValueError, match="Ed25519 or ECDSA P-256"):
            vb.decode_key(der)
    with pytest.raises(ValueError):
        vb.decode_key(b"\x30\x03\x02\x01\x01")

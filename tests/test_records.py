"""Record canonicalisation is RFC 8785, and the checkpoint format round-trips."""

from __future__ import annotations

import base64
import random
import string
from datetime import UTC, datetime, timedelta

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from archiver.checkpoint import Checkpoint, SignedCheckpoint, key_id
from archiver.errors import CheckpointSignatureError
from archiver.records import COLUMNS, canonical, canonical_parts, join_canonical

ALPHABET = string.printable + "\x00\x01\x1f\x7f\u00e4\u00df\u2028\u2029\ufeff\U0001f600\u0301\u05d0\uffff"


def _random_record(rng: random.Random) -> dict[str, object]:
    rec: dict[str, object] = {}
    for name, (kind, _) in COLUMNS.items():
        if rng.random() < 0.2:
            rec[name] = None
        elif kind == "str":
            rec[name] = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 30)))
        elif kind == "int":
            rec[name] = rng.choice([0, 1, rng.randint(0, 2**53 - 1), 2**53 - 1])
        elif kind == "bool":
            rec[name] = rng.random() < 0.5
        elif kind == "ts":
            rec[name] = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(microseconds=rng.randint(0, 10**15))
        else:
            rec[name] = rng.randbytes(rng.choice([0, 12, 32, 100]) if kind == "bytes" else 32)
    return rec


def _reference(rec: dict[str, object]) -> bytes:
    """The same record through the general RFC 8785 implementation."""
    encode = {"ts": lambda v: v.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
              "bytes": lambda v: base64.b64encode(v).decode(), "hex": lambda v: v.hex()}
    doc = {n: (None if rec.get(n) is None else encode.get(k, lambda v: v)(rec[n]))
           for n, (k, _) in COLUMNS.items() if n != "record_hash"}
    return rfc8785.dumps(doc)


def test_canonical_equals_rfc8785_on_random_records() -> None:
    rng = random.Random(8785)
    recs = [_random_record(rng) for _ in range(2000)]
    parts = canonical_parts({n: [r[n] for r in recs] for n in COLUMNS})
    for rec, part in zip(recs, parts, strict=True):
        want = _reference(rec)
        assert canonical(rec) == want
        assert join_canonical(part, rec["prev_hash"]) == want  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [{"seq": 2**53}, {"seq": 1.5}, {"seq": True}, {"modelled": 1}, {"kind": b"x"},
                                 {"received_at": datetime(2026, 1, 1)}])
def test_values_outside_the_canonical_domain_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        canonical(bad)


def test_record_hash_is_not_part_of_the_canonical_form() -> None:
    rec = _random_record(random.Random(1))
    assert canonical(rec) == canonical({**rec, "record_hash": b"\x01" * 32})


def test_checkpoint_round_trip_and_rejections() -> None:
    sk = Ed25519PrivateKey.generate()
    cp = Checkpoint("1122334455667", 42, "ab" * 32, "cd" * 32, "2026-11-25T22:00:00.000000Z", key_id(sk.public_key()))
    signed = SignedCheckpoint.sign(cp, sk)
    again = SignedCheckpoint.from_json(signed.to_json())
    assert again == signed and again.to_json() == signed.to_json()
    again.verify(sk.public_key())
    with pytest.raises(CheckpointSignatureError, match="signed by key"):
        again.verify(Ed25519PrivateKey.generate().public_key())
    with pytest.raises(CheckpointSignatureError, match="malformed checkpoint"):
        SignedCheckpoint.from_json(b'{"checkpoint": {"stream": "x"}, "signature": "AA=="}')
    with pytest.raises(CheckpointSignatureError, match="invalid tree size"):
        SignedCheckpoint.from_json(signed.to_json().replace(b'"tree_size": 42', b'"tree_size": "NOTANINT"'))

"""Wiring: build the archive's parts from `Settings` (the only place that reads them)."""

from __future__ import annotations

import itertools
import json
import logging
import os
import secrets
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, TextIO, TypeVar

import sqlalchemy as sa
import structlog

from archiver import crypto
from archiver.db import make_engine, migrate, streams
from archiver.errors import ConfigurationError, InvalidInput, StrongroomError
from archiver.heads import StoredHead
from archiver.inbox import Inbox
from archiver.keys import KekRotation, KeyRing, rotate_kek
from archiver.media import GraphClient, MediaFetcher, MediaPolicy
from archiver.normalize import AUDIT_STREAM, Normalizer, append_audit
from archiver.objectstore import S3ObjectStore
from archiver.outbound import SendLog
from archiver.providers import FixedSigner, KmsKek, KmsSigner, Pkcs11Kek, Pkcs11Signer, token
from archiver.publish import Publisher
from archiver.sealer import Sealer
from archiver.timestamps import Timestamper
from audit.auth import Accounts, OidcVerifier, Slots
from audit.index import SearchIndex
from audit.query import EmptyArchive, QueryEngine, S3Location
from audit.verify import Verifier
from exporters.bundle import Exporter
from policies.checks import ComplianceChecks
from policies.completeness import Reconciler
from policies.consent import DEFAULT_OPT_OUT_KEYWORDS, ConsentLedger
from policies.disposition import Certifier, RetentionRun
from policies.erasure import Erasure
from policies.holds import Holds
from policies.proposals import Proposals
from policies.retention import RetentionPolicy, Schedules
from policies.templates import TemplateLedger
from review.queue import ReviewQueue
from review.supervision import Supervision
from strongroom.embedded import EmbeddedSeaweedFS
from strongroom.settings import Settings

T = TypeVar("T")


class _CurrentStderr:
    """Whatever `sys.stderr` is when a line is written (test runners and daemons swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str, stream: TextIO | None = None) -> None:
    """JSON lines on stderr. Nothing logged anywhere carries message content or secrets."""
    stream = stream or _CurrentStderr()  # type: ignore[assignment]  # a file-like proxy: only write and flush are used
    logging.basicConfig(stream=stream, level=level.upper(), format="%(message)s", force=True)
    # Library debug logs can carry request headers (S3 signatures) and SQL parameters.
    for noisy in ("alembic", "botocore", "boto3", "urllib3", "s3transfer", "sqlalchemy", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
    )


def bootstrap_keys(settings: Settings, signing: bool = True) -> list[str]:
    """First run: create the KEK, signing key, blind-index key (and embedded secrets). 0600.

    A process that does not sign (`signing=False`) on a host that holds only the signing key's
    ``.pub`` never creates a signing key of its own."""
    created = []
    for name in ("kek", "blind_index") if settings.key_provider == "file" else ("blind_index",):
        if crypto.ensure_secret_file(settings.key_path(name)):
            created.append(str(settings.key_path(name)))
    signing_path = settings.key_path("signing")
    reader_host = not signing and crypto.public_key_path(signing_path).exists()
    if settings.key_provider == "file" and not reader_host and crypto.ensure_signing_key(signing_path):
        created.append(str(signing_path))
    if settings.embedded_s3:
        for name in ("app_secret", "verify_token"):
            explicit = getattr(settings, name) is not None or getattr(settings, f"{name}_file") is not None
            if not explicit:
                path = settings.secrets_dir / name
                if crypto.ensure_secret_file(path, secrets.token_urlsafe(32).encode()):
                    created.append(str(path))
    return created


@dataclass
class Archive:
    settings: Settings
    engine: sa.Engine
    store: S3ObjectStore
    keyring: KeyRing
    key_file: crypto.SigningKeyFile | FixedSigner
    retention: RetentionPolicy
    embedded: EmbeddedSeaweedFS | None = None
    created_keys: list[str] = field(default_factory=list)  # key files this start created (first run)
    _inbox: Inbox | None = field(default=None, repr=False)
    _sealer: Sealer | None = field(default=None, repr=False)

    @property
    def schedules(self) -> Schedules:
        return Schedules(self.engine, self.retention, self.keyring)

    def retain_until(self, stream: str, at: datetime) -> tuple[datetime, str]:
        """Retain-until for an object of `stream` sealed at `at`, from the schedule in force."""
        decision = self.schedules.decide(stream, at)
        return decision.retain_until, decision.label

    @property
    def signing_key(self) -> crypto.Signer:
        """The signing key in force (re-read after a rotation)."""
        return self.key_file.get()

    @property
    def public_key(self) -> crypto.PublicKey:
        """The public half of the key in force (read without the private key where it can be)."""
        return self.key_file.public_key()

    @property
    def can_sign(self) -> bool:
        """False for an archive opened by a read-only command (`open_archive(signing=False)`)."""
        return self.key_file.signing

    @property
    def inbox(self) -> Inbox:
        if self._inbox is None:
            self._inbox = Inbox(self.engine, self.keyring, [self.settings.secret("app_secret").encode()])
        return self._inbox

    def normalizer(self) -> Normalizer:
        return Normalizer(self.engine, self.keyring, self.inbox)

    def media_fetcher(self) -> MediaFetcher:
        token = self.settings.graph_token_value()
        graph = GraphClient(self.settings.graph_base_url, token) if token else None
        policy = MediaPolicy(max_attempts=self.settings.media_max_attempts,
                             retry_base=timedelta(seconds=self.settings.media_retry_base_seconds))
        return MediaFetcher(self.engine, self.store, self.keyring, graph, self.retain_until, policy,
                            concurrency=self.settings.media_concurrency)

    def reconciler(self) -> Reconciler:
        return Reconciler(self.engine, self.keyring, grace=timedelta(seconds=self.settings.reconcile_grace_seconds),
                          silence_warning=timedelta(days=self.settings.app_silence_warning_days))

    def holds(self) -> Holds:
        def matching(where: str) -> list[tuple[str, int]]:
            try:
                rows = self.query_engine().query(f"SELECT stream, seq FROM records WHERE {where}").rows
            except EmptyArchive:
                return []  # nothing sealed yet: the hold applies to what is sealed later
            return [(r[0], int(r[1])) for r in rows]

        return Holds(self.engine, self.store, self.keyring, matching)

    def certificate_retention(self) -> datetime:
        """Certificates and decisions are kept as long as the archive's own audit records."""
        return self.retain_until("audit", datetime.now(UTC))[0]

    def certifier(self) -> Certifier:
        return Certifier(self.engine, self.store, self.keyring, self.key_file.get, self.certificate_retention())

    def rotate_kek(self, actor: str, batch: int = 500, to: str | None = None) -> KekRotation:
        """`archiver.keys.rotate_kek` with its start and end sealed on the audit stream (`to`: the
        new KMS key, for a KEK in KMS)."""
        kek: Any = self.keyring.kek
        append_audit(self.engine, self.keyring, "audit", "keys.rotate_kek.started", actor,
                     {"kek_versions": kek.versions, "to": to})
        result = rotate_kek(self.engine, kek, batch, to)
        append_audit(self.engine, self.keyring, "audit", "keys.rotate_kek.finished", actor,
                     {"old_kek_ids": result.old_kek_ids, "new_kek_id": result.new_kek_id,
                      "rewrapped": result.rewrapped, "resumed": result.resumed, "destroyed": result.old_kek_ids,
                      "destroyed_at": result.destroyed_at})
        self.sealer().seal_stream(AUDIT_STREAM)
        return result

    def rotate_signing(self, actor: str, to: str | None = None) -> dict[str, Any]:
        """A new signing key; the old one retires by a statement both sign (`archiver.keyhistory`),
        timestamped when TSAs are configured. Where the key lives decides the rest: a key file's old
        private key moves to keys/retired/, a token's old pair is destroyed on the token, a KMS key
        (`to`: the new one, the settings naming an alias) is disabled once the alias points at `to`."""
        from archiver import keyhistory
        from archiver.checkpoint import key_id

        old = self.signing_key
        new = self.key_file.successor(to)
        now = datetime.now(UTC)
        until = now + timedelta(days=36525)  # as long as anything the old key signed (no personal data)
        try:
            statement, data = keyhistory.store_rotation(self.store, old, new, now, until)
        except BaseException:
            self.key_file.abandon()
            raise
        ids = {"old_key_id": key_id(old.public_key()), "new_key_id": key_id(new.public_key())}
        fate = self.key_file.promote()  # (on a token the successor's label changes: `new` is not used after)
        stamps = 0
        if self.settings.tsa_urls:
            stamps = Timestamper(self.settings.tsa_urls.split(","), self.settings.tsa_timeout_seconds).stamp_head(
                self.store, statement, data, until)
        done = {**ids, "statement": statement, "timestamps": stamps, "old_key": fate}
        append_audit(self.engine, self.keyring, "audit", "keys.rotate_signing", actor, done)
        self.sealer().seal_stream(AUDIT_STREAM)
        return done

    def proposals(self) -> Proposals:
        return Proposals(self.engine, self.keyring, self.execute_proposal)

    def execute_proposal(self, action: str, params: dict[str, Any], actor: str) -> dict[str, Any]:
        """Carry out an approved proposal (`policies.proposals`); the outcome, without personal data."""
        if action == "erasure":
            return self.erasure().request(actor, phone=params.get("phone"), bsuid=params.get("bsuid"),
                                          subject=params.get("subject")).as_dict()
        if action == "retention_schedule":
            return {"version": self.schedules.store(params["schedule"], actor, datetime.now(UTC)).version}
        if action == "hold_release":
            lifted = self.holds().release(params["hold"], actor, params.get("release_reason") or "approved proposal")
            return {"hold": params["hold"], "lifted": len(lifted)}
        if action == "kek_rotation":
            r = self.rotate_kek(actor, to=params.get("to"))
            return {"new_kek_id": r.new_kek_id, "destroyed": r.old_kek_ids, "rewrapped": r.rewrapped}
        if action == "signing_rotation":
            return self.rotate_signing(actor, params.get("to"))
        raise InvalidInput(f"unknown action {action!r}")

    def require_schedule(self, action: str) -> None:
        """In regulated mode nothing irreversible runs on the built-in default period: the firm
        states its obligations first (issue 16: an erasure on the default was once granted)."""
        if self.settings.mode == "regulated" and not self.schedules.stored():
            raise ConfigurationError(
                f"regulated mode: no retention schedule is stored, so {action} is refused; store the firm's "
                "schedule with `strongroom retention set SCHEDULE.json` (see `strongroom retention show`)")

    def retention_run(self, acting: bool = True) -> RetentionRun:
        """`acting`: it will dispose or shred (refused in regulated mode without a schedule); a
        report of what is overdue is not."""
        if acting:
            self.require_schedule("a retention run")
        return RetentionRun(self.certifier(), self.holds())

    def erasure(self) -> Erasure:
        self.require_schedule("erasure")
        return Erasure(self.certifier(), self.holds())

    def consent(self) -> ConsentLedger:
        words = self.settings.opt_out_keywords
        keywords = tuple(w for w in words.split(",") if w.strip()) if words else DEFAULT_OPT_OUT_KEYWORDS
        return ConsentLedger(self.engine, self.keyring, keywords)

    def templates(self) -> TemplateLedger:
        return TemplateLedger(self.engine, self.keyring)

    def compliance(self) -> ComplianceChecks:
        return ComplianceChecks(self.engine, self.keyring, self.consent(), self.templates())

    def supervision(self) -> Supervision:
        return Supervision(self.engine, self.keyring, self.templates())

    def review_queue(self) -> ReviewQueue:
        return ReviewQueue(self.engine, self.keyring)

    def send_log(self) -> SendLog:
        return SendLog(self.engine, self.keyring)

    def accounts(self) -> Accounts:
        s = self.settings
        oidc = None
        if s.oidc_issuer:
            if not s.oidc_audience or not (s.oidc_jwks_file or s.oidc_jwks_url):
                raise ConfigurationError("OIDC needs STRONGROOM_OIDC_AUDIENCE and a JWKS file or URL")
            jwks = json.loads(s.oidc_jwks_file.read_text()) if s.oidc_jwks_file else None
            oidc = OidcVerifier(s.oidc_issuer, s.oidc_audience, jwks=jwks,
                                jwks_url=None if jwks is not None else s.oidc_jwks_url,
                                role_claim=s.oidc_role_claim, tenants_claim=s.oidc_tenants_claim)
        return Accounts(self.engine, self.keyring, oidc, timedelta(seconds=s.session_ttl_seconds),
                        Slots(s.login_hash_concurrency))

    def exporter(self, bates_prefix: str = "SR", volume_documents: int | None = None, period: str = "day") -> Exporter:
        return Exporter(self.engine, self.keyring, self.store, self.signing_key, self.search_index(),
                        bates_prefix, volume_documents, period, head=self._export_head)

    def _export_head(self) -> StoredHead | None:
        """An export's snapshot: the audit stream sealed (its reports and trail are proven in the
        bundle), then a fresh archive head, stamped by the TSAs."""
        sealer = self.sealer()
        sealer.seal_stream(AUDIT_STREAM)
        return sealer.write_head(force=True)

    def search_index(self) -> SearchIndex:
        return SearchIndex(self.settings.data_dir / "index" / "search.duckdb", self.engine, self.keyring)

    def sealer(self) -> Sealer:
        """This process's sealer (one, so archive heads keep their interval across passes).

        Raises:
            crypto.SignerUnavailable: this archive was opened without the signing key.
        """
        if not self.can_sign:  # refused before anything is written, not at the checkpoint
            self.key_file.get()
        if self._sealer is None:
            s = self.settings
            self._sealer = Sealer(self.engine, self.store, self.key_file.get, self.retain_until,
                                  batch_max=s.seal_batch_max, head_interval=timedelta(seconds=s.head_interval_seconds),
                                  timestamper=Timestamper(s.tsa_urls.split(","), s.tsa_timeout_seconds)
                                  if s.tsa_urls else None,
                                  publisher=Publisher(s.publish_urls.split(","), s.log_origin)
                                  if s.publish_urls else None)
        return self._sealer

    def verifier(self) -> Verifier:
        return Verifier(self.store, self.public_key)

    def expected_sizes(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {r.stream: r.tree_size for r in conn.execute(sa.select(streams.c.stream, streams.c.tree_size))}

    def query_engine(self) -> QueryEngine:
        """DuckDB over the sealed Parquet, with read-only credentials where there are any."""
        s = self.settings
        if self.embedded is not None:
            ak, sk = self.embedded.query_access_key, self.embedded.query_secret_key
        elif s.s3_query_access_key is not None and s.s3_query_secret_key is not None:
            ak, sk = s.s3_query_access_key.get_secret_value(), s.s3_query_secret_key.get_secret_value()
        else:
            ak, sk = self.store.credentials
        return QueryEngine(S3Location(self.store.bucket, self.store.endpoint_url, ak, sk, self.store.region))

    def process_pending(self, rounds: int | None = None) -> int:
        """Until the inbox is empty (or for `rounds` rounds): normalise a bounded batch, fetch due
        media, seal.

        Interleaved so a long history import is sealed as it goes rather than at the end.
        Returns the number of records sealed.
        """
        normalizer, fetcher = self.normalizer(), self.media_fetcher()
        sealer = self.sealer() if self.can_sign else None
        sealed = 0
        try:
            for _ in itertools.count() if rounds is None else range(rounds):
                normalized = normalizer.run_once(max_bytes=self.settings.normalize_batch_bytes)
                while fetcher.run_once():
                    pass
                if sealer is not None:  # (a read-only command normalises; the worker seals)
                    sealed += sealer.seal_all()
                if not normalized:
                    break
        finally:
            fetcher.close()
        return sealed

    def close(self) -> None:
        self.engine.dispose()
        if self.embedded is not None:
            self.embedded.stop()


def signer_of(settings: Settings, signing: bool = True) -> crypto.SigningKeyFile | FixedSigner:
    """The archive's signer from its settings: a key file, a key on the PKCS#11 token, or a KMS key.
    `signing=False`: only its public half will be used (`get` refuses)."""
    if settings.key_provider == "pkcs11":
        hsm = token(settings.pkcs11_module, settings.pkcs11_token, settings.pkcs11_pin_value())
        return FixedSigner(Pkcs11Signer(hsm), signing)
    if settings.key_provider == "kms":
        if not settings.kms_signing_key_id:
            raise ConfigurationError("the kms key provider needs STRONGROOM_KMS_SIGNING_KEY_ID "
                                     "(an ECC_NIST_P256 SIGN_VERIFY key)")
        return FixedSigner(KmsSigner(settings.kms_signing_key_id, settings.kms_region, settings.kms_endpoint_url),
                           signing)
    return crypto.SigningKeyFile(settings.key_path("signing"), signing)


def open_archive(settings: Settings, start_embedded: bool = True, signing: bool = True) -> Archive:
    """Keys, storage and schema ready; refuses to run in regulated mode without COMPLIANCE lock.

    `signing=False`: this process only reads (and records its reads); it never touches the private
    signing key, and whatever asks it to sign gets `crypto.SignerUnavailable`."""
    os.umask(0o077)  # the database, index, exports and logs this process creates are its user's alone
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    created = bootstrap_keys(settings, signing)
    embedded = None
    if settings.embedded_s3:
        embedded = EmbeddedSeaweedFS(settings.data_dir, settings.embedded_s3_port)
        if start_embedded:
            embedded.start()
        store = S3ObjectStore(settings.s3_bucket, embedded.endpoint, embedded.access_key, embedded.secret_key,
                              settings.s3_region)
    else:
        ak = settings.s3_access_key.get_secret_value() if settings.s3_access_key else None
        sk = settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None
        store = S3ObjectStore(settings.s3_bucket, settings.s3_endpoint, ak, sk, settings.s3_region)
    try:
        if settings.mode == "regulated":
            store.check_compliance_lock()  # never rely on application-level "no delete" alone
        else:
            store.ensure_bucket(default_retention_days=settings.retention_days)
        engine = make_engine(settings.sql_url())
        migrate(engine)
    except BaseException:
        if embedded is not None:
            embedded.stop()
        raise
    kek: crypto.Kek
    if settings.key_provider == "pkcs11":
        kek = Pkcs11Kek(token(settings.pkcs11_module, settings.pkcs11_token, settings.pkcs11_pin_value()))
    elif settings.key_provider == "kms":
        if not settings.kms_key_id:
            raise ConfigurationError("the kms key provider needs STRONGROOM_KMS_KEY_ID (the KEK)")
        kek = KmsKek(settings.kms_key_id, settings.kms_region, settings.kms_endpoint_url)
    else:
        kek = crypto.KekRing(settings.key_path("kek"))
    key_file = signer_of(settings, signing)
    kek.kek_id  # noqa: B018 - read now: a missing or unreadable KEK fails the start, not the first write
    blind = crypto.BlindIndex(crypto.read_secret_file(settings.key_path("blind_index")))
    return Archive(
        settings=settings, engine=engine, store=store, keyring=KeyRing(engine, kek, blind),
        key_file=key_file,
        retention=RetentionPolicy(days=settings.retention_days), embedded=embedded, created_keys=created,
    )


class Worker:
    """Normalise and seal every `interval` seconds until `stopping` is set.

    Errors are logged (type and message, never content) and retried with backoff: every step
    is replayable from the inbox, so a failed round loses nothing.
    """

    def __init__(self, archive: Archive, interval: float) -> None:
        self.archive = archive
        self.interval = interval
        self.stopping = threading.Event()
        self.log = structlog.get_logger("strongroom.worker")
        self._reconciled: tuple[date, datetime] | None = None
        self._retention_at: datetime | None = None
        self._retry_at: dict[str, datetime] = {}
        self._index = archive.search_index()

    def reconcile_if_due(self) -> None:
        """Reconcile yesterday once (after midnight UTC) and today every reconcile interval."""
        now = datetime.now(UTC)
        every = timedelta(seconds=self.archive.settings.reconcile_interval_seconds)
        last_day, last_at = self._reconciled or (None, None)
        if last_at is not None and now - last_at < every and last_day == now.date():
            return
        days = [now.date()] if last_day == now.date() else [now.date() - timedelta(days=1), now.date()]
        for day in days:
            self.archive.reconciler().run(day, now=now)
        self.archive.compliance().run(recheck=timedelta(days=7), now=now)  # late webhooks can change verdicts
        review = self.archive.supervision()
        review.ensure_default()
        review.commit_seeds(now)  # next month's seeds, sealed before it begins
        if last_day is not None and last_day.month != now.date().month:  # a month ended: its minimum samples
            for policy in review.policies():
                review.close_month(policy.name, last_day.strftime("%Y-%m"))
        self._reconciled = (now.date(), now)

    def retention_if_due(self) -> None:
        """Disposition and shredding of restricted subjects, once per retention interval."""
        every = self.archive.settings.retention_run_interval_seconds
        now = datetime.now(UTC)
        if every <= 0 or (self._retention_at is not None and (now - self._retention_at).total_seconds() < every):
            return
        result = self.archive.retention_run().run(now=now)
        if self.archive.erasure().process_restricted(now=now):
            self.archive.search_index().update()  # shredded subjects leave the index now
        if result.overdue:
            self.log.error("retention.overdue", count=len(result.overdue))
        self._retention_at = now

    def kek_rotation_if_due(self) -> None:
        """Rotate the KEK when it is older than STRONGROOM_KEK_ROTATION_DAYS: a shredded key is then
        unrecoverable from backups within that bound."""
        days = self.archive.settings.kek_rotation_days
        ring = self.archive.keyring.kek
        if days <= 0 or not isinstance(ring, crypto.KekRing):
            return
        age = datetime.now(UTC) - datetime.fromtimestamp(ring.path.stat().st_mtime, UTC)
        if age >= timedelta(days=days) or ring.next_path.exists():  # due, or one a crash left under way
            result = self.archive.rotate_kek("system:kek-rotation")
            self.log.info("kek.rotated", new_kek_id=result.new_kek_id, rewrapped=result.rewrapped)

    RETRY_DUTY = timedelta(minutes=5)  # a failed scheduled duty is tried again after this

    def _duty(self, name: str, call: Callable[[], T]) -> T | None:
        """Run one duty; its failure is logged and is not any other duty's (sealing always runs)."""
        if (not_before := self._retry_at.get(name)) is not None and datetime.now(UTC) < not_before:
            return None
        try:
            result = call()
        except Exception as e:
            # a project error logs its code only: a query's message can quote its SQL (and a number)
            detail = e.code if isinstance(e, StrongroomError) else str(e)[:300]
            self.log.error("worker.failed", duty=name, error=type(e).__name__, detail=detail)
            if name != "seal":
                self._retry_at[name] = datetime.now(UTC) + self.RETRY_DUTY
            return None
        self._retry_at.pop(name, None)
        return result

    def run(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            self._duty("reconcile", self.reconcile_if_due)
            self._duty("retention", self.retention_if_due)
            self._duty("kek", self.kek_rotation_if_due)
            sealed = self._duty("seal", lambda: self.archive.process_pending(rounds=8))  # ~32 MB, then a stop check
            failures = failures + 1 if sealed is None else 0
            # bounded follow-up work, so a stop signal is honoured within a round
            self._duty("checks", lambda: self.archive.compliance().run(ledger_batches=1))
            self._duty("review", lambda: self.archive.supervision().run(max_batches=1))
            if sealed or not self._index.caught_up:
                self._duty("index", lambda: self._index.update(max_batches=1))
            if sealed:
                self.log.info("worker.sealed", records=sealed)
            busy = bool(sealed) or not self._index.caught_up  # more may be waiting: no pause
            if not busy:
                self.stopping.wait(min(self.interval * (2 ** min(failures, 6)), 60.0))

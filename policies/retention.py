"""Retention: how long each sealed object is locked, from a versioned, assignable schedule.

A schedule assigns regime tags to tenants (WABAs), numbers (streams) and record classes; every
tag that applies counts, and the longest statutory period wins. GDPR's storage limitation
(Art 5(1)(e): "no longer than necessary") is a *maximum*, not a minimum: the tag ``GDPR`` on a
tenant, number or class keeps its records for the schedule's `gdpr_max_days` and no longer, unless
a statutory tag applies to them too (Art 17(3)(b): a legal obligation to keep them wins). Without
the tag, `gdpr_max_days` still applies where no tag at all does.
With no schedule stored, the configured default period applies (`RetentionPolicy`).

Periods are calendar years from the instant an object is sealed (a record is sealed after it
happened, so the lock always reaches at least record time + period). A schedule change applies
to objects sealed from then on; existing locks can only be extended — S3 Object Lock in
COMPLIANCE mode refuses to shorten them, and `extend_existing` says so instead of trying.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from archiver.db import metadata, stream_tenant
from archiver.errors import InvalidInput
from archiver.keys import KeyRing
from archiver.normalize import append_audit

retention_schedules = sa.Table(
    "retention_schedules",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("document", sa.Text, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True, slots=True)
class Regime:
    tag: str
    citation: str
    years: int
    online_years: int | None = None  # "easily accessible" window, where the rule has one
    maximum: bool = False  # a ceiling (GDPR storage limitation), never a statutory minimum


REGIMES: dict[str, Regime] = {r.tag: r for r in (
    Regime("SEC-BD", "SEC 17a-4(b)(4) broker-dealer communications", 3, 2),
    Regime("SEC", "SEC 17a-4(a)", 6, 2),
    Regime("FINRA", "FINRA 4511 (default where no period is specified)", 6),
    Regime("CFTC", "CFTC 1.31", 5, 5),
    Regime("MiFID", "MiFID II Art 16(7)", 5),
    Regime("MiFID-7", "MiFID II Art 16(7), extended to 7 years at the authority's request", 7),
    Regime("HIPAA", "HIPAA 45 CFR 164.316(b)(2)", 6),
    # EU healthcare: member-state periods for patient records (a clinic tags its numbers with its
    # own state's). Each runs from the sealing of a record here; the statutes count from the last
    # treatment or stay, which is later for an ongoing patient: choose the longest that applies.
    Regime("EU-HC-FR", "France, Code de la santé publique art. R1112-7 (hospital patient records: 20 years "
                       "from the last stay)", 20),
    Regime("EU-HC-DE", "Germany, BGB §630f(3) (patient records: 10 years after the treatment ends)", 10),
    Regime("EU-HC-NL", "Netherlands, Burgerlijk Wetboek 7:454(3) (WGBO: medical records, 20 years)", 20),
    Regime("EU-HC-AT", "Austria, Ärztegesetz 1998 §51(3) (physicians' records: 10 years)", 10),
    Regime("EU-HC-ES", "Spain, Ley 41/2002 art. 17.1 (clinical documentation: at least 5 years from each "
                       "discharge)", 5),
    Regime("EU-HC-BE", "Belgium, Law of 22 April 2019 on the quality of healthcare practice, art. 35 (patient "
                       "records: at least 30 years)", 30),
    # A ceiling, not a minimum: records under it are kept for the schedule's gdpr_max_days.
    Regime("GDPR", "GDPR Art 5(1)(e) storage limitation (personal data kept no longer than necessary for its "
                   "purpose: the schedule's gdpr_max_days)", 0, maximum=True),
)}
STATUTORY = tuple(t for t, r in REGIMES.items() if not r.maximum)


def add_years(at: datetime, years: int) -> datetime:
    """`at` plus calendar years (29 February → 1 March, never earlier than the true date)."""
    try:
        return at.replace(year=at.year + years)
    except ValueError:
        return at.replace(year=at.year + years, month=3, day=1)


def record_class(stream: str) -> str:
    if stream == "audit":
        return "audit"
    if stream.startswith("waba-"):
        return "account"
    if stream == "unrouted":
        return "unrouted"
    return "communications"


@dataclass(frozen=True, slots=True)
class Decision:
    retain_until: datetime
    version: int
    tags: tuple[str, ...]
    governing: str  # the regime (or rule) that set the period

    @property
    def label(self) -> str:
        return f"v{self.version}:{self.governing}"


@dataclass(frozen=True)
class RetentionSchedule:
    version: int = 0
    default_tags: tuple[str, ...] = ()
    tenants: dict[str, tuple[str, ...]] = field(default_factory=dict)
    numbers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    classes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    gdpr_max_days: int | None = None
    default_days: int = 2192  # when nothing else applies (the configured STRONGROOM_RETENTION_DAYS)
    extra_seconds: int = 0  # tests only: retain-until seconds in the future

    def __post_init__(self) -> None:
        for tags in (self.default_tags, *self.tenants.values(), *self.numbers.values(), *self.classes.values()):
            unknown = set(tags) - set(REGIMES)
            if unknown:
                raise InvalidInput(f"unknown retention tag(s) {sorted(unknown)}; known: {sorted(REGIMES)}")
        if self.gdpr_max_days is not None and self.gdpr_max_days <= 0:
            raise InvalidInput("gdpr_max_days must be positive")
        used = {t for tags in (self.default_tags, *self.tenants.values(), *self.numbers.values(),
                               *self.classes.values()) for t in tags}
        if "GDPR" in used and self.gdpr_max_days is None:
            raise InvalidInput("the GDPR tag keeps records for gdpr_max_days: set it (the purpose's period, in days)")
        if self.default_days < 0 or (self.default_days == 0 and self.extra_seconds <= 0):
            raise InvalidInput("a retention period must be positive")

    def tags_for(self, stream: str, tenant: str | None) -> tuple[str, ...]:
        tags = set(self.default_tags) | set(self.numbers.get(stream, ())) | set(self.classes.get(record_class(stream), ()))
        if tenant is not None:
            tags |= set(self.tenants.get(tenant, ()))
        return tuple(sorted(tags))

    def decide(self, stream: str, tenant: str | None, sealed_at: datetime) -> Decision:
        tags = self.tags_for(stream, tenant)
        statutory = [REGIMES[t] for t in tags if not REGIMES[t].maximum]
        if statutory:  # statutory minimums: the longest wins; GDPR's maximum does not cut them
            governing = max(statutory, key=lambda r: (r.years, r.tag))
            until, rule = add_years(sealed_at, governing.years), governing.tag
        elif tags and self.gdpr_max_days is not None:  # tagged GDPR (the only non-statutory tag)
            until, rule = sealed_at + timedelta(days=self.gdpr_max_days), "GDPR"
        elif self.gdpr_max_days is not None:
            until, rule = sealed_at + timedelta(days=self.gdpr_max_days), "GDPR-max"
        else:
            until, rule = sealed_at + timedelta(days=self.default_days), "default"
        until += timedelta(seconds=self.extra_seconds)
        return Decision(until.replace(microsecond=0) + timedelta(seconds=1), self.version, tags, rule)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], version: int | None = None) -> RetentionSchedule:
        def tags(v: Any) -> tuple[str, ...]:
            return tuple(v) if isinstance(v, list | tuple) else (v,)

        known = {"version", "default_tags", "tenants", "numbers", "classes", "gdpr_max_days", "default_days",
                 "extra_seconds"}
        if set(doc) - known:
            raise InvalidInput(f"unknown schedule field(s) {sorted(set(doc) - known)}")
        return cls(
            version=doc.get("version", 0) if version is None else version,
            default_tags=tags(doc.get("default_tags", ())),
            tenants={k: tags(v) for k, v in (doc.get("tenants") or {}).items()},
            numbers={k: tags(v) for k, v in (doc.get("numbers") or {}).items()},
            classes={k: tags(v) for k, v in (doc.get("classes") or {}).items()},
            gdpr_max_days=doc.get("gdpr_max_days"), default_days=doc.get("default_days", 2192),
            extra_seconds=doc.get("extra_seconds", 0),
        )


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """The period used when no schedule has been stored (STRONGROOM_RETENTION_DAYS)."""

    days: int
    seconds: int = 0  # for tests that need retain-until dates seconds in the future

    def __post_init__(self) -> None:
        if self.days < 0 or self.seconds < 0 or (self.days == 0 and self.seconds == 0):
            raise InvalidInput("a retention period must be positive")

    def retain_until(self, sealed_at: datetime) -> datetime:
        """Retain-until for an object sealed at `sealed_at` (rounded up to whole seconds)."""
        until = sealed_at + timedelta(days=self.days, seconds=self.seconds)
        return until.replace(microsecond=0) + timedelta(seconds=1)

    def schedule(self) -> RetentionSchedule:
        return RetentionSchedule(default_days=self.days, extra_seconds=self.seconds)


class Schedules:
    """The stored, versioned schedules; the newest one is in force."""

    def __init__(self, engine: sa.Engine, fallback: RetentionPolicy, keyring: KeyRing | None = None) -> None:
        self.engine = engine
        self.fallback = fallback
        self.keyring = keyring  # to seal each new version on the audit stream
        self._tenants: dict[str, str | None] = {}

    def current(self) -> RetentionSchedule:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(retention_schedules).order_by(retention_schedules.c.version.desc())
                               .limit(1)).first()
        if row is None:
            return self.fallback.schedule()
        return RetentionSchedule.from_dict(json.loads(row.document), version=row.version)

    def stored(self) -> bool:
        """Has the firm stored a schedule (rather than running on the built-in default)?"""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(retention_schedules.c.version).limit(1)).first() is not None

    def store(self, schedule_doc: dict[str, Any], actor: str, now: datetime) -> RetentionSchedule:
        """Validate and store a new version (numbered after the newest). Returns it."""
        with self.engine.begin() as conn:
            newest = conn.execute(sa.select(sa.func.max(retention_schedules.c.version))).scalar() or 0
            schedule = RetentionSchedule.from_dict(schedule_doc, version=newest + 1)
            conn.execute(sa.insert(retention_schedules).values(version=schedule.version, document=schedule.to_json(),
                                                               actor=actor, created_at=now))
        if self.keyring is not None:
            append_audit(self.engine, self.keyring, "retention_schedule", "set", actor, json.loads(schedule.to_json()),
                         now)
        return schedule

    def tenant_of(self, stream: str) -> str | None:
        if stream not in self._tenants:
            with self.engine.connect() as conn:
                self._tenants[stream] = stream_tenant(conn, stream)
        return self._tenants[stream]

    def decide(self, stream: str, sealed_at: datetime) -> Decision:
        return self.current().decide(stream, self.tenant_of(stream), sealed_at)

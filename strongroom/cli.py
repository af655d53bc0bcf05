"""`strongroom …` — serve, seal, verify, query, completeness, keys."""

from __future__ import annotations

import csv
import getpass
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import structlog
import typer
from rich.console import Console
from rich.table import Table

from archiver import crypto
from archiver.errors import ConfigurationError, StrongroomError
from archiver.normalize import append_audit
from archiver.objectstore import DirectoryObjectStore
from archiver.records import parse_instant
from audit import trail
from audit.query import QueryError
from audit.verify import Report, Verifier
from strongroom.runtime import Archive, Worker, configure_logging, open_archive
from strongroom.settings import Settings

app = typer.Typer(help="strongroom: a WORM compliance archive for WhatsApp Business coexistence numbers.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
keys_app = typer.Typer(help="Key material.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
retention_app = typer.Typer(help="Retention schedules and scheduled disposition.", no_args_is_help=True)
app.add_typer(retention_app, name="retention")
hold_app = typer.Typer(help="Legal holds.", no_args_is_help=True)
app.add_typer(hold_app, name="hold")
erasure_app = typer.Typer(help="GDPR erasure (Art 17) and access (Art 15).", no_args_is_help=True)
app.add_typer(erasure_app, name="erasure")
consent_app = typer.Typer(help="The consent ledger.", no_args_is_help=True)
app.add_typer(consent_app, name="consent")
templates_app = typer.Typer(help="The template ledger.", no_args_is_help=True)
app.add_typer(templates_app, name="templates")
index_app = typer.Typer(help="The encrypted search index.", no_args_is_help=True)
app.add_typer(index_app, name="index")
users_app = typer.Typer(help="Human accounts (password + TOTP) of the auditor API.", no_args_is_help=True)
app.add_typer(users_app, name="users")
apikey_app = typer.Typer(help="Service API keys (ingest, auditor) of the auditor API.", no_args_is_help=True)
app.add_typer(apikey_app, name="apikey")
out = Console(soft_wrap=True)  # paths and URLs stay on one line, copyable
err = Console(stderr=True, soft_wrap=True)


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def _open(settings: Settings | None = None) -> Archive:
    settings = settings or Settings()
    configure_logging(settings.log_level)
    try:
        return open_archive(settings)
    except StrongroomError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e


StreamOpt = Annotated[str, typer.Option(help="The business number (phone number id).")]
PhoneOpt = Annotated[str, typer.Option(help="The contact's phone number.")]
AtOpt = Annotated[str | None, typer.Option(help="The instant (ISO-8601 with UTC offset; default now).")]
TenantOpt = Annotated[str, typer.Option(help="WABA id.")]
NameOpt = Annotated[str, typer.Option(help="Template name.")]
LanguageOpt = Annotated[str, typer.Option(help="Template language code.")]


@contextmanager
def _session() -> Iterator[Archive]:
    """An open archive for one command, closed (and its embedded store stopped) afterwards."""
    archive = _open()
    try:
        yield archive
    finally:
        archive.close()


@app.command()
def serve() -> None:
    """Run the service: webhook receiver + ingest worker (embedded SeaweedFS unless S3 is set)."""
    import uvicorn

    from strongroom.app import create_app

    settings = Settings()
    archive = _open(settings)
    # The inbox writer thread re-acquires the GIL after every fsync; with the default 5 ms
    # switch interval it queues behind the event loop each time (a convoy that capped ingest).
    sys.setswitchinterval(0.0005)
    # Normalising and sealing are CPU-bound Python: in their own process they do not take
    # the GIL from the webhook receiver. The child attaches to the same embedded S3.
    env = {**os.environ, "STRONGROOM_EMBEDDED_S3_PORT": str(archive.embedded.s3_port)} if archive.embedded else None
    worker = WorkerSupervisor([sys.executable, "-m", "strongroom", "worker"], env)
    try:
        fastapi_app = create_app(archive)
        _banner(archive)
        tls = {"ssl_certfile": str(settings.tls_certfile), "ssl_keyfile": str(settings.tls_keyfile)} \
            if settings.tls_certfile and settings.tls_keyfile else {}
        uvicorn.run(fastapi_app, host=settings.host, port=settings.port, access_log=False, log_config=None, **tls)
    finally:
        worker.stop()
        archive.close()


class WorkerSupervisor:
    """Keeps the ingest worker process running: a worker that dies is restarted (with backoff)
    and logged, so sealing never silently stops while webhooks keep being acknowledged."""

    def __init__(self, argv: list[str], env: dict[str, str] | None) -> None:
        self.argv, self.env = argv, env
        self.stopping = threading.Event()
        self.proc = subprocess.Popen(argv, env=env)
        self.thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        delay = 1.0
        while not self.stopping.is_set():
            code = self.proc.wait()
            if self.stopping.is_set():
                return
            structlog.get_logger("strongroom.serve").error("worker.exited", code=code, restart_in=delay)
            if self.stopping.wait(delay):
                return
            delay = min(delay * 2, 60.0)
            self.proc = subprocess.Popen(self.argv, env=self.env)

    def stop(self) -> None:
        self.stopping.set()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@app.command()
def worker() -> None:
    """Normalise and seal continuously (started by `serve`; run more for scale-out)."""
    archive = _open()
    loop = Worker(archive, archive.settings.seal_interval_seconds)
    signal.signal(signal.SIGTERM, lambda *_: loop.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: loop.stopping.set())
    try:
        loop.run()  # in this thread; returns once a signal sets `stopping`
    finally:
        archive.close()


def _banner(archive: Archive) -> None:
    s = archive.settings

    def source(name: str) -> str:
        if getattr(s, name) is not None:
            return f"environment variable STRONGROOM_{name.upper()}"
        return str(getattr(s, f"{name}_file") or s.secrets_dir / name)

    out.print(f"[bold]strongroom[/bold] serving on http://{s.host}:{s.port}")
    out.print(f"  webhook URL   : http://{s.host}:{s.port}/webhooks/whatsapp  (put TLS in front for Meta)")
    out.print(f"  verify token  : {source('verify_token')}")
    out.print(f"  app secret    : {source('app_secret')}")
    out.print(f"  object store  : {archive.store.endpoint_url or 'AWS S3'} bucket {archive.store.bucket}"
              f"{' (embedded SeaweedFS, Object Lock COMPLIANCE)' if archive.embedded else ''}")
    out.print(f"  database      : {s.sql_url().split('@')[-1]}")
    out.print(f"  signing key   : {s.key_path('signing')} (public: strongroom keys public)")
    media = (f"{s.graph_base_url}, token from "
             + ("STRONGROOM_GRAPH_TOKEN" if s.graph_token is not None else str(s.graph_token_file))
             if s.graph_token is not None or s.graph_token_file is not None
             else "[yellow]no Graph token: attachments wait, and become gap records after 7 days[/yellow]")
    out.print(f"  media         : {media}")
    out.print("  Ctrl-C stops the service and everything it started.")


@app.command()
def seal() -> None:
    """Normalise every pending webhook and seal every stream once, then exit."""
    with _session() as archive:
        sealed = archive.process_pending()
        out.print(f"sealed {sealed} records")


def _print_report(report: Report) -> None:
    table = Table("stream", "segments", "records", "checkpoints", "root")
    for s in report.streams:
        table.add_row(s.stream, str(s.segments), str(s.records), str(s.checkpoints), s.root[:16] + "…")
    out.print(table)
    for f in report.failures:
        err.print(f"[red]FAIL[/red] {f}")
    if report.ok:
        out.print(f"[green]verified[/green] {report.records} records in {len(report.streams)} streams")
    elif not report.streams:
        err.print("[red]nothing to verify[/red]: no sealed segments or checkpoints found")


@app.command()
def verify(
    from_dir: Annotated[Path | None, typer.Option(help="Verify a local copy of the objects instead of the store.")] = None,
    public_key: Annotated[Path | None, typer.Option(help="PEM public key (default: this archive's own).")] = None,
    stream: Annotated[list[str] | None, typer.Option(help="Only these streams.")] = None,
) -> None:
    """Re-read every segment and checkpoint and check chain, Merkle roots, signatures, locks."""
    if from_dir is not None:
        if public_key is None:
            err.print("[red]error:[/red] --from-dir needs --public-key")
            raise typer.Exit(2)
        report = Verifier(DirectoryObjectStore(from_dir), crypto.load_public_key(public_key.read_bytes()),
                          check_locks=False).verify(only=stream)
        _print_report(report)
        raise typer.Exit(0 if report.ok else 1)
    with _session() as archive:
        key = crypto.load_public_key(public_key.read_bytes()) if public_key else archive.public_key
        report = Verifier(archive.store, key).verify(expected_sizes=archive.expected_sizes(), only=stream)
        trail.record(archive.engine, archive.keyring, "verify", _actor(),
                     {"ok": report.ok, "records": report.records, "failures": [str(f) for f in report.failures]})
        archive.sealer().seal_stream(trail.AUDIT_STREAM)
        _print_report(report)
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="DuckDB SQL over the `records` view.")],
    fmt: Annotated[str, typer.Option("--format", help="table, json or csv")] = "table",
) -> None:
    """Run DuckDB SQL over the sealed Parquet in S3 (view `records`; content stays ciphertext)."""
    with _session() as archive:
        try:
            result = archive.query_engine().query(sql)
        except QueryError as e:
            err.print(f"[red]query failed:[/red] {e}")
            raise typer.Exit(1) from e
        finally:
            trail.record(archive.engine, archive.keyring, "query", _actor(), {"sql": sql})
            archive.sealer().seal_stream(trail.AUDIT_STREAM)
    if fmt == "json":
        for row in result.rows:
            out.print_json(json.dumps(dict(zip(result.columns, row, strict=True)), default=_jsonable))
    elif fmt == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(result.columns)
        w.writerows([[_jsonable(v) if isinstance(v, bytes) else v for v in r] for r in result.rows])
    else:
        table = Table(*result.columns)
        for row in result.rows:
            table.add_row(*[str(_jsonable(v)) if isinstance(v, bytes) else str(v) for v in row])
        out.print(table)
        out.print(f"{len(result.rows)} rows")


@app.command()
def completeness(
    day: Annotated[str | None, typer.Option(help="UTC day YYYY-MM-DD (default: yesterday).")] = None,
    stream: Annotated[list[str] | None, typer.Option(help="Only these streams (phone number ids).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the reports as JSON.")] = False,
) -> None:
    """Reconcile one day: record gaps (unarchived references, missing history chunks, disconnects,
    app silence), seal the completeness report on the audit stream, and print it.

    Exit status 0 when every stream is complete for the day, 1 when any gap or warning is open.
    """
    try:
        the_day = date.fromisoformat(day) if day else datetime.now(UTC).date() - timedelta(days=1)
    except ValueError as e:
        err.print(f"[red]error:[/red] --day must be YYYY-MM-DD, got {day!r}")
        raise typer.Exit(2) from e
    with _session() as archive:
        archive.process_pending()  # reconcile against everything already received
        reports = [r.as_dict() for r in archive.reconciler().run(the_day, streams=stream)]
        trail.record(archive.engine, archive.keyring, "completeness", _actor(),
                     {"day": the_day.isoformat(), "streams": [r["stream"] for r in reports]})
        archive.sealer().seal_all()
    if as_json:
        sys.stdout.write(json.dumps(reports, indent=2, default=str) + "\n")
    else:
        _print_completeness(the_day, reports)
    raise typer.Exit(0 if all(r["complete"] for r in reports) else 1)


def _print_completeness(day: date, reports: list[dict[str, Any]]) -> None:
    table = Table("stream", "complete", "messages", "statuses", "media", "gaps (day)", "open gaps", "warnings",
                  title=f"completeness {day.isoformat()}")
    for r in reports:
        table.add_row(r["stream"], "yes" if r["complete"] else "[red]no[/red]",
                      " ".join(f"{k}={v}" for k, v in r["counts"].items()) or "-",
                      str(sum(r["statuses"].values())), " ".join(f"{k}={v}" for k, v in r["media"].items()) or "-",
                      str(len(r["gaps_in_day"])), str(r["open_gaps"]), str(len(r["warnings"])))
    out.print(table)
    for r in reports:
        for g in r["gaps_opened"] + r["gaps_closed"]:
            out.print(f"{r['stream']}: {g['gap']} {g['natural_key']}")
        for w in r["warnings"]:
            out.print(f"[yellow]{r['stream']}: warning {w['warning']} (last app activity {w['last_app_activity']})")
    out.print("coverage limits of coexistence: " + ", ".join(sorted(reports[0]["coverage_limits"])) if reports
              else "no activity that day")


def _emit(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")


@retention_app.command("show")
def retention_show() -> None:
    """Print the retention schedule in force (version, tags per tenant/number/class, GDPR maximum)."""
    with _session() as archive:
        schedule = archive.schedules.current()
    _emit(json.loads(schedule.to_json()))


@retention_app.command("set")
def retention_set(path: Annotated[Path, typer.Argument(help="JSON schedule document.")]) -> None:
    """Store a new schedule version. It applies to objects sealed from now on; existing COMPLIANCE
    locks stay as they are (the store refuses to shorten them)."""
    with _session() as archive:
        try:
            schedule = archive.schedules.store(json.loads(path.read_text()), _actor(), datetime.now(UTC))
        except (ValueError, OSError) as e:
            err.print(f"[red]error:[/red] {e}")
            raise typer.Exit(2) from e
        archive.sealer().seal_all()
    out.print(f"retention schedule v{schedule.version} in force for objects sealed from now on; "
              "existing objects keep their locks (COMPLIANCE locks can only be extended, never shortened)")


@retention_app.command("run")
def retention_run() -> None:
    """Delete objects past retain-until with no hold (signed certificate per batch), shred restricted
    subjects whose blocking reason ended, and print the overdue report (expected: 0). Exit 1 if overdue."""
    with _session() as archive:
        result = archive.retention_run().run(actor=_actor())
        shredded = archive.erasure().process_restricted(actor=_actor())
        archive.sealer().seal_all()
    _emit({"certificates": result.certificates, "deleted": len(result.deleted), "held": len(result.held),
           "not_yet": len(result.not_yet), "shredded_subjects": [d.subject for d in shredded],
           "overdue": result.overdue, "busy": result.skipped_busy})
    raise typer.Exit(1 if result.overdue else 0)


@hold_app.command("place")
def hold_place(
    matter: Annotated[str, typer.Option(help="Matter name or number.")],
    stream: Annotated[list[str] | None, typer.Option(help="Phone number id(s).")] = None,
    phone: Annotated[list[str] | None, typer.Option(help="Contact phone number(s).")] = None,
    conversation: Annotated[list[str] | None, typer.Option(help="Conversation (subject) id(s).")] = None,
    start: Annotated[str | None, typer.Option("--from", help="ISO-8601 start (inclusive).")] = None,
    end: Annotated[str | None, typer.Option("--to", help="ISO-8601 end (exclusive).")] = None,
    query: Annotated[str | None, typer.Option(help="Saved query: a DuckDB WHERE clause over records.")] = None,
) -> None:
    """Place a legal hold: S3 legal hold on every object with an in-scope record."""
    from policies.holds import HoldError, Scope

    with _session() as archive:
        try:
            hold = archive.holds().place(matter, Scope(streams=stream or [], phones=phone or [],
                                                       subjects=conversation or [], start=start, end=end,
                                                       query=query), _actor())
        except (HoldError, ValueError) as e:
            err.print(f"[red]error:[/red] {e}")
            raise typer.Exit(2) from e
        archive.sealer().seal_all()
    _emit({"hold": hold.id, "matter": hold.matter, "objects": hold.objects})


@hold_app.command("release")
def hold_release(hold_id: str, reason: Annotated[str, typer.Option(help="Why (recorded).")]) -> None:
    """Release a hold (objects stay held while another active hold covers them)."""
    from policies.holds import HoldError

    with _session() as archive:
        try:
            lifted = archive.holds().release(hold_id, _actor(), reason)
        except HoldError as e:
            err.print(f"[red]error:[/red] {e}")
            raise typer.Exit(2) from e
        archive.sealer().seal_all()
    _emit({"hold": hold_id, "lifted": lifted})


@hold_app.command("list")
def hold_list() -> None:
    """Every hold with its scope (contacts as blind indexes) and objects."""
    with _session() as archive:
        holds = archive.holds().list()
    _emit([h.__dict__ for h in holds])


@erasure_app.command("request")
def erasure_request(
    phone: Annotated[str | None, typer.Option(help="The person's current phone number.")] = None,
    bsuid: Annotated[str | None, typer.Option(help="Their business-scoped user id.")] = None,
    subject: Annotated[str | None, typer.Option(help="A subject id.")] = None,
) -> None:
    """Decide an erasure request: shred now, or refuse under Art 17(3)(b)/(e) and restrict."""
    from policies.erasure import ErasureError

    with _session() as archive:
        try:
            decision = archive.erasure().request(_actor(), phone=phone, bsuid=bsuid, subject=subject)
        except ErasureError as e:
            err.print(f"[red]error:[/red] {e}")
            raise typer.Exit(2) from e
        archive.sealer().seal_all()
        archive.search_index().update()  # a shredded subject leaves the search index too
    _emit(decision.as_dict())


@erasure_app.command("access")
def erasure_access(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to write the export to (created, must be new).")],
    phone: Annotated[str | None, typer.Option(help="The person's current phone number.")] = None,
    bsuid: Annotated[str | None, typer.Option(help="Their business-scoped user id.")] = None,
    subject: Annotated[str | None, typer.Option(help="A subject id.")] = None,
) -> None:
    """Art 15 access: everything held about one person (records decrypted, attachments) into a directory."""
    from policies.erasure import ErasureError

    with _session() as archive:
        try:
            er = archive.erasure()
            summary = er.access_export(er.subject_for(phone, bsuid, subject), out_dir, _actor())
        except (ErasureError, FileExistsError) as e:
            err.print(f"[red]error:[/red] {e}")
            raise typer.Exit(2) from e
        archive.sealer().seal_all()
    _emit(summary)


@app.command()
def violations(
    stream: Annotated[str | None, typer.Option(help="Only this number (phone number id).")] = None,
    kind: Annotated[str | None, typer.Option("--type", help="Only this violation type.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Run the compliance checks on every outbound message and list violations with their evidence.

    Exit status 1 when there are violations (for cron and alerting), 0 when there are none."""
    with _session() as archive:
        archive.process_pending()
        checks = archive.compliance()
        checks.run()
        found = checks.list(stream, kind)
        append_audit(archive.engine, archive.keyring, "audit", "violations", _actor(),
                     {"stream": stream, "type": kind, "count": len(found)})
        archive.sealer().seal_all()
    if as_json:
        _emit(found)
    else:
        table = Table("sent at", "stream", "violation", "wamid", "evidence", title="violations")
        for v in found:
            table.add_row(v["sent_at"], v["stream"], v["violation"], v["wamid"] or "-",
                          json.dumps(v["evidence"], default=str)[:120])
        out.print(table)
        out.print(f"{len(found)} violations")
    raise typer.Exit(1 if found else 0)


@app.command("outbound")
def outbound_record(
    path: Annotated[Path, typer.Argument(help="JSON lines: {phone_number_id, request, response, sent_at}.")],
) -> None:
    """Archive messages sent through the Cloud API (Meta sends no webhook with their content)."""
    from archiver.outbound import SendError

    items = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    with _session() as archive:
        try:
            added = archive.send_log().record(items)
        except SendError as e:
            err.print(f"[red]error:[/red] {e} (nothing was recorded)")
            raise typer.Exit(2) from e
        archive.sealer().seal_all()
    out.print(f"{added} new of {len(items)} sends archived")


def _when(value: str | None) -> datetime:
    """The instant `--at` names (default now)."""
    return _instant(value, "at") if value else datetime.now(UTC)  # type: ignore[return-value]


def _instant(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_instant(value)
    except ValueError as e:
        err.print(f"[red]error:[/red] --{name}: {e}")
        raise typer.Exit(2) from e


@consent_app.command("record")
def consent_record(
    stream: StreamOpt,
    phone: PhoneOpt,
    category: Annotated[str, typer.Option(help="marketing, utility, authentication or service.")],
    action: Annotated[str, typer.Option(help="opt_in or opt_out.")],
    method: Annotated[str, typer.Option(help="How it was given: web_form, checkbox, paper, call, …")],
    evidence: Annotated[Path | None, typer.Option(help="File whose SHA-256 is the evidence (form text, "
                                                        "screenshot); only the hash is kept.")] = None,
    evidence_ref: Annotated[str | None, typer.Option(help="A reference, e.g. the form version.")] = None,
    at: AtOpt = None,
) -> None:
    """Append an opt-in or opt-out given outside WhatsApp, with its evidence."""
    import hashlib

    from archiver.identity import IdentityBook

    when = _when(at)
    with _session() as archive:
        bi = archive.keyring.blind_index("wa", phone)
        subject = IdentityBook(archive.engine).at("wa", bi, when)
        if subject is None:
            err.print("[red]error:[/red] no archived contact held that number then; record consent once they exist")
            raise typer.Exit(2)
        sha = hashlib.sha256(evidence.read_bytes()).hexdigest() if evidence else None
        try:
            archive.consent().record(stream, subject, category, action, method, _actor(), when, sha, evidence_ref)
        except ValueError as e:
            err.print(f"[red]error:[/red] {e}")
            raise typer.Exit(2) from e
        archive.sealer().seal_all()
    out.print(f"recorded {action} for {category} (evidence sha256 {sha or '-'})")


@consent_app.command("show")
def consent_show(
    stream: StreamOpt,
    phone: PhoneOpt,
    at: AtOpt = None,
) -> None:
    """Consent per category as of an instant, with the entry that decided it, and the full history."""
    from archiver.identity import IdentityBook
    from policies.consent import CATEGORIES

    when = _when(at)
    with _session() as archive:
        ledger = archive.consent()
        ledger.sync()
        subject = IdentityBook(archive.engine).at("wa", archive.keyring.blind_index("wa", phone), when)
        doc = {"as_of": when.isoformat(), "subject": subject, "state": {}, "history": []}
        if subject:
            doc["state"] = {c: ledger.state(stream, subject, c, when).__dict__ for c in CATEGORIES}
            doc["history"] = ledger.history(stream, subject)
        append_audit(archive.engine, archive.keyring, "audit", "consent_show", _actor(),
                     {"stream": stream, "subject": subject, "as_of": when.isoformat()})
        archive.sealer().seal_all()
    _emit(doc)


@templates_app.command("register")
def templates_register(
    tenant: TenantOpt,
    name: NameOpt,
    language: LanguageOpt,
    category: Annotated[str, typer.Option(help="MARKETING, UTILITY or AUTHENTICATION.")],
    body: Annotated[Path, typer.Option(help="File with the template body as submitted (kept as a hash).")],
    at: AtOpt = None,
) -> None:
    """Record a template version as submitted to Meta."""
    with _session() as archive:
        new = archive.templates().register(tenant, name, language, category, body.read_text(), _actor(), _when(at),
                                           status="PENDING")
        archive.sealer().seal_all()
    out.print("recorded" if new else "already recorded (same body)")


@templates_app.command("show")
def templates_show(
    tenant: TenantOpt,
    name: NameOpt,
    language: LanguageOpt,
    at: AtOpt = None,
) -> None:
    """A template's status, category and version as of an instant."""
    when = _when(at)
    with _session() as archive:
        ledger = archive.templates()
        ledger.sync()
        state = ledger.state(tenant, name, language, when)
    _emit({"as_of": when.isoformat(), **state.__dict__})


@index_app.command("update")
def index_update() -> None:
    """Index newly sealed messages and purge shredded subjects."""
    with _session() as archive:
        archive.process_pending()
        added = archive.search_index().update()
    out.print(f"{added} messages indexed")


@index_app.command("rebuild")
def index_rebuild() -> None:
    """Throw the search index away and rebuild it from the sealed archive."""
    with _session() as archive:
        added = archive.search_index().rebuild()
        append_audit(archive.engine, archive.keyring, "audit", "index_rebuild", _actor(), {"documents": added})
        archive.sealer().seal_all()
    out.print(f"search index rebuilt: {added} messages")


@app.command()
def search(
    query: Annotated[str, typer.Argument(help='Reviewer query, e.g. \'trade w/5 confirm AND origin:app\'.')],
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    cursor: Annotated[str | None, typer.Option(help="Next-page cursor from a previous page.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Search message text and metadata (exact counts, stable pages); itself an audit event."""
    import hashlib

    from audit.searchlang import QuerySyntaxError

    with _session() as archive:
        index = archive.search_index()
        index.update()
        try:
            page = index.search(query, limit=limit, cursor=cursor)
        except (QuerySyntaxError, ValueError) as e:
            err.print(f"[red]query error:[/red] {e}")
            raise typer.Exit(2) from e
        digest = hashlib.sha256(json.dumps(page.items, sort_keys=True, default=str).encode()).hexdigest()
        append_audit(archive.engine, archive.keyring, "audit", "search", _actor(),
                     {"query": query, "parsed": page.query, "total": page.total, "returned": len(page.items),
                      "result_sha256": digest})
        archive.sealer().seal_all()
    if as_json:
        _emit({"total": page.total, "query": page.query, "next_cursor": page.next_cursor, "items": page.items})
        return
    table = Table("sent", "stream", "origin", "direction", "type", "wamid", "text", title=f"{page.total} matches")
    for h in page.items:
        table.add_row(str(h["event_time"]), h["stream"], h["origin"] or "", h["direction"] or "", h["type"] or "",
                      h["wamid"] or "", (h["text"] or "")[:80])
    out.print(table)
    if page.next_cursor:
        out.print(f"next page: --cursor {page.next_cursor}")


@app.command()
def export(
    out_dir: Annotated[Path, typer.Option("--out", help="New directory for the bundle.")],
    matter: Annotated[str, typer.Option(help="Matter name or number.")],
    requested_by: Annotated[str, typer.Option(help="Who asked for the production (recorded in custody).")],
    query: Annotated[str | None, typer.Option(help="Reviewer query (the search language); omit for everything.")] = None,
    stream: Annotated[list[str] | None, typer.Option(help="Only these numbers (phone number ids).")] = None,
    conversation: Annotated[list[str] | None, typer.Option(help="Only these conversations (subject ids).")] = None,
    participant: Annotated[list[str] | None, typer.Option(
        help="Only conversations with this phone number (whoever held it in the time range).")] = None,
    tenant: Annotated[list[str] | None, typer.Option(help="Only these tenants (WABA ids).")] = None,
    start: Annotated[str | None, typer.Option("--from", help="ISO-8601 with zone, inclusive (sent time).")] = None,
    end: Annotated[str | None, typer.Option("--to", help="ISO-8601 with zone, exclusive.")] = None,
    approved_by: Annotated[str | None, typer.Option(help="Who approved it.")] = None,
    request_ref: Annotated[str | None, typer.Option(help="Subpoena / 8210 request / audit letter reference.")] = None,
    bates_prefix: Annotated[str, typer.Option(help="Control number prefix.")] = "SR",
    volume_documents: Annotated[int | None, typer.Option(help="Documents per volume (default: one volume).")] = None,
    period: Annotated[str, typer.Option(help="One RSMF per conversation per 'day' (UTC) or 'month'.")] = "day",
) -> None:
    """Produce a regulator bundle (RSMF, DAT/OPT, JSONL/Parquet, HTML, signed manifest); itself audited."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from exporters.bundle import Custody, ExportScope
    from exporters.sinks import DirectorySink

    scope = ExportScope(matter, query, tenant, stream or [], conversation or [], _instant(start, "from"),
                        _instant(end, "to"))
    try:
        sink = DirectorySink(out_dir)
    except FileExistsError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    with _session() as archive:
        archive.process_pending()  # the exporter brings the search index up to date when there is a query
        if participant:
            found, nobody = archive.exporter().participants(participant, scope.start, scope.end)
            if nobody:
                err.print(f"[red]error:[/red] no archived conversation with "
                          f"{', '.join(participant[i] for i in nobody)} in the time range")
                raise typer.Exit(2)
            scope.conversations = sorted(set(scope.conversations) | set(found))
        with Progress(TextColumn("conversations"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=err) as bar:
            task = bar.add_task("export", total=None)
            result = archive.exporter(bates_prefix, volume_documents, period).run(
                scope, sink, Custody(requested_by, approved_by, request_ref), _actor(),
                progress=lambda done, total: bar.update(task, completed=done, total=total))
        archive.sealer().seal_all()
    _emit({"export_id": result.export_id, "out": str(out_dir), "manifest_sha256": result.manifest_sha256,
           "counts": result.manifest["counts"]})


@app.command("verify-bundle")
def verify_bundle(
    path: Annotated[Path, typer.Argument(help="Bundle directory or zip.")],
    public_key: Annotated[Path, typer.Option(help="The archive's public key (PEM), from `strongroom keys public`.")],
) -> None:
    """Verify an export bundle offline: signature, file hashes, counts, checkpoints, every record's proof."""
    from exporters import verify_bundle as vb

    failures = vb.verify(path, vb.load_public_key(public_key.read_bytes()))
    for f in failures:
        out.print(f"[red]FAIL[/red] {f}")
    if failures:
        out.print(f"[red]{len(failures)} failure(s)[/red]")
        raise typer.Exit(1)
    out.print("[green]bundle verifies[/green]")


def _jsonable(v: object) -> object:
    if isinstance(v, bytes):
        return v.hex()
    return str(v)


@keys_app.command("public")
def keys_public() -> None:
    """Print the checkpoint-signing public key (PEM): all a third party needs to verify."""
    settings = Settings()
    try:
        key = crypto.load_signing_key(settings.key_path("signing"))
    except ConfigurationError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    sys.stdout.write(crypto.public_key_pem(key.public_key()).decode())


RoleOpt = Annotated[str, typer.Option(help="ingest, auditor, compliance, admin or regulator.")]
TenantsOpt = Annotated[list[str] | None, typer.Option("--tenant", help="WABA id(s) it may see (omit: all; "
                                                                    "compliance, admin and regulator only).")]


def _accounts_call(call: Any) -> Any:
    from audit.auth import AccountError

    with _session() as archive:
        try:
            result = call(archive.accounts())
        except AccountError as e:
            err.print(f"[red]error:[/red] {e}")
            raise typer.Exit(2) from e
        archive.sealer().seal_all()  # the account change is on the sealed audit stream now
    return result


@users_app.command("add")
def users_add(name: str, role: RoleOpt, tenant: TenantsOpt = None) -> None:
    """Create a person's account. Prints the password and TOTP secret once: hand them over securely.

    The first admin is created here (on the server); later accounts via the API or here. A
    `regulator` account is the break-glass path for the designated third party (R-26)."""
    created = _accounts_call(lambda a: a.create_user(name, role, tenant, _actor()))
    _emit(created)
    err.print("[yellow]shown once:[/yellow] only a scrypt hash of the password and an encrypted TOTP secret are kept")


@users_app.command("disable")
def users_disable(principal_id: str) -> None:
    """Disable an account and end its sessions."""
    _accounts_call(lambda a: a.disable_user(principal_id, _actor()))
    _emit({"disabled": principal_id})


@users_app.command("list")
def users_list() -> None:
    """Accounts and API keys (never their secrets)."""
    _emit(_accounts_call(lambda a: a.list()))


@apikey_app.command("create")
def apikey_create(name: str, role: RoleOpt, tenant: TenantsOpt = None) -> None:
    """Create a service API key. Prints the token once; only its SHA-256 is kept."""
    _emit(_accounts_call(lambda a: a.create_api_key(name, role, tenant, _actor())))


@apikey_app.command("revoke")
def apikey_revoke(key_id: str) -> None:
    _accounts_call(lambda a: a.revoke_api_key(key_id, _actor()))
    _emit({"revoked": key_id})


@app.command()
def openapi(out_file: Annotated[Path | None, typer.Option("--out", help="Write here instead of stdout.")] = None
            ) -> None:
    """Print (or write) the auditor API's OpenAPI document."""
    from strongroom.app import create_app

    with _session() as archive:
        doc = create_app(archive).openapi()
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if out_file:
        out_file.write_text(text)
    else:
        sys.stdout.write(text)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

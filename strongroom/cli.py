"""`strongroom …` — serve, seal, verify, search, export, ledgers, holds, keys, accounts.

Fast to start: this module imports only the command-line kit; each command imports what it uses
when it runs (`strongroom --help` does not load the archive, DuckDB or the web stack).

Errors: every `StrongroomError` a command raises is printed as one line and ends the command with
the error's exit code (docs/errors.md), whichever command raised it. Reads of archived data or
ledger state go through `audit.access`, exactly like the API's: one access event each, attributed
to whoever signed in with `strongroom login`, or else to the server's local operator (`cli:<user>`).
"""

from __future__ import annotations

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
from typing import TYPE_CHECKING, Annotated, Any

import typer
import typer.core
from rich.console import Console
from rich.table import Table

from archiver.errors import (  # a few small classes: this costs the CLI's start nothing
    Forbidden,
    InvalidInput,
    NotFound,
    StateConflict,
    StrongroomError,
    Unauthenticated,
    Unavailable,
)

if TYPE_CHECKING:
    from audit.access import Access
    from audit.auth import Principal
    from audit.verify import Report
    from strongroom.runtime import Archive
    from strongroom.settings import Settings


class _Commands(typer.core.TyperGroup):
    """The root group: a project error ends any command with one line and its exit code."""
    def invoke(self, ctx: Any) -> Any:  # click's Context (typer vendors click)
        try:
            return super().invoke(ctx)
        except StrongroomError as e:
            err.print(f"[red]error:[/red] {e}", markup=True, highlight=False)
            raise typer.Exit(e.exit_code) from e


app = typer.Typer(help="strongroom: a WORM compliance archive for WhatsApp Business coexistence numbers.",
                  no_args_is_help=True, pretty_exceptions_enable=False, cls=_Commands)


def _group(name: str, help: str) -> typer.Typer:
    group = typer.Typer(help=help, no_args_is_help=True)
    app.add_typer(group, name=name)
    return group


keys_app = _group("keys", "Key material.")
retention_app = _group("retention", "Retention schedules and scheduled disposition.")
hold_app = _group("hold", "Legal holds.")
erasure_app = _group("erasure", "GDPR erasure (Art 17) and access (Art 15).")
consent_app = _group("consent", "The consent ledger.")
templates_app = _group("templates", "The template ledger.")
index_app = _group("index", "The encrypted search index.")
users_app = _group("users", "Human accounts (password + TOTP) of the auditor API.")
apikey_app = _group("apikey", "Service API keys (ingest, auditor) of the auditor API.")
numbers_app = _group("numbers", "Business numbers and the tenant (WABA) each belongs to.")
proof_app = _group("proof", "Proofs a verifier outside the archive asks for.")
proposals_app = _group("proposals", "Four eyes: irreversible decisions proposed by one person, approved by another.")
quarantine_app = _group("quarantine", "Signed bodies set aside because they could not be archived as records.")
out = Console(soft_wrap=True)  # paths and URLs stay on one line, copyable
err = Console(stderr=True, soft_wrap=True)


def _unix_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _actor() -> str:
    return f"cli:{_unix_user()}"


def _settings() -> Settings:
    from strongroom.settings import Settings

    return Settings()


def _open(settings: Settings | None = None, signing: bool = True) -> Archive:
    from strongroom.runtime import configure_logging, open_archive

    settings = settings or _settings()
    configure_logging(settings.log_level)
    archive = open_archive(settings, signing=signing)
    if archive.created_keys:  # the first run of any command on this data dir
        err.print(f"[bold yellow]new keys:[/bold yellow] {', '.join(archive.created_keys)}")
        err.print("[yellow]Back up keys/ now, off this machine (an encrypted copy, in two places): without the "
                  "KEK nothing can be decrypted, without the signing key no new checkpoint matches the published "
                  "public key.[/yellow]")
    return archive


@contextmanager
def _session(signing: bool = True) -> Iterator[Archive]:
    """An open archive for one command, closed (and its embedded store stopped) afterwards.

    `signing=False` for commands that only read: they never load the private signing key (a
    reviewer's host needs only the ``.pub``), and the worker seals the access events they record."""
    archive = _open(signing=signing)
    try:
        yield archive
    finally:
        archive.close()


# -- who is reading -------------------------------------------------------------------------------


def _session_file(settings: Settings) -> Path:
    """Where `strongroom login` keeps this unix user's session token for this archive (0600)."""
    explicit = os.environ.get("STRONGROOM_SESSION_FILE")
    return Path(explicit) if explicit else settings.data_dir / "sessions" / f"{os.getuid()}.json"


def _principal(archive: Archive) -> Principal:
    """Whoever signed in with `strongroom login`, else the server's local operator."""
    from audit.access import local_operator

    path = _session_file(archive.settings)
    if not path.exists():
        return local_operator(_unix_user())
    token = json.loads(path.read_text())["token"]
    try:
        return archive.accounts().authenticate(f"Bearer {token}")
    except Unauthenticated as e:
        raise Unauthenticated(f"the session saved in {path} has expired or was ended: run `strongroom login` "
                              "again, or `strongroom logout` to act as the local operator") from e


@contextmanager
def _reading(signing: bool = False) -> Iterator[tuple[Archive, Access, Principal]]:
    """An archive, its access layer and the reader, for a command that shows archived data.

    Without the signing key (the default: reading needs none) the access event is committed and
    the worker seals it at its next round; a command that signs (export) seals it itself."""
    from audit.access import Access

    with _session(signing) as archive:
        try:
            yield archive, Access(archive), _principal(archive)
        finally:
            if archive.can_sign:
                try:  # the access event is committed; seal it now rather than at the worker's next round
                    archive.sealer().seal_stream("audit")
                except Exception as e:  # never hide the command's own outcome behind this
                    err.print(f"[yellow]the audit stream will be sealed by the worker ({type(e).__name__})[/yellow]")


StreamOpt = Annotated[str, typer.Option(help="The business number (phone number id).")]
PhoneOpt = Annotated[str, typer.Option(help="The contact's phone number.")]
AtOpt = Annotated[str | None, typer.Option(help="The instant (ISO-8601 with UTC offset; default now).")]
TenantOpt = Annotated[str, typer.Option(help="WABA id.")]
NameOpt = Annotated[str, typer.Option(help="Template name.")]
LanguageOpt = Annotated[str, typer.Option(help="Template language code.")]


# -- serving ----------------------------------------------------------------------------------------


class _Stop(BaseException):
    """SIGTERM arrived: unwind, so every `finally` runs and stops what this process started."""


def _on_sigterm(_sig: int, _frame: Any) -> None:
    raise _Stop()


@app.command()
def serve() -> None:
    """Run the service: webhook receiver + ingest worker (embedded SeaweedFS unless S3 is set).

    SIGINT (Ctrl-C) and SIGTERM (kill, systemd, Docker) stop the web server, the worker and the
    embedded SeaweedFS, within a few seconds."""
    # Before anything is started: a SIGTERM during start-up must unwind too, not kill us outright.
    # uvicorn restores this handler and re-raises the signal after its graceful shutdown.
    signal.signal(signal.SIGTERM, _on_sigterm)
    settings = _settings()
    archive: Archive | None = None
    try:
        archive = _open(settings)
        archive.require_schedule("serving")
        if archive.embedded is not None and archive.embedded.attached:
            err.print(f"[yellow]attached to the SeaweedFS already running on port {archive.embedded.s3_port} "
                      "for this data dir[/yellow] (started by another strongroom process: it keeps running "
                      "when this one stops)")
        _serve(archive, settings)
    except (_Stop, KeyboardInterrupt):
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one stop at a time
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if archive is not None:
            archive.close()
        out.print("strongroom stopped")


def _serve(archive: Archive, settings: Settings) -> None:
    import uvicorn

    from strongroom.app import create_app

    # The inbox writer thread re-acquires the GIL after every fsync; with the default 5 ms
    # switch interval it queues behind the event loop each time (a convoy that capped ingest).
    sys.setswitchinterval(0.0005)
    # Normalising and sealing are CPU-bound Python: in their own process they do not take
    # the GIL from the webhook receiver. The child attaches to the same embedded S3.
    env = {**os.environ, "STRONGROOM_EMBEDDED_S3_PORT": str(archive.embedded.s3_port)} if archive.embedded else None
    worker = WorkerSupervisor([sys.executable, "-m", "strongroom", "worker"], env)
    try:
        tls = settings.tls_certfile and settings.tls_keyfile
        config = uvicorn.Config(create_app(archive), host=settings.host, port=settings.port, access_log=False,
                                log_config=None, timeout_graceful_shutdown=3,
                                proxy_headers=False,  # X-Forwarded-For only from STRONGROOM_TRUSTED_PROXIES
                                ssl_certfile=str(settings.tls_certfile) if tls else None,
                                ssl_keyfile=str(settings.tls_keyfile) if tls else None)

        class Server(uvicorn.Server):
            async def startup(self, sockets: Any = None) -> None:
                await super().startup(sockets)
                if self.started:  # the port is bound: only now say where we serve
                    _banner(archive)

        Server(config).run()
    finally:
        worker.stop()


class WorkerSupervisor:
    """Keeps the ingest worker process running: a worker that dies is restarted (with backoff)
    and logged, so sealing never silently stops while webhooks keep being acknowledged. The
    worker dies with this process (PR_SET_PDEATHSIG), even when this one is killed outright."""
    STOP_SECONDS = 5.0  # then SIGKILL: everything the worker does is replayable from the inbox

    def __init__(self, argv: list[str], env: dict[str, str] | None) -> None:
        from strongroom.embedded import die_with_parent

        self.argv, self.env, self.preexec = argv, env, die_with_parent
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(argv, env=env, preexec_fn=self.preexec)
        self.thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        import structlog

        delay = 1.0
        while not self.stopping.is_set():
            code = self.proc.wait()
            if self.stopping.is_set():
                return
            structlog.get_logger("strongroom.serve").error("worker.exited", code=code, restart_in=delay)
            if self.stopping.wait(delay):
                return
            delay = min(delay * 2, 60.0)
            with self.lock:
                if not self.stopping.is_set():
                    self.proc = subprocess.Popen(self.argv, env=self.env, preexec_fn=self.preexec)

    def stop(self) -> None:
        with self.lock:
            self.stopping.set()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=self.STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@app.command()
def worker() -> None:
    """Normalise and seal continuously (started by `serve`; run more for scale-out)."""
    from strongroom.runtime import Worker

    archive = _open()
    try:
        archive.require_schedule("running the worker")
    except BaseException:
        archive.close()
        raise
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

    scheme = "https" if s.tls_certfile and s.tls_keyfile else "http"
    out.print(f"[bold]strongroom[/bold] serving on {scheme}://{s.host}:{s.port}")
    out.print(f"  webhook URL   : {scheme}://{s.host}:{s.port}/webhooks/whatsapp  (put TLS in front for Meta)")
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
    out.print("  Ctrl-C or SIGTERM stops the service and everything it started.")


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
    h = report.head
    if h.key:
        out.print(f"archive head {h.key} ({h.time}, {h.streams} streams)")
    if h.stamped:
        out.print(f"newest RFC 3161 timestamp: {h.stamped_at} over {h.stamped} ({h.tokens} tokens checked)")
    elif h.tokens:
        out.print(f"{h.tokens} RFC 3161 tokens found, not checked (give --tsa-cert)")
    for f in report.failures:
        err.print(f"[red]FAIL[/red] {f}")
    if report.ok:
        out.print(f"[green]verified[/green] {report.records} records in {len(report.streams)} streams")
    elif not report.streams:
        err.print("[red]nothing to verify[/red]: no sealed segments or checkpoints found")


def _latest_notes(paths: list[Path], witnesses: list[str], origin: str, key: Any, store: Any) -> dict[str, Any]:
    """The --latest notes, each checked (signed by a key of the archive's history, cosigned by
    every --witness), by stream."""
    from archiver import keyhistory
    from archiver.notes import parse_witness
    from archiver.publish import stream_of
    from exporters.verify_bundle import verify_note_by_any

    if not paths:
        return {}
    try:
        wit = [parse_witness(w) for w in witnesses]
    except ValueError as e:
        raise InvalidInput(f"--witness: {e}") from e
    try:
        keys = list(keyhistory.load(store, key).keys.values())
    except ValueError:
        keys = [key]  # `verify` reports the broken history itself
    out: dict[str, Any] = {}
    for path in paths:
        try:
            note = verify_note_by_any(path.read_text(), origin, keys, wit)
        except (OSError, ValueError) as e:
            raise InvalidInput(f"--latest {path}: {e}") from e
        name = stream_of(note.origin, origin)
        if name is None:
            raise InvalidInput(f"--latest {path}: origin {note.origin!r} is not one of {origin}/<stream>")
        if name not in out or out[name].tree_size < note.tree_size:
            out[name] = note
    return out


@app.command()
def verify(
    from_dir: Annotated[Path | None, typer.Option(help="Verify a local copy of the objects instead of the store.")] = None,
    public_key: Annotated[Path | None, typer.Option(help="PEM public key (default: this archive's own).")] = None,
    stream: Annotated[list[str] | None, typer.Option(help="Only these streams.")] = None,
    tsa_cert: Annotated[list[Path] | None, typer.Option(
        help="PEM certificate of a TSA (or its CA) whose RFC 3161 timestamps are trusted; repeatable.")] = None,
    latest: Annotated[list[Path] | None, typer.Option(
        help="A checkpoint note an outside holder keeps (C2SP tlog-checkpoint); the store must be consistent "
             "with it. Repeatable (one per stream).")] = None,
    witness: Annotated[list[str] | None, typer.Option(
        help="A witness's verifier key (C2SP vkey): every --latest note must carry its cosignature.")] = None,
    log_origin: Annotated[str | None, typer.Option(
        help="The origin the notes' lines begin with (default STRONGROOM_LOG_ORIGIN).")] = None,
) -> None:
    """Re-read every segment and checkpoint and check chain, Merkle roots, signatures, object
    hashes, the archive head, RFC 3161 timestamps, published checkpoints and locks.

    Exit status 0 when everything verifies, 1 when anything does not."""
    from archiver import crypto
    from archiver.objectstore import DirectoryObjectStore
    from archiver.timestamps import load_certificates
    from audit import trail
    from audit.verify import Verifier

    roots = load_certificates(tsa_cert) if tsa_cert else None
    origin = log_origin or _settings().log_origin
    if from_dir is not None:
        if public_key is None:
            raise InvalidInput("--from-dir needs --public-key")
        key = crypto.load_public_key(public_key.read_bytes())
        copy = DirectoryObjectStore(from_dir)
        notes = _latest_notes(latest or [], witness or [], origin, key, copy)
        report = Verifier(copy, key, check_locks=False, tsa_roots=roots).verify(
            only=stream, latest=notes)
        _print_report(report)
        raise typer.Exit(0 if report.ok else 1)
    with _session(signing=False) as archive:
        key = crypto.load_public_key(public_key.read_bytes()) if public_key else archive.public_key
        notes = _latest_notes(latest or [], witness or [], origin, key, archive.store)
        report = Verifier(archive.store, key, tsa_roots=roots).verify(expected_sizes=archive.expected_sizes(),
                                                                      only=stream, latest=notes)
        trail.record(archive.engine, archive.keyring, "verify", _actor(),
                     {"ok": report.ok, "records": report.records, "failures": [str(f) for f in report.failures]})
        _print_report(report)
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="DuckDB SQL over the `records` view.")],
    fmt: Annotated[str, typer.Option("--format", help="table, json or csv")] = "table",
) -> None:
    """Run DuckDB SQL over the sealed Parquet in S3 (view `records`; content stays ciphertext)."""
    import csv

    with _reading() as (archive, access, reader):
        result = archive.query_engine().query(sql)
        rows = [[_jsonable(v) if isinstance(v, bytes) else v for v in r] for r in result.rows]
        access.answer(reader, "query", {"sql": sql}, {"columns": result.columns, "rows": rows}, len(rows),
                      [])
    if fmt == "json":
        for row in rows:
            out.print_json(json.dumps(dict(zip(result.columns, row, strict=True)), default=str))
    elif fmt == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(result.columns)
        w.writerows(rows)
    else:
        table = Table(*result.columns)
        for row in rows:
            table.add_row(*[str(v) for v in row])
        out.print(table)
        out.print(f"{len(rows)} rows")


@app.command()
def completeness(
    day: Annotated[str | None, typer.Option(help="UTC day YYYY-MM-DD (default: yesterday).")] = None,
    stream: Annotated[list[str] | None, typer.Option(help="Only these streams (phone number ids).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the reports as JSON.")] = False,
) -> None:
    """Reconcile one day: record gaps (unarchived references, missing history chunks, disconnects,
    app silence), record the completeness report on the audit stream (the worker seals it), and print it.

    Exit status 0 when every stream is complete for the day, 1 when any gap or warning is open.
    """

    try:
        the_day = date.fromisoformat(day) if day else datetime.now(UTC).date() - timedelta(days=1)
    except ValueError as e:
        raise InvalidInput(f"--day must be YYYY-MM-DD, got {day!r}") from e
    with _reading() as (archive, access, reader):
        archive.process_pending()  # reconcile against everything already received
        made = [r.as_dict() for r in archive.reconciler().run(the_day, streams=stream)]
        reports = access.completeness(reader, the_day, reports=lambda _day: made).result["reports"]
    if as_json:
        _emit({"day": the_day.isoformat(), "reports": reports})
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
    """The retention schedule in force (version, tags per tenant/number/class, GDPR maximum) and
    the objects overdue for disposition (expected: none)."""
    with _reading() as (_archive, access, reader):
        answer = access.retention(reader)
    _emit(answer.result)


@retention_app.command("set")
def retention_set(path: Annotated[Path, typer.Argument(help="JSON schedule document.")]) -> None:
    """Store a new schedule version. It applies to objects sealed from now on; existing COMPLIANCE
    locks stay as they are (the store refuses to shorten them)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InvalidInput(f"{path}: {e}") from e
    with _session() as archive:
        _four_eyes(archive, "retention_schedule")
        try:
            schedule = archive.schedules.store(doc, _actor(), datetime.now(UTC))
        except (TypeError, AttributeError, KeyError) as e:  # a document of the wrong shape
            raise InvalidInput(f"{path}: not a retention schedule ({type(e).__name__}: {e})") from e
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
    from policies.holds import Scope

    with _session() as archive:
        hold = archive.holds().place(matter, Scope(streams=stream or [], phones=phone or [],
                                                   subjects=conversation or [], start=start, end=end,
                                                   query=query), _actor())
        archive.sealer().seal_all()
    _emit({"hold": hold.id, "matter": hold.matter, "objects": hold.objects})


@hold_app.command("release")
def hold_release(hold_id: str, reason: Annotated[str, typer.Option(help="Why (recorded).")]) -> None:
    """Release a hold (objects stay held while another active hold covers them)."""
    with _session() as archive:
        _four_eyes(archive, "hold_release")
        lifted = archive.holds().release(hold_id, _actor(), reason)
        archive.sealer().seal_all()
    _emit({"hold": hold_id, "lifted": lifted})


@hold_app.command("list")
def hold_list(include_released: Annotated[bool, typer.Option(help="Released holds too.")] = True) -> None:
    """Every hold with its scope (contacts as blind indexes) and how many objects it holds."""
    with _reading() as (_archive, access, reader):
        answer = access.holds(reader, include_released)
    _emit(answer.result)


@erasure_app.command("request")
def erasure_request(
    phone: Annotated[str | None, typer.Option(help="The person's current phone number.")] = None,
    bsuid: Annotated[str | None, typer.Option(help="Their business-scoped user id.")] = None,
    subject: Annotated[str | None, typer.Option(help="A subject id.")] = None,
) -> None:
    """Decide an erasure request: shred now, or refuse under Art 17(3)(b)/(e) and restrict."""
    with _session() as archive:
        _four_eyes(archive, "erasure")
        decision = archive.erasure().request(_actor(), phone=phone, bsuid=bsuid, subject=subject)
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
    if out_dir.exists():
        raise InvalidInput(f"{out_dir} exists: name a new directory")
    with _reading() as (archive, access, reader):
        er = archive.erasure()
        who = er.subject_for(phone, bsuid, subject)
        summary = er.access_export(who, out_dir, reader.actor)
        access.answer(reader, "erasure.access", {"subject": who}, summary, summary.get("records", 0), [who])
    _emit(summary)


@app.command()
def violations(
    stream: Annotated[str | None, typer.Option(help="Only this number (phone number id).")] = None,
    kind: Annotated[str | None, typer.Option("--type", help="Only this violation type.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Run the compliance checks on every outbound message and list violations with their evidence.

    Exit status 1 when there are violations (for cron and alerting), 0 when there are none."""
    with _reading() as (archive, access, reader):
        archive.process_pending()
        archive.compliance().run()
        found = access.violations(reader, stream, kind).result["violations"]
    if as_json:
        _emit({"violations": found})
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
    items = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    with _session() as archive:
        added = archive.send_log().record(items)  # all or nothing: a bad line records none
        archive.sealer().seal_all()
    out.print(f"{added} new of {len(items)} sends archived")


def _when(value: str | None) -> datetime:
    """The instant `--at` names (default now)."""
    return _instant(value, "at") or datetime.now(UTC)


def _instant(value: str | None, name: str) -> datetime | None:
    from archiver.records import parse_instant_arg

    return parse_instant_arg(value, f"--{name}")


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
            raise NotFound("no archived contact held that number then; record consent once they exist")
        sha = hashlib.sha256(evidence.read_bytes()).hexdigest() if evidence else None
        try:
            archive.consent().record(stream, subject, category, action, method, _actor(), when, sha, evidence_ref)
        except ValueError as e:
            raise InvalidInput(str(e)) from e
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

    when = _when(at)
    with _reading() as (archive, access, reader):
        archive.consent().sync()
        subject = IdentityBook(archive.engine).at("wa", archive.keyring.blind_index("wa", phone), when)
        answer = access.consent(reader, stream, subject, "*", when)
    _emit(answer.result)


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
    with _reading() as (archive, access, reader):
        archive.templates().sync()
        answer = access.template(reader, tenant, name, language, when)
    _emit(answer.result)


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
    from archiver.normalize import append_audit

    with _session() as archive:
        added = archive.search_index().rebuild()
        append_audit(archive.engine, archive.keyring, "audit", "index_rebuild", _actor(), {"documents": added})
        archive.sealer().seal_all()
    out.print(f"search index rebuilt: {added} messages")


@app.command()
def search(
    query: Annotated[str, typer.Argument(help='Reviewer query, e.g. \'trade w/5 confirm AND origin:app\'.')],
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    cursor: Annotated[str | None, typer.Option(help="Next-page cursor from a previous page.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Search message text and metadata (exact counts, stable pages); itself an audit event."""
    with _reading() as (archive, access, reader):
        archive.search_index().update()
        page = access.search(reader, query, limit, cursor).result
    if as_json:
        _emit(page)
        return
    table = Table("sent", "stream", "origin", "direction", "type", "wamid", "text", title=f"{page['total']} matches")
    for h in page["items"]:
        table.add_row(str(h["event_time"]), h["stream"], h["origin"] or "", h["direction"] or "", h["type"] or "",
                      h["wamid"] or "", (h["text"] or "")[:80])
    out.print(table)
    if page["next_cursor"]:
        out.print(f"next page: --cursor {page['next_cursor']}")


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
        raise InvalidInput(str(e)) from e
    with _reading(signing=True) as (archive, access, reader):  # the manifest is signed
        archive.process_pending()  # the exporter brings the search index up to date when there is a query
        if participant:
            found, nobody = archive.exporter().participants(participant, scope.start, scope.end, reader.tenants)
            if nobody:
                raise InvalidInput(f"no archived conversation with {', '.join(participant[i] for i in nobody)} "
                                   "in the time range")
            scope.conversations = sorted(set(scope.conversations) | set(found))
        with Progress(TextColumn("conversations"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=err) as bar:
            task = bar.add_task("export", total=None)
            result = archive.exporter(bates_prefix, volume_documents, period).run(
                scope, sink, Custody(requested_by, approved_by, request_ref), reader.actor,
                progress=lambda done, total: bar.update(task, completed=done, total=total))
        counts = result.manifest["counts"]
        access.event(reader, "export.write", {"export_id": result.export_id, "out": str(out_dir)},
                     result.manifest_sha256, counts.get("records", 0), [result.export_id])
        archive.sealer().seal_all()
    _emit({"export_id": result.export_id, "out": str(out_dir), "manifest_sha256": result.manifest_sha256,
           "counts": counts})


@app.command("verify-bundle")
def verify_bundle(
    path: Annotated[Path, typer.Argument(help="Bundle directory or zip.")],
    public_key: Annotated[Path, typer.Option(help="The archive's public key (PEM), from `strongroom keys public`.")],
    tsa_cert: Annotated[list[Path] | None, typer.Option(
        help="PEM certificate of a TSA (or its CA) whose RFC 3161 timestamps are trusted; repeatable.")] = None,
    latest: Annotated[list[Path] | None, typer.Option(
        help="A checkpoint note an outside holder keeps; the bundle's snapshot must be consistent with it.")] = None,
    consistency: Annotated[list[Path] | None, typer.Option(
        help="A consistency proof from `strongroom proof consistency` (JSON); repeatable.")] = None,
    witness: Annotated[list[str] | None, typer.Option(
        help="A witness's verifier key: every --latest note must carry its cosignature.")] = None,
    log_origin: Annotated[str | None, typer.Option(
        help="The origin the notes' lines begin with (default STRONGROOM_LOG_ORIGIN).")] = None,
) -> None:
    """Verify an export bundle offline: signature, file hashes, counts, checkpoints, archive head and
    its timestamps, every record's proof and content, and consistency with a holder's checkpoint."""
    from archiver.timestamps import load_certificates
    from exporters import verify_bundle as vb

    try:
        witnesses = [vb.parse_witness(w) for w in witness or []]
    except ValueError as e:
        raise InvalidInput(f"--witness: {e}") from e
    held = vb.Latest([n.read_text() for n in latest], log_origin or _settings().log_origin,
                     [json.loads(c.read_text()) for c in consistency or []], witnesses) if latest else None
    failures = vb.verify(path, vb.load_public_key(public_key.read_bytes()),
                         load_certificates(tsa_cert) if tsa_cert else None, held)
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
def keys_public(
    vkey: Annotated[bool, typer.Option("--vkey", help="The C2SP verifier key of the published checkpoint "
                                                     "notes (for holders and witnesses) instead of PEM.")] = False,
) -> None:
    """Print the checkpoint-signing public key (PEM): all a third party needs to verify."""
    from archiver import crypto
    from archiver.notes import vkey as note_vkey
    from strongroom.runtime import signer_of

    settings = _settings()
    key = signer_of(settings, signing=False).public_key()  # the .pub, the token's public key or KMS's
    if vkey:
        sys.stdout.write(note_vkey(settings.log_origin, key) + "\n")
        return
    sys.stdout.write(crypto.public_key_pem(key).decode())


def _decider(archive: Archive) -> Any:
    """The signed-in principal who proposes or decides (never the shell's anonymous operator)."""

    p: Principal = _principal(archive)
    if p.via == "cli":
        raise InvalidInput("four-eyes decisions are made by named people: sign in first (`strongroom login`)")
    return p


@proposals_app.command("add")
def proposals_add(
    action: Annotated[str, typer.Argument(help="erasure, retention_schedule, hold_release, kek_rotation or "
                                               "signing_rotation.")],
    reason: Annotated[str, typer.Option(help="Why (sealed with the proposal).")],
    phone: Annotated[str | None, typer.Option(help="erasure: the data subject's phone number.")] = None,
    bsuid: Annotated[str | None, typer.Option(help="erasure: their BSUID.")] = None,
    subject: Annotated[str | None, typer.Option(help="erasure: their subject id.")] = None,
    schedule: Annotated[Path | None, typer.Option(help="retention_schedule: the JSON schedule document.")] = None,
    hold: Annotated[str | None, typer.Option(help="hold_release: the hold id.")] = None,
    to: Annotated[str | None, typer.Option(help="kek_rotation / signing_rotation in KMS: the new key.")] = None,
    hours: Annotated[float, typer.Option(help="Hours a second person has to decide.", min=0.01)] = 72.0,
) -> None:
    """Propose an irreversible decision; it is carried out when a second person approves it."""
    from datetime import timedelta

    params: dict[str, Any] = {k: v for k, v in (("phone", phone), ("bsuid", bsuid), ("subject", subject),
                                                 ("hold", hold), ("to", to)) if v is not None}
    if hold is not None:
        params["release_reason"] = reason
    if schedule is not None:
        params["schedule"] = json.loads(schedule.read_text())
    with _session() as archive:
        made = archive.proposals().propose(_decider(archive), action, params, reason, timedelta(hours=hours))
        archive.sealer().seal_stream("audit")
    out.print_json(json.dumps(made, default=str))


@proposals_app.command("list")
def proposals_list(state: Annotated[str | None, typer.Option(help="Only proposals in this state.")] = None) -> None:
    """Proposals and their decisions (summaries only: parameters that name a person stay encrypted)."""
    with _session(signing=False) as archive:
        found = archive.proposals().list(state)
    out.print_json(json.dumps(found, default=str))


@proposals_app.command("approve")
def proposals_approve(proposal: str, reason: Annotated[str, typer.Option(help="Why (sealed).")]) -> None:
    """Approve someone else's proposal: it is carried out now. Exit 1 if carrying it out failed."""
    with _session() as archive:
        done = archive.proposals().approve(_decider(archive), proposal, reason)
        archive.sealer().seal_all()
    out.print_json(json.dumps(done, default=str))
    raise typer.Exit(0 if done["state"] == "executed" else 1)


@proposals_app.command("reject")
def proposals_reject(proposal: str, reason: Annotated[str, typer.Option(help="Why (sealed).")]) -> None:
    """Reject a proposal."""
    with _session() as archive:
        done = archive.proposals().reject(_decider(archive), proposal, reason)
        archive.sealer().seal_stream("audit")
    out.print_json(json.dumps(done, default=str))


@proof_app.command("consistency")
def proof_consistency(
    stream: Annotated[str, typer.Option(help="The number (stream).")],
    from_size: Annotated[int, typer.Option("--from", help="The smaller tree size (e.g. a bundle's snapshot).")],
    to_size: Annotated[int | None, typer.Option("--to", help="The larger tree size (default: the newest "
                                                             "checkpoint).")] = None,
) -> None:
    """Print an RFC 9162 consistency proof (JSON) between two tree sizes of a stream, for
    `verify-bundle --latest NOTE --consistency FILE`."""
    with _reading() as (_archive, access, reader):
        answer = access.consistency(reader, stream, from_size, to_size)
    sys.stdout.write(answer.body.decode() + "\n")


@keys_app.command("history")
def keys_history() -> None:
    """Print the signing-key history: every key, when it retired, and the rotation statements (JSON)."""
    from archiver import crypto, keyhistory

    with _session(signing=False) as archive:
        raw = keyhistory.statements(archive.store)
        history = keyhistory.load(archive.store, archive.public_key)
    doc = {"current_key_id": history.current_id,
           "keys": [{"key_id": kid, "public_key_pem": crypto.public_key_pem(pk).decode(),
                     "retired_at": history.retired.get(kid)} for kid, pk in history.keys.items()],
           "rotations": [json.loads(r) for r in raw]}
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


def _four_eyes(archive: Archive, action: str) -> None:
    """In regulated mode an irreversible command is a proposal a second person approves."""
    if archive.settings.mode == "regulated":
        raise InvalidInput(f"regulated mode: this needs four eyes; propose it (`strongroom login`, then "
                           f"`strongroom proposals add {action} ...`) for a second person to approve")


@keys_app.command("rotate-kek")
def keys_rotate_kek(
    batch: Annotated[int, typer.Option(help="Data keys re-wrapped per transaction.", min=1)] = 500,
    to: Annotated[str | None, typer.Option(help="KMS only: the new key (the settings name the KEK by an alias, "
                                                "which moves to it).")] = None,
) -> None:
    """Re-wrap every data key under a new key-encryption key, then destroy the old one. Resumable:
    after a crash, run it again. Once the old KEK is gone, a data key shredded before (an erased
    subject's) cannot be recovered from any database backup; back the database up again after
    a rotation (older backups need the destroyed KEK)."""
    with _session() as archive:
        _four_eyes(archive, "kek_rotation")
        result = archive.rotate_kek(_actor(), batch, to)
    out.print(f"{result.rewrapped} data keys re-wrapped under KEK {result.new_kek_id}; destroyed "
              f"{', '.join(result.old_kek_ids) or 'nothing'}" + (f" (gone at {result.destroyed_at})"
                                                               if result.old_kek_ids else "")
              + (" (a rotation left under way was finished)" if result.resumed else ""))
    out.print("back up the database again: backups made before this rotation need the destroyed KEK")


@keys_app.command("rotate-signing")
def keys_rotate_signing(
    to: Annotated[str | None, typer.Option(help="KMS only: the new ECC_NIST_P256 key (the settings name the "
                                                "signing key by an alias, which moves to it).")] = None,
) -> None:
    """Replace the checkpoint-signing key. The old key retires a few seconds from now by a statement
    both keys sign (WORM, timestamped when TSAs are configured): history signed before stays valid,
    anything it signs after is refused. A key file's old private key is moved to keys/retired/ (keep
    it offline or destroy it), a token's old pair is destroyed on it, an old KMS key is disabled; give
    the new public key (or `keys history`) to those who verify."""
    with _session() as archive:
        _four_eyes(archive, "signing_rotation")
        done = archive.rotate_signing(_actor(), to)
    out.print(f"signing key {done['old_key_id']} retires (statement {done['statement']}); "
              f"key {done['new_key_id']} signs from now on; the old key: {done['old_key']}")


RoleOpt = Annotated[str, typer.Option(help="ingest, auditor, compliance, admin or regulator.")]
TenantsOpt = Annotated[list[str] | None, typer.Option("--tenant", help="WABA id(s) it may see (omit: all; "
                                                                    "compliance, admin and regulator only).")]


def _accounts_call(call: Any) -> Any:
    with _session() as archive:
        result = call(archive.accounts())
        archive.sealer().seal_all()  # the account change is on the sealed audit stream now
    return result


@users_app.command("add")
def users_add(name: str, role: RoleOpt, tenant: TenantsOpt = None,
              enrol: Annotated[bool, typer.Option("--enrol", help="Print a one-time enrolment code instead: the "
                                                           "person turns it into their password and authenticator "
                                                           "at /console/enrol, and nobody else sees those.")] = False,
              ) -> None:
    """Create a person's account. Prints the password and TOTP secret once: hand them over securely
    (or, with --enrol, a one-time code the person redeems themselves).

    The first admin is created here (on the server); later accounts via the API or here. A
    `regulator` account is the break-glass path for the designated third party (R-26)."""
    created = _accounts_call(lambda a: a.create_user(name, role, tenant, _actor(), approved=True, enrol=enrol))
    _emit(created)
    err.print("[yellow]shown once:[/yellow] only a scrypt hash of the password and an encrypted TOTP secret are kept")


@users_app.command("approve")
def users_approve(principal_id: str) -> None:
    """Approve an account or API key made through the API that reads content (auditor, compliance,
    regulator): as the signed-in compliance officer, or as the server's local operator."""
    with _session() as archive:
        who = _principal(archive)
        if who.role not in ("compliance", "operator"):
            raise Forbidden(f"role {who.role} may not approve accounts")
        done = archive.accounts().approve(principal_id, who)
        archive.sealer().seal_all()
    _emit(done)


@users_app.command("disable")
def users_disable(principal_id: str) -> None:
    """Disable an account and end its sessions."""
    _accounts_call(lambda a: a.disable_user(principal_id, _actor()))
    _emit({"disabled": principal_id})


@users_app.command("list")
def users_list() -> None:
    """Accounts and API keys (never their secrets)."""
    with _reading() as (_archive, access, reader):
        answer = access.principals(reader)
    _emit(answer.result)


@apikey_app.command("create")
def apikey_create(name: str, role: RoleOpt, tenant: TenantsOpt = None) -> None:
    """Create a service API key. Prints the token once; only its SHA-256 is kept."""
    _emit(_accounts_call(lambda a: a.create_api_key(name, role, tenant, _actor(), approved=True)))


@apikey_app.command("revoke")
def apikey_revoke(key_id: str) -> None:
    _accounts_call(lambda a: a.revoke_api_key(key_id, _actor()))
    _emit({"revoked": key_id})


@numbers_app.command("register")
def numbers_register(stream: Annotated[str, typer.Argument(help="The business number (phone number id).")],
                     tenant: Annotated[str, typer.Option(help="The WABA id it belongs to.")]) -> None:
    """Bind a number to its tenant before its first webhook (e.g. so the send log may write to it).

    A number is bound once: to the WABA its first signed webhook names, or to the one given here.
    Registering a number bound to another tenant is refused (exit 5)."""
    from archiver.db import bind_stream
    from archiver.normalize import append_audit

    with _session() as archive:
        with archive.engine.begin() as conn:
            bound = bind_stream(conn, stream, tenant, f"admin:{_actor()}")
        if bound != tenant:
            raise StateConflict(f"number {stream} belongs to tenant {bound} already")
        append_audit(archive.engine, archive.keyring, "audit", "number.register", _actor(),
                     {"stream": stream, "tenant": tenant})
        archive.sealer().seal_all()
    _emit({"stream": stream, "tenant": tenant})


@numbers_app.command("list")
def numbers_list() -> None:
    """Every number with its tenant, when and on what evidence it was bound."""
    import sqlalchemy as sa

    from archiver.db import stream_tenants

    with _session(signing=False) as archive, archive.engine.connect() as conn:
        rows = conn.execute(sa.select(stream_tenants).order_by(stream_tenants.c.tenant, stream_tenants.c.stream))
        _emit([dict(r._mapping) for r in rows])


@quarantine_app.command("list")
def quarantine_list() -> None:
    """Quarantined bodies (kept raw and encrypted in the inbox): id, when received, size. Exit 1 if any."""
    import sqlalchemy as sa

    from archiver.db import inbox
    from archiver.normalize import QUARANTINED

    with _session(signing=False) as archive, archive.engine.connect() as conn:
        rows = conn.execute(sa.select(inbox.c.id, inbox.c.received_at, inbox.c.size, inbox.c.normalized_at)
                            .where(inbox.c.state == QUARANTINED).order_by(inbox.c.id)).all()
    _emit({"quarantined": len(rows), "bodies": [{"inbox_id": r.id, "received_at": r.received_at, "bytes": r.size,
                                                  "quarantined_at": r.normalized_at} for r in rows]})
    raise typer.Exit(1 if rows else 0)


@quarantine_app.command("retry")
def quarantine_retry() -> None:
    """Put every quarantined body back in line (after the cause was fixed), then seal."""
    import sqlalchemy as sa

    from archiver.db import inbox
    from archiver.normalize import QUARANTINED, append_audit

    with _session() as archive:
        with archive.engine.begin() as conn:
            n = conn.execute(sa.update(inbox).where(inbox.c.state == QUARANTINED).values(state="pending")).rowcount
        append_audit(archive.engine, archive.keyring, "audit", "quarantine.retry", _actor(), {"bodies": n})
        sealed = archive.process_pending()
    out.print(f"{n} bodies back in line; {sealed} records sealed")


# -- signing in -----------------------------------------------------------------------------------


def _api_url(settings: Settings, url: str | None) -> str:
    scheme = "https" if settings.tls_certfile and settings.tls_keyfile else "http"
    return (url or f"{scheme}://{settings.host}:{settings.port}").rstrip("/")


@app.command()
def login(
    name: Annotated[str | None, typer.Option(help="Account name (prompted when omitted).")] = None,
    url: Annotated[str | None, typer.Option(help="The service (default: this machine's `serve`).")] = None,
    password_stdin: Annotated[bool, typer.Option(help="Read the password from standard input (scripts).")] = False,
    otp: Annotated[str | None, typer.Option(help="The one-time code (prompted when omitted).")] = None,
) -> None:
    """Sign in with name, password and a TOTP code; keeps the session token in a 0600 file.

    CLI reads are then attributed to you (not the unix user), and `strongroom token` prints the
    token for the API: curl -H "Authorization: Bearer $(strongroom token)" …"""
    import httpx


    settings = _settings()
    base = _api_url(settings, url)
    name = name or typer.prompt("name")
    password = sys.stdin.readline().rstrip("\n") if password_stdin else typer.prompt("password", hide_input=True)
    otp = otp or typer.prompt("one-time code (TOTP)")
    try:
        r = httpx.post(f"{base}/api/v1/auth/session", json={"name": name, "password": password, "otp": otp},
                       timeout=30)
    except httpx.HTTPError as e:
        raise Unavailable(f"no strongroom service answered at {base} ({type(e).__name__}): is `strongroom serve` "
                          "running? (--url names another)") from e
    if r.status_code != 200:
        detail = r.json().get("detail", r.reason_phrase) if r.headers.get("content-type", "").endswith("json") \
            else r.reason_phrase
        raise Unauthenticated(f"sign-in refused ({r.status_code}): {detail}")
    doc = r.json()
    path = _session_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": base, "name": name, "token": doc["token"], "expires_at": doc["expires_at"]}, f)
    out.print(f"signed in as {name} until {doc['expires_at']}; the session token is in {path} (0600)")


@app.command()
def logout() -> None:
    """End the saved session (at the service too, when it answers) and delete its file."""
    import httpx

    path = _session_file(_settings())
    if not path.exists():
        out.print("not signed in")
        return
    saved = json.loads(path.read_text())
    try:
        httpx.delete(f"{saved['url']}/api/v1/auth/session", headers={"Authorization": f"Bearer {saved['token']}"},
                     timeout=10)
    except httpx.HTTPError:
        err.print("[yellow]the service did not answer: the session ends when it expires[/yellow]")
    path.unlink()
    out.print(f"signed out ({saved['name']})")


@app.command()
def token() -> None:
    """Print the saved session token (for the API: curl -H "Authorization: Bearer $(strongroom token)")."""
    path = _session_file(_settings())
    if not path.exists():
        raise Unauthenticated("not signed in: run `strongroom login` first")
    saved = json.loads(path.read_text())
    if datetime.fromisoformat(saved["expires_at"]) <= datetime.now(UTC):
        raise Unauthenticated(f"the saved session expired at {saved['expires_at']}: run `strongroom login` again")
    sys.stdout.write(saved["token"] + "\n")


@app.command()
def demo(
    url: Annotated[str | None, typer.Option(help="The service (default: this machine's `serve`).")] = None,
) -> None:
    """Post a realistic day of a coexistence number to a running service: API messages, app echoes,
    a history import, statuses, an edit, a reaction, an attachment and a STOP, all signed as Meta
    signs them. Then search, read threads and export them."""
    from strongroom.demo import post_day

    settings = _settings()
    for line in post_day(_api_url(settings, url), settings.secret("app_secret")):
        out.print(line)


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

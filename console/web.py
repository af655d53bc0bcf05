"""The review console: server-rendered pages (Jinja2 + a vendored htmx) on the access layer.

Every page that shows archived data calls exactly one `audit.access.Access` read, so it writes
exactly one access event, as the API would. Who may open a page is declared with `page(roles)`
(published like the API's `rule`, so the route table test sees it); an unauthenticated visitor is
sent to the sign-in page, never shown anything.

- **Sessions**: the API's session token (`Accounts.login`: name + password + TOTP) in an
  HttpOnly, SameSite=Strict cookie scoped to /console (Secure when the request came over TLS or
  `STRONGROOM_CONSOLE_SECURE_COOKIES` is set). The absolute timeout is the session's own
  (`STRONGROOM_SESSION_TTL_SECONDS`); the idle timeout (`STRONGROOM_CONSOLE_IDLE_SECONDS`) is a
  second cookie, an HMAC of the session and its last use, so it holds across processes.
- **CSRF**: every state-changing request carries a token (a form field, or the ``X-CSRF-Token``
  header htmx sends) equal to HMAC(console key, session token); the sign-in form carries a
  double-submit token. A request without it is refused (403) before anything happens.
- **CSP**: ``default-src 'self'``, no inline script or style, no eval (htmx is configured without
  it by a meta tag). Query text and phone numbers travel in POST bodies, never in URLs.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jinja2
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from markupsafe import Markup, escape

from archiver import crypto
from archiver.errors import Forbidden, InvalidInput, NotFound, StrongroomError, Unauthenticated
from archiver.records import parse_instant_arg
from audit import searchlang
from audit.access import ADMIN, COMPLIANCE, READERS, TRAIL_READERS, Access, hold_view
from audit.auth import ROLES, Principal
from audit.http import PREVIEWABLE, admit, attachment_response, note_denied, throttle_sign_in
from audit.index import query_fields
from audit.saved import SavedSearches
from exporters.bundle import Custody, ExportScope
from exporters.jobs import ExportJobs
from policies.holds import Scope
from policies.proposals import ACTIONS as PROPOSAL_ACTIONS

HERE = Path(__file__).parent
STATIC = HERE / "static"
PREFIX = "/console"
SESSION_COOKIE, SEEN_COOKIE, PRE_COOKIE = "sr_console", "sr_console_seen", "sr_console_pre"
SSO_COOKIE = "sr_console_sso"  # the sign-in under way: state, nonce, PKCE verifier (HMAC'd, 10 minutes)
SSO_SECONDS = 600
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
EXPORTERS = frozenset({"auditor", "regulator"})
KEK_PROVIDERS = {"KekRing": "a key file on this server", "Pkcs11Kek": "a PKCS#11 token (HSM)", "KmsKek": "AWS KMS"}
DECIDERS = COMPLIANCE | ADMIN  # four eyes: who decides what is each action's own rule (policies.proposals)
ANY = frozenset(ROLES)
PAGE = 50
FILTERS = ("stream", "direction", "origin", "type", "template")


class NeedsSignIn(Exception):
    """No valid console session: the visitor is sent to the sign-in page."""


async def form_of(request: Request) -> dict[str, str]:
    """A POST's form fields (text only; the console takes no uploads)."""
    if request.method in ("GET", "HEAD"):
        return {}
    raw = await request.form(max_files=0, max_fields=100, max_part_size=64 * 1024)
    form = {k: v for k, v in raw.items() if isinstance(v, str)}
    if any("\x00" in v for v in form.values()):
        raise InvalidInput("NUL characters are not accepted")
    return form


def page(roles: frozenset[str], audited: bool) -> dict[str, Any]:
    """Route options of a console page: who may open it (published as the API's `rule` is)."""

    async def authorize(request: Request) -> None:
        console: Console = request.app.state.console
        request.state.form = await form_of(request)  # (the CSRF token is checked before anything runs)
        request.state.principal = console.principal(request, roles)

    return {"dependencies": [Depends(authorize)], "include_in_schema": False,
            "openapi_extra": {"x-strongroom-roles": sorted(roles), "x-strongroom-audited": audited,
                              "x-strongroom-console": True}}


def public_page(reason: str) -> dict[str, Any]:
    return {"include_in_schema": False,
            "openapi_extra": {"x-strongroom-roles": [reason], "x-strongroom-audited": False,
                              "x-strongroom-console": True}}


# -- hit highlighting -----------------------------------------------------------------------------


def _positive_terms(node: Any, negated: bool = False) -> list[tuple[str, ...]]:
    """The words and phrases a query looks for (not those under NOT)."""
    if isinstance(node, searchlang.Term):
        return [] if negated else [node.words]
    if isinstance(node, searchlang.Not):
        return _positive_terms(node.node, not negated)
    if isinstance(node, searchlang.Bool):
        return [t for n in node.nodes for t in _positive_terms(n, negated)]
    if isinstance(node, searchlang.Near):
        return _positive_terms(node.left, negated) + _positive_terms(node.right, negated)
    return []


def highlight(text: str, query: str | None) -> Markup:
    """`text`, escaped, with every occurrence of the query's words and phrases in ``<mark>``."""
    if not query:
        return Markup(escape(text))
    try:
        terms = _positive_terms(searchlang.parse(query))
    except StrongroomError:
        return Markup(escape(text))
    spans = [(m.start(), m.end(), unicodedata.normalize("NFKC", m.group()).casefold())
             for m in searchlang.TEXT_WORD.finditer(text)]
    marked = [False] * len(spans)
    for words in terms:
        globs = [searchlang.Glob(w) if any(c in w for c in "*?=") else None for w in words]
        for i in range(len(spans) - len(words) + 1):
            if all((g.match(spans[i + k][2]) if g else spans[i + k][2] == words[k]) for k, g in enumerate(globs)):
                for k in range(len(words)):
                    marked[i + k] = True
    out, at = [], 0
    for (start, end, _), hit in zip(spans, marked, strict=True):
        if hit:
            out.append(str(escape(text[at:start])) + "<mark>" + str(escape(text[start:end])) + "</mark>")
            at = end
    out.append(str(escape(text[at:])))
    return Markup("".join(out))


def thread_hits(items: list[dict[str, Any]], q: str) -> list[str]:
    """The ids of the thread's messages (or their edits) that `q` matches, in thread order."""
    try:
        node = searchlang.parse(q)
    except StrongroomError:
        return []
    out = []
    for it in items:
        r = it["record"]
        if "marker" in it:
            continue
        fields = query_fields({**r, "has_attachment": bool(it.get("attachments"))})
        texts = [message_body(r)] + [message_body(v) for v in it.get("versions", [])]
        if any(searchlang.matches(node, text, fields) for text in texts):
            out.append(r["id"])
    return out


# -- what a message shows -------------------------------------------------------------------------

ORIGINS = {"api": "Cloud API", "app": "Business App", "history": "History import", "agent": "AI agent",
           "send_log": "Send log"}


def message_body(record: dict[str, Any]) -> str:
    """The text a reviewer reads for a record (its body, caption, or what kind of message it is)."""
    from exporters.verify_bundle import shown_text

    content = record.get("content")
    text = shown_text(content) if isinstance(content, dict) else ""
    if text:
        return text
    return f"[{record.get('type') or record.get('kind')}]"


def _when(value: Any) -> str:
    if not value:
        return ""
    try:
        t = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def bars(per_day: dict[str, dict[str, int]], width: int = 600, height: int = 90) -> list[dict[str, Any]]:
    """Stacked bars (one per day, a segment per origin) for a server-rendered SVG chart."""
    days = sorted(per_day)
    top = max([sum(v.values()) for v in per_day.values()] + [1])
    step = width / max(len(days), 1)
    out: list[dict[str, Any]] = []
    for i, d in enumerate(days):
        y = float(height)
        for origin in ("api", "app", "history", "agent", *sorted(set(per_day[d]) - {"api", "app", "history", "agent"})):
            n = per_day[d].get(origin, 0)
            if not n:
                continue
            h = max(1.0, n / top * (height - 4))
            y -= h
            out.append({"x": round(i * step + 1, 1), "y": round(y, 1), "w": round(step - 2, 1), "h": round(h, 1),
                        "origin": origin, "title": f"{d}: {n} via {ORIGINS.get(origin, origin)}"})
    return out


# -- the console ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sso:
    """Single sign-on by OIDC authorization code + PKCE (S256) against the configured issuer."""

    client_id: str
    client_secret: str | None
    authorization_endpoint: str
    token_endpoint: str


class Console:
    def __init__(self, access: Access, jobs: ExportJobs, key: bytes, idle_seconds: float,
                 secure_cookies: bool, sso: Sso | None = None) -> None:
        self.access, self.jobs, self.key, self.sso = access, jobs, key, sso
        self.saved = SavedSearches(access.engine, access.keyring)
        self.idle_seconds, self.secure_cookies = idle_seconds, secure_cookies
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                                      undefined=jinja2.StrictUndefined)
        self.env.filters.update(when=_when, body=message_body, origin=lambda o: ORIGINS.get(o or "", o or "?"))
        self.env.globals.update(highlight=highlight, prefix=PREFIX, bars=bars, previewable=PREVIEWABLE)

    @property
    def public_key_pem(self) -> str:
        """The key in force now (read at each use: a rotation takes effect on the next page)."""
        return crypto.public_key_pem(self.access.archive.public_key).decode()

    # sessions ---------------------------------------------------------------------------------

    def _mac(self, *parts: str) -> str:
        return hmac.new(self.key, "|".join(parts).encode(), hashlib.sha256).hexdigest()

    def csrf(self, token: str) -> str:
        return self._mac("csrf", token)

    def principal(self, request: Request, roles: frozenset[str]) -> Principal:
        token = request.cookies.get(SESSION_COOKIE)
        if not token:
            raise NeedsSignIn()
        seen = request.cookies.get(SEEN_COOKIE, "")
        at, _, mac = seen.partition(".")
        if not at.isdigit() or not hmac.compare_digest(mac, self._mac("seen", token, at)) \
                or time.time() - int(at) > self.idle_seconds:
            raise NeedsSignIn()
        try:
            p: Principal = request.app.state.accounts.authenticate(f"Bearer {token}")
        except Unauthenticated as e:
            raise NeedsSignIn() from e
        if p.via not in ("session", "oidc"):  # (an API key is not a person's console session)
            raise NeedsSignIn()
        if request.method not in ("GET", "HEAD"):
            sent = request.headers.get("x-csrf-token") or request.state.form.get("csrf", "")
            if not hmac.compare_digest(str(sent), self.csrf(token)):
                raise Forbidden("this request did not carry the page's CSRF token: reload the page")
        request.state.principal, request.state.token = p, token  # (a refusal page still shows who is signed in)
        admit(request, p, roles, "open this page")
        return p

    def set_session(self, response: Response, request: Request, token: str | None) -> None:
        secure = self.secure_cookies or request.url.scheme == "https"
        if token is None:
            for name in (SESSION_COOKIE, SEEN_COOKIE):
                response.delete_cookie(name, path=PREFIX, secure=secure, httponly=True, samesite="strict")
            return
        response.set_cookie(SESSION_COOKIE, token, path=PREFIX, secure=secure, httponly=True, samesite="strict")
        self.touch(response, request, token)

    def touch(self, response: Response, request: Request, token: str) -> None:
        at = str(int(time.time()))
        response.set_cookie(SEEN_COOKIE, f"{at}.{self._mac('seen', token, at)}", path=PREFIX, httponly=True,
                            samesite="strict", secure=self.secure_cookies or request.url.scheme == "https")

    # rendering --------------------------------------------------------------------------------

    def render(self, request: Request, name: str, status: int = 200, **values: Any) -> HTMLResponse:
        p: Principal | None = getattr(request.state, "principal", None)
        token = getattr(request.state, "token", None)
        html = self.env.get_template(name).render(
            me=p, csrf=self.csrf(token) if token else "", readers=READERS, compliance=COMPLIANCE,
            trail_readers=TRAIL_READERS, exporters=EXPORTERS, deciders=DECIDERS, **values)
        response = HTMLResponse(html, status_code=status, headers={"Content-Security-Policy": CSP})
        if token:
            self.touch(response, request, token)
        return response


def _filters(form: dict[str, str]) -> dict[str, str]:
    out = {}
    for name in FILTERS:
        value = (form.get(name) or "").strip()
        if value:
            out["template_name" if name == "template" else name] = value[:512]
    return out


def _day(form: dict[str, str], name: str) -> datetime | None:
    """The start (UTC) of the date a form's field gives, if it gives one."""
    value = (form.get(name) or "").strip()
    return parse_instant_arg(value + "T00:00:00+00:00", name) if value else None


def _range(form: dict[str, str]) -> tuple[datetime | None, datetime | None]:
    return _day(form, "from"), _day(form, "to")


def _day_end(form: dict[str, str], name: str) -> datetime | None:
    """The end of the date a form's field gives: "as of 2026-03-01" includes that day."""
    start = _day(form, name)
    return start + timedelta(days=1) - timedelta(microseconds=1) if start else None


QUERY_FIELDS = {"stream": "number", "direction": "direction", "origin": "origin", "type": "type",
                "template_name": "template"}


def as_query(q: str | None, filters: dict[str, str]) -> str | None:
    """A search and its filters as one query of the language (what an export's scope takes), so an
    export of a filtered search holds exactly what the search found."""
    parts = [f"({q})"] if q else []
    for name, value in sorted(filters.items()):
        if '"' in value or "\\" in value:
            raise InvalidInput(f"the {QUERY_FIELDS[name]} filter cannot hold a quotation mark")
        parts.append(f'{QUERY_FIELDS[name]}:"{value}"')
    return " AND ".join(parts) or None


def console_router(console: Console) -> APIRouter:
    r = APIRouter(prefix=PREFIX)
    access, archive = console.access, console.access.archive

    def me(request: Request) -> Principal:
        p: Principal = request.state.principal
        return p

    # signing in -------------------------------------------------------------------------------

    def credential_page(request: Request, template: str, **values: Any) -> Response:
        """A sign-in or enrolment form, with its double-submit token (there is no session yet)."""
        pre = secrets.token_urlsafe(24)
        response = console.render(request, template, pre=pre, **values)
        response.set_cookie(PRE_COOKIE, pre, path=PREFIX, httponly=True, samesite="strict",
                            secure=console.secure_cookies or request.url.scheme == "https")
        return response

    async def credentials(request: Request) -> tuple[dict[str, str], str, str]:
        """A posted credential form: its token checked, the sign-in limits applied. (form, token, name)"""
        form = await form_of(request)
        pre = request.cookies.get(PRE_COOKIE, "")
        if not pre or not hmac.compare_digest(pre, form.get("pre", "")):
            raise Forbidden("the form did not carry its CSRF token: reload the page")
        name = form.get("name", "")[:200]
        throttle_sign_in(request, name)
        return form, pre, name

    @r.get("/login", response_class=HTMLResponse, **public_page("sign-in page"))
    def login_page(request: Request) -> Response:
        return credential_page(request, "login.html", error=None, sso=console.sso is not None)

    @r.post("/login", response_class=HTMLResponse, **public_page("credentials"))
    async def login(request: Request) -> Response:
        form, pre, name = await credentials(request)
        try:
            token, _expires = request.app.state.accounts.login(name, form.get("password", "")[:200],
                                                               form.get("otp", "")[:8])
        except Unauthenticated:
            note_denied(request, 401, "unauthenticated")  # a failed sign-in is evidence, as on the API
            return console.render(request, "login.html", status=401, pre=pre, sso=console.sso is not None,
                                  error="Those credentials were not accepted.")
        done = RedirectResponse(f"{PREFIX}/", status_code=303)
        console.set_session(done, request, token)
        done.delete_cookie(PRE_COOKIE, path=PREFIX)
        return done

    @r.get("/enrol", response_class=HTMLResponse, **public_page("enrolment page"))
    def enrol_page(request: Request) -> Response:
        return credential_page(request, "enrol.html", error=None, done=None)

    @r.post("/enrol", response_class=HTMLResponse, **public_page("credentials"))
    async def enrol(request: Request) -> Response:
        """First sign-in: the one-time code an administrator handed over becomes this person's password
        and authenticator secret, shown once, to them (a QR code for the authenticator app)."""
        import segno

        form, pre, name = await credentials(request)
        try:
            done = request.app.state.accounts.enrol(name, form.get("code", "").strip()[:200])
        except Unauthenticated:
            note_denied(request, 401, "unauthenticated")
            return console.render(request, "enrol.html", status=401, pre=pre, done=None,
                                  error="That name and enrolment code were not accepted.")
        qr = Markup(segno.make(done["totp_uri"], error="m").svg_inline(scale=5, title="Authenticator QR code"))
        response = console.render(request, "enrol.html", pre=pre, error=None, done=done, qr=qr)
        response.delete_cookie(PRE_COOKIE, path=PREFIX)
        return response

    @r.get("/login/sso", **public_page("sign-in by single sign-on"))
    def sso_start(request: Request) -> Response:
        """Send the browser to the issuer (authorization code + PKCE S256, a fresh state and nonce)."""
        from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
        from authlib.oauth2.rfc7636 import create_s256_code_challenge

        sso = console.sso
        if sso is None:
            raise NotFound("single sign-on is not configured")
        state, nonce, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(48)
        url = prepare_grant_uri(sso.authorization_endpoint, sso.client_id, "code",
                                redirect_uri=str(request.url_for("sso_callback")), scope="openid", state=state,
                                nonce=nonce, code_challenge=create_s256_code_challenge(verifier),
                                code_challenge_method="S256")
        response = RedirectResponse(url, status_code=303)
        at = str(int(time.time()))
        payload = ".".join((state, nonce, verifier, at))
        # Lax, not Strict: the issuer sends the browser back with a top-level cross-site navigation
        response.set_cookie(SSO_COOKIE, f"{payload}.{console._mac('sso', payload)}", path=PREFIX, httponly=True,
                            samesite="lax", max_age=SSO_SECONDS,
                            secure=console.secure_cookies or request.url.scheme == "https")
        return response

    @r.get("/login/sso/callback", name="sso_callback", response_class=HTMLResponse, **public_page("credentials"))
    def sso_callback(request: Request, code: str = "", state: str = "", error: str = "") -> Response:
        """The issuer's answer: check the state, exchange the code with the PKCE verifier, check the ID
        token (nonce) and the access token (role, tenants, MFA), and start the console session."""
        import httpx

        sso, accounts = console.sso, request.app.state.accounts
        if sso is None or accounts.oidc is None:
            raise NotFound("single sign-on is not configured")
        parts = request.cookies.get(SSO_COOKIE, "").split(".")
        if len(parts) != 5 or not hmac.compare_digest(parts[4], console._mac("sso", ".".join(parts[:4]))) \
                or not parts[3].isdigit() or time.time() - int(parts[3]) > SSO_SECONDS \
                or not hmac.compare_digest(parts[0], state[:100]):
            raise Forbidden("this sign-in was not started here, or took too long: start again")
        _, nonce, verifier, _ = parts[:4]
        if error or not code:
            note_denied(request, 401, "unauthenticated")
            return console.render(request, "error.html", status=401, title="Not signed in",
                                  detail="The identity provider did not sign you in.")
        form = {"grant_type": "authorization_code", "code": code[:2000], "client_id": sso.client_id,
                "redirect_uri": str(request.url_for("sso_callback")), "code_verifier": verifier}
        if sso.client_secret:
            form["client_secret"] = sso.client_secret
        try:
            answer = httpx.post(sso.token_endpoint, data=form, timeout=10.0)
            tokens = answer.json() if answer.status_code == 200 else {}
            if not isinstance(tokens, dict):
                raise ValueError("the token endpoint did not answer with a JSON object")
            accounts.oidc.id_token(str(tokens.get("id_token", "")), sso.client_id, nonce)
            access_token = str(tokens.get("access_token", ""))
            p: Principal = accounts.authenticate(f"Bearer {access_token}")
        except (httpx.HTTPError, ValueError, Unauthenticated):
            note_denied(request, 401, "unauthenticated")
            return console.render(request, "error.html", status=401, title="Not signed in",
                                  detail="The identity provider's answer was not accepted.")
        if p.via != "oidc":
            raise Forbidden("single sign-on gives OIDC tokens only")
        # a page of ours, not a redirect: the session cookie (SameSite=Strict) is sent on the next,
        # same-site navigation, not on a redirect that ends a cross-site one
        done = console.render(request, "sso_done.html", who=p.name)
        console.set_session(done, request, access_token)
        done.delete_cookie(SSO_COOKIE, path=PREFIX)
        return done

    @r.post("/logout", **page(ANY, audited=False))
    def logout(request: Request) -> Response:
        request.app.state.accounts.logout(request.state.token)
        response = RedirectResponse(f"{PREFIX}/login", status_code=303)
        console.set_session(response, request, None)
        return response

    # home -------------------------------------------------------------------------------------

    @r.get("/", response_class=HTMLResponse, **page(ANY, audited=False))
    def home(request: Request) -> Response:
        if me(request).role in READERS:
            return RedirectResponse(f"{PREFIX}/search", status_code=303)
        return console.render(request, "home.html")

    @r.get("/dashboard", response_class=HTMLResponse, **page(READERS, audited=True))
    def dashboard(request: Request) -> Response:
        return console.render(request, "dashboard.html", board=access.dashboard(me(request)).result)

    @r.get("/violations", response_class=HTMLResponse, **page(READERS, audited=True))
    def violations(request: Request) -> Response:
        return console.render(request, "violations.html",
                              violations=access.violations(me(request)).result["violations"])

    @r.get("/trail", response_class=HTMLResponse, **page(TRAIL_READERS, audited=True))
    def trail(request: Request) -> Response:
        """The archive's own audit stream over the last 24 hours, newest first (who read or decided what)."""
        since = datetime.now(UTC) - timedelta(days=1)
        entries = access.audit_trail(me(request), since, None, 2000, 0).result["entries"]
        return console.render(request, "trail.html", entries=list(reversed(entries)), since=since)

    # search -----------------------------------------------------------------------------------

    def saved(request: Request) -> list[Any]:
        return console.saved.list(me(request).id)

    @r.get("/search", response_class=HTMLResponse, **page(READERS, audited=False))
    def search_page(request: Request) -> Response:
        return console.render(request, "search.html", form={}, result=None, error=None, saved=saved(request))

    @r.post("/searches", **page(READERS, audited=False))
    def save_search(request: Request) -> Response:
        """Keep this search (query, filters, dates) under a name, for its owner only."""
        form = request.state.form
        if form.get("q", "").strip():
            searchlang.parse(form["q"].strip()[:2000])  # a saved search must run
        console.saved.save(me(request).id, form.get("name", ""), form)
        return RedirectResponse(f"{PREFIX}/search#saved", status_code=303)

    @r.post("/searches/{search_id}/delete", **page(READERS, audited=False))
    def delete_search(request: Request, search_id: str) -> Response:
        console.saved.delete(me(request).id, search_id)
        return RedirectResponse(f"{PREFIX}/search#saved", status_code=303)

    @r.post("/search", response_class=HTMLResponse,
            **page(READERS, audited=True))
    def search(request: Request) -> Response:
        form = request.state.form
        q = form.get("q", "").strip()[:2000]
        error: dict[str, Any] | None = None
        result = None
        if q:
            try:
                start, end = _range(form)
                result = access.search(me(request), q, PAGE, form.get("cursor") or None, _filters(form),
                                       start, end).result
            except searchlang.QuerySyntaxError as e:
                error = {"reason": e.reason, "before": e.query[:e.position], "after": e.query[e.position:]}
            except InvalidInput as e:
                error = {"reason": str(e), "before": "", "after": ""}
        partial = bool(request.headers.get("hx-request"))
        return console.render(request, "search_results.html" if partial else "search.html", form=form, q=q,
                              result=result, error=error, saved=[] if partial else saved(request),
                              status=400 if error else 200)

    # threads and records ----------------------------------------------------------------------

    def show_thread(request: Request, conversation: str, hit: str, q: str) -> Response:
        if not re.fullmatch(r"[0-9A-Za-z_-]{1,64}", conversation):
            raise NotFound("no such conversation")
        t = access.thread(me(request), conversation, None, None, None, 5000, None).result
        if not t["items"]:
            raise NotFound("no such conversation")
        hits = thread_hits(t["items"], q) if q else ([hit] if hit else [])
        return console.render(request, "thread.html", thread=t, hit=hit, q=q, hits=hits)

    @r.get("/thread/{conversation}", response_class=HTMLResponse, **page(READERS, audited=True))
    def thread(request: Request, conversation: str, hit: str | None = None) -> Response:
        return show_thread(request, conversation, (hit or "")[:200], "")

    @r.post("/thread/{conversation}", response_class=HTMLResponse, **page(READERS, audited=True))
    def thread_for_search(request: Request, conversation: str) -> Response:
        """The conversation opened from a search (the query in the POST body, never the URL): every
        message the query matches is marked and highlighted, with next and previous hit."""
        form = request.state.form
        return show_thread(request, conversation, form.get("hit", "")[:200], form.get("q", "").strip()[:2000])

    @r.get("/record/{stream}/{seq}", response_class=HTMLResponse, **page(READERS, audited=True))
    def record(request: Request, stream: str, seq: int) -> Response:
        if len(stream) > 128 or not 0 <= seq < 2**63:
            raise NotFound("no such record")
        view = access.record(me(request), stream, seq).result
        return console.render(request, "record.html", rec=view, public_key_pem=console.public_key_pem)

    @r.get("/attachment/{stream}/{seq}", **page(READERS, audited=True))
    def attachment(request: Request, stream: str, seq: int, download: bool = False) -> Response:
        """An attachment: raster images shown in the thread, everything else (and any image, asked
        with ``download=1``) downloaded. Each fetch is its own audited read."""
        if len(stream) > 128 or not 0 <= seq < 2**63:
            raise NotFound("no such attachment")
        return attachment_response(access.attachment(me(request), stream, seq), f"attachment-{stream}-{seq}",
                                   inline=not download)

    # holds ------------------------------------------------------------------------------------

    @r.get("/holds", response_class=HTMLResponse, **page(READERS, audited=True))
    def holds(request: Request) -> Response:
        return console.render(request, "holds.html", holds=access.holds(me(request)).result["holds"],
                              regulated=archive.settings.mode == "regulated")

    @r.post("/holds", **page(COMPLIANCE, audited=True))
    def hold_search(request: Request) -> Response:
        """Place a legal hold on every conversation the search finds (whole conversations: wider
        than the hits, never narrower), within the search's date range."""
        form, p = request.state.form, me(request)
        matter, q = form.get("matter", "").strip()[:200], form.get("q", "").strip()[:2000]
        if not matter or not q:
            raise InvalidInput("a hold from a search needs a matter and the search")
        start, end = _range(form)
        conversations = access.search_scope(p, q, _filters(form), start, end)
        if not conversations:
            raise InvalidInput("the search finds nothing to hold")
        h = archive.holds().place(matter, Scope(subjects=conversations, start=start.isoformat() if start else None,
                                                end=end.isoformat() if end else None), p.actor)
        return RedirectResponse(f"{PREFIX}/holds#hold-{hold_view(h)['id']}", status_code=303)

    @r.post("/holds/{hold_id}/release", **page(COMPLIANCE, audited=False))
    def hold_release(request: Request, hold_id: str) -> Response:
        """Release a hold with a reason; in regulated mode, propose it for a second officer instead."""
        form, p = request.state.form, me(request)
        reason = form.get("reason", "").strip()[:1000]
        if not reason:
            raise InvalidInput("a release needs a reason")
        holds = archive.holds()
        h = holds.get(hold_id[:64])
        if not access.hold_visible(p, h.scope):
            raise NotFound("no such hold")
        if archive.settings.mode == "regulated":
            made = archive.proposals().propose(p, "hold_release", {"hold": h.id, "release_reason": reason}, reason,
                                               timedelta(hours=72))
            return RedirectResponse(f"{PREFIX}/proposals#p-{made['id']}", status_code=303)
        holds.release(h.id, p.actor, reason)
        return RedirectResponse(f"{PREFIX}/holds#hold-{h.id}", status_code=303)

    # four eyes --------------------------------------------------------------------------------

    @r.get("/proposals", response_class=HTMLResponse, **page(DECIDERS, audited=True))
    def proposals(request: Request) -> Response:
        """Decisions that need a second person: open ones to approve or reject, and the record of the rest."""
        found = access.proposals(me(request)).result["proposals"]
        return console.render(request, "proposals.html", proposals=list(reversed(found)), actions=PROPOSAL_ACTIONS)

    @r.post("/proposals", **page(DECIDERS, audited=False))
    def propose(request: Request) -> Response:
        """A key rotation proposed from the admin page (the other actions start where they belong)."""
        form, p = request.state.form, me(request)
        action = form.get("action", "")
        if action not in ("kek_rotation", "signing_rotation"):
            raise InvalidInput("this form proposes a key rotation")
        params = {"to": form["to"].strip()[:2048]} if form.get("to", "").strip() else {}
        made = archive.proposals().propose(p, action, params, form.get("reason", "").strip()[:1000],
                                           timedelta(hours=72))
        return RedirectResponse(f"{PREFIX}/proposals#p-{made['id']}", status_code=303)

    @r.post("/proposals/{proposal_id}/{decision}", **page(DECIDERS, audited=False))
    def decide(request: Request, proposal_id: str, decision: str) -> Response:
        form, p = request.state.form, me(request)
        reason = form.get("reason", "").strip()[:1000]
        if decision == "approve":
            archive.proposals().approve(p, proposal_id[:26], reason)
        elif decision == "reject":
            archive.proposals().reject(p, proposal_id[:26], reason)
        else:
            raise NotFound("no such decision")
        return RedirectResponse(f"{PREFIX}/proposals#p-{proposal_id[:26]}", status_code=303)

    # ledgers ----------------------------------------------------------------------------------

    @r.get("/ledgers", response_class=HTMLResponse, **page(READERS, audited=False))
    def ledgers_page(request: Request) -> Response:
        return console.render(request, "ledgers.html", form={}, consent=None, template=None)

    @r.post("/ledgers", response_class=HTMLResponse, **page(READERS, audited=True))
    def ledgers(request: Request) -> Response:
        """A contact's consent on a number, or a template's state, as of a date (the phone number in
        the POST body only; the ledger names the contact by subject id)."""
        from archiver.identity import IdentityBook

        form, p = request.state.form, me(request)
        at = _day_end(form, "at")
        consent = template = None
        if form.get("kind") == "template":
            template = access.template(p, form.get("tenant", "").strip()[:64], form.get("name", "").strip()[:512],
                                       form.get("language", "").strip()[:32], at).result
        else:
            stream, phone = form.get("stream", "").strip()[:128], re.sub(r"\D", "", form.get("phone", ""))[:32]
            subject = form.get("subject", "").strip()[:40] or None
            if not subject:
                if not phone:
                    raise InvalidInput("name the contact by phone number or subject id")
                subject = IdentityBook(archive.engine).at("wa", archive.keyring.blind_index("wa", phone), at)
            consent = access.consent(p, stream, subject, "*", at).result
        return console.render(request, "ledgers.html", form=form, consent=consent, template=template)

    # administration (no archived content) -----------------------------------------------------

    def admin_page(request: Request, created: dict[str, str] | None) -> Response:
        """Accounts, API keys and the keys that protect the archive (who holds them, their history)."""
        from archiver import keyhistory

        found = access.principals(me(request)).result["principals"]
        history = keyhistory.load(archive.store, archive.public_key)
        keys = [{"key_id": kid, "retired_at": history.retired.get(kid), "current": kid == history.current_id}
                for kid in history.keys]
        kek = KEK_PROVIDERS.get(type(archive.keyring.kek).__name__, type(archive.keyring.kek).__name__)
        return console.render(request, "admin.html", principals=found, keys=keys, created=created, kek=kek,
                              roles=[r for r in ROLES if r != "ingest"])

    @r.get("/admin", response_class=HTMLResponse, **page(ADMIN, audited=True))
    def admin(request: Request) -> Response:
        return admin_page(request, None)

    @r.post("/admin/users", response_class=HTMLResponse, **page(ADMIN, audited=True))
    def admin_create_user(request: Request) -> Response:
        """A person's account: the page shows the one-time enrolment code to hand over (the person
        sees their password and authenticator secret when they enrol, never the admin)."""
        form, p = request.state.form, me(request)
        tenants = [t for t in re.split(r"[\s,]+", form.get("tenants", "")) if t][:100] or None
        created = request.app.state.accounts.create_user(form.get("name", "").strip()[:200], form.get("role", ""),
                                                         tenants, p.actor, enrol=True)
        return admin_page(request, created)

    @r.post("/admin/principals/{principal_id}/end", **page(ADMIN, audited=False))
    def admin_end(request: Request, principal_id: str) -> Response:
        """Disable an account or revoke an API key (its sessions end with it)."""
        accounts, p = request.app.state.accounts, me(request)
        kind = request.state.form.get("kind")
        if kind == "user":
            accounts.disable_user(principal_id[:26], p.actor)
        elif kind == "api_key":
            accounts.revoke_api_key(principal_id[:26], p.actor)
        else:
            raise InvalidInput("end a user or an api_key")
        return RedirectResponse(f"{PREFIX}/admin#a-{principal_id[:26]}", status_code=303)

    # exports ----------------------------------------------------------------------------------

    @r.get("/exports", response_class=HTMLResponse, **page(EXPORTERS, audited=False))
    def exports(request: Request) -> Response:
        """Your exports (states and counts, no archived content)."""
        return console.render(request, "exports.html", jobs=console.jobs.mine(me(request).id))

    @r.post("/exports", **page(EXPORTERS, audited=False))
    def export_search(request: Request) -> Response:
        form, p = request.state.form, me(request)
        matter, q = form.get("matter", "").strip()[:200], form.get("q", "").strip()[:2000] or None
        if not matter:
            raise InvalidInput("an export needs a matter")
        start, end = _range(form)
        query = as_query(q, _filters(form))
        if query is not None:
            searchlang.parse(query)  # a syntax error is an error now, not a failed job later
        scope = ExportScope(matter, query, sorted(p.tenants) if p.tenants is not None else None, [], [], start, end)
        job_id = console.jobs.submit(scope, Custody(form.get("requested_by", "").strip()[:200] or p.actor),
                                     p.actor, p.id)
        return RedirectResponse(f"{PREFIX}/exports/{job_id}", status_code=303)

    def own(request: Request, job_id: str) -> dict[str, Any]:
        job = console.jobs.get(job_id)
        if job is None or job["principal_id"] != me(request).id:
            raise NotFound("no such export")
        return job

    @r.get("/exports/{job_id}", response_class=HTMLResponse, **page(EXPORTERS, audited=False))
    def export_page(request: Request, job_id: str) -> Response:
        """The job's state and counts (no archived content: not an access event, like the progress bar)."""
        job = own(request, job_id)
        template = "export_status.html" if request.headers.get("hx-request") else "export.html"
        return console.render(request, template, job=job)

    @r.post("/exports/{job_id}/transfers", **page(EXPORTERS, audited=False))
    def export_hand_over(request: Request, job_id: str) -> Response:
        """Record that the downloaded bundle changed hands (to whom, how): its chain of custody."""
        own(request, job_id)
        form = request.state.form
        console.jobs.hand_over(job_id, me(request).actor, form.get("to", ""), form.get("method", ""))
        return RedirectResponse(f"{PREFIX}/exports/{job_id}#custody", status_code=303)

    @r.get("/exports/{job_id}/download", **page(EXPORTERS, audited=True))
    def export_download(request: Request, job_id: str) -> Response:
        job = own(request, job_id)
        if job["state"] != "done":
            raise InvalidInput(f"the export is {job['state']}")
        p = me(request)
        access.event(p, "export.download", {"export_id": job_id}, job["manifest_sha256"],
                     (job["counts"] or {}).get("records", 0), [job_id])
        console.jobs.record_transfer(job_id, p.actor, "download through the console")
        return StreamingResponse(console.jobs.download(job_id), media_type="application/zip", headers={
            "Content-Disposition": f'attachment; filename="strongroom-export-{job_id}.zip"'})

    # supervision ------------------------------------------------------------------------------

    from console.review import review_pages

    review_pages(r, console, page, me)

    # static files (vendored, no archived data) ------------------------------------------------

    @r.get("/static/{name}", **public_page("static files"))
    def static(name: str) -> Response:
        path = STATIC / name
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{0,60}", name) or path.suffix not in STATIC_TYPES \
                or not path.is_file():
            raise NotFound("no such file")
        return Response(path.read_bytes(), media_type=STATIC_TYPES[path.suffix],
                        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    return r


def install_console(app: FastAPI, access: Access, jobs: ExportJobs, key: bytes, idle_seconds: float,
                    secure_cookies: bool, sso: Sso | None = None) -> None:
    """Serve the console at /console: its router, and HTML answers for its errors."""
    console = Console(access, jobs, key, idle_seconds, secure_cookies, sso)
    app.state.console = console
    app.state.error_page = error_page
    app.include_router(console_router(console))

    @app.exception_handler(NeedsSignIn)
    async def _sign_in(request: Request, _e: NeedsSignIn) -> Response:
        if request.method in ("GET", "HEAD"):
            return RedirectResponse(f"{PREFIX}/login", status_code=303)
        return console.render(request, "error.html", status=401, title="Signed out",
                              detail="Your session has ended. Sign in again.")


def error_page(request: Request, e: StrongroomError) -> Response:
    """A project error on a console page, as a page (the API answers problem documents)."""
    console: Console = request.app.state.console
    return console.render(request, "error.html", status=e.status, title=e.title, detail=str(e))

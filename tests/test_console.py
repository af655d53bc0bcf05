"""The review console in a real browser: Playwright driving Debian's Chromium (no browser download)
against the app on SQLite + SeaweedFS, served by uvicorn on a local port.

A compliance officer signs in with TOTP, searches, reads the thread (an app echo, a history
message, an edit, a revoke), has the record checked in the browser with WebCrypto, and places a
hold from the search; a tenant-scoped auditor exports the search and the download verifies with
the offline verifier; the auditor never sees the other tenant; an admin sees no content. Every page
is checked for CSP violations and by axe-core (serious or critical issues fail), and every page
that shows archived data writes exactly one access event. Screenshots go to tmp (and to
docs/console/ with STRONGROOM_UPDATE_SCREENSHOTS=1).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyotp
import pytest
import sqlalchemy as sa

from archiver import crypto
from archiver.db import events
from exporters import verify_bundle as vb
from strongroom import demo
from strongroom import payloads as p
from strongroom.runtime import Archive, open_archive
from strongroom.settings import Settings
from tests.conftest import app_routes, ingest
from tests.graph_standin import GraphStandIn

CHROMIUM = Path("/usr/bin/chromium")
AXE = Path(__file__).parent / "vendor" / "axe.min.js"
SHOTS = Path(__file__).parents[1] / "docs" / "console"
OTHER_WABA, OTHER_PNID = "987654321098765", "555000111222333"
CLEO = "447700900456"


def _png() -> bytes:
    import io

    import segno

    out = io.BytesIO()
    segno.make("strongroom test photo").save(out, kind="png", scale=4)
    return out.getvalue()


PHOTO = _png()
PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
CSP_PROBE = ("window.__csp = []; document.addEventListener('securitypolicyviolation', "
             "e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));")


@dataclass
class Site:
    archive: Archive
    url: str
    users: dict[str, dict[str, str]]
    shots: Path
    app: Any
    idp: Any


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _other_tenant(wamid: str, ts: int, words: str) -> bytes:
    msg = p.text(wamid, "447700900123", ts, words)
    value = {"contacts": [{"profile": {"name": "Zed"}, "wa_id": msg["from"]}], "messages": [msg]}
    return p.body(p.envelope(p.change("messages", value, pnid=OTHER_PNID), waba=OTHER_WABA))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Site]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is not installed (apt-get install chromium; .ci/run does it)")
    import uvicorn

    from strongroom.app import create_app
    from tests.oidc_provider import OidcProvider

    make_settings: Callable[..., Settings] = request.getfixturevalue("module_settings")
    jwks = tmp_path_factory.mktemp("idp") / "jwks.json"
    idp = OidcProvider(jwks)
    graph = GraphStandIn().start()
    photo, pdf = graph.add("media-cleo-1", PHOTO, mime_type="image/png"), graph.add(
        "media-cleo-2", PDF, mime_type="application/pdf")
    archive = open_archive(make_settings(
        graph_base_url=graph.base_url, graph_token=graph.token, media_retry_base_seconds=0,
        oidc_issuer=idp.issuer, oidc_audience=idp.audience, oidc_jwks_file=jwks, oidc_client_id=idp.client_id,
        oidc_authorization_endpoint=f"{idp.issuer}/authorize", oidc_token_endpoint=f"{idp.issuer}/token"))
    now = int(time.time())
    bodies = [b for _, b in demo.day_bodies(now)]
    bodies += [p.inbound(p.text("wamid.C.R1", demo.ANA, now - 1800, "my account number is ACME-0042, please ignore"),
                         name="Ana"),
               p.inbound({"from": demo.ANA, "id": "wamid.C.R2", "timestamp": str(now - 1700), "type": "revoke",
                          "revoke": {"original_message_id": "wamid.C.R1"}}, name="Ana"),
               _other_tenant("wamid.C.Z1", now - 1600, "ACME shares for the other tenant"),
               p.inbound(p.image("wamid.C.P1", CLEO, now - 1500, "media-cleo-1", photo.sha256, mime_type="image/png",
                                 caption="the signed form"),
                         {"from": CLEO, "id": "wamid.C.P2", "timestamp": str(now - 1490), "type": "document",
                          "document": {"mime_type": "application/pdf", "sha256": pdf.sha256, "id": "media-cleo-2",
                                       "filename": "statement.pdf"}}, name="Cleo"),
               p.echo("wamid.C.G1", CLEO, now - 1400, "I guarantee you will double your money by Friday")]
    ingest(archive, *bodies)
    from review.supervision import DEFAULT_POLICY

    archive.supervision().store_policy("default", {**DEFAULT_POLICY, "sample_rate": 0, "sample_minimum": 0}, "test")
    archive.supervision().run()  # the flags, as the worker makes them
    archive.search_index().update()
    archive.compliance().run()  # the ledgers, as the worker keeps them
    today = datetime.now(UTC).date()
    archive.reconciler().run(today - timedelta(days=1))
    archive.reconciler().run(today)
    archive.sealer().seal_all()
    accounts = archive.accounts()
    users = {}
    for name, role, tenants in (("cora", "compliance", None), ("carla", "compliance", None), ("audrey", "auditor", [p.WABA]),
                                ("sven", "auditor", [p.WABA]),
                                ("adam", "admin", None), ("ada", "admin", None),
                                ("m-compliance", "compliance", None), ("m-auditor", "auditor", [p.WABA]),
                                ("m-admin", "admin", None), ("m-regulator", "regulator", None),
                                ("rhea", "reviewer", [p.WABA]), ("m-reviewer", "reviewer", [p.WABA])):
        users[name] = accounts.create_user(name, role, tenants, "test", approved=True)
    port = _free_port()
    app = create_app(archive)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    shots = tmp_path_factory.mktemp("shots")
    try:
        yield Site(archive, f"http://127.0.0.1:{port}", users, shots, app, idp)
    finally:
        server.should_exit = True
        thread.join(10)
        archive.close()
        idp.close()
        graph.stop()
        if os.environ.get("STRONGROOM_UPDATE_SCREENSHOTS") == "1":
            SHOTS.mkdir(parents=True, exist_ok=True)
            for shot in shots.glob("*.png"):
                shutil.copy(shot, SHOTS / shot.name)


@pytest.fixture(scope="module")
def module_settings(tmp_path_factory: pytest.TempPathFactory, seaweed: Any) -> Callable[..., Settings]:
    import uuid

    from tests.conftest import APP_SECRET, VERIFY_TOKEN

    root = tmp_path_factory.mktemp("console")
    bucket = f"t-{uuid.uuid4().hex[:16]}"

    def make(**overrides: object) -> Settings:
        values: dict[str, object] = dict(
            data_dir=root / "data", database_url=f"sqlite:///{root / 'strongroom.db'}", s3_endpoint=seaweed.endpoint,
            s3_bucket=bucket, s3_access_key=seaweed.access_key, s3_secret_key=seaweed.secret_key,
            app_secret=APP_SECRET, verify_token=VERIFY_TOKEN, retention_days=1, head_interval_seconds=0)
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            b.close()


def _access_actions(archive: Archive) -> list[str]:
    with archive.engine.connect() as conn:
        rows = conn.execute(sa.select(events).where(events.c.natural_key.like("access:%"))
                            .order_by(events.c.id)).all()
    return [json.loads(archive.keyring.open_record(r))["action"] for r in rows]


class Visit:
    """One person's browser session, checking every page it lands on."""

    def __init__(self, site: Site, browser: Any, who: str) -> None:
        self.site, self.who = site, who
        self.context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True,
                                           base_url=site.url)
        self.context.add_init_script(CSP_PROBE)
        self.page = self.context.new_page()
        self.axe = AXE.read_text()

    def check(self, shot: str | None = None) -> None:
        page = self.page
        page.wait_for_load_state("load")
        assert page.evaluate("window.__csp") == [], f"CSP violations on {page.url}"
        page.evaluate(self.axe)  # through the devtools protocol: the page's CSP does not apply to it
        found = page.evaluate("axe.run(document, {resultTypes: ['violations']}).then(r => r.violations"
                              ".filter(v => v.impact === 'serious' || v.impact === 'critical')"
                              ".map(v => v.id + ': ' + v.nodes.map(n => n.target.join(' ')).join(', ')))")
        assert found == [], f"axe on {page.url}: {found}"
        if shot:
            page.screenshot(path=str(self.site.shots / f"{shot}.png"), full_page=True)

    def sign_in(self) -> None:
        user = self.site.users[self.who]
        self.page.goto("/console/search")
        assert self.page.url.endswith("/console/login")  # not signed in: sent to the sign-in page
        self.check("sign-in")
        self.page.fill("#name", self.who)
        self.page.fill("#password", user["password"])
        self.page.fill("#otp", pyotp.TOTP(user["totp_secret"]).now())
        self.page.click("button[type=submit]")
        self.page.wait_for_load_state("load")

    def one_access_event(self, action: str, step: Callable[[], None]) -> None:
        before = _access_actions(self.site.archive)
        step()
        self.page.wait_for_load_state("load")
        after = _access_actions(self.site.archive)
        assert after[len(before):] == [action], f"{self.page.url}: {after[len(before):]}, expected [{action!r}]"


def test_a_compliance_officer_searches_reads_verifies_and_holds(site: Site, browser: Any) -> None:
    v = Visit(site, browser, "cora")
    page = v.page
    v.sign_in()
    assert page.url.endswith("/console/search")
    v.check()

    v.one_access_event("dashboard", lambda: page.get_by_role("link", name="Dashboard").click())
    v.check("dashboard")
    number = page.locator("section.number", has_text=f"Number {p.PNID}")
    assert "open gap" in number.inner_text() or "no open gaps" in number.inner_text()
    assert number.locator("rect.bar.origin-app").count() >= 1 and number.locator("rect.bar.origin-api").count() >= 1
    assert page.locator("section.number", has_text=f"Number {OTHER_PNID}").count() == 1  # compliance: every tenant
    calendar = number.locator("ol.calendar li")
    assert calendar.count() == 30 and number.locator("li.day-none").count() <= 28  # the reconciled days show
    assert number.locator("li.day-complete, li.day-gaps").count() >= 1

    page.get_by_role("link", name="Search").click()
    page.fill("#q", "ACME")
    v.one_access_event("search", lambda: page.click("#search-form button[type=submit]"))
    assert "?q" not in page.url and "ACME" not in page.url  # the query never travels in a URL
    v.check("search")
    assert page.locator(".count").inner_text().startswith("5 messages")  # the other tenant's too: compliance
    assert page.locator(".hit mark").first.inner_text() == "ACME"

    hit = page.locator(".hit", has_text="please buy 100 shares").first
    v.one_access_event("thread", lambda: hit.get_by_role("button", name="Open conversation").click())
    assert "ACME" not in page.url  # opened by POST: the query stays out of the URL and the history
    v.check("thread")
    thread = page.locator(".thread")
    assert thread.locator(".bubble.is-target").count() == 1 and "please buy 100" in \
        thread.locator(".bubble.is-target").inner_text()
    hits = thread.locator(".bubble.is-hit")  # every message here the query matches, marked and linked
    assert hits.count() == 3 and thread.locator(".bubble.is-hit mark").first.inner_text() == "ACME"
    assert "hit 1 of 3" in hits.nth(0).inner_text() and hits.nth(0).locator("a.next-hit").count() == 1
    page.keyboard.press("n")  # from the hit the page opened on to the next one
    assert page.evaluate("document.activeElement.id") == hits.nth(1).get_attribute("id")
    assert thread.locator(".badge.origin-app").count() >= 1  # the broker's replies from the Business App
    assert thread.locator(".badge.origin-history").count() >= 1  # the chat from three weeks ago
    assert "Edited at" in thread.inner_text() and "please buy 120 shares" in thread.inner_text()
    revoked = thread.locator(".bubble.revoked")
    assert "my account number is ACME-0042" in revoked.inner_text() and "Deleted by the sender" in revoked.inner_text()

    v.one_access_event("record", lambda: thread.locator(".bubble.is-target").get_by_role(
        "link", name="record and proof").click())
    page.wait_for_selector("#verification[data-state]")
    status = page.locator("#verification")
    assert status.get_attribute("data-state") == "verified", status.inner_text()
    assert status.inner_text().startswith("Verified on this device") and "the text shown is the sealed content" in \
        status.inner_text()
    v.check("record")

    page.goto("/console/search")
    page.fill("#q", "ACME")
    page.click("#search-form button[type=submit]")
    page.wait_for_load_state("load")
    page.fill("#hold-matter", "SEC v. Example 26-cv-114")
    before = _access_actions(site.archive)
    page.get_by_role("button", name="Place a legal hold on this search").click()
    page.wait_for_load_state("load")
    assert _access_actions(site.archive)[len(before):] == ["search.scope", "holds.list"]
    assert page.url.split("#")[0].endswith("/console/holds")
    row = page.locator("tr", has_text="SEC v. Example 26-cv-114")
    assert "in force" in row.inner_text() and "2 conversations" in row.inner_text()
    v.check("holds")

    row.get_by_label("Reason for releasing SEC v. Example 26-cv-114").fill("matter settled")
    before = _access_actions(site.archive)
    row.get_by_role("button", name="Release").click()
    page.wait_for_load_state("load")
    assert _access_actions(site.archive)[len(before):] == ["holds.list"]  # the page after; the release reads nothing
    row = page.locator("tr", has_text="SEC v. Example 26-cv-114")
    assert "released" in row.inner_text() and row.get_by_role("button", name="Release").count() == 0

    page.get_by_role("link", name="Ledgers").click()
    page.fill("#c-stream", p.PNID)
    page.fill("#c-phone", "+" + demo.BEN)
    v.one_access_event("ledger.consent", lambda: page.get_by_role("button", name="Show consent").click())
    assert demo.BEN not in page.url and demo.BEN not in page.content()  # the phone number left in a POST body only
    consent = page.locator("#consent")
    assert "opted_out" in consent.locator("tr", has_text="marketing").inner_text()
    v.check("ledgers")
    page.fill("#t-tenant", p.WABA)
    page.fill("#t-name", "trade_confirmation")
    page.fill("#t-language", "en")
    page.fill("#t-at", datetime.now(UTC).date().isoformat())  # as of the end of today
    v.one_access_event("ledger.templates", lambda: page.get_by_role("button", name="Show template").click())
    assert "APPROVED" in page.locator("#template").inner_text()
    page.fill("#t-at", "2020-01-01")  # before it was submitted
    page.get_by_role("button", name="Show template").click()
    page.wait_for_load_state("load")
    assert "status unknown" in page.locator("#template").inner_text()

    v.one_access_event("violations", lambda: page.get_by_role("link", name="Violations").click())
    v.check("violations")
    v.one_access_event("audit_trail", lambda: page.get_by_role("link", name="Audit trail").click())
    v.check("trail")
    trail = page.locator("table.grid").inner_text()
    assert "session:cora" in trail and "record" in trail and "search.scope" in trail  # her own reads and decisions

    # a state-changing request without the page's CSRF token is refused, and changes nothing
    holds_before = len(site.archive.holds().all())
    refused = v.context.request.post(f"{site.url}/console/holds", form={"matter": "forged", "q": "ACME"})
    assert refused.status == 403 and "CSRF" in refused.text()
    assert len(site.archive.holds().all()) == holds_before
    v.context.close()


def test_a_tenant_scoped_auditor_exports_the_search_and_the_download_verifies(site: Site, browser: Any,
                                                                              tmp_path: Path) -> None:
    v = Visit(site, browser, "audrey")
    page = v.page
    v.sign_in()
    page.goto("/console/dashboard")
    assert page.locator("section.number").count() == 1 and OTHER_PNID not in page.content()  # her tenant only
    page.goto("/console/search")
    page.fill("#q", "ACME")
    v.one_access_event("search", lambda: page.click("#search-form button[type=submit]"))
    text = page.locator("#results").inner_text()
    assert page.locator(".count").inner_text().startswith("4 messages") and "other tenant" not in text
    assert page.get_by_role("button", name="Place a legal hold on this search").count() == 0  # not compliance
    assert page.get_by_role("link", name="Audit trail").count() == 0  # the trail is compliance's and the regulator's

    page.fill("#export-matter", "FINRA 2026-114")
    page.fill("#export-for", "FINRA examination 2026-114")
    page.get_by_role("button", name="Export this search").click()
    page.wait_for_selector("a:has-text('Download the bundle')", timeout=120_000)  # htmx polls the job
    v.check("export")
    before = _access_actions(site.archive)
    with page.expect_download() as got:
        page.click("a:has-text('Download the bundle')")
    bundle = tmp_path / "bundle.zip"
    got.value.save_as(bundle)
    assert _access_actions(site.archive)[len(before):] == ["export.download"]
    assert vb.verify(bundle, vb.load_public_key(crypto.public_key_pem(site.archive.public_key))) == []

    # the bundle changes hands: recorded in its chain of custody and on the audit stream
    page.fill("#t-to", "FINRA examiner J. Doe")
    page.fill("#t-method", "encrypted drive by courier")
    page.get_by_role("button", name="Record the hand-over").click()
    page.wait_for_load_state("load")
    custody = page.locator("#custody").inner_text()
    assert "download through the console" in custody and "FINRA examiner J. Doe" in custody
    assert "encrypted drive by courier" in custody
    v.check()
    with site.archive.engine.connect() as conn:
        recorded = [json.loads(site.archive.keyring.open_record(r)) for r in conn.execute(
            sa.select(events).where(events.c.type == "export.transfer"))]
    assert [(d["actor"], d["details"]["to"]) for d in recorded] == [("session:audrey", "FINRA examiner J. Doe")]
    page.get_by_role("link", name="Exports").click()
    page.wait_for_load_state("load")
    assert page.locator("table.grid tr", has_text="FINRA 2026-114").count() == 1
    v.check()

    # the other tenant's conversation is as missing as one that does not exist
    with site.archive.engine.connect() as conn:
        other = conn.execute(sa.select(events.c.conversation).where(events.c.wamid == "wamid.C.Z1")).scalar_one()
    response = page.goto(f"/console/thread/{other}")
    assert response is not None and response.status == 404
    assert "other tenant" not in page.content()
    v.check()
    v.context.close()


def test_attachments_are_previewed_or_downloaded_and_each_is_an_audited_read(site: Site, browser: Any,
                                                                            tmp_path: Path) -> None:
    v = Visit(site, browser, "carla")
    page = v.page
    v.sign_in()
    with site.archive.engine.connect() as conn:
        cleo = conn.execute(sa.select(events.c.conversation).where(events.c.wamid == "wamid.C.P1",
                                                                   events.c.kind == "message")).scalar_one()
    before = _access_actions(site.archive)
    page.goto(f"/console/thread/{cleo}")
    page.wait_for_load_state("load")
    # the page is one read; the image it previews is another (the bytes left the archive too)
    assert _access_actions(site.archive)[len(before):] == ["thread", "attachment"]
    v.check("attachments")
    image = page.locator(".attachments img")
    assert image.count() == 1 and image.get_attribute("alt") == "Image attachment: the signed form"
    assert page.evaluate("document.querySelector('.attachments img').naturalWidth") > 0  # it rendered
    pdf = page.locator(".attachments li", has_text="application/pdf")
    assert pdf.locator("img").count() == 0 and hashlib.sha256(PDF).hexdigest()[:16] in pdf.inner_text()
    before = _access_actions(site.archive)
    with page.expect_download() as got:
        pdf.get_by_role("link", name="Download").click()
    saved = tmp_path / "statement.pdf"
    got.value.save_as(saved)
    assert saved.read_bytes() == PDF and got.value.suggested_filename.endswith(".pdf")
    assert _access_actions(site.archive)[len(before):] == ["attachment"]
    # from the thread to the contact's consent (by subject id: no phone number anywhere)
    v.one_access_event("ledger.consent", lambda: page.get_by_role("button", name=f"This contact's consent on {p.PNID}")
                       .click())
    assert cleo in page.locator("#consent").inner_text() and CLEO not in page.content()
    v.context.close()


def test_a_saved_search_runs_again_is_its_owners_alone_and_is_kept_encrypted(site: Site, browser: Any) -> None:
    from archiver.errors import NotFound
    from audit.saved import saved_searches

    v = Visit(site, browser, "sven")
    page = v.page
    v.sign_in()
    page.fill("#q", "ACME w/5 shares")
    page.select_option("#f-origin", "api")
    page.click("#search-form button[type=submit]")
    page.wait_for_load_state("load")
    found = page.locator(".count").inner_text()
    page.fill("#save-name", "ACME orders (Cloud API)")
    before = _access_actions(site.archive)
    page.get_by_role("button", name="Save this search").click()
    page.wait_for_load_state("load")
    assert _access_actions(site.archive) == before  # saving reads nothing
    assert page.url.endswith("/console/search#saved") and "ACME" not in page.url
    v.check("saved-searches")
    saved = page.locator("#saved li", has_text="ACME orders (Cloud API)")
    v.one_access_event("search", lambda: saved.get_by_role("button", name="ACME orders (Cloud API)", exact=True).click())
    assert page.locator(".count").inner_text() == found  # the same query, the same filters
    assert page.locator("#q").input_value() == "ACME w/5 shares" and page.locator("#f-origin").input_value() == "api"

    # kept encrypted; nobody else lists, runs or deletes it
    with site.archive.engine.connect() as conn:
        rows = conn.execute(sa.select(saved_searches)).all()
    assert len(rows) == 1 and "ACME" not in rows[0].sealed and "Cloud" not in rows[0].sealed
    saved_store = site.app.state.console.saved
    mine = saved_store.list(rows[0].principal_id)
    assert [s.name for s in mine] == ["ACME orders (Cloud API)"] and mine[0].fields["origin"] == "api"
    assert saved_store.list("session:someone-else") == []
    with pytest.raises(NotFound):
        saved_store.get("session:someone-else", rows[0].id)
    with pytest.raises(NotFound):
        saved_store.delete("session:someone-else", rows[0].id)

    page.goto("/console/search")
    page.get_by_role("button", name="Delete the saved search ACME orders (Cloud API)").click()
    page.wait_for_load_state("load")
    assert page.locator("#saved li").count() == 0 and "None yet" in page.locator("#saved").inner_text()
    v.context.close()


def test_an_admin_signs_in_and_sees_no_archived_content(site: Site, browser: Any) -> None:
    v = Visit(site, browser, "adam")
    v.sign_in()
    assert v.page.url.endswith("/console/")
    assert "does not read archived content" in v.page.content()
    v.check()
    before = _access_actions(site.archive)
    response = v.page.goto("/console/search")
    assert response is not None and response.status == 403
    assert _access_actions(site.archive) == before
    v.check()
    page = v.page
    v.one_access_event("admin.principals", lambda: page.get_by_role("link", name="Accounts and keys").click())
    v.check("admin")
    assert "cora" in page.locator("table.grid").first.inner_text()
    page.fill("#u-name", "newcomer")
    page.select_option("#u-role", "auditor")
    page.fill("#u-tenants", p.WABA)
    page.get_by_role("button", name="Create and show the enrolment code").click()
    page.wait_for_load_state("load")
    code = page.locator("#created .mono").inner_text().strip()
    assert code and "awaiting approval" in page.locator("tr", has_text="newcomer").inner_text()
    assert site.archive.accounts().enrol("newcomer", code)["totp_uri"].startswith("otpauth://")  # the code works
    page.fill("#k-reason", "annual rotation")
    page.get_by_role("button", name="Propose the rotation").click()
    page.wait_for_load_state("load")
    mine = page.locator("tr", has_text="rotate the checkpoint-signing key")
    assert "waiting for a second admin" in mine.inner_text() and mine.get_by_role("button").count() == 0
    v.check("decisions")

    second = Visit(site, browser, "ada")  # four eyes: another admin decides
    second.sign_in()
    second.page.goto("/console/proposals")
    theirs = second.page.locator("tr", has_text="rotate the checkpoint-signing key")
    theirs.get_by_label("Your reason").fill("not this quarter")
    theirs.get_by_role("button", name="Reject").click()
    second.page.wait_for_load_state("load")
    decided = second.page.locator("tr", has_text="rotate the checkpoint-signing key").inner_text()
    assert "rejected" in decided and "session:ada" in decided and "not this quarter" in decided
    second.context.close()
    v.page.get_by_role("button", name="Sign out").click()
    v.page.wait_for_load_state("load")
    assert v.page.url.endswith("/console/login")
    response = v.page.goto("/console/")
    assert v.page.url.endswith("/console/login")  # the session is over
    v.context.close()


def test_every_console_page_declares_its_roles_and_refuses_the_others(site: Site) -> None:
    """The console's RBAC matrix, generated from its routes, over real cookie sessions (one per role)."""
    import httpx
    from fastapi.routing import APIRoute

    routes = [r for r in app_routes(site.app.routes) if isinstance(r, APIRoute)
              and (r.openapi_extra or {}).get("x-strongroom-console")
              and r.path not in ("/console/login", "/console/enrol", "/console/login/sso", "/console/login/sso/callback",
                                 "/console/static/{name}")]
    assert {r.path for r in routes} >= {"/console/search", "/console/thread/{conversation}", "/console/holds",
                                        "/console/record/{stream}/{seq}", "/console/exports"}
    console = site.app.state.console
    checked = 0
    for who in ("m-compliance", "m-auditor", "m-admin", "m-regulator", "m-reviewer"):
        user = site.users[who]
        with httpx.Client(base_url=site.url, follow_redirects=False) as client:
            client.get("/console/login")
            signed = client.post("/console/login", data={"pre": client.cookies["sr_console_pre"], "name": who,
                                                         "password": user["password"],
                                                         "otp": pyotp.TOTP(user["totp_secret"]).now()})
            assert signed.status_code == 303, signed.text
            role = who.removeprefix("m-")
            csrf = console.csrf(client.cookies["sr_console"])
            for route in routes:
                path = route.path
                for name in route.param_convertors:
                    path = path.replace("{" + name + "}", "1" if name == "seq" else "x")
                method = sorted(route.methods - {"HEAD"})[0]
                if route.path == "/console/logout":
                    continue  # (it ends the session every role may end)
                r = client.request(method, path, data={"csrf": csrf} if method == "POST" else None)
                roles = route.openapi_extra["x-strongroom-roles"]
                by_role = r.status_code == 403 and "may not open this page" in r.text
                assert r.status_code != 303 or r.headers.get("location") != "/console/login", (who, path)
                if role in roles:
                    assert not by_role, f"{role} refused on {method} {path}"
                else:
                    assert by_role, f"{role} reached {method} {path}: {r.status_code}"
                checked += 1
    assert checked >= 5 * 8


def test_highlighting_marks_what_the_query_looks_for_and_escapes_everything() -> None:
    from console.web import highlight

    assert str(highlight("Buy <b>ACME</b> now, not acmes", "acme")) == \
        "Buy &lt;b&gt;<mark>ACME</mark>&lt;/b&gt; now, not acmes"
    assert str(highlight("please confirm the trade today", '"confirm the trade" AND NOT today')) == \
        "please <mark>confirm</mark> <mark>the</mark> <mark>trade</mark> today"
    assert str(highlight("investing and investors", "invest*")) == "<mark>investing</mark> and <mark>investors</mark>"
    assert str(highlight("a (b", "(")) == "a (b"  # a query that does not parse marks nothing


def test_an_export_of_a_filtered_search_carries_its_filters_in_the_query() -> None:
    from archiver.errors import InvalidInput
    from audit import searchlang
    from console.web import as_query

    q = as_query("ACME OR trade", {"direction": "inbound", "origin": "app", "template_name": "trade confirm"})
    assert q == '(ACME OR trade) AND direction:"inbound" AND origin:"app" AND template:"trade confirm"'
    assert searchlang.parse(q).describe() == \
        "((acme OR trade) AND direction:inbound AND origin:app AND template:trade confirm)"
    assert as_query(None, {}) is None
    with pytest.raises(InvalidInput, match="quotation mark"):
        as_query("x", {"type": 'a" OR "b'})


def test_a_person_enrols_in_the_browser_and_signs_in_with_what_only_they_saw(site: Site, browser: Any) -> None:
    from typer.testing import CliRunner

    from strongroom.cli import app as cli
    from tests.conftest import subprocess_env

    added = CliRunner().invoke(cli, ["users", "add", "erin", "--role", "auditor", "--tenant", p.WABA, "--enrol"],
                               env=subprocess_env(site.archive.settings))
    assert added.exit_code == 0, added.output
    made = json.loads(added.stdout)
    assert made["enrolment_code"] and "password" not in made and "totp_secret" not in made  # nobody else sees them
    v = Visit(site, browser, "erin")
    page = v.page
    page.goto("/console/login")
    page.get_by_role("link", name="First time here? Use your enrolment code.").click()
    v.check("enrol")
    page.fill("#name", "erin")
    page.fill("#code", made["enrolment_code"])
    page.get_by_role("button", name="Continue").click()
    page.wait_for_load_state("load")
    password, secret = page.locator("#password").inner_text(), page.locator("#totp-secret").inner_text()
    assert page.locator("figure.qr svg path").count() == 1  # the QR code of the otpauth URI
    v.check()
    again = v.context.request.post(f"{site.url}/console/enrol", form={"name": "erin", "code": made["enrolment_code"]})
    assert again.status in (401, 403)  # the code is good once (and the form needs its token)
    page.goto("/console/login")
    page.fill("#name", "erin")
    page.fill("#password", password)
    page.fill("#otp", pyotp.TOTP(secret).now())
    page.click("button[type=submit]")
    page.wait_for_load_state("load")
    assert page.url.endswith("/console/search")
    v.context.close()


def test_a_console_form_with_a_nul_or_an_oversized_body_is_refused_before_anything_runs(site: Site) -> None:
    import httpx

    with httpx.Client(base_url=site.url, follow_redirects=False) as client:
        client.get("/console/login")
        pre = client.cookies["sr_console_pre"]
        nul = client.post("/console/login", data={"pre": pre, "name": "cora\x00", "password": "x", "otp": "123456"})
        assert nul.status_code == 400
        big = client.post("/console/login", data={"pre": pre, "name": "x" * 70_000, "password": "x", "otp": "1"})
        assert big.status_code == 413


def test_single_sign_on_by_oidc_authorization_code_and_pkce(site: Site, browser: Any) -> None:
    site.idp.claims = {"sub": "olga", "strongroom_role": "auditor", "strongroom_tenants": [p.WABA],
                       "amr": ["pwd", "otp"]}
    v = Visit(site, browser, "olga")
    page = v.page
    page.goto("/console/login")
    page.get_by_role("link", name="Sign in with single sign-on").click()
    page.wait_for_url("**/console/search")
    assert f"olga@{site.idp.issuer}" in page.locator("header").inner_text()
    [exchange] = site.idp.token_requests[-1:]
    assert exchange["code_verifier"] and exchange["grant_type"] == "authorization_code"  # PKCE, checked by the issuer
    page.fill("#q", "ACME")
    before = _access_actions(site.archive)
    page.click("#search-form button[type=submit]")
    page.wait_for_load_state("load")
    assert _access_actions(site.archive)[len(before):] == ["search"]
    assert "other tenant" not in page.locator("#results").inner_text()  # the token's tenants apply
    v.check()

    # an answer this browser did not ask for (or asked for already) is refused
    forged = page.goto(f"/console/login/sso/callback?code={exchange['code']}&state=forged")
    assert forged is not None and forged.status == 403
    v.context.close()

    # a token without a strongroom role signs nobody in
    site.idp.claims = {"sub": "mallory", "strongroom_tenants": [p.WABA]}
    w = Visit(site, browser, "mallory")
    w.page.goto("/console/login/sso")
    assert w.page.locator("h1").inner_text() == "Not signed in"
    w.context.close()


def test_a_reviewer_reviews_and_escalates_and_a_compliance_officer_closes_at_the_second_level(
        site: Site, browser: Any) -> None:
    v = Visit(site, browser, "rhea")
    page = v.page
    v.sign_in()
    v.one_access_event("review.queue", lambda: page.get_by_role("link", name="Review", exact=True).click())
    v.check("review-queue")
    row = page.locator("table.queue tr", has_text="(double OR triple) w/3")
    assert row.count() == 1 and "first" in row.inner_text()
    assert "double your money" not in page.content()  # the queue names terms, never the text

    v.one_access_event("review.item", lambda: row.get_by_role("link").click())
    v.check("review-item")
    target = page.locator(".thread .bubble.is-target")
    assert "I guarantee you will double your money" in target.inner_text()
    assert "(guarantees) a guaranteed return" in page.locator(".facts").inner_text() and "Rule 2210" in page.locator(".facts").inner_text()
    item_url = page.url
    v.one_access_event("review.item", lambda: page.click("#claim"))  # the page after the claim
    assert "held by rhea" in page.locator("#item-state").inner_text()
    page.fill("#note", "retail client; checking the suitability file")
    page.get_by_role("button", name="Add note").click()
    page.wait_for_load_state("load")
    page.fill("#escalate-reason", "a promise of returns to a retail client")
    page.click("#escalate")
    page.wait_for_load_state("load")
    page.goto(item_url)
    assert "second level" in page.locator("#item-state").inner_text()
    page.click("#claim")  # a reviewer is the first level: refused, and nothing changes
    page.wait_for_load_state("load")
    assert "compliance officer reviews it at the second level" in page.content()

    c = Visit(site, browser, "cora")
    c.sign_in()
    c.page.goto("/console/review?view=escalated")
    c.check()
    c.page.locator("table.queue tr", has_text="(double OR triple) w/3").get_by_role("link").click()
    c.page.wait_for_load_state("load")
    c.page.click("#claim")
    c.page.wait_for_load_state("load")
    c.page.check("input[name=disposition][value=issue_action_taken]")
    c.page.fill("#close-reason", "rep warned in writing; client called back on a recorded line")
    c.page.click("#close")
    c.page.wait_for_load_state("load")
    c.page.goto(item_url)
    assert "closed: Issue — action taken by session:cora" in c.page.locator("#item-state").inner_text()
    trail = c.page.locator("#trail").inner_text()
    for step in ("claim by session:rhea", "note by session:rhea", "escalate by session:rhea",
                 "claim by session:cora", "close by session:cora"):
        assert step in trail, step
    assert c.page.locator(".review-actions").count() == 0  # closed: nothing more to do

    month = datetime.now(UTC).strftime("%Y-%m")
    c.one_access_event("review.report", lambda: c.page.goto(f"/console/review/report?month={month}"))
    c.check("review-report")
    assert c.page.locator("#coverage tr", has_text=p.PNID).count() >= 1
    assert "session:cora" in c.page.locator("#reviewers").inner_text()
    assert c.page.locator("table.effectiveness", has_text="(double OR triple) w/3").count() == 1
    assert "built-in" not in c.page.content() and "2 flagged" in c.page.locator(".stats").first.inner_text()
    c.one_access_event("review.policies", lambda: c.page.goto("/console/review/policies"))
    c.page.fill("#dry-month", month)
    c.one_access_event("review.dry_run", lambda: c.page.click("#dry-run-button"))
    c.check("review-policies")
    assert int(c.page.locator("#dry-run li b").first.inner_text()) >= 1
    assert "would be flagged" in c.page.locator("#dry-run").inner_text()

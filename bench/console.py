"""Console page time: the search page and the thread page, against their API twins in the same run.

The archive holds N messages (a busy number's six-month history import, 2,000 contacts). Each page
is requested in-process (ASGI, no network) as a signed-in compliance officer; what is timed is the
server's whole answer: session check, the audited read (one access event), rendering. The peer is
the auditor API's JSON route for the same read (`GET /api/v1/search`, `GET /api/v1/conversations/…`):
the ratio is what the HTML costs on top.

With Debian's Chromium present, the same two pages are then opened in the browser (Playwright,
the app served by uvicorn on 127.0.0.1) and their time to interactive is read from the page's own
Navigation Timing (`domInteractive`, and `loadEventEnd`: styles, htmx and console.js run), against
the browser fetching the same read from the API and parsing its JSON (`fetch` + `json()`).

    python bench/console.py [--messages 1000000] [--repeat 40] [--browser-repeat 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyotp
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import (  # noqa: E402
    PROCESS_PENDING,
    REPO,
    child_env,
    commit_history,
    env_database_url,
    free_port,
    percentile,
    signed_in,
    temp_archive,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=40)
    ap.add_argument("--browser-repeat", type=int, default=10)
    args = ap.parse_args()
    from archiver.db import events

    with temp_archive(env_database_url(), login_rate_per_minute=1000, api_rate_per_minute=100_000) as archive:
        t0 = time.perf_counter()
        env = child_env(archive)
        commit_history(env, args.messages, 1000)
        subprocess.run([sys.executable, "-c", PROCESS_PENDING], env=env, cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL)
        archive.search_index().update()
        print(f"{args.messages:,} messages archived and indexed in {time.perf_counter() - t0:.0f} s")
        client, api, csrf = signed_in(archive, "bench", "compliance")
        with archive.engine.connect() as conn:
            busiest = conn.execute(sa.select(events.c.conversation, sa.func.count()).where(
                events.c.kind == "message").group_by(events.c.conversation)
                .order_by(sa.func.count().desc()).limit(1)).first()
        assert busiest is not None
        conv, size = busiest
        queries = ["confirm", "statement", '"order for 300 shares"', "merci OR ok", "trade w/3 confirm"]

        def timed(fn: object) -> list[float]:
            out = []
            for i in range(args.repeat):
                t = time.perf_counter()
                resp = fn(i)  # type: ignore[operator]
                out.append((time.perf_counter() - t) * 1000)
                assert resp.status_code == 200, resp.text[:300]
            return out

        pages = {
            "search page (POST /console/search)": timed(lambda i: client.post(
                "/console/search", data={"csrf": csrf, "q": queries[i % len(queries)]})),
            "search API (GET /api/v1/search)": timed(lambda i: client.get(
                "/api/v1/search", params={"q": queries[i % len(queries)]}, headers=api)),
            f"thread page ({size} messages)": timed(lambda i: client.get(f"/console/thread/{conv}")),
            "thread API (GET /api/v1/conversations/…)": timed(lambda i: client.get(
                f"/api/v1/conversations/{conv}", headers=api)),
        }
        browser = _browser(archive, conv, queries, args.browser_repeat, api["Authorization"].removeprefix("Bearer ")) if CHROMIUM.exists() else {}
    for name, xs in pages.items():
        print(f"{name:45s} p50 {statistics.median(xs):7.1f} ms   p95 {percentile(xs, 0.95):7.1f} ms")
    names = list(pages)
    for page, peer in ((names[0], names[1]), (names[2], names[3])):
        print(f"{page}: p95 {percentile(pages[page], 0.95) / percentile(pages[peer], 0.95):.2f}x its API twin "
              f"(goal: page p95 < 300 ms)")
    if not browser:
        print("(no /usr/bin/chromium: browser time to interactive not measured)")
    for name, xs in browser.items():
        print(f"{name:45s} p50 {statistics.median(xs):7.1f} ms   p95 {percentile(xs, 0.95):7.1f} ms")
    bnames = list(browser)
    for i in range(0, len(bnames), 3):
        page, loaded, peer = bnames[i:i + 3]
        print(f"{page}: p95 {percentile(browser[page], 0.95) / percentile(browser[peer], 0.95):.2f}x the browser's API fetch "
              f"(fully loaded: {percentile(browser[loaded], 0.95) / percentile(browser[peer], 0.95):.2f}x)")


CHROMIUM = Path("/usr/bin/chromium")
NAV = ("(() => { const n = performance.getEntriesByType('navigation')[0]; "
       "return [n.domInteractive - n.startTime, n.loadEventEnd - n.startTime]; })()")
FETCH = ("async ([url, token]) => { const t = performance.now(); const r = await fetch(url, "
         "{headers: {Authorization: 'Bearer ' + token}}); await r.json(); return performance.now() - t; }")


def _browser(archive: object, conv: str, queries: list[str], repeat: int, token: str) -> dict[str, list[float]]:
    """Time to interactive of the search and thread pages in Chromium, and the API fetch peer."""
    import threading
    from urllib.parse import urlencode

    import uvicorn
    from playwright.sync_api import sync_playwright

    from strongroom.app import create_app

    user = archive.accounts().create_user("bench-browser", "compliance", None, "bench", approved=True)  # type: ignore[attr-defined]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(archive), host="127.0.0.1", port=port,  # type: ignore[arg-type]
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    out: dict[str, list[float]] = {k: [] for k in (
        "search page, interactive (browser)", "search page, loaded (browser)", "search API fetch (browser)",
        "thread page, interactive (browser)", "thread page, loaded (browser)", "thread API fetch (browser)")}
    try:
        with sync_playwright() as pw:
            b = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-dev-shm-usage"])
            page = b.new_context(viewport={"width": 1280, "height": 800}, base_url=base).new_page()
            page.goto("/console/login")
            page.fill("#name", "bench-browser")
            page.fill("#password", user["password"])
            page.fill("#otp", pyotp.TOTP(user["totp_secret"]).now())
            page.click("button[type=submit]")
            page.wait_for_url("**/console/search")
            for i in range(repeat):
                page.goto("/console/search")
                page.fill("#q", queries[i % len(queries)])
                page.click("#search-form button[type=submit]")
                page.wait_for_load_state("load")
                interactive, loaded = page.evaluate(NAV)
                out["search page, interactive (browser)"].append(interactive)
                out["search page, loaded (browser)"].append(loaded)
                out["search API fetch (browser)"].append(page.evaluate(FETCH, [
                    "/api/v1/search?" + urlencode({"q": queries[i % len(queries)]}), token]))
                page.goto(f"/console/thread/{conv}")
                page.wait_for_load_state("load")
                interactive, loaded = page.evaluate(NAV)
                out["thread page, interactive (browser)"].append(interactive)
                out["thread page, loaded (browser)"].append(loaded)
                out["thread API fetch (browser)"].append(page.evaluate(FETCH, [f"/api/v1/conversations/{conv}", token]))
            b.close()
    finally:
        server.should_exit = True
        thread.join(10)
    return out


if __name__ == "__main__":
    main()

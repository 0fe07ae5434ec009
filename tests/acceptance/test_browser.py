"""The web UI in a real browser: Playwright drives the system Chromium against `conveyor serve`.

Log in with a token, upload two covers through the file input, watch the items table change
state live (SSE, no reload), review the uncertain one from the queue with the accept shortcut,
and find the edited record archived on the records page and in the JSON API.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.fake_discogs import FakeDiscogs
from tests.support import FULL_COVER, MIDDLE_COVER, LiveServer, in_ci, live_server, make_cover

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
PIPELINE_WAIT_MS = 90_000  # OCR takes 1-2 s a cover here; the first one loads the model
UI_WAIT_MS = 20_000
MAX_UPLOAD_BYTES = 1_000_000  # the covers are ~30 KB; a bigger file shows the 413 path
DISCOGS_TOKEN = "t0k-browser"
EDITED_ALBUM = "The Dark Side of the Moon (Edited in browser)"

# Records every state text each items-table row shows, so that the test can tell that the
# badges changed in place (SSE) rather than by reloading the page.
WATCH_ROWS = """() => {
  window.__conveyorNoReload = true;
  window.__seen = {};
  const tbody = document.querySelector('#items tbody');
  const scan = () => tbody.querySelectorAll('tr[data-item-id]').forEach(tr => {
    const name = tr.querySelector('[data-role="link"]').textContent.trim();
    const state = tr.querySelector('[data-role="state"]').textContent.trim();
    const seen = (window.__seen[name] = window.__seen[name] || []);
    if (seen[seen.length - 1] !== state) seen.push(state);
  });
  new MutationObserver(scan).observe(tbody, {subtree: true, childList: true,
                                             characterData: true});
  scan();
}"""


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    if in_ci():
        pytest.fail(f"{CHROMIUM} is missing; `make test` installs it (scripts/setup.sh test)")
    pytest.skip(f"{CHROMIUM} is missing: `apt-get install chromium` to run the browser test")


def api_get(server: LiveServer, path: str, **params: Any) -> Any:
    with server.client() as c:
        r = c.get(path, params=params)
        assert r.status_code == 200, r.text
        return r.json()


def test_upload_review_and_archive_in_a_browser(tmp_path: Path) -> None:
    require_chromium()
    from playwright.sync_api import Page, expect, sync_playwright

    expect.set_options(timeout=UI_WAIT_MS)
    started = time.monotonic()
    full = make_cover(tmp_path / "full.jpg", FULL_COVER)
    middle = make_cover(tmp_path / "middle.jpg", MIDDLE_COVER)
    too_big = tmp_path / "huge.jpg"
    too_big.write_bytes(b"\xff\xd8\xff" + bytes(MAX_UPLOAD_BYTES + 200_000))
    console_problems: list[str] = []

    def watch_console(page: Page) -> None:
        page.on("pageerror", lambda exc: console_problems.append(f"page error: {exc}"))
        page.on("console", lambda msg: console_problems.append(msg.text)
                if msg.type == "error" and "Content Security Policy" in msg.text else None)

    with FakeDiscogs(token=DISCOGS_TOKEN) as discogs:
        discogs.add_release(artist="Pink Floyd", title="The Dark Side of the Moon",
                            catno="SHVL 804", barcode="5099902987620", year=1973,
                            label="Harvest", genre=["Rock"], style=["Prog Rock"],
                            country="UK", tracklist=[
                                {"position": "A1", "title": "Speak to Me", "duration": "1:30"},
                                {"position": "A2", "title": "Breathe", "duration": "2:43"}])
        env = {"CONVEYOR_DISCOGS_BASE_URL": discogs.url, "CONVEYOR_DISCOGS_TOKEN": DISCOGS_TOKEN,
               "CONVEYOR_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES)}
        with live_server(tmp_path / "home", workers=1, env=env) as server, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                page.set_default_timeout(UI_WAIT_MS)
                watch_console(page)

                # --- log in: a page needs a session; a bad token is refused --------------
                page.goto(f"{server.url}/jobs")
                expect(page).to_have_url(re.compile(r"/login\?next=%2Fjobs$"))
                page.fill("#token", "cvy_not-a-real-token")
                page.click("button[type=submit]")
                expect(page.locator("#login-error")).to_contain_text("not valid")
                assert "cvy_not-a-real-token" not in page.content()
                page.fill("#token", server.admin_token)
                page.click("button[type=submit]")
                expect(page).to_have_url(f"{server.url}/jobs")
                cookies = {c["name"]: c for c in page.context.cookies()}
                assert cookies["conveyor_token"]["httpOnly"] is True
                assert cookies["conveyor_token"]["sameSite"] == "Lax"
                assert server.admin_token not in page.content()

                # --- upload two covers, watch the table change live -------------------
                page.click("nav >> text=Upload & items")
                expect(page).to_have_url(f"{server.url}/")
                expect(page.locator("#live-status")).to_have_text("live updates on")
                page.evaluate(WATCH_ROWS)
                page.set_input_files("#file-input", [str(full), str(middle)])
                expect(page.locator("#uploads li[data-state=done]")).to_have_count(2)

                full_row = page.locator("#items tbody tr", has_text="full.jpg")
                middle_row = page.locator("#items tbody tr", has_text="middle.jpg")
                expect(middle_row.locator("[data-role=state]")).to_have_text(
                    "AI_ANALYZED", timeout=PIPELINE_WAIT_MS)
                expect(full_row.locator("[data-role=state]")).to_have_text(
                    "ARCHIVED", timeout=PIPELINE_WAIT_MS)
                expect(middle_row.locator("[data-role=album]")).to_have_text(
                    "The Dark Side of the Moon")
                expect(middle_row.locator("[data-role=confidence]")).to_contain_text("%")
                seen: dict[str, list[str]] = page.evaluate("window.__seen")
                assert page.evaluate("window.__conveyorNoReload") is True, "the page reloaded"
                assert seen["full.jpg"][0] == "UPLOADED", seen
                assert "AI_ANALYZED" in seen["full.jpg"] and seen["full.jpg"][-1] == "ARCHIVED"
                assert seen["middle.jpg"][0] == "UPLOADED" and seen["middle.jpg"][-1] == (
                    "AI_ANALYZED"), seen
                assert "USER_REVIEWED" not in seen["full.jpg"]  # auto-archived, no review

                # --- a file over the limit fails on its own line: before sending it, and
                # (with the page's own check off) as the server's 413 -----------------------
                page.set_input_files("#file-input", [str(too_big)])
                huge = page.locator("#uploads li", has_text="huge.jpg")
                expect(huge.locator("[data-role=upload-status]")).to_contain_text("too large")
                page.evaluate("document.getElementById('dropzone').dataset.maxBytes = '0'")
                page.set_input_files("#file-input", [str(too_big)])
                expect(huge.first.locator("[data-role=upload-status]")).to_have_text(
                    re.compile(r"^413 \w+: .+"))
                expect(page.locator("#items tbody tr")).to_have_count(2)
                page.screenshot(path=str(tmp_path / "items.png"), full_page=True)

                # --- the review queue holds only the uncertain cover ------------------
                page.click("nav >> text=Review queue")
                queue_rows = page.locator("#queue tbody tr")
                expect(queue_rows).to_have_count(1)
                middle_id = queue_rows.first.get_attribute("data-item-id")
                assert middle_id
                queue_rows.first.locator("a").first.click()
                expect(page).to_have_url(re.compile(rf"/previews/{middle_id}\?queue=1$"))

                # --- the item page: image, fields with sources, audit, form ------------
                expect(page.locator("#item-state")).to_have_text("AI_ANALYZED")
                cover = page.locator("img.cover")
                expect(cover).to_be_visible()
                page.wait_for_function(
                    "() => document.querySelector('img.cover').naturalWidth > 0")
                expect(page.locator('#fields tr[data-field="artist"] .value')).to_have_text(
                    "PINK FLOYD")
                expect(page.locator('#fields tr[data-field="artist"] .badge.source')
                       ).to_have_text("ocr")
                expect(page.locator("#audit")).to_contain_text("LEVEL_1_OCR")
                expect(page.locator("#total-cost")).to_contain_text("$0.00")
                expect(page.locator("#shortcut-help")).to_contain_text("Enter")
                page.screenshot(path=str(tmp_path / "item.png"), full_page=True)

                # --- edit the album and accept with the shortcut ----------------------
                page.fill("#f-album", EDITED_ALBUM)
                page.press("#f-album", "Control+Enter")
                expect(page).to_have_url(f"{server.url}/review")  # the queue is now empty
                expect(page.locator("#queue-empty")).to_be_visible()

                record = server.wait_for(middle_id, ("ARCHIVED",), timeout=PIPELINE_WAIT_MS / 1000)
                assert record["metadata"]["album"] == EDITED_ALBUM
                assert record["field_sources"]["album"] == "user"

                # --- the records page finds it; its detail page shows the edit ---------
                page.click("nav >> text=Records")
                page.fill("input[name=q]", "Edited in browser")
                page.press("input[name=q]", "Enter")
                expect(page).to_have_url(re.compile(r"/records\?q=Edited"))
                found = page.locator("#records tbody tr")
                expect(found).to_have_count(1)
                expect(found.locator("[data-role=album]")).to_have_text(EDITED_ALBUM)
                found.locator("[data-role=album] a").click()
                expect(page.locator("#record-state")).to_have_text("ARCHIVED")
                expect(page.locator("#record-album")).to_have_text(EDITED_ALBUM)
                expect(page.locator('#fields tr[data-field="album"] .badge.source')
                       ).to_have_text("user")
                expect(page.locator("#audit")).to_contain_text("REVIEW")
                record_id = page.locator("#record").get_attribute("data-record-id")
                page.screenshot(path=str(tmp_path / "record.png"), full_page=True)

                api = api_get(server, f"/api/v1/upap/records/{record_id}")
                assert api["state"] == "ARCHIVED" and api["preview_id"] == middle_id
                assert api["metadata"]["album"] == EDITED_ALBUM
                listed = api_get(server, "/api/v1/upap/records")
                assert listed["total"] == 2  # the auto-archived cover and the reviewed one

                # An archived preview's page leads to its record.
                page.goto(f"{server.url}/previews/{middle_id}")
                expect(page).to_have_url(f"{server.url}/records/{record_id}")

                # --- the jobs page shows counts per step and status -------------------
                page.click("nav >> text=Jobs")
                ocr_done = page.locator(
                    '#job-counts tr[data-step="records.ocr"] td[data-status="completed"]')
                expect(ocr_done).to_have_text("2")
                expect(page.locator(
                    '#job-counts tr[data-step="records.enrich"] td[data-status="completed"]'
                )).to_have_text("2")

                # --- log out ends the session ------------------------------------------
                page.click("text=Log out")
                expect(page).to_have_url(f"{server.url}/login")
                page.goto(f"{server.url}/")
                expect(page).to_have_url(f"{server.url}/login")
                assert not console_problems, console_problems
            finally:
                browser.close()
    print(f"browser flow took {time.monotonic() - started:.1f} s")

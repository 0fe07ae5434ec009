"""The photos pages in a real browser (Playwright on the system Chromium) against
`conveyor serve` with a local worker and the real local provider.

Log in, upload photos from the grid, watch their tiles turn ``completed`` / ``failed`` live
(no reload), queue "process missing" as the admin, and read a photo's detail page:
dimensions, colour swatches, EXIF, near-duplicates and the audit trail.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.acceptance.test_browser import CHROMIUM, CHROMIUM_ARGS, require_chromium
from tests.support import CORPUS, live_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

BEETS = CORPUS / "images" / "beets"
PIPELINE_WAIT_MS = 90_000  # the first photo waits for the OCR model to load
UI_WAIT_MS = 20_000

WATCH_TILES = """() => {
  window.__conveyorNoReload = true;
  window.__seen = {};
  const grid = document.getElementById('photo-grid');
  const scan = () => grid.querySelectorAll('li[data-photo-id]').forEach(li => {
    const name = li.querySelector('[data-role="name"]').textContent.trim();
    const state = li.querySelector('[data-role="state"]').textContent.trim();
    const seen = (window.__seen[name] = window.__seen[name] || []);
    if (seen[seen.length - 1] !== state) seen.push(state);
  });
  new MutationObserver(scan).observe(grid, {subtree: true, childList: true,
                                            characterData: true});
  scan();
}"""


def test_upload_watch_and_inspect_photos_in_a_browser(tmp_path: Path) -> None:
    require_chromium()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=UI_WAIT_MS)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes((CORPUS / "images" / "pillow" / "broken_data_stream.png").read_bytes())
    problems: list[str] = []

    with live_server(tmp_path / "home", workers=1) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(UI_WAIT_MS)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("console", lambda msg: problems.append(msg.text)
                    if msg.type == "error" and "Content Security Policy" in msg.text else None)

            # --- log in; the Photos link leads to the grid -------------------------------
            page.goto(f"{server.url}/gallery")
            expect(page).to_have_url(re.compile(r"/login\?next=%2Fgallery$"))
            page.fill("#token", server.admin_token)
            page.click("button[type=submit]")
            expect(page).to_have_url(f"{server.url}/gallery")
            expect(page.locator("nav >> text=Photos")).to_have_attribute("aria-current", "page")
            expect(page.locator("#photos-empty")).to_be_visible()
            expect(page.locator("#live-status")).to_have_text("live updates on")
            page.evaluate(WATCH_TILES)

            # --- upload two files; the tiles change state in place ------------------------
            page.set_input_files("#photo-file", [str(BEETS / "abbey.jpg"), str(broken)])
            expect(page.locator("#photo-uploads li[data-state=done]")).to_have_count(2)
            good = page.locator("#photo-grid li", has_text="abbey.jpg")
            bad = page.locator("#photo-grid li", has_text="broken.jpg")
            expect(good.locator("[data-role=state]")).to_have_text(
                "completed", timeout=PIPELINE_WAIT_MS)
            expect(bad.locator("[data-role=state]")).to_have_text(
                "failed", timeout=PIPELINE_WAIT_MS)
            expect(bad.locator("[data-role=error]")).to_have_text("image_corrupt")
            expect(good.locator("[data-role=dims]")).to_have_text("225\u00d7225")
            page.wait_for_function(
                "() => { const img = document.querySelector("
                "'#photo-grid li img[data-role=thumb]'); return img && img.naturalWidth > 0; }")
            seen = page.evaluate("window.__seen")
            assert page.evaluate("window.__conveyorNoReload") is True, "the page reloaded"
            assert seen["abbey.jpg"][0] in ("pending", "processing"), seen
            assert seen["abbey.jpg"][-1] == "completed", seen
            page.screenshot(path=str(tmp_path / "gallery.png"), full_page=True)

            # --- the admin queues what is missing: the failed photo only -----------------
            page.click("#process-missing")
            expect(page.locator("#process-result")).to_contain_text("Queued 1 of 2 photo(s)")
            expect(page.locator("#process-result")).to_contain_text("1 up to date")
            expect(bad.locator("[data-role=state]")).to_have_text(
                "failed", timeout=PIPELINE_WAIT_MS)

            # --- a near-duplicate, then the detail page -----------------------------------
            page.set_input_files("#photo-file", [str(BEETS / "abbey-similar.jpg")])
            similar = page.locator("#photo-grid li", has_text="abbey-similar.jpg")
            expect(similar.locator("[data-role=state]")).to_have_text(
                "completed", timeout=PIPELINE_WAIT_MS)
            similar.locator("a.name").click()
            expect(page).to_have_url(re.compile(r"/gallery/[0-9a-f-]{36}$"))
            expect(page.locator("#photo-status")).to_have_text("completed")
            expect(page.locator("#photo-dimensions")).to_contain_text("500 \u00d7 490 px")
            expect(page.locator("#photo-provider")).to_contain_text("local")
            swatches = page.locator("#photo-colors .swatch")
            expect(swatches.first).to_be_visible()
            assert 1 <= swatches.count() <= 5
            photo_id = page.url.rsplit("/", 1)[-1]
            with server.client() as c:
                api = c.get(f"/photos/{photo_id}").json()
            colours = [c["hex"] for c in api["ai_results"]["colors"]]
            fills = [swatches.nth(i).locator("rect").get_attribute("fill")
                     for i in range(swatches.count())]
            assert fills == colours
            page.wait_for_function(
                "() => document.getElementById('photo-image').naturalWidth > 0")
            near = page.locator("#photo-near li")
            expect(near).to_have_count(1)
            expect(near).to_contain_text("abbey.jpg")
            expect(page.locator("#photo-quality")).to_contain_text("Sharpness")
            expect(page.locator("#audit")).to_contain_text("AI_PROCESS")
            page.screenshot(path=str(tmp_path / "photo.png"), full_page=True)

            near.locator("a").click()  # the near-duplicate links to the original
            expect(page.locator("h1")).to_have_text("abbey.jpg")
            expect(page.locator("#photo-near li")).to_contain_text("abbey-similar.jpg")

            # --- the failed photo's page says why -----------------------------------------
            page.goto(f"{server.url}/gallery?status=failed")
            expect(page.locator("#photo-grid li")).to_have_count(1)
            page.locator("#photo-grid li a.name").click()
            expect(page.locator("#photo-status")).to_have_text("failed")
            expect(page.locator("#photo-error")).to_contain_text("image_corrupt")
            expect(page.locator("#photo-error")).to_contain_text("broken.jpg")
            expect(page.locator("#no-results")).to_be_visible()

            # another user sees none of it
            token = server.add_user("eve")
            r = httpx.get(f"{server.url}/gallery/{photo_id}", cookies={"conveyor_token": token})
            assert r.status_code == 404
            assert not problems, problems
        finally:
            browser.close()

"""A real browser clicks through the demo: Debian's Chromium driven by Playwright (no browser download).

`make test` installs Chromium (Debian package ``chromium``) when it can; where it cannot, this test skips
and says why. Screenshots go to ``$PIXPREF_SCREENSHOT_DIR`` (the README's come from there) or a temp folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# the flags a closed network needs: no background connections, no GPU, no sandbox as root
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (Debian package 'chromium'; `make test` installs it where it can)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_browser_clicks_through_the_whole_flow(demo_app, browser, tmp_path):
    out = Path(os.environ.get("PIXPREF_SCREENSHOT_DIR", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(demo_app["url"], wait_until="load")
    page.get_by_role("button", name="Show two images").wait_for(timeout=60_000)
    page.get_by_role("button", name="Show two images").click()
    page.wait_for_selector("#pair-a img", timeout=60_000)
    for i, pick in enumerate(["I prefer A", "I prefer B", "I prefer A", "No preference"]):
        page.get_by_role("button", name=pick).click()
        expected = f"Round {i + 2} of 4" if i < 3 else "4 choices made"
        page.wait_for_selector(f"text={expected}", timeout=60_000)
    page.get_by_label("Profile name").fill("browser")
    page.get_by_role("button", name="Make my profile").click()
    page.wait_for_selector("text=made from 3 pairs", timeout=60_000)
    page.wait_for_function("() => [...document.querySelectorAll('img')].filter(i => i.complete && i.naturalWidth > 0).length >= 8",
                           timeout=60_000)
    page.screenshot(path=str(out / "demo_taste.png"), full_page=True)

    page.get_by_role("tab", name="2. Your images").click()
    page.get_by_role("button", name="Generate").click()
    page.wait_for_selector("th:has-text('personalized (mean)')", timeout=120_000)
    loaded = "() => [...document.querySelectorAll('img')].filter(i => i.complete && i.naturalWidth > 0).length >= 8"
    page.wait_for_function(loaded, timeout=60_000)
    page.screenshot(path=str(out / "demo_images.png"), full_page=True)
    # both galleries hold images now
    assert page.locator("img").count() >= 8
    assert "Traceback" not in page.content()
    page.close()

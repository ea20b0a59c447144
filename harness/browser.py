"""Headless Chromium through Playwright, offline: Debian's /usr/bin/chromium (`make chromium`
installs it; never `playwright install`), resolving no name but the loopback's.

The steps the browser tests and scripts/screenshot_app.py share live here: opening the app once
its workers are up, saving a screenshot, and classifying a text through an experiment's
champion alias on the Try-inference tab.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, Locator, Page, Playwright, expect, sync_playwright

from orchestration.settings import REPO_ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Offline and quiet: no component updates or sync, and no DNS beyond the loopback.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
]
MS = 1000  # Playwright's timeouts are in milliseconds
# Where the tests save their screenshots (to look at when one fails).
SHOTS = REPO_ROOT / ".data" / "screenshots"


def have_chromium() -> bool:
    return shutil.which(CHROMIUM) is not None


def launch(playwright: Playwright) -> Browser:
    """Headless Chromium, offline (CHROMIUM_ARGS)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


@contextmanager
def app_page(url: str) -> Iterator[Page]:
    """A 1400x1000 page of the app at `url`, once the app reports its workers up; the browser
    is closed afterwards, also when the steps fail (the page is then saved as failed.png).
    Assertions wait up to 30 s for the page to show what they expect (Playwright's default of
    5 s is short for a busy machine, and a longer bound costs nothing when the page is quick)."""
    expect.set_options(timeout=30 * MS)
    with sync_playwright() as pw:
        chromium = launch(pw)
        try:
            page = chromium.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            expect(page.locator("#health")).to_contain_text("✓ workers", timeout=60 * MS)
            try:
                yield page
            except BaseException:
                # What the page showed when a step failed: the one view a failure message
                # (which quotes a single element) does not give.
                shoot(page, "failed")
                raise
        finally:
            chromium.close()


def shoot(page: Page, name: str, folder: Path = SHOTS) -> None:
    """The whole page as `folder`/`name`.png."""
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def cells(page: Page, table: str, col: int) -> Locator:
    """Column `col` of the Gradio table `table` (a CSS selector), every row."""
    return page.locator(f"{table} [data-testid^='cell-'][data-col='{col}']")


def column(page: Page, table: str, col: int) -> list[str]:
    """The texts of column `col` of the table `table`, as shown now."""
    return cells(page, table, col).all_inner_texts()


def predict_through_champion(page: Page, experiment: str, texts: str) -> list[str]:
    """On the Try-inference tab, choose `experiment`'s champion alias (★, listed first) and
    classify `texts` (one a line) through it, waiting for the answer; returns every entry the
    model list offered, for the caller to check their format. The scores are then in
    `#inference-label`."""
    page.get_by_role("tab", name="Try inference").click()
    expect(page.locator("#inference-note")).to_contain_text("champions (★) first", timeout=60 * MS)
    page.click("#inference-model input")
    champion = page.get_by_role(
        "option", name=re.compile(rf"^★ {re.escape(experiment)}@champion = ")
    ).first
    expect(champion).to_be_visible()  # the list is filled in its own update
    options = page.get_by_role("option").all_inner_texts()
    champion.click()
    page.fill("#inference-texts textarea", texts)
    page.click("#predict")
    expect(page.locator("#inference-latency")).to_contain_text("Latency", timeout=120 * MS)
    return options

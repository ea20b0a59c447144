"""Headless Chromium through Playwright, offline: Debian's /usr/bin/chromium (`make chromium`
installs it; never `playwright install`), resolving no name but the loopback's."""

from __future__ import annotations

import shutil

from playwright.sync_api import Browser, Playwright

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


def have_chromium() -> bool:
    return shutil.which(CHROMIUM) is not None


def launch(playwright: Playwright) -> Browser:
    """Headless Chromium, offline (CHROMIUM_ARGS)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)

"""Take the README's screenshots of the app (docs/screenshots/*.png) from a finished experiment.

Run against a running stack (`make demo`) once an experiment has ended, e.g. the demo preset:

    .venv/bin/python -m orchestration.starter --preset demo --json > demo.json
    .venv/bin/python scripts/screenshot_app.py --experiment "$(jq -r .experiment_id demo.json)"

Drives Debian's Chromium through Playwright, offline, as the browser test does: the Experiment tab
with the preset loaded, the experiment on the Runs and Compare tabs, and a prediction through the
experiment's champion alias on the Try-inference tab.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from playwright.sync_api import expect

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import browser
from harness.browser import MS

TEXTS = "A gripping, beautifully acted film.\nA tedious, clumsy mess that wastes its cast."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True, help="a finished experiment's id")
    parser.add_argument("--preset", default="demo", help="the preset it was launched from")
    parser.add_argument("--app", default="http://127.0.0.1:7860")
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with browser.app_page(args.app) as page:
        page.click("#preset input")
        page.get_by_role("option", name=args.preset, exact=True).click()
        page.click("#load-preset")
        expect(page.locator("#preset-note")).not_to_contain_text("plumbing")
        expect(page.locator("#config-table [data-testid='cell-0-0']")).not_to_have_text(
            re.compile("^tiny-")
        )
        browser.shoot(page, "experiment", args.out)

        page.get_by_role("tab", name="Runs").click()
        page.fill("#runs-experiment input", args.experiment)
        page.press("#runs-experiment input", "Enter")
        expect(page.locator("#runs-header")).to_contain_text("completed", timeout=60 * MS)
        expect(page.locator("#loss-plot")).to_be_visible()
        browser.shoot(page, "runs", args.out)

        page.get_by_role("tab", name="Compare").click()
        expect(page.locator("#compare-note")).to_contain_text("@champion", timeout=60 * MS)
        expect(page.locator("#compare-plot img")).to_be_visible()
        browser.shoot(page, "compare", args.out)

        browser.predict_through_champion(page, args.preset, TEXTS)
        browser.shoot(page, "inference", args.out)
    print(f"screenshots in {args.out}")


if __name__ == "__main__":
    main()

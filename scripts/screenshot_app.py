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

from playwright.sync_api import expect, sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import browser

MS = 1000
TEXTS = "A gripping, beautifully acted film.\nA tedious, clumsy mess that wastes its cast."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True, help="a finished experiment's id")
    parser.add_argument("--preset", default="demo", help="the preset it was launched from")
    parser.add_argument("--app", default="http://127.0.0.1:7860")
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        chromium = browser.launch(pw)
        page = chromium.new_page(viewport={"width": 1400, "height": 1000})

        def shoot(name: str) -> None:
            page.screenshot(path=str(args.out / f"{name}.png"), full_page=True)

        page.goto(args.app)
        expect(page.locator("#health")).to_contain_text("✓ workers", timeout=60 * MS)
        page.click("#preset input")
        page.get_by_role("option", name=args.preset, exact=True).click()
        page.click("#load-preset")
        expect(page.locator("#preset-note")).not_to_contain_text("plumbing")
        expect(page.locator("#config-table [data-testid='cell-0-0']")).not_to_have_text(
            re.compile("^tiny-")
        )
        shoot("experiment")

        page.get_by_role("tab", name="Runs").click()
        page.fill("#runs-experiment input", args.experiment)
        page.press("#runs-experiment input", "Enter")
        expect(page.locator("#runs-header")).to_contain_text("completed", timeout=60 * MS)
        expect(page.locator("#loss-plot")).to_be_visible()
        shoot("runs")

        page.get_by_role("tab", name="Compare").click()
        expect(page.locator("#compare-note")).to_contain_text("@champion", timeout=60 * MS)
        expect(page.locator("#compare-plot img")).to_be_visible()
        shoot("compare")

        page.get_by_role("tab", name="Try inference").click()
        expect(page.locator("#inference-note")).to_contain_text("champions", timeout=60 * MS)
        page.click("#inference-model input")
        champion = re.compile(rf"^★ {re.escape(args.preset)}@champion = ")
        page.get_by_role("option", name=champion).first.click()
        page.fill("#inference-texts textarea", TEXTS)
        page.click("#predict")
        expect(page.locator("#inference-latency")).to_contain_text("Latency", timeout=120 * MS)
        shoot("inference")
        chromium.close()
    print(f"screenshots in {args.out}")


if __name__ == "__main__":
    main()

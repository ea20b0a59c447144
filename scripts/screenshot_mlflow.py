"""Screenshot MLflow's compare view of one experiment's configurations (docs/mlflow-compare.png).

    .venv/bin/python -m orchestration.starter --preset demo --wait     # the runs to compare
    .venv/bin/python scripts/screenshot_mlflow.py [--experiment demo] [--out PATH.png]

Takes the newest finished parent run of the MLflow experiment, opens the compare-runs page of
its configuration runs (tracking.reader.compare_url) in headless Chromium and waits until the
plots have drawn. It drives Debian's /usr/bin/chromium through Playwright (harness.browser: never
`playwright install`), and the browser resolves no name but localhost, so nothing leaves the
machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import tracking
from harness import browser
from orchestration.settings import settings

# The compare page draws its plots with Plotly; one SVG per plot once data has arrived.
PLOT = ".js-plotly-plot .main-svg"
SELECT = ".du-bois-light-select"  # MLflow's design-system multi-selects (ant-design based)
# The parallel-coordinates axes: what differs between the configurations, and how they scored.
AXES_PARAMS = ["learning_rate", "seed"]
AXES_METRICS = ["eval_accuracy", "eval_macro_f1", "eval_loss"]


def runs_to_compare(uri: str, experiment: str) -> tuple[str, list[tuple[str, str]]]:
    """(experiment id, [(run id, name)]) of the newest parent run whose configurations all
    FINISHED."""
    runs = tracking.list_runs(uri, experiment)  # newest first
    for parent in (r for r in runs if r.kind == "experiment" and r.status == "FINISHED"):
        children = [r for r in runs if r.parent_run_id == parent.run_id]
        if children and all(r.status == "FINISHED" for r in children):
            children.sort(key=lambda r: r.name)
            return parent.experiment_id, [(r.run_id, r.name) for r in children]
    raise SystemExit(
        f"no finished run of experiment {experiment!r} at {uri}; launch one first "
        f"(python -m orchestration.starter --preset {experiment} --wait)"
    )


def choose(page, index: int, values: list[str]) -> None:
    """Make the `index`-th multi-select on the page hold exactly `values`."""
    select = page.locator(SELECT).nth(index)
    remove = select.locator(f"{SELECT}-selection-item-remove")
    while remove.count():
        remove.first.click()
    for value in values:
        select.click()
        page.keyboard.type(value)
        page.keyboard.press("Enter")
    page.keyboard.press("Escape")


def screenshot(url: str, out: Path, names: list[str], timeout_s: float) -> None:
    ms = timeout_s * 1000
    with sync_playwright() as p:
        chromium = browser.launch(p)
        try:
            # Tall enough for plot, run details, parameters and metrics: the page scrolls inside
            # its own panel, so a full-page screenshot would stop at the viewport.
            page = chromium.new_page(viewport={"width": 1600, "height": 1900})
            page.goto(url, wait_until="domcontentloaded", timeout=ms)
            # Every run's name in the page, and the plots drawn: bounded waits, never sleeps.
            for name in names:
                page.get_by_text(name, exact=True).first.wait_for(timeout=ms)
            page.wait_for_selector(PLOT, state="visible", timeout=ms)
            page.get_by_role("button", name="Close").click(timeout=ms)  # the assistant panel
            page.get_by_role("switch").first.click(timeout=ms)  # parameters: show diff only
            choose(page, 0, AXES_PARAMS)
            choose(page, 1, AXES_METRICS)
            for axis in AXES_PARAMS + AXES_METRICS:
                page.locator(f"{PLOT} text", has_text=axis).first.wait_for(timeout=ms)
            # Down to the artifacts section, whose previews stay empty until a file is picked.
            bottom = page.get_by_text("Artifacts", exact=True).first.bounding_box(timeout=ms)
            if bottom is None:
                raise SystemExit("the compare page shows no Artifacts section")
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(
                path=str(out), clip={"x": 0, "y": 0, "width": 1600, "height": bottom["y"] - 8}
            )
        finally:
            chromium.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="demo", help="MLflow experiment name")
    parser.add_argument("--tracking-uri", default=settings().mlflow_tracking_uri)
    parser.add_argument("--ui-url", help="where the browser reaches MLflow, if not the URI")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "mlflow-compare.png")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per wait")
    args = parser.parse_args()
    experiment_id, runs = runs_to_compare(args.tracking_uri, args.experiment)
    url = tracking.compare_url(args.tracking_uri, experiment_id, [r for r, _ in runs], args.ui_url)
    print(f"comparing {', '.join(n for _, n in runs)}\n  {url}")
    screenshot(url, args.out, [n for _, n in runs], args.timeout)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

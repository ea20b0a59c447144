"""The app in headless Chromium, as a person uses it: a bad row is refused, then the smoke preset
is launched, watched to completion, compared, and tried.

Drives Debian's /usr/bin/chromium through Playwright (`make chromium` installs it; never
`playwright install`). Saves its screenshots under .data/screenshots/ (to look at when it fails);
the README's come from scripts/screenshot_app.py, taken of the demo preset.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from harness import browser
from harness.browser import MS, cells, column, shoot
from harness.polling import poll
from harness.processes import start_together
from harness.runs import SMOKE_TIMEOUT_S
from harness.temporal import coordinator_count


def edit_cell(page: Page, row: int, col: int, text: str) -> None:
    cell = page.locator(f"#config-table [data-testid='cell-{row}-{col}']")
    cell.dblclick()
    # Wait for the cell's editor before replacing its text: keys sent before it has focus
    # select the page instead, and the new text is then appended to the old.
    editor = cell.locator("textarea")
    expect(editor).to_be_focused()
    editor.fill(text)
    page.keyboard.press("Enter")


@pytest.mark.browser
def test_smoke_experiment_in_the_browser(settings, worker_processes, start_app):
    if not browser.have_chromium():
        pytest.skip(f"no Chromium at {browser.CHROMIUM}; run `make chromium`")
    *_, app = start_together(
        lambda: worker_processes("training"),
        lambda: worker_processes("eval"),
        lambda: start_app(settings),
    )
    before = coordinator_count(settings)
    with browser.app_page(app.url) as page:
        # Rows: duplicate the second, remove the copy, add a blank one; the preset restores all.
        page.locator("#config-table [data-testid='cell-1-1']").click()
        expect(page.locator("#selected-row")).to_contain_text("Selected row 2 (tiny-lr1e-3)")
        page.click("#duplicate-row")
        expect(page.locator("#config-table [data-testid='cell-2-0']")).to_have_text("tiny-lr1e-3-2")
        page.locator("#config-table [data-testid='cell-2-1']").click()
        expect(page.locator("#selected-row")).to_contain_text("Selected row 3 (tiny-lr1e-3-2)")
        page.click("#remove-row")
        expect(page.locator("#config-table [data-testid='cell-2-0']")).to_have_count(0)
        page.click("#add-row")
        expect(page.locator("#config-table [data-testid='cell-2-0']")).to_have_text("run-1")
        page.click("#load-preset")
        expect(page.locator("#config-table [data-testid='cell-2-0']")).to_have_count(0)

        # A negative learning rate and an unknown dataset: refused, row and field named.
        edit_cell(page, 1, 3, "-1")
        edit_cell(page, 1, 2, "no_such_dataset")
        page.click("#launch")
        status = page.locator("#launch-status")
        expect(status).to_contain_text("Not launched", timeout=30 * MS)
        expect(status).to_contain_text("row 2 (name 'tiny-lr1e-3'), learning_rate: must be > 0")
        expect(status).to_contain_text("row 2 (name 'tiny-lr1e-3'), dataset: 'no_such_dataset'")
        assert coordinator_count(settings) == before

        # The default dataset's card: where it comes from, what cleaning removed, its balance.
        page.locator("#dataset-card-box").get_by_text("Dataset card").click()
        card = page.locator("#dataset-card")
        expect(card).to_contain_text("after cleaning", timeout=30 * MS)
        expect(card).to_contain_text("exact duplicate texts")
        expect(card).to_contain_text("no movie is in both splits")

        # The smoke preset, launched.
        page.click("#load-preset")
        expect(page.locator("#config-table [data-testid='cell-1-3']")).to_have_text("0.001")
        page.click("#validate")
        expect(status).to_contain_text("2 configuration(s) are ready to launch")
        page.click("#launch")
        expect(status).to_contain_text("Launched experiment-smoke-", timeout=60 * MS)
        launched = re.search(r"experiment-smoke-\w+", status.inner_text())
        assert launched is not None, status.inner_text()
        experiment_id = launched.group(0)
        expect(status.get_by_role("link", name="Temporal workflow")).to_have_attribute(
            "href",
            re.compile(
                rf"^{re.escape(settings.temporal_ui_url)}/namespaces/default/"
                r"workflows/experiment-smoke-"
            ),
        )
        poll(lambda: coordinator_count(settings) == before + 1, 10, "one new coordinator")
        shoot(page, "experiment")

        # Watched live until both configurations have completed.
        page.get_by_role("tab", name="Runs").click()
        header = page.locator("#runs-header")
        expect(header).to_contain_text(
            "completed, 2/2 configurations ended", timeout=SMOKE_TIMEOUT_S * MS
        )
        expect(header).to_contain_text(experiment_id)
        # The table is updated apart from the header: awaited in its turn, not read at once.
        # On a loaded host one refresh of the tab can take tens of seconds: a generous bound.
        table, late = "#runs-table", 120 * MS
        expect(cells(page, table, 1)).to_have_text(
            ["completed"] * 2, use_inner_text=True, timeout=late
        )
        expect(cells(page, table, 2)).to_have_text(
            ["40/40 (100%)"] * 2, use_inner_text=True, timeout=late
        )
        # An accuracy, flagged when the model answered one class for every eval row.
        accuracy = re.compile(r"^[01]\.\d{3}( ⚠ collapsed \(one class\))?$")
        expect(cells(page, table, 6)).to_have_text(
            [accuracy] * 2, use_inner_text=True, timeout=late
        )
        expect(page.locator("#loss-plot")).to_contain_text("tiny-lr1e-3", timeout=late)  # legend
        lines = page.locator("#loss-plot path[aria-roledescription='line mark']")
        expect(lines).to_have_count(2, timeout=late)  # a curve drawn for each configuration
        shoot(page, "runs")

        page.get_by_role("tab", name="Compare").click()
        expect(page.locator("#compare-note")).to_contain_text(
            "2 configuration(s) evaluated", timeout=30 * MS
        )
        expect(page.locator("#compare-note").get_by_role("link")).to_have_attribute(
            "href", re.compile(r"/#/compare-runs\?runs=")
        )
        expect(page.locator("#compare-plot img")).to_be_visible()
        # The experiment's champion is marked (★) in its column, named in the note.
        expect(page.locator("#compare-note")).to_contain_text(
            "(models:/smoke@champion)", timeout=30 * MS
        )
        poll(lambda: column(page, "#compare-table", 2).count("★") == 1, 30, "one ★ champion")
        expect(page.locator("#champion-set")).to_be_visible()  # and can be moved by hand
        # Ranked by macro-F1, each next to the majority baseline with a verdict.
        expect(page.locator("#compare-metric input")).to_have_value("macro_f1")
        expect(page.locator("#compare-table")).to_contain_text("majority_baseline")
        expect(page.locator("#compare-table")).to_contain_text(
            re.compile(r"points over majority|collapsed")
        )
        shoot(page, "compare")

        # Try inference: the champion alias comes first; classify a sentence through it.
        options = browser.predict_through_champion(
            page, "smoke", "A gripping, beautifully acted film."
        )
        # Every entry in one format: "<title> — accuracy … · <summary> · <model URI>".
        runs = [o for o in options if o.startswith("smoke / ")]
        assert runs and all(" — accuracy " in o and " · models:/smoke/" in o for o in runs)
        label = page.locator("#inference-label")
        expect(label).to_contain_text("fresh")
        expect(label).to_contain_text("rotten")
        expect(label).to_contain_text("%")
        shoot(page, "inference")
        # Gradio's status announcements read as words, not as the raw i18n key.
        assert "common.complete" not in page.evaluate("document.body.innerText")

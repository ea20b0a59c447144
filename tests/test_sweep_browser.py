"""The app's sweep mode in headless Chromium, as a person uses it: a bad sweep is refused with
its fields named, then the sweep-smoke preset (tiny-bert trials over a few ASHA rungs), cut to
three trials, is launched, watched by rung until it ends with pruned and completed trials, its
leaderboard shows the best trial, and that trial's model answers in Try inference.

Chromium comes from harness/browser.py and the servers, workers and app from the conftest
fixtures the experiment's browser test uses; screenshots go under .data/screenshots/
(sweep-*.png).
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from harness import browser
from harness.browser import MS, column, shoot
from harness.polling import poll
from harness.processes import start_together
from harness.temporal import coordinator_count
from orchestration.presets import sweep_preset

# Three sweep-smoke trials train 55 tiny-bert steps in all (two trials at once) and the one
# that reaches the top rung is evaluated; a minute or two on two busy cores.
SWEEP_TIMEOUT_S = 600
SWEEPS = "SweepWorkflow"


@pytest.mark.browser
def test_sweep_in_the_browser(settings, worker_processes, start_app):
    if not browser.have_chromium():
        pytest.skip(f"no Chromium at {browser.CHROMIUM}; run `make chromium`")
    *_, app = start_together(
        lambda: worker_processes("training"),
        lambda: worker_processes("eval"),
        lambda: start_app(settings),
    )
    before = coordinator_count(settings, SWEEPS)
    with browser.app_page(app.url) as page:
        # Sweep mode replaces the table of configurations with the sweep form.
        page.locator("#experiment-mode").get_by_text("Sweep", exact=True).click()
        expect(page.locator("#sweep-panel")).to_be_visible()
        expect(page.locator("#config-table")).to_be_hidden()
        expect(page.locator("#sweep-space")).to_contain_text("learning_rate")

        # Unreadable base and no trials: refused, each problem naming its field.
        page.fill("#sweep-base textarea", '{"model": "tiny-bert",')
        page.fill("#sweep-trials input", "0")
        page.click("#sweep-launch")
        status = page.locator("#sweep-status")
        expect(status).to_contain_text("Not launched", timeout=30 * MS)
        expect(status).to_contain_text("base: not valid JSON")
        expect(status).to_contain_text("n_trials: must be >= 1")
        assert coordinator_count(settings, SWEEPS) == before

        # The preset restores every field; three trials instead of its nine keep the browser
        # test short and still give ASHA's three outcomes: at the first rung (eta 3) one trial
        # is promoted and two are pruned, and the promoted one completes. Validate shows the
        # rungs it will use.
        page.click("#sweep-load-preset")
        smoke = sweep_preset("sweep-smoke")
        expect(page.locator("#sweep-trials input")).to_have_value(str(smoke.n_trials))
        assert smoke.eta == 3, "three trials give one promotion only when eta is 3"
        page.fill("#sweep-trials input", "3")
        page.click("#sweep-validate")
        rungs = smoke.rungs()
        expect(status).to_contain_text(
            f"rungs at {', '.join(map(str, rungs))} steps", timeout=30 * MS
        )
        page.click("#sweep-launch")
        expect(status).to_contain_text("Launched sweep sweep-sweep-smoke-", timeout=60 * MS)
        launched = re.search(r"sweep-sweep-smoke-\w+", status.inner_text())
        assert launched is not None, status.inner_text()
        sweep_id = launched.group(0)
        poll(lambda: coordinator_count(settings, SWEEPS) == before + 1, 10, "one new sweep")
        shoot(page, "sweep-experiment")

        # Runs: the trials by rung, until the sweep has ended.
        page.get_by_role("tab", name="Runs").click()
        header = page.locator("#runs-header")
        expect(header).to_contain_text(sweep_id, timeout=60 * MS)
        expect(page.locator("#sweep-by-rung")).to_be_visible()
        expect(header).to_contain_text(
            re.compile(r"completed, (\d+)/\1 trials ended"), timeout=SWEEP_TIMEOUT_S * MS
        )
        expect(header).to_contain_text("best trial:")
        expect(header).to_contain_text("% of training every trial to the maximum")
        decisions = column(page, "#sweep-by-rung", 2)
        assert "pruned" in decisions and "completed" in decisions, decisions
        assert "promoted" in decisions, decisions  # a completed trial passed the lower rungs
        shown = column(page, "#sweep-by-rung", 0)
        assert shown[0] == f"{rungs[0]} steps" and shown[-1] == f"{rungs[-1]} steps", shown
        shoot(page, "sweep-runs")

        # Compare: the leaderboard, the best trial first and marked.
        page.get_by_role("tab", name="Compare").click()
        note = page.locator("#compare-note")
        expect(note).to_contain_text("Best trial: ★", timeout=30 * MS)
        board = "#sweep-leaderboard"
        expect(page.locator(board)).to_be_visible()
        assert column(page, board, 2).count("★") == 1
        best = column(page, board, 1)[0]
        assert column(page, board, 3)[0] == "completed"
        expect(note).to_contain_text(f"★ {best}")
        # The sweep chose its best trial: no champion to move by hand.
        expect(page.locator("#champion-set")).to_be_hidden()
        shoot(page, "sweep-compare")

        # Try inference: the best trial's model, first among the sweep's, answers.
        page.get_by_role("tab", name="Try inference").click()
        expect(page.locator("#inference-note")).to_contain_text("model(s)", timeout=30 * MS)
        page.click("#inference-model input")
        pattern = re.compile(rf"^★ sweep-smoke \/ {re.escape(best)} \(best trial\) — accuracy ")
        page.get_by_role("option", name=pattern).click()
        page.fill("#inference-texts textarea", "A gripping, beautifully acted film.")
        page.click("#predict")
        expect(page.locator("#inference-latency")).to_contain_text("Latency", timeout=120 * MS)
        label = page.locator("#inference-label")
        expect(label).to_contain_text("fresh")
        expect(label).to_contain_text("rotten")
        shoot(page, "sweep-inference")

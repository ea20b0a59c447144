"""Your own data in headless Chromium: upload a CSV whose columns no name rule knows, see what
schema inference decided, launch on it, and try the result through the champion alias.

Drives Debian's /usr/bin/chromium through Playwright (`make chromium` installs it; never
`playwright install`). Saves .data/screenshots/upload.png (the README's docs/screenshots/upload.png
is a copy of one).
"""

from __future__ import annotations

import re
import uuid

import pandas as pd
import pytest
from playwright.sync_api import expect

from harness import browser
from harness.browser import MS
from harness.processes import start_together
from harness.runs import SMOKE_TIMEOUT_S

GOOD = ("a delight", "wonderful acting", "a joy to watch", "moving and funny", "superb")
BAD = ("a chore", "dreadful plot", "a waste of time", "dull and long", "clumsy")


def reviews_csv(path) -> None:
    """120 reviews in `review_body` with their `verdict` (good or bad), and an id column."""
    rows = [
        {
            "id": i,
            "review_body": f"Film {i}: {(GOOD if i % 2 else BAD)[i % 5]}, scene {i // 2}.",
            "verdict": "good" if i % 2 else "bad",
        }
        for i in range(120)
    ]
    pd.DataFrame(rows).to_csv(path, index=False)


@pytest.mark.browser
def test_upload_launch_and_try_the_champion(settings, worker_processes, start_app, tmp_path):
    if not browser.have_chromium():
        pytest.skip(f"no Chromium at {browser.CHROMIUM}; run `make chromium`")
    *_, app = start_together(
        lambda: worker_processes("training"),
        lambda: worker_processes("eval"),
        lambda: start_app(settings),
    )
    data = tmp_path / "my-reviews.csv"
    reviews_csv(data)
    name = f"byod-{uuid.uuid4().hex[:6]}"
    with browser.app_page(app.url) as page:
        # Upload: stored under the local root, the schema inferred and shown, limits stated.
        page.locator("#upload-box").get_by_text("Upload your data").click()
        expect(page.locator("#upload-limits")).to_contain_text("50 MB")
        page.locator("#upload-file input[type='file']").set_input_files(str(data))
        expect(page.locator("#upload-status")).to_contain_text("Stored as", timeout=60 * MS)
        stored = re.search(
            r"uploads/[0-9a-f]{16}\.csv", page.locator("#upload-status").inner_text()
        )
        assert stored is not None
        dataset = stored.group(0)
        schema = page.locator("#upload-schema")
        expect(schema).to_contain_text("Text field: review_body", timeout=30 * MS)
        expect(schema).to_contain_text("Label field: verdict")
        expect(schema).to_contain_text("Task type: classification (2 classes)")
        expect(schema).to_contain_text("bad 60, good 60")
        expect(schema).to_contain_text("120 rows")
        expect(page.locator("#upload-samples")).to_contain_text("Film 0: a chore")
        expect(page.locator("#upload-label-field input")).to_have_value("verdict")

        # Into every row of the table: the dataset and the fields the preview decided.
        page.click("#use-upload")
        cell = page.locator("#config-table [data-testid='cell-1-2']")
        expect(cell).to_have_text(dataset, timeout=30 * MS)
        more = page.locator("#config-table [data-testid='cell-1-10']")
        expect(more).to_contain_text('"label_field": "verdict"')
        expect(page.locator("#catalog-dataset input")).to_have_value(dataset)
        page.locator("#dataset-card-box").get_by_text("Dataset card").click()
        expect(page.locator("#dataset-card")).to_contain_text(dataset, timeout=30 * MS)
        expect(page.locator("#dataset-card")).to_contain_text("after cleaning")
        browser.shoot(page, "upload")

        page.locator("#experiment-name").locator("input, textarea").first.fill(name)
        page.click("#launch")
        status = page.locator("#launch-status")
        expect(status).to_contain_text(f"Launched experiment-{name}-", timeout=60 * MS)

        page.get_by_role("tab", name="Runs").click()
        expect(page.locator("#runs-header")).to_contain_text(
            "completed, 2/2 configurations ended", timeout=SMOKE_TIMEOUT_S * MS
        )

        # The champion alias of this experiment answers with the upload's own label names.
        browser.predict_through_champion(page, name, "Film 7: superb, a joy to watch.")
        label = page.locator("#inference-label")
        expect(label).to_contain_text("good")
        expect(label).to_contain_text("bad")

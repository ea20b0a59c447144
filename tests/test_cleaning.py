"""Honest data: no eval text among the train rows, splits by movie, cards from the data, and
configurations that differ only in their model seed training on identical rows."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from orchestration.ml.builtin_data import BUILTINS, builtin_path
from orchestration.ml.errors import ConfigError
from orchestration.ml.snapshot import dataset_card, load_snapshot, make_snapshot
from orchestration.types import RunConfig


def cfg(**fields) -> RunConfig:
    return RunConfig(**{"name": "t", **fields})


@pytest.mark.parametrize("name", list(BUILTINS))
def test_no_eval_text_is_a_train_text_in_any_builtin(builtin_data_dir, tmp_path, name):
    """The whole snapshot (no cap): every text once, none on both sides, the card's counts
    those of the rows and of the extract."""
    snapshot = make_snapshot(cfg(dataset=name), tmp_path / "snaps", builtin_data_dir, [])
    _, train, held_out = load_snapshot(snapshot.path)
    train_texts, eval_texts = list(train["text"]), list(held_out["text"])
    assert not set(train_texts) & set(eval_texts)
    assert len(set(train_texts)) == len(train_texts) and len(set(eval_texts)) == len(eval_texts)

    extract = pd.read_csv(builtin_path(name, builtin_data_dir), dtype=str, keep_default_na=False)
    card = snapshot.card
    assert card is not None
    repeats = int(extract["text"].duplicated().sum())
    assert repeats > 0  # every built-in repeats some texts word for word
    assert card.removed.duplicates == repeats and card.removed.conflicting == 0
    assert card.source_rows == len(extract) == BUILTINS[name].rows
    assert card.rows == len(extract) - repeats == len(train) + len(held_out)
    assert (card.train_rows, card.eval_rows) == (len(train), len(held_out))
    first_labels = extract.drop_duplicates("text")["label"].value_counts().to_dict()
    assert card.label_counts == {k: first_labels[k] for k in snapshot.schema_.label_names}
    assert snapshot.eval_label_counts == card.eval_label_counts
    assert sum(card.eval_label_counts.values()) == len(held_out)

    if name == "movie-snippets":  # split by movie: no movie has snippets on both sides
        assert snapshot.split == "grouped" and "movie" in card.split_method
        movie_of = dict(zip(extract["text"][::-1], extract["group"][::-1], strict=True))
        train_movies = {movie_of[t] for t in train_texts}
        eval_movies = {movie_of[t] for t in eval_texts}
        assert not train_movies & eval_movies and len(eval_movies) > 50
        assert 0.17 < len(held_out) / card.rows < 0.23  # about eval_fraction of the rows
    else:
        assert snapshot.split == "seeded"


def test_same_data_seed_same_rows_whatever_the_model_seed(builtin_data_dir, tmp_path):
    """Two configurations that differ in seed (and hyperparameters) share one snapshot; another
    data_seed samples other training rows but evaluates on the very same eval rows."""
    caps = dict(max_train_samples=200, max_eval_samples=50)
    one = make_snapshot(cfg(seed=1, **caps), tmp_path / "snaps", builtin_data_dir, [])
    two = make_snapshot(
        cfg(name="u", seed=2, learning_rate=1e-3, **caps), tmp_path / "snaps", builtin_data_dir, []
    )
    assert one.snapshot_id == two.snapshot_id and one.path == two.path
    other = make_snapshot(
        cfg(seed=1, data_seed=5, **caps), tmp_path / "snaps", builtin_data_dir, []
    )
    assert other.snapshot_id != one.snapshot_id
    _, train, held_out = load_snapshot(one.path)
    _, other_train, other_eval = load_snapshot(other.path)
    assert list(train["text"]) != list(other_train["text"])
    assert list(held_out["text"]) == list(other_eval["text"])


def test_conflicting_labels_and_repeats_are_removed_before_splitting(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    texts = [f"review {i}" for i in range(40)]
    labels = ["good" if i % 2 else "bad" for i in range(40)]
    # "review 1" thrice with its label, "review 2" twice with opposite labels.
    texts += ["review 1", "review 1", "review 2"]
    labels += ["good", "good", "good"]
    pd.DataFrame({"text": texts, "label": labels}).to_csv(root / "rows.csv", index=False)
    snapshot = make_snapshot(cfg(dataset="rows.csv"), tmp_path / "snaps", tmp_path, [root])
    _, train, held_out = load_snapshot(snapshot.path)
    kept = list(train["text"]) + list(held_out["text"])
    assert sorted(kept) == sorted(set(texts) - {"review 2"})
    card = snapshot.card
    assert card is not None
    assert (card.removed.duplicates, card.removed.conflicting) == (2, 2)
    assert (card.source_rows, card.rows) == (43, 39)
    assert card.label_counts == {"bad": 19, "good": 20}


def test_source_eval_split_keeps_eval_and_drops_train_rows_seen_there(tmp_path):
    root = tmp_path / "root"
    (root / "split").mkdir(parents=True)
    train = pd.DataFrame({"text": [f"t{i}" for i in range(30)], "label": ["a", "b", "c"] * 10})
    held_out = pd.DataFrame({"text": ["t0", "t1", "e1", "e2"], "label": ["a", "b", "a", "c"]})
    train.to_csv(root / "split" / "train.csv", index=False)
    held_out.to_csv(root / "split" / "test.csv", index=False)
    config = cfg(dataset="split")
    snapshot = make_snapshot(config, tmp_path / "snaps", tmp_path, [root])
    _, rows, evaluated = load_snapshot(snapshot.path)
    assert sorted(evaluated["text"]) == ["e1", "e2", "t0", "t1"]
    assert not {"t0", "t1"} & set(rows["text"]) and len(rows) == 28
    card = dataset_card(config, tmp_path, [root])
    assert card == snapshot.card
    assert (card.split, card.removed.eval_overlap, card.removed.duplicates) == ("source", 2, 0)
    assert card.eval_label_counts == {"a": 2, "b": 1, "c": 1}
    markdown = card.markdown()
    assert "2 train rows whose text is an eval text" in markdown
    assert "Majority baseline" in markdown and "50.0%" in markdown


def test_card_of_a_builtin_names_its_package_and_balance(builtin_data_dir):
    card = dataset_card(cfg(dataset="bbc-articles"), builtin_data_dir, [])
    spec = BUILTINS["bbc-articles"]
    assert spec.requirement in card.source and spec.requirement in card.provenance
    assert len(card.label_counts) == 5 and sum(card.label_counts.values()) == card.rows
    text = card.markdown()
    assert card.title in text and f"{card.rows:,} after cleaning" in text


def test_a_source_too_small_after_cleaning_is_refused_clearly(tmp_path: Path):
    """Conflicting copies dropped, one row is left: no split can be made of it."""
    root = tmp_path / "root"
    root.mkdir()
    frame = pd.DataFrame({"text": ["same", "same", "other"], "label": ["a", "b", "a"]})
    frame.to_csv(root / "few.csv", index=False)
    with pytest.raises(ConfigError, match="dataset: only 1 usable rows"):
        make_snapshot(cfg(dataset="few.csv"), tmp_path / "snaps", tmp_path, [root])

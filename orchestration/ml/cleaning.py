"""Honest splits: no text on both sides of the train/eval line, and a card that says what was done.

Every source goes through the same steps before any cap or shuffle:

1. Texts that carry more than one label (the same text, or text pair, labelled differently)
   are ambiguous: every copy is dropped, since keeping any one of them would pick a label
   arbitrarily. None of the built-ins has such a text.
2. Exact repeats of a text are dropped, the first copy kept (the built-ins repeat some reviews
   and articles word for word).
3. A source without an eval split is split here with a fixed seed, the same for every
   configuration: by group where the source names one (movie-snippets: by movie, so no movie's
   snippets are in both splits), else row by row. A source with its own eval split keeps it and
   loses the train rows whose text is also an eval text.

The counts of what each step removed, the label balance and the split method go on the
dataset's card (`DatasetCard`), which the snapshot carries for the app and MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from orchestration.ml.datasets import SourceData
from orchestration.ml.errors import ConfigError
from orchestration.types import DatasetCard, DatasetSchema, RemovedRows, SplitMethod

# The held-out split and the eval order are drawn with this seed, whatever a configuration's
# seeds: every configuration of a dataset is evaluated on the same rows (comparable metrics).
SPLIT_SEED = 20261128
GROUP = "group"


@dataclass(frozen=True)
class CleanSplit:
    """Cleaned, split rows (not yet capped), and the card that describes them."""

    train: pd.DataFrame
    eval: pd.DataFrame
    split: SplitMethod
    card: DatasetCard


def _keys(frame: pd.DataFrame) -> pd.Series:
    """What makes two rows the same text: the text, and the pair's second text when there is one."""
    if "text_pair" in frame:
        return frame["text"] + "\0" + frame["text_pair"]
    return frame["text"]


def _drop_conflicting(parts: list[pd.DataFrame]) -> tuple[list[pd.DataFrame], int]:
    """Every copy of a text whose copies (over all parts) carry different labels."""
    keys = [_keys(p) for p in parts]
    together = pd.DataFrame(
        {"key": pd.concat(keys), "label": pd.concat([p["label"] for p in parts])}
    )
    labels_per_text = together.groupby("key")["label"].nunique()
    ambiguous = set(labels_per_text.index[labels_per_text > 1])
    kept = [p[~k.isin(ambiguous)] for p, k in zip(parts, keys, strict=True)]
    return kept, sum(len(p) for p in parts) - sum(len(p) for p in kept)


def _drop_repeats(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    kept = frame[~_keys(frame).duplicated(keep="first")]
    return kept, len(frame) - len(kept)


def _n_eval(rows: int, eval_fraction: float) -> int:
    n_eval = max(1, round(rows * eval_fraction))
    if rows - n_eval < 1:
        raise ConfigError(f"dataset: only {rows} usable rows; a train/eval split needs at least 2")
    return n_eval


def _split_rows(frame: pd.DataFrame, eval_fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    order = np.random.default_rng([SPLIT_SEED, 0]).permutation(len(frame))
    n_eval = _n_eval(len(frame), eval_fraction)
    return frame.iloc[order[n_eval:]], frame.iloc[order[:n_eval]]


def _split_groups(
    frame: pd.DataFrame, eval_fraction: float, group_by: str
) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Whole groups, drawn in a seeded order, go to eval until it holds its share of rows."""
    sizes = frame.groupby(GROUP, sort=True).size()
    if len(sizes) < 2:
        raise ConfigError(
            f"dataset: every row belongs to one {group_by}; a split by {group_by} needs two"
        )
    order = np.random.default_rng([SPLIT_SEED, 0]).permutation(len(sizes))
    shuffled = sizes.iloc[order]
    wanted = _n_eval(len(frame), eval_fraction)
    # The first groups whose rows reach the wanted count; at least one, never all of them.
    taken = int(np.searchsorted(shuffled.cumsum().to_numpy(), wanted)) + 1
    held = set(shuffled.index[: min(taken, len(sizes) - 1)])
    in_eval = frame[GROUP].isin(held)
    how = (
        f"whole {group_by}s held out at random (fixed seed {SPLIT_SEED}) until about "
        f"{eval_fraction:.0%} of the rows: {len(held)} of {len(sizes)} {group_by}s are eval "
        f"rows, so no {group_by} is in both splits"
    )
    return frame[~in_eval], frame[in_eval], how


def label_counts(labels: pd.Series, schema: DatasetSchema) -> dict[str, int]:
    """Rows per label name (classification; empty for regression)."""
    if schema.task_type == "regression":
        return {}
    counts = labels.value_counts()
    return {name: int(counts.get(i, 0)) for i, name in enumerate(schema.label_names)}


def clean_and_split(
    source: SourceData,
    schema: DatasetSchema,
    train: pd.DataFrame,
    held_out: pd.DataFrame | None,
    dataset: str,
    eval_fraction: float,
) -> CleanSplit:
    """The steps in the module docstring, on normalised rows (text, [text_pair], label[, group])."""
    source_rows = len(train) + (0 if held_out is None else len(held_out))
    parts, conflicting = _drop_conflicting([train] if held_out is None else [train, held_out])
    cleaned = [_drop_repeats(p) for p in parts]
    duplicates = sum(n for _, n in cleaned)
    overlap = 0
    if held_out is None:
        rows = cleaned[0][0]
        if GROUP in rows:
            train, held_out, how = _split_groups(rows, eval_fraction, source.group_by or "group")
            split: SplitMethod = "grouped"
        else:
            train, held_out = _split_rows(rows, eval_fraction)
            how = (
                f"{eval_fraction:.0%} of the rows held out at random (fixed seed {SPLIT_SEED}), "
                "the same for every configuration"
            )
            split = "seeded"
    else:
        (train, _), (held_out, _) = cleaned
        in_eval = _keys(train).isin(set(_keys(held_out)))
        overlap = int(in_eval.sum())
        train, split = train[~in_eval], "source"
        how = (
            "the source's own train and eval splits; train rows whose text is an eval text dropped"
        )
    for name, part in (("train", train), ("eval", held_out)):
        if part.empty:
            raise ConfigError(f"dataset: the {name} split has no usable rows (text and label)")
    # The eval rows in a fixed order too, so a cap takes the same random sample everywhere.
    held_out = held_out.iloc[np.random.default_rng([SPLIT_SEED, 2]).permutation(len(held_out))]
    card = DatasetCard(
        dataset=dataset,
        title=source.title or dataset,
        source=source.source,
        provenance=source.provenance,
        citation=source.citation,
        source_rows=source_rows,
        rows=len(train) + len(held_out),
        removed=RemovedRows(duplicates=duplicates, conflicting=conflicting, eval_overlap=overlap),
        label_counts=label_counts(pd.concat([train["label"], held_out["label"]]), schema),
        split=split,
        split_method=how,
        train_rows=len(train),
        eval_rows=len(held_out),
        eval_label_counts=label_counts(held_out["label"], schema),
    )
    return CleanSplit(
        train.drop(columns=GROUP, errors="ignore"),
        held_out.drop(columns=GROUP, errors="ignore"),
        split,
        card,
    )

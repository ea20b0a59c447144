"""A learnable synthetic sentiment task (filler words plus one positive or negative word),
written in the snapshot format without the snapshot builder, and a tiny-bert configuration for
it: training tests that depend on the format only; and the bare record of such a snapshot.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from orchestration.types import DatasetSchema, RunConfig, Snapshot

POSITIVE = ["good", "great", "love", "wonderful", "excellent"]
NEGATIVE = ["bad", "awful", "hate", "terrible", "boring"]
FILLER = "the movie plot actors was really quite a story film and i it".split()
LABELS = ["negative", "positive"]


def _rows(n: int, seed: int, regression: bool) -> dict[str, list]:
    rng = random.Random(seed)
    texts: list[str] = []
    labels: list[float] = []
    for _ in range(n):
        label = rng.randrange(2)
        words = [rng.choice(FILLER) for _ in range(rng.randint(4, 10))]
        words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if label else NEGATIVE))
        texts.append(" ".join(words))
        labels.append(float(label) if regression else label)  # ints for classification
    return {"text": texts, "label": labels}


def snapshot_record(path: str, label_names: list[str] | None = None, **fields: Any) -> Snapshot:
    """The record of a two-class text classification snapshot at `path` (columns text and label,
    classes named `label_names` if given), for tests that need the record and not the files;
    `fields` replace any other field (snapshot_id, dataset, rows, card, ...)."""
    schema = DatasetSchema(
        text_field="text",
        label_field="label",
        task_type="classification",
        num_labels=2,
        label_names=label_names or [],
    )
    snapshot = Snapshot(
        snapshot_id="0" * 16,
        path=path,
        dataset="synthetic",
        source="test",
        schema_=schema,
        train_rows=10,
        eval_rows=2,
        split="seeded",
    )
    return snapshot.model_copy(update=fields)


def write_snapshot(
    folder: Path, regression: bool = False, n_train: int = 320, n_eval: int = 80
) -> str:
    """A snapshot folder (train/eval parquet, snapshot.json) at `folder`; returns its path."""
    folder.mkdir(parents=True)
    for split, n, seed in (("train", n_train, 1), ("eval", n_eval, 2)):
        pq.write_table(pa.table(_rows(n, seed, regression)), folder / f"{split}.parquet")
    schema = DatasetSchema(
        text_field="text",
        label_field="label",
        task_type="regression" if regression else "classification",
        num_labels=1 if regression else 2,
        label_names=[] if regression else LABELS,
    )
    snapshot = Snapshot(
        snapshot_id=folder.name,
        path=str(folder),
        dataset="synthetic",
        source="test",
        schema_=schema,
        train_rows=n_train,
        eval_rows=n_eval,
        split="seeded",
    )
    (folder / "snapshot.json").write_text(snapshot.model_dump_json(by_alias=True))
    return str(folder)


def config(**overrides: Any) -> RunConfig:
    """tiny-bert for the synthetic task on CPU: 320 rows / 16 = 20 steps an epoch, 60 in all;
    lr 3e-3 because tiny-bert starts random."""
    base: dict[str, Any] = dict(
        name="t",
        model="tiny-bert",
        learning_rate=3e-3,
        epochs=3,
        batch_size=16,
        max_length=32,
        checkpoint_every_steps=10,
        keep_checkpoints=2,
        device="cpu",
    )
    return RunConfig(**{**base, **overrides})


# Best-checkpoint selection for config(): evaluations every 10 steps, checkpoints every 20, so a
# new best between two checkpoints (step 30 here) gets a checkpoint of its own. Seed 4 learns the
# task around step 30 (of 54: 288 training rows once 10 % are held out), after which validation
# accuracy can only tie, so patience 2 stops the run early.
SELECTING: dict[str, Any] = dict(
    seed=4,
    # A trajectory that stops early with its best off the checkpoint interval; the same on every
    # machine only at a fixed precision (auto picks bf16 where the CPU has it).
    precision="fp32",
    select_best_by="accuracy",
    eval_every_steps=10,
    checkpoint_every_steps=20,
    keep_checkpoints=1,
    early_stopping_patience=2,
)

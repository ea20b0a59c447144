"""Content-addressed snapshots: the exact rows one configuration trains and evaluates on.

A snapshot freezes the source's rows into `text`, optional `text_pair` and `label` (class id or
float), cleaned and split (`cleaning`: no duplicate texts, no eval text among the train rows),
shuffled with the configuration's `data_seed` and only then capped, so a cap takes a random
sample rather than the source's first rows. The model's `seed` plays no part: configurations
that differ only in hyperparameters or `seed` train on identical rows. Its id hashes the source
identity, the schema, the split method and those rows, so configurations that would train on the
same data share one folder, and a retried attempt (on any worker) finds the same rows it started
with. It carries the dataset's card and its own rows' label counts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from orchestration.ml.cleaning import GROUP, CleanSplit, clean_and_split, label_counts
from orchestration.ml.datasets import SourceData, infer_schema, load_rows
from orchestration.ml.errors import ConfigError, StorageError
from orchestration.ml.local_files import file_dataset
from orchestration.types import DatasetCard, DatasetSchema, RunConfig, Snapshot

# Bump when the row layout or hashing changes, so old snapshot ids are never reused wrongly.
SNAPSHOT_FORMAT = 2


def _normalise(
    ds: datasets.Dataset, schema: DatasetSchema, split: str, groups: list[str] | None = None
) -> pd.DataFrame:
    """The split as text / text_pair / label (and, given `groups`, group) columns; rows missing
    any of them are dropped."""
    named = {
        "text": schema.text_field,
        "text_pair": schema.text_pair_field,
        "label": schema.label_field,
    }
    fields = {out: col for out, col in named.items() if col is not None}
    for out, column in fields.items():
        if column not in ds.column_names:
            raise ConfigError(
                f"{out}_field: the {split} split lacks column {column!r} (columns: "
                f"{', '.join(ds.column_names)}); fix the data or set {out}_field"
            )
    source = ds.select_columns(sorted(set(fields.values()))).to_pandas()
    frame = pd.DataFrame({out: source[col] for out, col in fields.items()})
    if groups is not None:
        frame[GROUP] = groups
    frame = frame.dropna()
    for column in ("text", "text_pair"):
        if column in frame:
            frame[column] = frame[column].astype(str)
    frame["label"] = _encode_labels(frame["label"], schema, split)
    return frame.reset_index(drop=True)


def _encode_labels(labels: pd.Series, schema: DatasetSchema, split: str) -> pd.Series:
    if schema.task_type == "regression":
        return labels.astype("float64")
    if pd.api.types.is_numeric_dtype(labels) and not pd.api.types.is_bool_dtype(labels):
        ids = labels.astype("int64")  # class ids already (ClassLabel or plain integers)
        unknown = labels[(ids != labels) | (ids < 0) | (ids >= schema.num_labels)]
    else:
        index = {name: i for i, name in enumerate(schema.label_names)}
        mapped = labels.astype(str).map(index)
        unknown = labels[mapped.isna()]
        ids = mapped.fillna(-1).astype("int64")
    if len(unknown):
        raise ConfigError(
            f"label_field: the {split} split has labels the train split lacks "
            f"({', '.join(map(repr, sorted({str(v) for v in unknown})[:5]))}; known: "
            f"{', '.join(schema.label_names[:20])}); fix the data or pick another eval split"
        )
    return ids


def _ordered(
    train: pd.DataFrame, held_out: pd.DataFrame, cfg: RunConfig
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The training rows shuffled with the data seed, then both splits capped."""
    train = train.iloc[np.random.default_rng([cfg.data_seed, 1]).permutation(len(train))]
    train = train.iloc[: cfg.max_train_samples].reset_index(drop=True)
    held_out = held_out.iloc[: cfg.max_eval_samples].reset_index(drop=True)
    return train, held_out


def _snapshot_id(source: str, schema: DatasetSchema, split: str, parts: dict[str, pa.Table]) -> str:
    digest = hashlib.sha256()
    header = {
        "format": SNAPSHOT_FORMAT,
        "source": source,
        "schema": schema.model_dump(),
        "split": split,
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for name, table in parts.items():
        for column in table.column_names:
            digest.update(f"\0{name}.{column}\0".encode())
            digest.update(json.dumps(table[column].to_pylist(), ensure_ascii=False).encode())
    return digest.hexdigest()[:16]


def _clean_rows(
    cfg: RunConfig, data_dir: Path, local_roots: list[Path]
) -> tuple[SourceData, DatasetSchema, CleanSplit]:
    """The source's rows, their schema, and the rows cleaned and split (not yet capped)."""
    rows = load_rows(cfg, data_dir, local_roots)
    schema = infer_schema(rows.train, cfg)
    train = _normalise(rows.train, schema, "train", rows.groups)
    held_out = _normalise(rows.eval, schema, "eval") if rows.eval is not None else None
    clean = clean_and_split(rows, schema, train, held_out, cfg.dataset, cfg.eval_fraction)
    return rows, schema, clean


def dataset_card(cfg: RunConfig, data_dir: Path, local_roots: list[Path]) -> DatasetCard:
    """The card of `cfg`'s dataset (its whole cleaned rows, whatever the caps), without
    writing a snapshot: what the app shows before anything is launched."""
    return _clean_rows(cfg, data_dir, local_roots)[2].card


def make_snapshot(
    cfg: RunConfig, snapshot_dir: Path, data_dir: Path, local_roots: list[Path]
) -> Snapshot:
    """Build (or find) the snapshot for `cfg`; safe when several processes race to build it."""
    rows, schema, clean = _clean_rows(cfg, data_dir, local_roots)
    train, held_out = _ordered(clean.train, clean.eval, cfg)
    split = clean.split
    parts = {
        name: pa.Table.from_pandas(frame, preserve_index=False)
        for name, frame in (("train", train), ("eval", held_out))
    }
    snapshot_id = _snapshot_id(rows.source, schema, split, parts)
    snapshot_dir = Path(snapshot_dir).resolve()
    final = snapshot_dir / snapshot_id
    snapshot = Snapshot(
        snapshot_id=snapshot_id,
        path=str(final),
        dataset=cfg.dataset,
        source=rows.source,
        schema_=schema,
        train_rows=len(train),
        eval_rows=len(held_out),
        split=split,
        card=clean.card,
        train_label_counts=label_counts(train["label"], schema),
        eval_label_counts=label_counts(held_out["label"], schema),
    )
    if final.is_dir():
        _remove_leftovers(snapshot_dir, snapshot_id)
        return snapshot
    need = sum(table.nbytes for table in parts.values())
    try:
        _write(snapshot, parts, snapshot_dir, final, need)
    except OSError as err:
        if not final.is_dir():
            raise StorageError(
                f"snapshot store: cannot write to {snapshot_dir} ({err.strerror or err}); free "
                "space or fix permissions there, or set BERTFLEET_DATA_DIR to a writable volume "
                "with room"
            ) from None
        # Another process renamed the same content into place first: keep theirs.
    _remove_leftovers(snapshot_dir, snapshot_id)
    return snapshot


def _write(
    snapshot: Snapshot, parts: dict[str, pa.Table], snapshot_dir: Path, final: Path, need: int
) -> None:
    """Write the snapshot atomically. Like a checkpoint store, the folder is probed first (a
    private temp folder, then its free space), so a full or read-only disk is a StorageError
    naming the folder rather than a parquet error halfway through."""
    snapshot_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=snapshot_dir, prefix=f".tmp-{snapshot.snapshot_id}-"))
    try:
        free = shutil.disk_usage(tmp).free
        if free < need:
            raise OSError(
                28, f"{free / 1e6:.1f} MB free, the snapshot needs about {need / 1e6:.1f} MB"
            )
        for name, table in parts.items():
            pq.write_table(table, tmp / f"{name}.parquet")
        (tmp / "snapshot.json").write_text(snapshot.model_dump_json(by_alias=True, indent=2))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; other workers read it
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_leftovers(snapshot_dir: Path, snapshot_id: str) -> None:
    """Half-written copies of a snapshot that now exists, left by a builder killed mid-write.
    A builder still writing one would lose its folder, fail on it, see `final` and return."""
    for leftover in snapshot_dir.glob(f".tmp-{snapshot_id}-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def load_snapshot(path: str | Path) -> tuple[Snapshot, datasets.Dataset, datasets.Dataset]:
    """The snapshot's description and its train and eval rows."""
    folder = Path(path)
    meta = folder / "snapshot.json"
    if not meta.is_file():
        raise FileNotFoundError(f"no snapshot at {folder} ({meta.name} is missing)")
    snapshot = Snapshot.model_validate_json(meta.read_text())
    train, held_out = (
        file_dataset(pq.read_table(part), part)
        for part in (folder / "train.parquet", folder / "eval.parquet")
    )
    return snapshot, train, held_out

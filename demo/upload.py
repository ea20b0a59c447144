"""Bring your own data: store an uploaded file under the local data root, and preview what schema
inference makes of it before anything is launched.

An upload is stored content-addressed (`uploads/<sha256 prefix>.<ext>` in the first allowed local
root), written to a hidden temporary file first and renamed into place, so a half-written file
never shows under a name and the same bytes uploaded twice are one file. Its dataset name is that
relative path, which the catalog resolves like any local file, so a launch reads it like the
built-ins. Reading and schema inference are the catalog's own (`local_files.read_file`,
`datasets.infer_schema`); this module adds the limits and the preview.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from orchestration.ml.errors import ConfigError
from orchestration.ml.local_files import read_file
from orchestration.types import MAX_CLASSES, DatasetSchema, RunConfig

UPLOAD_DIR = "uploads"
UPLOAD_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
MAX_UPLOAD_ROWS = 200_000
SAMPLE_ROWS = 5
SAMPLE_CHARS = 120
# The hex digits of the sha256 in a stored name: short enough for a table cell, far too many to
# collide among one machine's uploads.
NAME_DIGITS = 16


class UploadRefused(ValueError):
    """An upload that cannot be stored; the message names the problem and the fix."""


def limits_text() -> str:
    return (
        f"CSV, TSV, JSON Lines or Parquet, UTF-8, with a header row; at most "
        f"{MAX_UPLOAD_BYTES // (1024 * 1024)} MB, {MAX_UPLOAD_ROWS:,} rows and {MAX_CLASSES} "
        "classes; at least two classes for classification."
    )


def upload_folder(local_roots: list[Path]) -> Path:
    """Where uploads live: a folder inside the first allowed local root."""
    if not local_roots:
        raise UploadRefused("uploads need an allowed local data folder; set BERTFLEET_LOCAL_ROOTS")
    return Path(local_roots[0]).resolve() / UPLOAD_DIR


def uploaded_names(local_roots: list[Path]) -> list[str]:
    """Dataset names of the stored uploads, newest first."""
    folder = upload_folder(local_roots) if local_roots else None
    if folder is None or not folder.is_dir():
        return []
    files = [
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in UPLOAD_SUFFIXES
    ]
    files.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [f"{UPLOAD_DIR}/{p.name}" for p in files]


@dataclass(frozen=True)
class Stored:
    name: str  # the dataset name a RunConfig takes
    rows: int
    columns: list[str]


def _copy_hashing(source: Path, target: Path) -> str:
    digest = hashlib.sha256()
    with source.open("rb") as src, target.open("wb") as dst:
        for block in iter(lambda: src.read(1 << 20), b""):
            digest.update(block)
            dst.write(block)
        dst.flush()
        os.fsync(dst.fileno())
    return digest.hexdigest()


def store_upload(path: Path | str, original_name: str, local_roots: list[Path]) -> Stored:
    """Check and store the file at `path` (sent as `original_name`); UploadRefused when it is
    too large, of another format, unreadable, not UTF-8, empty or has too many rows."""
    path = Path(path)
    shown = Path(original_name).name or "the file"
    suffix = Path(original_name).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise UploadRefused(
            f"{shown}: unsupported file type {suffix or '(none)'!r}; upload a "
            f"{', '.join(UPLOAD_SUFFIXES)} file"
        )
    size = path.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise UploadRefused(
            f"{shown}: {size / 1024 / 1024:.1f} MB is over the {MAX_UPLOAD_BYTES // 2**20} MB "
            "limit; upload a sample, or put the file under the local data folder instead"
        )
    folder = upload_folder(local_roots)
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".upload-{uuid.uuid4().hex}{suffix}"
    try:
        digest = _copy_hashing(path, temporary)
        try:
            rows = read_file(temporary)
        except ConfigError as err:
            # The reader names the file it read; the person knows it by the name they sent.
            raise UploadRefused(
                str(err).replace(str(temporary), shown).removeprefix("dataset: ")
            ) from None
        if rows.num_rows > MAX_UPLOAD_ROWS:
            raise UploadRefused(
                f"{shown}: {rows.num_rows:,} rows is over the {MAX_UPLOAD_ROWS:,}-row limit; "
                "upload a sample, or put the file under the local data folder instead"
            )
        final = folder / f"{digest[:NAME_DIGITS]}{suffix}"
        os.replace(temporary, final)  # atomic; the same bytes again replace themselves
    finally:
        temporary.unlink(missing_ok=True)
    return Stored(f"{UPLOAD_DIR}/{final.name}", rows.num_rows, list(rows.column_names))


# ---- the preview ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Overrides:
    """What the person set in the preview; None means "let inference decide"."""

    text_field: str | None = None
    text_pair_field: str | None = None
    label_field: str | None = None
    task_type: str = "auto"

    def fields(self) -> dict:
        """The RunConfig fields these overrides become (only the ones set)."""
        given = {
            "text_field": self.text_field,
            "text_pair_field": self.text_pair_field,
            "label_field": self.label_field,
            "task_type": None if self.task_type == "auto" else self.task_type,
        }
        return {k: v for k, v in given.items() if v}


@dataclass(frozen=True)
class Preview:
    dataset: str
    rows: int
    columns: list[str]
    schema: DatasetSchema
    label_counts: dict[str, int]
    samples: list[dict[str, str]]
    guessed_label: bool = False  # the label column was picked here, not by its name
    run_fields: dict = field(default_factory=dict)  # what goes into a row's RunConfig

    def markdown(self) -> str:
        s = self.schema
        counts = ", ".join(f"{name} {n:,}" for name, n in self.label_counts.items())
        guessed = " (picked as the column with the fewest distinct values)" * self.guessed_label
        lines = [
            f"**`{self.dataset}`** · {self.rows:,} rows · columns: "
            + ", ".join(f"`{c}`" for c in self.columns),
            "",
            f"- **Text field**: `{s.text_field}`",
            f"- **Pair field**: {f'`{s.text_pair_field}`' if s.text_pair_field else 'none'}",
            f"- **Label field**: `{s.label_field}`{guessed}",
            f"- **Task type**: {s.task_type}"
            + (f" ({s.num_labels} classes)" if s.task_type == "classification" else ""),
            f"- **Labels**: {counts or 'numeric (regression)'}",
        ]
        return "\n".join(lines)


def _label_guess(train, cfg: RunConfig) -> str | None:
    """When no column is named like a label, the column with the fewest distinct values
    (2..MAX_CLASSES, repeating: at most half as many values as rows) among the non-text ones."""
    taken = {cfg.text_field, cfg.text_pair_field}
    best: tuple[int, str] | None = None
    for column in train.column_names:
        if column in taken:
            continue
        values = {v for v in train[column] if v is not None}
        if not all(isinstance(v, (str, int, bool)) for v in values):
            continue
        if 2 <= len(values) <= min(MAX_CLASSES, max(2, train.num_rows // 2)):
            if best is None or len(values) < best[0]:
                best = (len(values), column)
    return best[1] if best else None


def _counts(train, schema: DatasetSchema) -> dict[str, int]:
    if schema.task_type != "classification":
        return {}
    counted = Counter(str(v) for v in train[schema.label_field] if v is not None)
    return dict(sorted(counted.items(), key=lambda kv: (-kv[1], kv[0])))


def preview(dataset: str, overrides: Overrides, data_dir: Path, local_roots: list[Path]) -> Preview:
    """What schema inference decides for `dataset` with `overrides`; ConfigError (naming the
    field and the fix) for missing columns, a single class, too many classes..."""
    # Imported here: the catalog pulls in pandas and datasets, which the page needs only now.
    from orchestration.ml.datasets import infer_schema, load_rows

    cfg = RunConfig(name="preview", dataset=dataset, **overrides.fields())
    train = load_rows(cfg, data_dir, local_roots).train
    guessed = False
    try:
        schema = infer_schema(train, cfg)
    except ConfigError as err:
        guess = None if cfg.label_field else _label_guess(train, cfg)
        if guess is None or not str(err).startswith("label_field: no label column"):
            raise
        cfg = cfg.model_copy(update={"label_field": guess})
        schema = infer_schema(train, cfg)
        guessed = True
    samples = [
        {c: str(train[i][c])[:SAMPLE_CHARS] for c in train.column_names}
        for i in range(min(SAMPLE_ROWS, train.num_rows))
    ]
    return Preview(
        dataset=dataset,
        rows=train.num_rows,
        columns=list(train.column_names),
        schema=schema,
        label_counts=_counts(train, schema),
        samples=samples,
        guessed_label=guessed,
        run_fields=_decided(schema),
    )


def _decided(schema: DatasetSchema) -> dict:
    """The schema as RunConfig fields, so a launch trains on exactly what the preview showed."""
    fields = {"text_field": schema.text_field, "label_field": schema.label_field}
    if schema.text_pair_field:
        fields["text_pair_field"] = schema.text_pair_field
    return {**fields, "task_type": schema.task_type}

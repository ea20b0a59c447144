"""Local data files for the catalog: CSV/TSV, JSON Lines, JSON arrays and Parquet, one file or a
folder of split files, and only under the allowed roots.

The roots guard matters because a dataset name arrives from a web form: it is resolved (symlinks
and `..` included) before use, and anything that lands outside every root is refused, so a
launch cannot read `/etc/passwd` or another user's files.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from orchestration.ml.builtin_data import BUILTINS
from orchestration.ml.errors import ConfigError
from orchestration.ml.paths import path_problem, under_roots

SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
TRAIN_SPLITS = ("train", "training")
# When a source ships several held-out splits, the one meant for model selection wins.
EVAL_SPLITS = ("validation", "valid", "val", "dev", "eval", "test")


def roots_text(roots: list[Path]) -> str:
    return ", ".join(str(r) for r in roots) or "none configured"


def resolve_local(name: str, local_roots: list[Path]) -> Path | None:
    """The file/folder `name` points to under an allowed root; None when it reads as a hub id.
    A name the filesystem cannot take (NUL, a name part too long) is a ConfigError."""
    try:
        return _resolve_local(name, local_roots)
    except (OSError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(
            f"dataset: cannot use {name[:80]!r} as a file name ({path_problem(err)}); "
            f"pick a built-in ({', '.join(BUILTINS)}) or a file under the allowed data folders"
        ) from None


def _resolve_local(name: str, local_roots: list[Path]) -> Path | None:
    roots = [Path(r).expanduser().resolve() for r in local_roots]
    given = Path(name).expanduser()
    candidates = [given] if given.is_absolute() else [root / given for root in roots]
    resolved = [c.resolve() for c in candidates]
    inside = [c for c in resolved if any(c.is_relative_to(r) for r in roots)]
    for candidate in inside:
        if candidate.exists():
            return candidate
    looks_local = (
        given.is_absolute()
        or name.startswith((".", "~"))
        or ".." in given.parts
        or "\\" in name
        or given.suffix.lower() in SUFFIXES
        or given.exists()
    )
    if not looks_local:
        return None
    if not inside:
        raise ConfigError(
            f"dataset: {name!r} is outside the allowed data folders ({roots_text(roots)}); "
            f"put the file under one of them, or pick a built-in ({', '.join(BUILTINS)})"
        )
    raise ConfigError(
        f"dataset: no file or folder {name!r} under the allowed data folders "
        f"({roots_text(roots)}); check the name"
    )


def _data_files(folder: Path) -> dict[str, Path]:
    files = [
        p
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SUFFIXES
    ]
    return {p.stem.lower(): p for p in reversed(files)}  # first file per stem wins


def load_local(
    path: Path, local_roots: list[Path]
) -> tuple[datasets.Dataset, datasets.Dataset | None, str]:
    """Train rows, eval rows (None without an eval file) and the source identity of `path`.
    Files of a folder that link outside the allowed roots are refused before being read."""
    train_file: Path | None
    eval_file: Path | None
    if path.is_file():
        train_file, eval_file = path, None
    else:
        by_stem = _data_files(path)
        train_file = next((by_stem[s] for s in TRAIN_SPLITS if s in by_stem), None)
        eval_file = next((by_stem[s] for s in EVAL_SPLITS if s in by_stem), None)
        if train_file is None and len(by_stem) == 1:
            train_file = next(iter(by_stem.values()))
        if train_file is None:
            raise ConfigError(
                f"dataset: folder {path} has no train file (data files: "
                f"{', '.join(p.name for p in by_stem.values()) or 'none'}); name it train.csv "
                "(or .jsonl/.parquet), with validation.* or test.* beside it for evaluation"
            )
    for f in filter(None, (train_file, eval_file)):
        if not under_roots(f, local_roots):
            raise ConfigError(
                f"dataset: {f.name} in {path.name} links outside the allowed data folders "
                f"({roots_text(local_roots)}); copy the file in instead of linking it"
            )
    digest = hashlib.sha256()
    for f in filter(None, (train_file, eval_file)):
        digest.update(f"{f.relative_to(path) if path.is_dir() else f.name}\0".encode())
        with f.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    train = read_file(train_file)
    held_out = read_file(eval_file) if eval_file is not None else None
    return train, held_out, f"local:{path}#sha256:{digest.hexdigest()}"


def _read_json(path: Path) -> pa.Table:
    try:
        return pa_json.read_json(path)  # JSON Lines
    except pa.ArrowInvalid:
        if path.suffix.lower() != ".json":
            raise
    records = json.loads(path.read_text(encoding="utf-8"))  # one JSON array of objects
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ConfigError(f"dataset: {path} must hold JSON Lines or one array of objects")
    return pa.Table.from_pylist(records)


def read_file(path: Path) -> datasets.Dataset:
    """One data file as a Dataset; unreadable, empty or non-UTF-8 files raise ConfigError."""
    suffix = path.suffix.lower()
    not_utf8 = ConfigError(f"dataset: {path} is not valid UTF-8 text; re-save it as UTF-8")
    try:
        if suffix in (".csv", ".tsv"):
            table = pa_csv.read_csv(
                path,
                parse_options=pa_csv.ParseOptions(
                    delimiter="\t" if suffix == ".tsv" else ",", newlines_in_values=True
                ),
                # An empty cell is a missing value, not a text "" or a label "".
                convert_options=pa_csv.ConvertOptions(strings_can_be_null=True),
            )
        elif suffix == ".parquet":
            table = pq.read_table(path)
        else:
            table = _read_json(path)
    except ConfigError:
        raise
    except UnicodeDecodeError as err:
        raise not_utf8 from err
    except (pa.ArrowException, OSError, ValueError) as err:
        if "empty" in str(err).lower():
            raise ConfigError(f"dataset: {path} is empty; it needs a header and rows") from err
        if "utf8" in str(err).lower().replace("-", ""):
            raise not_utf8 from err
        raise ConfigError(
            f"dataset: could not read {path} ({_safe_reason(err)}); check that it is "
            f"{_FORMATS.get(suffix, 'a CSV, JSON Lines or Parquet file')}"
        ) from None
    if suffix in (".csv", ".tsv") and any(pa.types.is_binary(f.type) for f in table.schema):
        raise not_utf8  # the CSV reader keeps undecodable columns as bytes
    if table.num_rows == 0:
        raise ConfigError(f"dataset: {path} has no rows")
    return file_dataset(table, path)


_FORMATS = {
    ".csv": "CSV with a header row",
    ".tsv": "tab-separated with a header row",
    ".jsonl": "JSON Lines (one object per line)",
    ".json": "JSON Lines or one array of objects",
    ".parquet": "a Parquet file",
}
# Parser messages that describe the problem without quoting the data: the others are replaced,
# because Arrow's CSV and JSON errors quote the offending row, and an error ends up in
# Temporal's history, MLflow and the app.
_SAFE_REASONS = (
    r"Expected \d+ columns, got \d+",
    r"Expecting [a-z ]+(?: delimiter)?: line \d+ column \d+ \(char \d+\)",
    r"Invalid value\. in row \d+",
    r"Parquet magic bytes not found",
)


def _safe_reason(err: BaseException) -> str:
    for pattern in _SAFE_REASONS:
        found = re.search(pattern, str(err))
        if found:
            return found.group(0)
    return type(err).__name__


def file_dataset(table: pa.Table, path: Path) -> datasets.Dataset:
    """Wrap rows read from `path`. The fingerprint comes from the file's identity because by
    default `datasets` pickles the whole table to make one (a quarter second for IMDB)."""
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return datasets.Dataset(table, fingerprint=hashlib.sha256(key.encode()).hexdigest()[:16])

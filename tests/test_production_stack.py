"""The deployment of deploy/compose.yaml, on this machine (harness.stack): MLflow on PostgreSQL
with its artifacts in an S3-compatible store (moto), the same store holding the checkpoints,
Temporal, two training workers with a disk each, the eval worker and the app, each run with
its compose service's own command and environment.

`make test` runs the bounded part: the servers, and a model trained into the S3 checkpoint
store, registered on MLflow (rows in PostgreSQL, files in S3) and served from the registry.
The whole stack, an experiment through the app with a training host killed mid-run, takes
minutes on a loaded 2-core machine: it is marked fault_full and runs with `make test-fault`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import psycopg2
import pyarrow.parquet as pq
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

import tracking
from harness.polling import poll
from harness.runs import HEARTBEAT_S, SHORT
from harness.stack import TRAINING_HOSTS, ProductionStack
from harness.synthetic import config, write_snapshot
from orchestration.ml.evaluation import evaluate
from orchestration.ml.remote_store import open_store
from orchestration.ml.training import train
from orchestration.types import RunConfig
from tracking.client import client

# A progress query the app could not answer in time (a worker busy or dying): not yet.
BUSY = (AppError,)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProductionStack]:
    """The servers up (the tests start the workers and the app when they need them); the
    process running the tests gets the workers' object-store credentials."""
    built = ProductionStack(tmp_path_factory.mktemp("production-stack"))
    worker_env = built.env("training-worker-cpu")
    credentials = {k: v for k, v in worker_env.items() if k.startswith("AWS_")}
    with pytest.MonkeyPatch.context() as env:
        for name, value in credentials.items():
            env.setenv(name, value)
        try:
            built.start_servers()
            print(f"\nservers up: { {k: round(v, 1) for k, v in built.figures.items()} }")
            yield built
        finally:
            built.stop()


@pytest.fixture
def tracking_uri(stack: ProductionStack) -> Iterator[str]:
    """mlflow's module-level tracking URI pointed at the stack for one test, then restored."""
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(stack.loopback.mlflow)
    yield stack.loopback.mlflow
    mlflow.set_tracking_uri(before)


def _rows(stack: ProductionStack, query: str, *args: object) -> list[tuple]:
    """Rows of a query on MLflow's PostgreSQL database."""
    with psycopg2.connect(stack.postgres.dsn) as conn, conn.cursor() as cur:
        cur.execute(query, args)
        return cur.fetchall()


def _keys(stack: ProductionStack, bucket: str, prefix: str) -> list[str]:
    pages = stack.s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def _registered_in_postgres_and_s3(stack: ProductionStack, run_id: str, model_uri: str) -> None:
    """The run and its model version are rows of PostgreSQL; the run's artifacts went through
    the server (mlflow-artifacts:/) into the compose file's artifact bucket."""
    name, version = model_uri.removeprefix("models:/").split("/")
    assert _rows(stack, "SELECT status FROM runs WHERE run_uuid = %s", run_id) == [("FINISHED",)]
    assert _rows(
        stack,
        "SELECT run_id FROM model_versions WHERE name = %s AND version = %s",
        name,
        int(version),
    ) == [(run_id,)]
    artifact_uri = client(stack.loopback.mlflow).get_run(run_id).info.artifact_uri
    assert artifact_uri.startswith("mlflow-artifacts:/"), artifact_uri
    keys = _keys(stack, stack.artifact_bucket, "")
    assert any(k.endswith(f"{run_id}/artifacts/model/MLmodel") for k in keys), keys


def test_model_trained_into_s3_is_registered_on_postgres_and_served(stack, tracking_uri, tmp_path):
    """A run trains with the checkpoint store of the compose file (s3://bertfleet/checkpoints),
    is logged and registered on MLflow, and `mlflow.pyfunc` loads the registered version from
    the store and scores the eval split as the trained folder did."""
    # The compose file makes both buckets it uses.
    assert {stack.artifact_bucket, stack.checkpoint_bucket} <= set(stack.buckets)
    cfg = stack.settings("trainer-host")
    store = open_store(cfg.checkpoint_root, cfg.checkpoint_work_dir, **cfg.checkpoint_store_options)
    snapshot = write_snapshot(tmp_path / "snapshot")
    result = train(config(epochs=1), snapshot, store, "bounded/run")
    assert result.model_uri == f"{cfg.checkpoint_store}/bounded/run/final"
    stored = _keys(stack, stack.checkpoint_bucket, "")
    assert any(k.endswith("bounded/run/final/model.safetensors") for k in stored), stored
    folder = store.local_copy(result.model_uri)
    metrics = evaluate(folder, snapshot, device="cpu")

    uri, experiment = stack.loopback.mlflow, "production-shaped"
    exp_id, parent = tracking.open_experiment(uri, experiment, "tid-1", cfg.temporal_ui_url, ["t"])
    run_id = tracking.open_config_run(
        uri, exp_id, parent, RunConfig(name="t"), "tid-1", "t-train", "t-eval", cfg.temporal_ui_url
    )
    tags = tracking.version_tags("t", "tid-1", metrics, None)
    model_uri = tracking.log_model(uri, run_id, folder, experiment, tags, 32)
    tracking.finish_run(uri, run_id, "FINISHED", None)
    _registered_in_postgres_and_s3(stack, run_id, model_uri)

    rows = pq.read_table(Path(snapshot) / "eval.parquet").to_pandas()
    served = mlflow.pyfunc.load_model(model_uri).predict(pd.DataFrame({"text": rows["text"]}))
    labels = [metrics.label_names.index(label) for label in served["label"]]
    accuracy = sum(a == b for a, b in zip(labels, rows["label"], strict=True)) / len(rows)
    assert metrics.accuracy is not None and accuracy == pytest.approx(metrics.accuracy, abs=1e-9)


def _wait_until_ended(app: Client, experiment_id: str, timeout_s: float) -> dict:
    def ended():
        progress = app.predict(experiment_id, api_name="/progress")
        return progress if progress["status"] != "running" else None

    return poll(ended, timeout_s, f"{experiment_id} to end", interval_s=1.0, retry_on=BUSY)


@pytest.mark.fault
@pytest.mark.fault_full
def test_experiment_survives_a_lost_training_host_and_serves_from_the_registry(stack, tracking_uri):
    """Through the app (behind its login): two configurations train on the two hosts; the host
    of the first is SIGKILLed once a checkpoint of it is in the store, and the other host
    resumes it from there. Both finish, are registered, and answer through the app's /predict
    and through mlflow.pyfunc from the registry alike."""
    stack.start_processes()
    print(f"\nstack up: { {k: round(v, 1) for k, v in stack.figures.items()} }")
    app = Client(stack.app.url, auth=stack.app_auth, verbose=False) if stack.app else None
    assert app is not None
    poll(lambda: "✓ workers" in app.predict(api_name="/health"), 60, "the workers to poll")
    runs = [  # 720 rows / 16 = 45 steps an epoch, 90 in all, a checkpoint every 10
        {"name": name, **SHORT, "max_train_samples": 720, "seed": seed}
        for name, seed in (("first", 3), ("second", 4))
    ]
    req = {"name": "production-stack", "heartbeat_timeout_s": HEARTBEAT_S, "runs": runs}
    began = time.monotonic()
    experiment_id = app.predict(json.dumps(req), api_name="/launch")["experiment_id"]

    watcher = stack.settings("watcher")
    store = open_store(
        watcher.checkpoint_root, watcher.checkpoint_work_dir, **watcher.checkpoint_store_options
    )

    def first_checkpointed() -> tuple[str, int] | None:
        """The first configuration's host, once a checkpoint of it is in the store (its
        progress names a checkpoint as soon as it is written, before the upload ends)."""
        training = app.predict(experiment_id, api_name="/progress")["runs"][0]["training"] or {}
        stored = store.latest(f"{experiment_id}/first")
        return (training["worker"], stored.step) if training.get("worker") and stored else None

    lost, stored_step = poll(first_checkpointed, 240, "a checkpoint in the store", retry_on=BUSY)
    stack.training[lost].kill()
    (survivor,) = set(TRAINING_HOSTS) - {lost}
    progress = _wait_until_ended(app, experiment_id, 400)
    experiment_s = time.monotonic() - began
    print(f"experiment (2 configurations, a host lost): {experiment_s:.0f}s")

    assert progress["status"] == "completed", progress
    first, second = progress["runs"]
    assert [r["status"] for r in progress["runs"]] == ["completed", "completed"], progress
    assert first["training"]["worker"] == survivor and first["training"]["attempt"] >= 2
    assert first["training"]["resumed_from_step"] >= stored_step >= 10, first["training"]
    # The survivor trained the second too. Not asserted: that it did so in one attempt (once,
    # at a load average of 23, it took two; most likely a 4 s heartbeat missed on the starved
    # machine, since a training worker takes one task at a time).
    assert second["training"]["worker"] == survivor, second["training"]
    assert first["training"]["step"] == second["training"]["step"] == 90

    result = app.predict(experiment_id, api_name="/result")
    texts = ["A moving, beautifully acted film.", "Dull and far too long."]
    for run in result["runs"]:
        _registered_in_postgres_and_s3(stack, run["mlflow_run_id"], run["model_uri"])
        answer = app.predict(run["model_uri"], texts, api_name="/predict")["predictions"]
        by_app = [max(scores, key=lambda s: s["score"])["label"] for scores in answer]
        served = mlflow.pyfunc.load_model(run["model_uri"]).predict(pd.DataFrame({"text": texts}))
        assert by_app == list(served["label"]), (answer, served)
    champion = app.predict("models:/production-stack@champion", texts, api_name="/predict")
    assert len(champion["predictions"]) == 2
    assert not stack.training[survivor].died

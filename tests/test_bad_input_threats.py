"""The bad-input catalogue, continued (tests/test_bad_input.py): the threat model of
docs/reliability.md, class by class. Each case answers within seconds, names the field, is not
retried when no retry can succeed, and leaks nothing (no file contents, no raw OSError text).

- numbers, texts and names at the edge: NaN and infinities in every numeric field (nested and
  output models too), invisible texts, control characters and over-long name parts; the app's
  JSON launch and table;
- model URIs: nothing but this deployment's models, refused before any connection (request,
  app, workflow input, eval worker);
- files: snapshot storage errors probed like checkpoints (read-only, full);
- payloads: per-class outputs, label lists and error texts bounded;
- capacity and cancel: predictions on threads of their own, cancel wins over a late
  recording, only experiments can be cancelled, the app refuses a non-loopback address
  without a login.

Security checks (no remote code, safe unpickling, servers on loopback) are tests/test_security.py.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any, get_args

import psutil
import pytest
from mlflow import MlflowClient
from pydantic import ValidationError
from temporalio.client import WorkflowFailureError
from temporalio.testing import ActivityEnvironment
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

import tracking
from demo.__main__ import is_loopback
from demo.backend import Backend
from demo.configs import LaunchRefused, parse_launch_input
from demo.service import Service
from harness.processes import settings_env
from harness.runs import SHORT
from harness.synthetic import snapshot_record
from harness.temporal import workers
from orchestration.activities.evaluation import EvalActivities
from orchestration.activities.tracking import RecordingStopped, record_eval
from orchestration.client import NotAnExperiment, cancel_experiment, connect
from orchestration.ml.errors import ConfigError, StorageError
from orchestration.ml.local_files import resolve_local
from orchestration.ml.model_catalog import describe_model, minilm_path
from orchestration.ml.snapshot import make_snapshot
from orchestration.servers import free_port
from orchestration.settings import REPO_ROOT, Settings
from orchestration.timeouts import EVAL_WORKER_SLOTS
from orchestration.types import (
    MAX_CLASSES,
    MAX_ERROR_CHARS,
    MAX_REPORTED_CLASSES,
    EvalInput,
    EvalMetrics,
    ExperimentRequest,
    ExperimentResult,
    InferenceRequest,
    RunConfig,
    RunResult,
    TrainingProgress,
    TrainingResult,
    TrainingWorkflowInput,
    cap_error,
)
from orchestration.workflows import summarised_metrics
from tracking.runs import _label_names_param

GOOD_RUN = {"name": "a"}


def _numeric_fields(model) -> list[str]:
    return [
        name
        for name, field in model.model_fields.items()
        if {int, float} & ({field.annotation} | set(get_args(field.annotation)))
    ]


def _refused(model, payload: dict) -> str:
    started = time.perf_counter()
    with pytest.raises(ValidationError) as refused:
        model.model_validate(payload)
    assert time.perf_counter() - started < 1
    return str(refused.value)


# ---- numbers, texts and names at the edge -------------------------------------------------------

NON_FINITE = [float("nan"), float("inf"), float("-inf")]


@pytest.mark.parametrize("value", NON_FINITE, ids=["nan", "inf", "-inf"])
def test_every_numeric_field_refuses_nan_and_infinity(value):
    fields = _numeric_fields(RunConfig)
    assert {"learning_rate", "epochs", "warmup_ratio", "eval_fraction"} <= set(fields)
    for field in fields:
        message = _refused(ExperimentRequest, {"name": "x", "runs": [{**GOOD_RUN, field: value}]})
        assert f"runs.0.{field}" in message and "finite number" in message, (field, message)
    for field in _numeric_fields(ExperimentRequest):
        message = _refused(ExperimentRequest, {"name": "x", "runs": [GOOD_RUN], field: value})
        assert field in message and "finite number" in message, (field, message)
    message = _refused(
        InferenceRequest, {"model_uri": "models:/m/1", "texts": ["hi"], "max_length": value}
    )
    assert "max_length" in message and "finite number" in message
    # Nested in a workflow input, and in JSON as Temporal and the CLI carry it.
    message = _refused(
        TrainingWorkflowInput,
        {
            "experiment_id": "e",
            "experiment_name": "e",
            "config": {**GOOD_RUN, "learning_rate": value},
        },
    )
    assert "config.learning_rate" in message and "finite number" in message
    with pytest.raises(ValidationError, match="finite number"):
        ExperimentRequest.model_validate_json(
            '{"name": "x", "runs": [{"name": "a", "epochs": NaN}]}'
        )


def test_reports_carry_a_non_finite_number_as_unknown():
    """Progress and metrics come from workers: a diverged loss is reported as unknown (what
    JSON carries anyway), not as an error that would fail the heartbeat."""
    assert TrainingProgress(loss=float("nan"), step=3).loss is None
    assert EvalMetrics(loss=float("inf"), accuracy=0.5).loss is None


INVISIBLE = ["\u200b\u200c\u200d", "\ufeff", "\x00\x01", " \t\n", "\u2060\u0301"]


@pytest.mark.parametrize(
    "text", INVISIBLE, ids=["zero-width", "bom", "controls", "blank", "joiner-mark"]
)
def test_texts_must_hold_a_visible_character(text):
    message = _refused(InferenceRequest, {"model_uri": "models:/m/1", "texts": ["fine", text]})
    assert "texts[1] is empty (no visible character)" in message, message
    message = _refused(
        InferenceRequest,
        {"model_uri": "models:/m/1", "texts": ["a", "b"], "text_pairs": ["ok", text]},
    )
    assert "text_pairs[1] is empty" in message, message
    assert InferenceRequest(model_uri="models:/m/1", texts=["\u200bcaf\u00e9"]).texts


NAME_FIELDS = [
    "model",
    "dataset",
    "dataset_config",
    "dataset_revision",
    "text_field",
    "label_field",
]


@pytest.mark.parametrize("field", NAME_FIELDS)
def test_names_with_control_characters_or_overlong_parts_name_the_field(field):
    for value, expected in (
        ("reviews\x00.csv", "control character (U+0000)"),
        ("a\nb", "control character (U+000A)"),
        ("x" * 256 if field in ("model", "dataset") else "x" * 201, ""),
    ):
        message = _refused(ExperimentRequest, {"name": "x", "runs": [{**GOOD_RUN, field: value}]})
        assert f"runs.0.{field}" in message and expected in message, (value[:20], message)
        assert "Errno" not in message and "null byte" not in message


def test_workers_map_unusable_paths_to_field_named_errors(settings):
    """Behind the edge too (a name that was never validated): a ConfigError naming the field,
    not the raw OSError text ("[Errno 36] File name too long", "embedded null byte")."""
    for name, expected in (
        ("./bad\x00name.csv", "it contains a NUL character"),
        ("./" + "x" * 300 + ".csv", "a file or folder name in it is too long"),
    ):
        for field, check in (
            ("dataset", lambda n: resolve_local(n, settings.local_roots)),
            ("model", lambda n: describe_model(n, settings.local_roots)),
        ):
            with pytest.raises(ConfigError) as refused:
                check(name)
            message = str(refused.value)
            assert message.startswith(f"{field}: cannot use") and expected in message, message
            assert "Errno" not in message and "null byte" not in message


def test_app_json_launch_refuses_nan_and_infinity(settings):
    """JSON's NaN would otherwise read as a blank table cell, i.e. the default."""
    for value, shown in (("NaN", "learning_rate"), ("Infinity", "epochs")):
        text = f'{{"name": "x", "runs": [{{"name": "a", "{shown}": {value}}}]}}'
        with pytest.raises(LaunchRefused) as refused:
            parse_launch_input(text, settings)
        assert f"row 1, {shown}: must be a finite number" in str(refused.value)
    text = '{"name": "x", "heartbeat_timeout_s": -Infinity, "runs": [{"name": "a"}]}'
    with pytest.raises(LaunchRefused, match="experiment, heartbeat_timeout_s: must be a finite"):
        parse_launch_input(text, settings)


# ---- model URIs ----------------------------------------------------------------------------------

HOSTILE_URIS = [
    "http://198.51.100.7:5000/model",
    "https://example.com/model.tar",
    "file:///etc/passwd",
    "models://other-host/model/1",
    "runs://other-host/0123456789abcdef0123456789abcdef/model",
    "mlflow-artifacts://other-host/1/model",
    "dbfs:/models/x",
    "ftp://x/y",
    "models:/name/1/../../../etc",
    "runs:/not-a-run-id/model",
]
SERVED_URIS = [
    "models:/exp-run/3",
    "models:/exp-run@champion",
    "runs:/0123456789abcdef0123456789abcdef/model",
    "/data/checkpoints/experiment-x/a/final",
    "s3://bucket/prefix/experiment-x/a/final",
]


@pytest.mark.parametrize("uri", HOSTILE_URIS)
def test_model_uri_of_another_host_or_scheme_is_refused_at_the_edge(uri):
    message = _refused(InferenceRequest, {"model_uri": uri, "texts": ["hi"]})
    assert "model_uri" in message and "models:/<name>/<version>" in message, message


def test_served_model_uris_pass_the_edge():
    for uri in SERVED_URIS:
        assert InferenceRequest(model_uri=uri, texts=["hi"]).model_uri == uri


def test_app_refuses_a_hostile_model_uri_without_connecting(tmp_path):
    """The app's /predict (Service.predict) with Temporal nowhere: refused in under a second,
    so nothing was contacted, with the field named."""
    cfg = Settings(
        data_dir=tmp_path,
        local_roots_env=str(tmp_path),
        temporal_address=f"127.0.0.1:{free_port()}",
    )
    service = Service(Backend(cfg))
    for uri in HOSTILE_URIS[:3]:
        started = time.perf_counter()
        with pytest.raises(ValidationError, match="model_uri"):
            service.models.predict(uri, ["hi"])
        assert time.perf_counter() - started < 1


def test_workflow_input_and_eval_worker_refuse_what_the_edge_refuses(settings):
    """Raw workflow inputs (no client-side validation): another host's model URI, an
    object-store URI of a store this worker does not use, an experiment with a NaN. Each
    workflow fails within seconds naming the field (no workflow task retried until the
    timeout), and the worker connects nowhere."""

    async def scenario():
        async with workers(settings, roles=("eval",)) as client:
            outcomes = []
            for workflow, raw in (
                ("BertInferenceWorkflow", {"model_uri": "http://198.51.100.7/m", "texts": ["hi"]}),
                ("BertInferenceWorkflow", {"model_uri": "s3://someone-elses/m", "texts": ["hi"]}),
                ("CoordinatorWorkflow", {"name": "x", "runs": [{"name": "a", "epochs": "NaN"}]}),
            ):
                started = time.monotonic()
                with pytest.raises(WorkflowFailureError) as failed:
                    await client.execute_workflow(
                        workflow,
                        raw,
                        id=f"inference-hostile-{uuid.uuid4().hex[:8]}",
                        task_queue=settings.eval_queue,
                        execution_timeout=timedelta(seconds=60),
                    )
                outcomes.append((_root(failed.value), time.monotonic() - started))
            return outcomes

    outcomes = asyncio.run(scenario())
    for (message, seconds), field in zip(
        outcomes, ["model_uri", "model_uri", "runs.0.epochs"], strict=True
    ):
        assert field in message, message
        assert seconds < 15, (message, seconds)


def _root(err: BaseException) -> str:
    while (cause := getattr(err, "cause", None)) is not None:
        err = cause
    return str(err)


# ---- snapshot storage ----------------------------------------------------------------------------


def _mount_tmpfs(folder: Path, options: str) -> bool:
    """A tiny tmpfs at `folder`: honest EROFS / ENOSPC even for root (tests run as root)."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True
    )
    return done.returncode == 0


@pytest.mark.parametrize(
    "options,expected",
    [("ro,size=64k", "Read-only file system"), ("size=4k", "MB free")],
    ids=["read-only", "full"],
)
def test_snapshot_storage_errors_name_the_folder_and_the_fix(settings, tmp_path, options, expected):
    folder = tmp_path / "snapshots"
    if not _mount_tmpfs(folder, options):
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        started = time.monotonic()
        with pytest.raises(StorageError) as refused:
            make_snapshot(
                RunConfig(name="s", **SHORT), folder, settings.data_dir, settings.local_roots
            )
        seconds = time.monotonic() - started
    finally:
        subprocess.run(["umount", str(folder)], check=True)
    message = str(refused.value)
    assert message.startswith(f"snapshot store: cannot write to {folder}"), message
    assert expected in message and "BERTFLEET_DATA_DIR" in message, message
    assert seconds < 30, seconds


# ---- bounded payloads ----------------------------------------------------------------------------


def _metrics(classes: int) -> EvalMetrics:
    names = [f"class-{i:03d}-" + "x" * 90 for i in range(classes)]
    matrix = [[999_999] * classes for _ in range(classes)]
    return EvalMetrics(accuracy=0.5, macro_f1=0.5, confusion_matrix=matrix, label_names=names)


def test_per_class_outputs_and_errors_stay_far_below_the_payload_limit():
    """The worst case the limits allow: 32 configurations, each with MAX_CLASSES classes of
    100-character names, every count six digits, and a 10 MB error text. One evaluation's
    payload stays under 1 MB; the experiment's result (and its progress) under 200 KB."""
    full = _metrics(MAX_CLASSES)
    assert len(full.model_dump_json()) < 1_000_000
    small = _metrics(MAX_REPORTED_CLASSES)
    assert summarised_metrics(small) == small  # up to the limit, everything is kept
    kept = summarised_metrics(full)
    assert kept.confusion_matrix is None and kept.label_names == [] and kept.accuracy == 0.5
    error = cap_error("x" * 10_000_000)
    assert error is not None and len(error) <= MAX_ERROR_CHARS
    result = ExperimentResult(
        experiment_id="e",
        name="e",
        runs=[RunResult(name=f"r{i}", status="failed", eval=kept, error=error) for i in range(32)],
    )
    assert len(result.model_dump_json()) < 200_000
    param = _label_names_param(full.label_names)
    assert len(param) <= 6000 and json.loads(param)[-1].endswith("more")


def test_many_classes_reach_mlflow_as_json_without_an_image(settings):
    """At the class limit the whole matrix is logged as JSON in seconds; no image is drawn
    (65,536 annotated cells on a 15,000-pixel canvas)."""
    mlflow = MlflowClient(settings.mlflow_tracking_uri)
    run_id = mlflow.create_run(
        mlflow.create_experiment(f"classes-{uuid.uuid4().hex[:8]}")
    ).info.run_id
    started = time.monotonic()
    tracking.log_eval(settings.mlflow_tracking_uri, run_id, _metrics(MAX_CLASSES), step=1)
    seconds = time.monotonic() - started
    names = {a.path for a in mlflow.list_artifacts(run_id)}
    assert "confusion_matrix.json" in names and "confusion_matrix.png" not in names, names
    assert seconds < 30, seconds


# ---- capacity, cancel and the app's address ------------------------------------------------------


def _tiny_model(folder: Path) -> Path:
    """A tiny random classifier saved as train() saves one (safetensors, tokenizer)."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    labels: dict[str, Any] = {
        "num_labels": 2,
        "id2label": {0: "neg", 1: "pos"},
        "label2id": {"neg": 0, "pos": 1},
    }
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        **labels,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_predictions_answer_while_evaluations_hold_every_other_thread(settings, tmp_path):
    """Every thread evaluations and recordings use (the worker's pool and asyncio's default
    one) is held by work that does not end; a prediction still answers in seconds."""
    root = settings.local_roots[0] / f"predict-{tmp_path.name}"
    model = _tiny_model(root)
    acts = EvalActivities(settings)
    release = threading.Event()

    async def scenario():
        loop = asyncio.get_running_loop()
        default_threads = min(32, (psutil.cpu_count() or 1) + 4)
        held = [
            loop.run_in_executor(pool, release.wait, 120)
            for pool, count in ((acts._work_pool, EVAL_WORKER_SLOTS), (None, default_threads))
            for _ in range(count)
        ]
        try:
            started = time.monotonic()
            answer = await asyncio.wait_for(
                ActivityEnvironment().run(
                    acts.predict, InferenceRequest(model_uri=str(model), texts=["a fine film"])
                ),
                timeout=30,
            )
            return answer, time.monotonic() - started
        finally:
            release.set()
            await asyncio.gather(*held)

    answer, seconds = asyncio.run(scenario())
    assert {s.label for s in answer.predictions[0]} == {"neg", "pos"}
    assert seconds < 15, seconds


def _eval_input(model: Path, run_id: str, tmp_path: Path) -> EvalInput:
    snapshot = snapshot_record(str(tmp_path), ["neg", "pos"], train_rows=1, eval_rows=1)
    return EvalInput(
        config=RunConfig(name="late"),
        training=TrainingResult(model_uri=str(model), snapshot=snapshot, final_step=1),
        experiment_name=f"late-{uuid.uuid4().hex[:6]}",
        mlflow_run_id=run_id,
    )


def test_cancel_wins_over_a_late_recording(settings, tmp_path):
    """A recording that reaches MLflow after the run was marked KILLED registers nothing and
    leaves it KILLED; one whose activity was cancelled stops before registering."""
    model = _tiny_model(tmp_path / "model")
    mlflow = MlflowClient(settings.mlflow_tracking_uri)
    experiment = mlflow.create_experiment(f"late-{uuid.uuid4().hex[:8]}")
    killed, stopped = (mlflow.create_run(experiment).info.run_id for _ in range(2))
    mlflow.set_terminated(killed, "KILLED")
    metrics = EvalMetrics(accuracy=0.5)
    with pytest.raises(ConfigError, match="was ended KILLED"):
        record_eval(settings, _eval_input(model, killed, tmp_path), metrics)
    stop = threading.Event()
    stop.set()
    with pytest.raises(RecordingStopped):
        record_eval(settings, _eval_input(model, stopped, tmp_path), metrics, stop)
    assert mlflow.get_run(killed).info.status == "KILLED"
    assert mlflow.get_run(stopped).info.status == "RUNNING"
    for run_id in (killed, stopped):
        assert not mlflow.search_model_versions(f"run_id = '{run_id}'"), run_id
        assert "accuracy" not in mlflow.get_run(run_id).data.metrics


def test_only_an_experiment_can_be_cancelled(settings, tmp_path):
    """A training workflow's id, an unknown id: refused naming experiment_id, by the client
    functions the app calls and by the CLI (exit 1), and the workflow is left running."""
    other = f"not-an-experiment-{uuid.uuid4().hex[:8]}"

    async def scenario():
        client = await connect(settings)
        handle = await client.start_workflow(
            "CheckpointedBertTrainingWorkflow",
            TrainingWorkflowInput(
                experiment_id="e", experiment_name="e", config=RunConfig(name="a")
            ),
            id=other,
            task_queue=f"nobody-polls-{uuid.uuid4().hex[:6]}",
        )
        messages = []
        for target in (other, f"experiment-nope-{uuid.uuid4().hex[:8]}"):
            with pytest.raises(NotAnExperiment) as refused:
                await cancel_experiment(client, target)
            messages.append(str(refused.value))
        cli = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "orchestration.starter", "--cancel", other],
            cwd=REPO_ROOT,
            env=settings_env(settings),
            capture_output=True,
            text=True,
            timeout=120,
        )
        status = (await handle.describe()).status
        await handle.terminate("test over")
        return messages, cli, status

    messages, cli, status = asyncio.run(scenario())
    assert "experiment_id: 'not-an-experiment" in messages[0], messages
    assert "is a CheckpointedBertTrainingWorkflow, not an experiment" in messages[0]
    assert messages[1].startswith("experiment_id: no experiment"), messages
    assert cli.returncode == 1 and "not an experiment" in cli.stderr, cli.stderr
    assert status is not None and status.name == "RUNNING"


def test_app_refuses_to_listen_beyond_loopback_without_a_login(settings, tmp_path):
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "localhost", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.4", "my-host"))
    env = settings_env(
        settings,
        GRADIO_SERVER_NAME="0.0.0.0",
        GRADIO_SERVER_PORT=str(free_port()),
        BERTFLEET_APP_AUTH="",
    )
    done = subprocess.run(
        [sys.executable, "-m", "demo"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "GRADIO_SERVER_NAME=0.0.0.0" in done.stderr and "BERTFLEET_APP_AUTH" in done.stderr
    assert "Running on" not in done.stdout

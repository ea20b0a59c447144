"""What MLflow shows after real experiments, read back with MLflow's own client.

Each test drives the whole system (Temporal dev server, MLflow server, workers, tiny-bert on the
default built-in dataset) and then asserts on what a person would see in the MLflow UI: one
parent run with one child per configuration, complete loss curves, per-epoch and final
evaluation, the registered model, the dataset snapshot, and that neither a SIGKILLed worker nor
an MLflow outage leaves a gap or a duplicate in a curve.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

import tracking
from harness.polling import apoll
from harness.processes import settings_env, start_together, starter
from harness.runs import HEARTBEAT_S, SMOKE_TIMEOUT_S, TINY
from harness.synthetic import snapshot_record
from harness.temporal import handle_of, workers
from orchestration.activities.tracking import TrainingTracker, deliver_backlog
from orchestration.client import (
    connect,
    experiment_progress,
    experiment_result,
    predict,
    start_experiment,
)
from orchestration.settings import Settings
from orchestration.types import (
    CheckpointInfo,
    EvalInput,
    ExperimentRequest,
    InferenceRequest,
    RunConfig,
    Snapshot,
    TrainingResult,
    TrainInput,
)

SYSTEM_CPU = "system/cpu_utilization_percentage"


def _steps(c: MlflowClient, run_id: str, key: str) -> list[int]:
    """The steps of a metric's history in the order the server returns them."""
    return [m.step for m in c.get_metric_history(run_id, key)]


def _logging_steps(train_rows: int, batch_size: int, epochs: float, final_step: int) -> list[int]:
    """Where the Trainer logs `loss`: every logging_steps (about 100 points per curve)."""
    total = math.ceil(math.ceil(train_rows / batch_size) * epochs)
    assert total == final_step
    every = max(1, min(50, total // 100))
    return list(range(every, final_step + 1, every))


def _rates(history, figures) -> str:
    """Training speed (steps/s, from the points' own timestamps) before, during and after."""
    windows = [
        (0, figures["down_ms"]),
        (figures["down_ms"], figures["up_ms"]),
        (figures["up_ms"], math.inf),
    ]
    rates = []
    for start, end in windows:
        inside = [m for m in history if start <= m.timestamp < end]
        span = (inside[-1].timestamp - inside[0].timestamp) / 1000 if len(inside) > 1 else 0
        rates.append(f"{(inside[-1].step - inside[0].step) / span:.1f}" if span else "-")
    return ", ".join(rates)


def _config_runs(c: MlflowClient, mlflow_experiment_id: str, temporal_id: str):
    """(parent, {config name: child}) of one Temporal experiment, deleted runs included."""
    runs = c.search_runs(
        [mlflow_experiment_id],
        run_view_type=ViewType.ALL,
        filter_string=f"tags.`temporal.experiment_id` = '{temporal_id}'",
    )
    parents = [r for r in runs if r.data.tags.get("bertfleet.kind") == "experiment"]
    children = [r for r in runs if r.data.tags.get("bertfleet.kind") == "config"]
    assert len(parents) == 1 and len(parents) + len(children) == len(runs), runs
    by_name = {r.data.tags["bertfleet.config"]: r for r in children}
    assert len(by_name) == len(children), [r.info.run_name for r in children]
    return parents[0], by_name


def _workflow_types(settings: Settings, experiment_id: str) -> list[str]:
    """The registered types of the experiment's workflows as `temporal workflow list` shows them,
    sorted; each must have completed."""
    listing = subprocess.run(
        [
            str(Path(sys.executable).parent / "temporal"),
            "workflow",
            "list",
            "--address",
            settings.temporal_address,
            "--query",
            f"WorkflowId STARTS_WITH '{experiment_id}'",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=settings_env(settings),
    )
    assert listing.returncode == 0, listing.stderr
    rows = json.loads(listing.stdout)
    assert {r["status"] for r in rows} == {"WORKFLOW_EXECUTION_STATUS_COMPLETED"}, rows
    return sorted(r["type"]["name"] for r in rows)


def test_smoke_preset_is_fully_tracked(settings, worker_processes, tmp_path):
    """The README's path, `starter --preset smoke --wait --json` with workers running:
    `temporal workflow list` shows the coordinator and its children under their registered
    names, everything the MLflow UI shows, then inference from the registered model through the
    eval worker."""
    start_together(lambda: worker_processes("training"), lambda: worker_processes("eval"))
    began = time.monotonic()
    out = starter(settings, "--preset", "smoke", "--wait", "--json", timeout_s=SMOKE_TIMEOUT_S)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    print(f"\nsmoke preset took {time.monotonic() - began:.0f}s")
    assert [r["status"] for r in result["runs"]] == ["completed", "completed"]
    assert _workflow_types(settings, result["experiment_id"]) == [
        # The registered names of the original design, not the Python class names.
        "BertEvalWorkflow",
        "BertEvalWorkflow",
        "CheckpointedBertTrainingWorkflow",
        "CheckpointedBertTrainingWorkflow",
        "CoordinatorWorkflow",
    ]
    c = MlflowClient(settings.mlflow_tracking_uri)

    # The parent run: the Temporal experiment, FINISHED, linked to its workflow.
    exp = c.get_experiment_by_name("smoke")
    assert exp is not None and exp.experiment_id == result["mlflow_experiment_id"]
    parent, children = _config_runs(c, exp.experiment_id, result["experiment_id"])
    assert parent.info.run_id == result["mlflow_parent_run_id"]
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == result["experiment_id"]
    assert parent.data.tags["temporal.workflow_id"] == result["experiment_id"]
    assert parent.data.tags["temporal.ui"].endswith(f"/workflows/{result['experiment_id']}")
    assert parent.data.tags["bertfleet.configs"] == "tiny-lr5e-4,tiny-lr1e-3"

    # Exactly two children, FINISHED, tagged with their workflows, sharing one param key set.
    assert sorted(children) == ["tiny-lr1e-3", "tiny-lr5e-4"]
    params = [set(r.data.params) for r in children.values()]
    assert params[0] == params[1] and {"learning_rate", "snapshot_id", "train_rows"} <= params[0]
    assert {r.data.params["learning_rate"] for r in children.values()} == {"0.0005", "0.001"}
    for res in result["runs"]:
        run = children[res["name"]]
        run_id, tags, metrics = run.info.run_id, run.data.tags, run.data.metrics
        assert res["mlflow_run_id"] == run_id and run.info.run_name == res["name"]
        assert run.info.status == "FINISHED", (res["name"], run.info.status)
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["temporal.experiment_id"] == result["experiment_id"]
        assert tags["temporal.training_workflow_id"] == res["training_workflow_id"]
        assert tags["temporal.eval_workflow_id"] == res["eval_workflow_id"]
        assert tags["temporal.training_ui"].endswith(f"/workflows/{res['training_workflow_id']}")

        # A loss curve with a point at every logging step, and the optimizer's state beside it.
        p = run.data.params
        expected = _logging_steps(
            int(p["train_rows"]), int(p["batch_size"]), float(p["epochs"]), res["final_step"]
        )
        assert len(expected) >= 40
        for key in ("loss", "learning_rate", "grad_norm", "samples_per_second"):
            assert _steps(c, run_id, key) == expected, key
        assert all(m.value > 0 for m in c.get_metric_history(run_id, "samples_per_second"))

        # Per-epoch evaluation during training, then the final verdict at the last step, whose
        # values are the run's headline metrics and equal what Temporal returned.
        epoch_ends = [res["final_step"] // 2, res["final_step"]]
        assert sorted(set(_steps(c, run_id, "eval_accuracy"))) == epoch_ends
        ev = res["eval"]
        assert metrics["eval_accuracy"] == pytest.approx(ev["accuracy"], abs=1e-12)
        assert metrics["eval_macro_f1"] == pytest.approx(ev["macro_f1"], abs=1e-12)
        assert metrics["eval_loss"] == pytest.approx(ev["loss"], abs=1e-12)
        assert metrics["eval_samples"] == ev["num_samples"] == 160
        # The baseline a model must beat, and whether it answered one class only.
        assert metrics["majority_baseline"] == pytest.approx(ev["majority_baseline"], abs=1e-12)
        assert metrics["collapsed"] == float(ev["collapsed"])
        assert tags["bertfleet.collapsed"] == str(ev["collapsed"]).lower()

        # Checkpoints every 10 steps, the newest one's location as a tag.
        assert _steps(c, run_id, "checkpoint_step") == [10, 20, 30, 40]
        assert tags["checkpoint.latest"].endswith("checkpoint-40")

        # The snapshot as a dataset input (digest = snapshot id) and as params.
        (inp,) = run.inputs.dataset_inputs
        assert inp.dataset.digest == res["snapshot_id"] == p["snapshot_id"]
        assert inp.dataset.name == RunConfig.model_fields["dataset"].default
        profile = json.loads(inp.dataset.profile or "{}")
        eval_counts = profile["eval_label_counts"]
        assert sum(eval_counts.values()) == 160
        assert max(eval_counts.values()) / 160 == pytest.approx(ev["majority_baseline"])
        assert profile["removed"]["duplicates"] > 0 and "movie" in profile["description"]
        assert json.loads(p["schema.label_names"]) == ev["label_names"]

        # System metrics sampled while it trained (at least one point, even for a short run).
        assert any(k.startswith("system/") for k in metrics), sorted(metrics)
        assert SYSTEM_CPU in metrics

        # Artifacts: confusion matrix and the model folder, registered exactly once.
        artifacts = {a.path for a in c.list_artifacts(run_id)}
        expected_artifacts = {"confusion_matrix.json", "confusion_matrix.png", "model"}
        assert expected_artifacts | {"dataset_card.md", "dataset_card.json"} <= artifacts
        matrix = json.loads(
            Path(c.download_artifacts(run_id, "confusion_matrix.json", str(tmp_path))).read_text()
        )
        assert matrix["matrix"] == ev["confusion_matrix"]
        (version,) = c.search_model_versions(f"run_id = '{run_id}'")
        assert res["model_uri"] == f"models:/{version.name}/{version.version}"
        assert version.name == "smoke" and version.tags["config"] == res["name"]
        assert version.tags["experiment_id"] == result["experiment_id"]
        assert version.tags["dataset_snapshot"] == res["snapshot_id"]
        assert "movie-snippets" in version.tags["dataset_card"]  # the card travels with it
        assert tags["bertfleet.model_uri"] == res["model_uri"]

    # The champion: the configuration with the best macro-F1 (the first of equals), aliased.
    best = max(result["runs"], key=lambda r: r["eval"]["macro_f1"])
    assert result["champion"] == best["name"]
    champion = c.get_model_version_by_alias("smoke", "champion")
    assert f"models:/smoke/{champion.version}" == best["model_uri"]

    async def infer():
        client = await connect(settings)
        texts = ["A warm, funny and moving film.", "Dull, tedious and far too long."]
        uris = [r["model_uri"] for r in result["runs"]] + ["models:/smoke@champion"]
        return await asyncio.gather(
            *(
                predict(client, InferenceRequest(model_uri=uri, texts=texts), settings)
                for uri in uris
            )
        )

    *answers, through_alias = asyncio.run(infer())
    assert through_alias.model_uri == "models:/smoke@champion"
    assert through_alias.predictions == answers[result["runs"].index(best)].predictions
    for res, answer in zip(result["runs"], answers, strict=True):
        assert answer.model_uri == res["model_uri"] and len(answer.predictions) == 2
        for scores in answer.predictions:
            assert sorted(s.label for s in scores) == sorted(res["eval"]["label_names"])
            assert sum(s.score for s in scores) == pytest.approx(1.0, abs=1e-5)
            assert [s.score for s in scores] == sorted((s.score for s in scores), reverse=True)


@pytest.mark.fault
@pytest.mark.fault_full
def test_killed_worker_leaves_one_complete_mlflow_run(settings, worker_processes):
    """SIGKILL the training worker after a checkpoint: the retry reattaches to the same MLflow
    run, whose loss curve ends up complete, strictly increasing, without duplicate steps."""
    cfg = RunConfig(name="victim", epochs=2, max_train_samples=640, seed=3, **TINY)  # 80 steps
    req = ExperimentRequest(name="mlflow-killed", heartbeat_timeout_s=HEARTBEAT_S, runs=[cfg])

    async def scenario():
        async with workers(settings, roles=("eval",)) as client:
            victim = worker_processes("training")
            exp_id = await start_experiment(client, req, settings)

            async def checkpointed():
                t = (await experiment_progress(client, exp_id)).runs[0].training
                return t.checkpoint.step if t and t.checkpoint and t.checkpoint.step >= 10 else 0

            killed_at = await apoll(checkpointed, 180, "a checkpoint at step >= 10")
            victim.kill()
            worker_processes("training")
            return killed_at, await experiment_result(client, exp_id)

    killed_at, result = asyncio.run(scenario())
    (res,) = result.runs
    assert res.status == "completed" and res.final_step == 80, res
    c = MlflowClient(settings.mlflow_tracking_uri)
    _, children = _config_runs(c, result.mlflow_experiment_id, result.experiment_id)
    assert list(children) == ["victim"]  # one run, reattached by the retry, none deleted
    run = children["victim"]
    assert run.info.run_id == res.mlflow_run_id and run.info.status == "FINISHED"
    loss = _steps(c, run.info.run_id, "loss")
    print(f"\nkilled after checkpoint {killed_at}; {len(loss)} loss points")
    assert loss == sorted(set(loss)), "loss steps must strictly increase"
    assert loss == list(range(1, 81)), "no point missing around the crash"
    ckpts = _steps(c, run.info.run_id, "checkpoint_step")
    assert ckpts == list(range(5, 81, 5))
    assert run.data.metrics["eval_accuracy"] == pytest.approx(res.eval.accuracy, abs=1e-12)


def _checkpoint_with_history(tmp_path: Path, step: int) -> CheckpointInfo:
    """A checkpoint folder whose trainer state logged loss and grad_norm at steps 1..step."""
    checkpoint = tmp_path / f"checkpoint-{step}"
    checkpoint.mkdir()
    history = [
        {"loss": float(s), "grad_norm": 0.5, "epoch": s / 10, "step": s} for s in range(1, step + 1)
    ]
    (checkpoint / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    return CheckpointInfo(uri=str(checkpoint), step=step, epoch=1.0)


def _snapshot(tmp_path: Path) -> Snapshot:
    return snapshot_record(str(tmp_path), snapshot_id="0123456789abcdef", dataset="local-rows")


def test_resumed_attempt_replays_points_the_crash_lost(settings, tmp_path):
    """A crashed attempt may die with points still buffered (here it delivered steps 1-6 and
    had checkpointed step 10); the retry resumes after step 10, so steps 7-10 exist only in the
    checkpoint's trainer state. The retry's tracker sends them, and nothing twice."""
    uri = settings.mlflow_tracking_uri
    cfg = RunConfig(name="replay")
    exp_id, parent = tracking.open_experiment(uri, "mlflow-replay", "tid-replay", "", [cfg.name])
    run_id = tracking.open_config_run(uri, exp_id, parent, cfg, "tid-replay", "t", "e", "")
    crashed = tracking.MetricsLogger(uri, run_id, flush_interval_s=0.2)
    for step in range(1, 7):
        crashed.log(step, {"loss": 100.0 + step})
    crashed.close()
    resumed = _checkpoint_with_history(tmp_path, 10)
    inp = TrainInput(
        config=cfg, snapshot=_snapshot(tmp_path), run_key="x/replay", mlflow_run_id=run_id
    )
    tracker = TrainingTracker(settings, inp, resumed)
    for step in range(11, 14):
        tracker.log(step, {"loss": float(step), "grad_norm": 0.5})
    assert tracker.close() is None
    c = MlflowClient(uri)
    loss = sorted((m.step, m.value) for m in c.get_metric_history(run_id, "loss"))
    assert loss == [(s, 100.0 + s) for s in range(1, 7)] + [(s, float(s)) for s in range(7, 14)]
    assert _steps(c, run_id, "grad_norm") == list(range(1, 14))
    assert _steps(c, run_id, "checkpoint_step") == [10]
    assert "checkpoint.latest" not in c.get_run(run_id).data.tags  # never this host's copy


def test_backlog_in_the_final_checkpoint_is_delivered_once(settings, tmp_path):
    """Training ended while MLflow was down (steps 1-4 had been delivered); the final checkpoint
    at step 12 holds every point. The eval activity delivers the rest, and nothing twice when
    it is retried."""
    uri = settings.mlflow_tracking_uri
    cfg = RunConfig(name="backlog", checkpoint_every_steps=5)
    exp_id, parent = tracking.open_experiment(uri, "mlflow-backlog", "tid-backlog", "", [cfg.name])
    run_id = tracking.open_config_run(uri, exp_id, parent, cfg, "tid-backlog", "t", "e", "")
    sent = tracking.MetricsLogger(uri, run_id, flush_interval_s=0.2)
    for step in range(1, 5):
        sent.log(step, {"loss": float(step)})
    sent.close()
    training = TrainingResult(
        model_uri=str(tmp_path),
        snapshot=_snapshot(tmp_path),
        final_step=12,
        tracking_error="MLflow: unreachable",
        metrics_backlog=_checkpoint_with_history(tmp_path, 12),
    )
    inp = EvalInput(config=cfg, training=training, experiment_name="x", mlflow_run_id=run_id)
    for _ in range(2):  # a retried activity
        deliver_backlog(settings, inp)
    c = MlflowClient(uri)
    assert _steps(c, run_id, "loss") == list(range(1, 13))
    assert _steps(c, run_id, "grad_norm") == list(range(1, 13))
    assert _steps(c, run_id, "checkpoint_step") == [5, 10, 12]
    assert c.get_run(run_id).data.params["snapshot_id"] == "0123456789abcdef"


async def _training_progress(client, exp_id: str):
    """The only run's training progress; None until it trains (or while a busy box leaves the
    query unanswered)."""
    t = (await experiment_progress(client, exp_id)).runs[0].training
    return t if t and t.total_steps else None


@pytest.mark.fault
@pytest.mark.fault_full
def test_mlflow_outage_during_training_loses_no_point(settings, worker_processes, mlflow_server):
    """Stop the MLflow server for ~30 s while a configuration trains, then start it again on the
    same port and data: training never waits, and every point reaches the server afterwards."""
    # 1125 steps, loss every 11: ~20 s on two quiet cores (the outage must fit inside
    # training), minutes on a busy machine.
    cfg = RunConfig(
        **{**TINY, "max_eval_samples": 200, "checkpoint_every_steps": 100},
        name="outage",
        epochs=3,
        max_train_samples=6000,
    )
    req = ExperimentRequest(name="mlflow-outage", runs=[cfg])
    c = MlflowClient(settings.mlflow_tracking_uri)
    figures: dict[str, float] = {}

    async def scenario():
        async with workers(settings, roles=("eval",)) as client:
            worker_processes("training")
            exp_id = await start_experiment(client, req, settings)

            training = functools.partial(_training_progress, client, exp_id)
            await apoll(training, 180, "training to start")
            run_id = (await experiment_progress(client, exp_id)).runs[0].mlflow_run_id
            assert run_id is not None  # opened before training started

            async def logged():
                return len(await asyncio.to_thread(_steps, c, run_id, "loss")) >= 3

            await apoll(logged, 60, "the first loss points in MLflow")
            await asyncio.to_thread(mlflow_server.stop)
            down_at, figures["down_ms"] = time.monotonic(), time.time() * 1000
            try:
                step_at_stop = (await apoll(training, 60, "training progress")).step

                async def outage_over():
                    # ~30 s, cut short if training would otherwise end during the outage.
                    t = await training()
                    return time.monotonic() - down_at >= 30 or t.step >= 0.7 * t.total_steps

                await apoll(outage_over, 120, "the outage to last 30 s")
                step_at_restart = await apoll(training, 60, "training progress")
            finally:
                await asyncio.to_thread(mlflow_server.start)
            back_at, figures["up_ms"] = time.monotonic(), time.time() * 1000
            figures["outage_s"] = back_at - down_at
            figures["steps_during_outage"] = step_at_restart.step - step_at_stop

            async def caught_up():
                steps = await asyncio.to_thread(_steps, c, run_id, "loss")
                return steps and steps[-1] >= step_at_restart.step - 5

            await apoll(caught_up, 90, "MLflow to catch up after the restart")
            figures["catch_up_s"] = time.monotonic() - back_at
            return step_at_restart, await experiment_result(client, exp_id)

    try:
        at_restart, result = asyncio.run(scenario())
    finally:
        if not mlflow_server.healthy():  # shared by other tests: leave it running
            mlflow_server.start()
    (res,) = result.runs
    assert res.status == "completed" and res.error is None, res
    assert at_restart.step < at_restart.total_steps, "the outage must fall inside training"
    # Training went on while the server was away: at least five loss points waited in the buffer.
    assert figures["steps_during_outage"] >= 25 and figures["outage_s"] >= 5, figures
    run = c.get_run(res.mlflow_run_id)
    assert run.info.status == "FINISHED"
    p = run.data.params
    expected = _logging_steps(int(p["train_rows"]), cfg.batch_size, cfg.epochs, res.final_step)
    history = c.get_metric_history(res.mlflow_run_id, "loss")
    loss = [m.step for m in history]
    print(
        f"\noutage {figures['outage_s']:.1f}s while training advanced "
        f"{figures['steps_during_outage']} steps; MLflow caught up {figures['catch_up_s']:.1f}s "
        f"after the restart; {len(loss)} loss points of {len(expected)} expected; "
        f"steps/s before, during, after: {_rates(history, figures)}"
    )
    assert loss == expected
    # Every 100 steps, and at the last step (1125).
    assert _steps(c, res.mlflow_run_id, "checkpoint_step") == [
        *range(100, res.final_step, 100),
        res.final_step,
    ]
    assert run.data.metrics["eval_accuracy"] == pytest.approx(res.eval.accuracy, abs=1e-12)
    assert mlflow_server.healthy()


# make test covers MLflow outages with tests/test_faults.py's down-at-start-and-mid-run case, and
# the eval's delivery of a backlog with test_backlog_in_the_final_checkpoint_is_delivered_once;
# this case also waits out the tracker's 30 s flush bound.
@pytest.mark.fault
@pytest.mark.fault_full
def test_mlflow_down_when_training_ends_loses_no_point(settings, worker_processes, mlflow_server):
    """MLflow stops as training starts and stays down until the training workflow has closed
    (its tracker gave up after 30 s): the evaluation retries until MLflow is back, delivers
    the backlog from the final checkpoint first, and the run ends complete, with no error."""
    cfg = RunConfig(
        **{**TINY, "checkpoint_every_steps": 50}, name="late", epochs=2, max_train_samples=3200
    )  # 400 steps
    req = ExperimentRequest(name="mlflow-late", runs=[cfg])

    async def scenario():
        async with workers(settings, roles=("eval",)) as client:
            worker_processes("training")
            exp_id = await start_experiment(client, req, settings)

            training = functools.partial(_training_progress, client, exp_id)
            await apoll(training, 180, "training to start")
            await asyncio.to_thread(mlflow_server.stop)
            try:
                at_stop = await apoll(training, 60, "training progress")
                run = (await experiment_progress(client, exp_id)).runs[0]
                trained = await handle_of(client, run.training_workflow_id).result()
            finally:
                await asyncio.to_thread(mlflow_server.start)
            return at_stop, trained, await experiment_result(client, exp_id)

    try:
        at_stop, trained, result = asyncio.run(scenario())
    finally:
        if not mlflow_server.healthy():
            mlflow_server.start()
    assert at_stop.step < at_stop.total_steps, "MLflow must go down before training ends"
    assert trained["metrics_backlog"]["step"] == trained["final_step"] == 400, trained
    (res,) = result.runs
    assert res.status == "completed" and res.error is None, res
    c = MlflowClient(settings.mlflow_tracking_uri)
    run = c.get_run(res.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.params["snapshot_id"] == res.snapshot_id
    expected = _logging_steps(
        int(run.data.params["train_rows"]), cfg.batch_size, cfg.epochs, res.final_step
    )
    assert _steps(c, res.mlflow_run_id, "loss") == expected
    assert _steps(c, res.mlflow_run_id, "checkpoint_step") == list(range(50, 401, 50))
    assert run.data.metrics["eval_accuracy"] == pytest.approx(res.eval.accuracy, abs=1e-12)

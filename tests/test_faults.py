"""Faults against real servers and worker processes: workers killed at exact points, the Temporal
server restarted, MLflow down, a checkpoint store that refuses writes, cancellation from the CLI
and the app (docs/reliability.md).

Each case asserts the same three things: every configuration ends as it should, exactly one
MLflow run exists per configuration, and the final metrics equal those of an uninterrupted run
of the same configuration (`harness.coherence.incoherence`). Kills are exact: workers freeze
themselves at a chosen point and the test SIGKILLs them there (`harness.fault_worker`);
`scripts/chaos.py` kills at random moments instead.

`make test` runs one case of each fault (a few minutes); the cases marked `fault_full` (each kill
point on its own run, a long Temporal outage) run with `make test-fault`.
Workers run at their default concurrency (two runs each): every training attempt has a process
of its own, so runs sharing a worker are still bit-for-bit reproducible.
"""

from __future__ import annotations

import asyncio
import functools
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from mlflow import MlflowClient
from temporalio.client import WorkflowExecutionStatus

import orchestration.client
from harness import fault_worker
from harness.coherence import (
    Expected,
    activity_attempts,
    activity_seconds,
    config_runs,
    incoherence,
    reference,
)
from harness.polling import apoll, poll
from harness.processes import AppProcess, WorkerProcess, start_together, starter
from harness.runs import HEARTBEAT_S, SHORT
from harness.servers import make_data_dir, mlflow_server, running, temporal_server
from harness.temporal import handle_of, training_histories, workers
from orchestration.client import connect, experiment_progress, experiment_result, start_experiment
from orchestration.ml.checkpoints import MARKER, CheckpointStore
from orchestration.settings import Settings
from orchestration.types import ExperimentRequest, ExperimentResult, RunConfig
from orchestration.workflows import TrainingWorkflow

pytestmark = pytest.mark.fault

# SHORT (harness.runs): 60 steps, a checkpoint every 10 steps, about 3 s of training.
# LONG: 400 steps, a checkpoint every 20: long enough to take a server away in the middle, even on a
# quiet machine (about 15 s).
LONG = {**SHORT, "max_train_samples": 1600, "epochs": 4, "checkpoint_every_steps": 20}


def assert_coherent(
    result: ExperimentResult, expected: dict[str, Expected], tracking_uri: str
) -> None:
    problems = incoherence(result, expected, tracking_uri)
    assert not problems, "\n".join(problems)


StartWorkers = Callable[..., list[WorkerProcess]]


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[StartWorkers]:
    """start(cfg, (role, plan), ...) starts fault workers (harness.fault_worker) side by side (a
    start takes seconds); they are killed at the end, their work being over by then."""
    started: list[WorkerProcess] = []

    def start(cfg: Settings, *specs: tuple[str, str | None]) -> list[WorkerProcess]:
        def one(role: str, plan: str | None, log: Path) -> WorkerProcess:
            worker = fault_worker.start(cfg, role, log, plan)
            started.append(worker)  # killed at the end even if a sibling failed to start
            return worker

        logs = [tmp_path / f"{role}-{len(started) + i}.log" for i, (role, _) in enumerate(specs)]
        return start_together(
            *(
                functools.partial(one, role, plan, log)
                for (role, plan), log in zip(specs, logs, strict=True)
            )
        )

    yield start
    for w in started:
        w.kill()


def isolated(settings: Settings, tmp_path: Path) -> Settings:
    """The test's settings with a data dir of its own (no snapshot or checkpoint is reused)."""
    return replace(settings, data_dir=make_data_dir(tmp_path / "data"))


# ---- 1. kills at exact points -------------------------------------------------------------------

# Where the attempt after a kill at each point resumes from (SHORT checkpoints every 10 steps).
RESUMES_FROM = {
    "snapshot": None,
    "early@3": None,
    "checkpoint-write@20": 10,
    "after-checkpoint@40": 40,
}


def _check_frozen_state(point: str, cfg: Settings, store: CheckpointStore, exp_id: str) -> None:
    """What the disk and MLflow hold at the moment of the kill: the premise of each case."""
    run_key = f"{exp_id}/victim"
    run_dir = store.run_dir(run_key)
    checkpoints = sorted(p.name for p in run_dir.glob("checkpoint-*"))
    if point == "snapshot":
        parts = list(cfg.snapshot_dir.iterdir())
        assert [p.name[:5] for p in parts] == [".tmp-"], parts
        assert (parts[0] / "train.parquet").is_file() and not (parts[0] / "snapshot.json").exists()
    elif point == "early@3":
        assert checkpoints == [], checkpoints
    elif point == "checkpoint-write@20":
        torn = run_dir / "checkpoint-20"
        assert (torn / "model.safetensors").is_file() and not (torn / MARKER).exists()
        assert (latest := store.latest(run_key)) and latest.step == 10
    elif point == "after-checkpoint@40":
        assert (latest := store.latest(run_key)) and latest.step == 40
    elif point == "eval":  # the coordinator is frozen with the eval worker: ask MLflow
        [run] = config_runs(MlflowClient(cfg.mlflow_tracking_uri), "kills", exp_id, "victim")
        assert "eval_accuracy" in run.data.metrics and run.info.status == "RUNNING"
        assert "bertfleet.model_uri" not in run.data.tags


def run_kills(
    settings: Settings, tmp_path: Path, start_worker, points: list[str], **fields
) -> None:
    """One configuration (SHORT, `fields` changed) whose workers are killed at `points`, in the
    order training reaches them. All workers start up front with the same plan, so a kill costs
    only the heartbeat timeout before another worker takes the next attempt."""
    cfg = isolated(settings, tmp_path)
    config = RunConfig(name="victim", **{**SHORT, **fields})
    expected = {"victim": reference(config, settings)}
    req = ExperimentRequest(name="kills", heartbeat_timeout_s=HEARTBEAT_S, runs=[config])
    train_kills = [p for p in points if p not in ("snapshot", "eval")]
    plan = ",".join(
        [f"{p}#{i + 1}" for i, p in enumerate(train_kills)]
        + [f"{p}#1" for p in points if p in ("snapshot", "eval")]
    )
    store = CheckpointStore(cfg.checkpoint_root)
    # One worker per kill, plus one of each role to finish the run.
    specs = [("training", plan)] * (len(points) - points.count("eval") + 1) + [("eval", plan)] * (
        points.count("eval") + 1
    )

    async def scenario():
        client = await connect(cfg)
        alive = await asyncio.to_thread(start_worker, cfg, *specs)
        exp_id = await start_experiment(client, req, cfg)
        for point in points:
            frozen = await apoll(
                lambda: [w for w in alive if w.frozen()], 180, f"a worker to freeze at {point}"
            )
            assert [w.role for w in frozen] == ["eval" if point == "eval" else "training"], point
            _check_frozen_state(point, cfg, store, exp_id)
            frozen[0].kill()
            alive.remove(frozen[0])
        result = await experiment_result(client, exp_id)
        run = result.runs[0]
        progress = await handle_of(client, run.training_workflow_id).query(
            TrainingWorkflow.progress
        )
        training = await handle_of(client, run.training_workflow_id).fetch_history()
        evaluation = await handle_of(client, run.eval_workflow_id).fetch_history()
        return result, progress, training, evaluation

    result, progress, training, evaluation = asyncio.run(scenario())
    assert_coherent(result, expected, cfg.mlflow_tracking_uri)
    assert activity_attempts(training, "snapshot") == [2 if "snapshot" in points else 1]
    assert activity_attempts(training, "train") == [len(train_kills) + 1]
    assert progress.attempt == len(train_kills) + 1
    assert progress.resumed_from_step == (RESUMES_FROM[train_kills[-1]] if train_kills else None)
    # A kill while recording retries the recording only: the evaluation is in the history.
    assert activity_attempts(evaluation, "evaluate_model") == [1]
    assert activity_attempts(evaluation, "record_eval") == [2 if "eval" in points else 1]
    assert not list(cfg.snapshot_dir.glob(".tmp-*"))  # a killed builder's half copy is gone


def test_worker_killed_at_every_stage_in_one_run(settings, tmp_path, start_worker):
    """The CI case: one run whose training worker is SIGKILLed a few steps in, while writing a
    checkpoint and right after one, then its eval worker while recording the evaluation."""
    run_kills(
        settings,
        tmp_path,
        start_worker,
        ["early@3", "checkpoint-write@20", "after-checkpoint@40", "eval"],
    )


@pytest.mark.fault_full
@pytest.mark.parametrize(
    "point", ["snapshot", "early@3", "checkpoint-write@20", "after-checkpoint@40", "eval"]
)
def test_worker_killed_at_one_point(settings, tmp_path, start_worker, point):
    run_kills(settings, tmp_path, start_worker, [point])


@pytest.mark.fault_full
def test_worker_killed_while_selecting_the_best_checkpoint(settings, tmp_path, start_worker):
    """With select_best_by the killed and resumed run publishes the uninterrupted run's best
    checkpoint: same eval metrics to the last bit."""
    kills = ["checkpoint-write@20", "after-checkpoint@40"]
    run_kills(settings, tmp_path, start_worker, kills, select_best_by="loss")


# ---- 2. the Temporal server restarted -----------------------------------------------------------


def _latest_steps(store: CheckpointStore, exp_id: str, names) -> dict[str, int]:
    return {n: (c.step if (c := store.latest(f"{exp_id}/{n}")) else 0) for n in names}


@pytest.mark.parametrize(
    "heartbeat_s",
    # blip's timeout leaves room for a checkpoint while the server is down on a busy machine
    # (20 steps of two runs; the bound is half the timeout); it costs nothing when all is well.
    [60, pytest.param(HEARTBEAT_S, marks=pytest.mark.fault_full)],
    ids=["blip", "outage"],
)
def test_temporal_restart_mid_experiment(settings, tmp_path, start_worker, heartbeat_s):
    """A dedicated dev server is stopped while two runs train and started again on the same
    database file; the workers ride it out and the results are unchanged.

    blip: back before the heartbeat timeout (60 s): training never stops (a checkpoint is
    written while the server is down) and each run needs a single attempt.
    outage: down for three heartbeat timeouts: a worker that cannot heartbeat cancels its own
    attempt after one timeout (the server must be assumed to have given up on it, and two
    attempts must never train at once), and after the restart each run resumes from its last
    checkpoint in a second attempt."""
    server = temporal_server(tmp_path / "temporal")
    cfg = replace(
        isolated(settings, tmp_path), temporal_address=server.address, temporal_ui_url=server.ui_url
    )
    configs = [RunConfig(name="a", **LONG), RunConfig(name="b", **{**LONG, "seed": 4})]
    expected = {c.name: reference(c, settings) for c in configs}
    req = ExperimentRequest(name="temporal-restart", heartbeat_timeout_s=heartbeat_s, runs=configs)
    store = CheckpointStore(cfg.checkpoint_root)
    with running(server):
        started = start_worker(cfg, ("training", None), ("training", None), ("eval", None))

        async def launch() -> str:
            client = await connect(cfg)
            exp_id = await start_experiment(client, req, cfg)

            async def both_checkpointed():
                return min(_latest_steps(store, exp_id, expected).values()) >= 20

            await apoll(both_checkpointed, 300, "both runs to checkpoint")
            return exp_id

        exp_id = asyncio.run(launch())
        server.stop()
        if heartbeat_s == HEARTBEAT_S:
            time.sleep(3 * heartbeat_s)  # the fault itself: an outage of this length
        else:
            down = _latest_steps(store, exp_id, expected)
            poll(
                lambda: all(s > down[n] for n, s in _latest_steps(store, exp_id, expected).items()),
                heartbeat_s / 2,
                "training to checkpoint while Temporal is down",
            )
        server.start()

        async def finish():
            client = await connect(cfg)
            result = await experiment_result(client, exp_id)
            return result, [
                await handle_of(client, r.training_workflow_id).fetch_history() for r in result.runs
            ]

        result, histories = asyncio.run(finish())
        assert not [w for w in started if w.died], "a worker died with the server"
    assert_coherent(result, expected, cfg.mlflow_tracking_uri)
    attempts = [activity_attempts(h, "train") for h in histories]
    assert attempts == ([[1], [1]] if heartbeat_s != HEARTBEAT_S else [[2], [2]]), attempts


# ---- 3. the MLflow server down ------------------------------------------------------------------


def test_mlflow_down_at_start_and_mid_run(settings, tmp_path, start_worker):
    """A dedicated MLflow server is down when the experiment starts (tracking waits for it,
    then the run trains tracked), and goes down again mid-run until training has ended: the
    metrics are buffered and arrive once it is back, and the attempt keeps heartbeating while
    it waits for them, so it is not mistaken for a dead one."""
    mlflow = mlflow_server(tmp_path / "mlflow")
    cfg = replace(isolated(settings, tmp_path), mlflow_tracking_uri=mlflow.url)
    config = RunConfig(name="tracked", **LONG)
    expected = {"tracked": reference(config, settings)}
    req = ExperimentRequest(name="mlflow-outage", heartbeat_timeout_s=HEARTBEAT_S, runs=[config])
    store = CheckpointStore(cfg.checkpoint_root)

    async def scenario():
        client = await connect(cfg)
        exp_id = await start_experiment(client, req, cfg)
        handle = client.get_workflow_handle(exp_id)

        async def open_experiment_failed():
            pending = (await handle.describe()).raw_description.pending_activities
            return any(
                a.activity_type.name == "open_experiment" and a.attempt >= 2 for a in pending
            )

        await apoll(open_experiment_failed, 60, "opening the MLflow experiment to fail")
        assert _latest_steps(store, exp_id, ["tracked"]) == {"tracked": 0}
        assert (await experiment_progress(client, exp_id)).runs[0].status == "queued"
        await asyncio.to_thread(mlflow.start)

        async def logging_to_mlflow():
            run_id = (await experiment_progress(client, exp_id)).runs[0].mlflow_run_id
            return run_id and MlflowClient(mlflow.url).get_metric_history(run_id, "loss")

        await apoll(logging_to_mlflow, 300, "loss points in MLflow")
        final = store.final_model_dir(f"{exp_id}/tracked") / MARKER
        assert not final.exists(), "training ended before the outage"
        await asyncio.to_thread(mlflow.stop)

        async def trained_while_down():
            return final.exists()

        await apoll(trained_while_down, 180, "training to end while MLflow is down")
        await asyncio.to_thread(mlflow.start)
        result = await experiment_result(client, exp_id)
        training = await handle_of(client, result.runs[0].training_workflow_id).fetch_history()
        return result, training

    try:
        start_worker(cfg, ("training", None), ("eval", None))
        result, training = asyncio.run(scenario())
        assert_coherent(result, expected, cfg.mlflow_tracking_uri)
    finally:
        mlflow.stop()
    assert result.runs[0].error is None, result.runs[0].error
    assert activity_attempts(training, "train") == [1]


# ---- 4. a checkpoint store that refuses writes --------------------------------------------------


def _mount_tmpfs(folder: Path, options: str) -> bool:
    """A tiny tmpfs at `folder`: honest EROFS / ENOSPC even for root, for that run only."""
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    return done.returncode == 0


def test_unwritable_or_full_checkpoint_store_fails_clearly_and_alone(
    settings, tmp_path, monkeypatch
):
    """A run whose checkpoint folder is read-only, and one whose disk is full, each fail with a
    message naming the folder and the fix after exactly 3 attempts; their sibling completes.

    Tests run as root, which ignores permission bits, so the folders are tmpfs mounts (read-only,
    64 KB). Where mounting is not permitted, a file stands where the folder should be instead,
    and the full-disk case is left out."""
    cfg = isolated(settings, tmp_path)
    good = RunConfig(name="good", **SHORT)
    expected = {"good": reference(good, settings)}
    exp_id = f"experiment-storage-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(orchestration.client, "experiment_id_for", lambda name: exp_id)
    store = CheckpointStore(cfg.checkpoint_root)
    readonly, full = store.run_dir(f"{exp_id}/readonly"), store.run_dir(f"{exp_id}/full")
    readonly.mkdir(parents=True)
    full.mkdir()
    mounted = [
        f for f, opts in ((readonly, "ro,size=64k"), (full, "size=64k")) if _mount_tmpfs(f, opts)
    ]
    if readonly not in mounted:
        readonly.rmdir()
        readonly.write_text("a file where the run's folder should be")
    runs = [good, RunConfig(name="readonly", **SHORT)]
    runs += [RunConfig(name="full", **SHORT)] if full in mounted else []
    req = ExperimentRequest(name="storage", heartbeat_timeout_s=HEARTBEAT_S, runs=runs)

    async def scenario():
        async with workers(cfg) as client:
            await start_experiment(client, req, cfg)
            result = await experiment_result(client, exp_id)
            histories, seconds = await training_histories(client, result.runs[1:])
            return result, histories, seconds

    try:
        result, histories, seconds = asyncio.run(scenario())
    finally:
        for folder in mounted:
            subprocess.run(["umount", str(folder)], check=True)
    good_result, *bad = result.runs
    assert_coherent(
        result.model_copy(update={"runs": [good_result]}), expected, cfg.mlflow_tracking_uri
    )
    mlflow = MlflowClient(cfg.mlflow_tracking_uri)
    for run in bad:
        assert run.status == "failed", run
        assert "checkpoint store: " in run.error and str(store.root) in run.error, run.error
        assert "BERTFLEET_CHECKPOINT_STORE" in run.error, run.error
        assert activity_attempts(histories[run.name], "train") == [3], run.name
        # The last attempt's refusal took seconds on its worker (end to end, the run also
        # waits out the retries' backoff and its queueing, which depend on the machine).
        ran = activity_seconds(histories[run.name], "train")
        assert len(ran) == 1 and ran[0] < 30, (run.name, ran, seconds)
        tracked = mlflow.get_run(run.mlflow_run_id)
        assert tracked.info.status == "FAILED" and "checkpoint store" in tracked.data.tags["error"]
    errors = {run.name: run.error for run in bad}
    if readonly in mounted:
        assert "Read-only file system" in errors["readonly"], errors
    if full in mounted:
        assert "MB free" in errors["full"], errors


# ---- 5. cancel from the CLI and from the app ----------------------------------------------------


def _training_processes() -> list[int]:
    """Run processes of this process (its in-process worker's) that have taken a job: the
    warm ones, still waiting for one, do not count."""
    from orchestration.ml import runner

    return [p.pid for p in list(runner._live) if p.has_job and p.alive()]


def test_cancel_from_cli_and_app_stops_training_within_seconds(settings, tmp_path):
    """Three long runs: one cancelled with `starter --cancel ID --run NAME`, one through the
    app's cancel_run endpoint, the rest with `starter --cancel ID`. Each training stops within
    seconds, MLflow says KILLED, and no training process or metrics thread keeps running."""
    from gradio_client import Client as AppClient

    cfg = replace(settings, max_concurrent_training=3)
    long = {**SHORT, "epochs": 50}  # 1500 steps: minutes, unless cancelled
    names = ("by-cli", "by-app", "the-rest")
    req = ExperimentRequest(
        name="cancel",
        heartbeat_timeout_s=HEARTBEAT_S,
        runs=[RunConfig(name=name, **{**long, "seed": i}) for i, name in enumerate(names)],
    )
    app = AppProcess(cfg, tmp_path / "app.log")

    async def scenario():
        async with workers(cfg) as client:
            exp_id = await start_experiment(client, req, cfg)

            async def steps() -> dict[str, int]:
                runs = (await experiment_progress(client, exp_id)).runs
                return {r.name: (r.training.step if r.training else 0) for r in runs}

            async def all_training():
                return min((await steps()).values()) >= 5

            async def cancelled_within(name: str) -> float:
                started = time.monotonic()
                handle = client.get_workflow_handle(f"{exp_id}--{name}--train")

                async def closed():
                    return (await handle.describe()).status == WorkflowExecutionStatus.CANCELED

                await apoll(closed, 60, f"{name} to stop")
                return time.monotonic() - started

            await apoll(all_training, 300, "all three runs to train")
            wrong = await asyncio.to_thread(starter, cfg, "--cancel", exp_id, "--run", "nope")
            assert wrong.returncode == 2 and "by-cli, by-app, the-rest" in wrong.stderr, wrong
            done = await asyncio.to_thread(starter, cfg, "--cancel", exp_id, "--run", "by-cli")
            assert done.returncode == 0, done.stderr
            took = {"by-cli": await cancelled_within("by-cli")}
            before = await steps()
            await asyncio.to_thread(
                AppClient(app.url, verbose=False).predict, exp_id, "by-app", api_name="/cancel_run"
            )
            took["by-app"] = await cancelled_within("by-app")

            async def rest_advanced():  # untouched: it trains on past the step it was at
                return (await steps())["the-rest"] > before["the-rest"]

            await apoll(rest_advanced, 60, "the untouched run to train on")
            rest = client.get_workflow_handle(f"{exp_id}--the-rest--train")
            assert (await rest.describe()).status == WorkflowExecutionStatus.RUNNING
            done = await asyncio.to_thread(starter, cfg, "--cancel", exp_id)
            assert done.returncode == 0, done.stderr
            took["the-rest"] = await cancelled_within("the-rest")
            result = await experiment_result(client, exp_id)
            await apoll(lambda: not _training_processes(), 30, "training processes to end")
            pending = [
                (
                    await handle_of(client, r.training_workflow_id).describe()
                ).raw_description.pending_activities
                for r in result.runs
            ]
            again = await asyncio.to_thread(starter, cfg, "--cancel", exp_id)
            return result, took, pending, again

    try:
        result, took, pending, again = asyncio.run(scenario())
    finally:
        app.stop()
    assert [r.status for r in result.runs] == ["cancelled"] * 3, result
    assert all(seconds < 20 for seconds in took.values()), took
    assert pending == [[], [], []]
    assert again.returncode == 1 and "already completed" in again.stderr, again.stderr
    mlflow = MlflowClient(cfg.mlflow_tracking_uri)
    assert [mlflow.get_run(r.mlflow_run_id).info.status for r in result.runs] == ["KILLED"] * 3
    assert mlflow.get_run(result.mlflow_parent_run_id).info.status == "KILLED"
    ids = tuple(r.mlflow_run_id[:8] for r in result.runs)
    poll(
        lambda: not [t for t in threading.enumerate() if t.name.endswith(ids)],
        30,
        "MLflow metrics threads of the runs to end",
    )
    print(f"cancel to stopped training, seconds: {took}")

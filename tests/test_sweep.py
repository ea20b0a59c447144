"""Sweeps end to end on real Temporal and MLflow servers, tiny-bert on real data (sweep-smoke).

One uninterrupted sweep (a module fixture) answers most questions: trials pruned at rungs end
pruned in the result and in MLflow, the best trial trained to max_steps ends with exactly the
metrics of its configuration trained straight through (an ordinary experiment), the parent run
names it, and the recorded history replays against the workflow code. The fault case runs the
same sweep from the CLI while its coordinator's and its trainer's workers are SIGKILLed, and
must end with the same trials, rung decisions and best trial (make test-fault). Two small
sweeps (3 trials, a few steps) check continue-as-new after every rung result, and cancelling a
whole sweep.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass

import pytest
from mlflow import MlflowClient
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from harness import servers
from harness.polling import apoll, poll
from harness.processes import WorkerProcess, settings_env
from harness.runs import HEARTBEAT_S
from harness.temporal import workers
from orchestration.client import connect, experiment_result, start_experiment
from orchestration.converter import data_converter
from orchestration.presets import sweep_preset
from orchestration.settings import REPO_ROOT, Settings
from orchestration.sweep.client import cancel_sweep, start_sweep, sweep_progress, sweep_result
from orchestration.sweep.space import trial_config
from orchestration.sweep.tracking import TAG_SWEEP_BEST, TAG_SWEEP_STATUS
from orchestration.sweep.types import Choice, SweepProgress, SweepRequest, SweepResult
from orchestration.sweep.workflow import SweepWorkflow
from orchestration.types import ExperimentRequest, RunConfig, RunResult
from orchestration.workers import build_worker

# A whole sweep-smoke: a minute or two on two quiet cores; ten times that on a machine shared with
# other test runs (load 20 on 2 cores), with room for the kills' timeouts.
SWEEP_TIMEOUT_S = 1200


@dataclass
class Smoke:
    settings: Settings
    result: SweepResult
    progress: SweepProgress
    history: WorkflowHistory
    reference: RunResult  # the best trial's configuration trained straight through
    best_searchable: set[str]  # workflows found by the sweep's and the best trial's names


@pytest.fixture(scope="module")
def smoke(data_dir, temporal_server, mlflow_server) -> Smoke:
    cfg = servers.stack_settings(
        data_dir, temporal_server, mlflow_server, queues=f"test-{uuid.uuid4().hex[:6]}"
    )
    req = sweep_preset("sweep-smoke")

    async def scenario() -> Smoke:
        async with workers(cfg) as client:
            sweep_id = await start_sweep(client, req, cfg)
            result = await sweep_result(client, sweep_id)
            progress = await sweep_progress(client, sweep_id)
            history = await client.get_workflow_handle(sweep_id).fetch_history()
            assert result.best is not None
            # Search attributes: the sweep with its outcome, a trial's rungs and evaluation by
            # the sweep's and the trial's names (visibility lags the events a little).
            query = (
                f"BertExperiment = '{req.name}' AND (BertStatus = 'completed' OR "
                f"BertConfig = '{result.best.name}')"
            )

            best_ids = {f"{sweep_id}--{result.best.name}--{s}" for s in ("r0", "r1", "r2", "eval")}

            async def searchable() -> set[str] | None:
                found = {
                    wf.id async for wf in client.list_workflows(query) if wf.id.startswith(sweep_id)
                }
                return found if found >= best_ids | {sweep_id} else None

            best_searchable = await apoll(searchable, 60, "the sweep's workflows searchable")
            best = next(t for t in progress.trials if t.name == result.best.name)
            straight = ExperimentRequest(
                name="sweep-straight", runs=[trial_config(req, best.name, best.params)]
            )
            exp_id = await start_experiment(client, straight, cfg)
            (reference,) = (await experiment_result(client, exp_id)).runs
            return Smoke(cfg, result, progress, history, reference, best_searchable)

    return asyncio.run(scenario())


# The module's sweep (the fixture) counts towards the first test's timeout.
@pytest.mark.timeout(SWEEP_TIMEOUT_S * 2)
def test_smoke_sweep_prunes_promotes_from_checkpoints_and_tracks(smoke: Smoke):
    req = sweep_preset("sweep-smoke")
    result, progress, history = smoke.result, smoke.progress, smoke.history
    statuses = [t.status for t in result.trials]
    assert len(statuses) == req.n_trials
    assert set(statuses) <= {"completed", "pruned"}, result
    assert statuses.count("completed") >= 1 and statuses.count("pruned") >= 6
    assert result.steps_full_budget == req.n_trials * req.max_steps
    assert result.steps_trained_total == sum(t.steps_trained for t in result.trials)
    assert result.steps_trained_total < 0.5 * result.steps_full_budget
    rungs = req.rungs()
    for trial in result.trials:
        assert trial.steps_trained == max(trial.rung_metrics)
        assert set(trial.rung_metrics) == set(rungs[: rungs.index(trial.steps_trained) + 1])
        assert (trial.eval is not None) == (trial.status == "completed")
    # The best trial, promoted from checkpoint to checkpoint, is its configuration trained
    # straight through: the same held-out metrics to the last digit.
    assert result.best is not None and result.best.eval is not None
    run = smoke.reference
    assert run.status == "completed" and run.eval is not None
    assert result.best.eval.model_dump() == run.eval.model_dump()
    assert progress.status == "completed" and progress.best == result.best.name
    # Found by search attributes: the sweep (completed), and the best trial's three rungs and
    # its evaluation, nothing of the other trials.
    sweep_id, best = result.experiment_id, result.best.name
    best_ids = {f"{sweep_id}--{best}--{s}" for s in ("r0", "r1", "r2", "eval")}
    assert smoke.best_searchable == best_ids | {sweep_id}

    mlflow = MlflowClient(smoke.settings.mlflow_tracking_uri)
    assert result.mlflow_parent_run_id is not None
    parent = mlflow.get_run(result.mlflow_parent_run_id)
    assert parent.data.tags[TAG_SWEEP_BEST] == result.best.name
    assert parent.info.status == "FINISHED"
    assert "leaderboard.json" in [a.path for a in mlflow.list_artifacts(parent.info.run_id)]
    by_name = {t.name: t for t in progress.trials}
    for trial in result.trials:
        tracked = mlflow.get_run(by_name[trial.name].mlflow_run_id or "")
        assert tracked.data.tags[TAG_SWEEP_STATUS] == trial.status
        assert tracked.info.status == "FINISHED"
        logged = mlflow.get_metric_history(tracked.info.run_id, f"sweep_{req.metric}")
        assert {m.step: m.value for m in logged} == trial.rung_metrics
    champion = mlflow.get_model_version_by_alias(req.name, "champion")
    assert champion.run_id == by_name[result.best.name].mlflow_run_id
    asyncio.run(
        Replayer(workflows=[SweepWorkflow], data_converter=data_converter).replay_workflow(history)
    )


def _decisions(result: SweepResult) -> list[tuple]:
    return [
        (t.name, t.status, sorted(t.params.items()), t.steps_trained, t.rung_metrics)
        for t in result.trials
    ]


@pytest.mark.fault
@pytest.mark.fault_full  # a second whole sweep: make test-fault
@pytest.mark.timeout(SWEEP_TIMEOUT_S * 2)
def test_sweep_survives_its_coordinator_and_trainer_being_killed(smoke: Smoke, settings, tmp_path):
    """The CLI runs sweep-smoke (as a --sweep file) on worker processes; once a few rungs are
    in, both workers are SIGKILLed and replaced. The sweep ends as the uninterrupted one did."""
    request = sweep_preset("sweep-smoke").model_copy(
        update={"name": "sweep-killed", "heartbeat_timeout_s": HEARTBEAT_S}
    )
    path = tmp_path / "sweep.json"
    path.write_text(request.model_dump_json())
    started = [
        WorkerProcess(settings, role, tmp_path / f"{role}-0.log") for role in ("training", "eval")
    ]
    err = tmp_path / "cli.err"
    with open(err, "w") as stderr:
        cli = subprocess.Popen(
            [sys.executable, "-m", "orchestration.starter", "--sweep", str(path), "--json"],
            cwd=REPO_ROOT,
            env=settings_env(settings),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        found = poll(lambda: re.search(r"started (sweep-\S+)", err.read_text()), 120, "the sweep")
        sweep_id = found[1]

        def rungs_in() -> int:
            async def count() -> int:
                progress = await sweep_progress(await connect(settings), sweep_id)
                return sum(len(t.rung_metrics) for t in progress.trials)

            try:
                return asyncio.run(count())
            except Exception:
                return 0

        poll(lambda: rungs_in() >= 4, SWEEP_TIMEOUT_S, "four rung results")
        for worker in started:
            worker.kill()
        started += [
            WorkerProcess(settings, role, tmp_path / f"{role}-1.log")
            for role in ("training", "eval")
        ]
        out, _ = cli.communicate(timeout=SWEEP_TIMEOUT_S)
    finally:
        cli.kill()
        for worker in started:
            worker.stop()
    assert cli.returncode == 0, err.read_text()[-4000:]
    killed = SweepResult.model_validate(json.loads(out))
    assert _decisions(killed) == _decisions(smoke.result)
    assert killed.best is not None and smoke.result.best is not None
    assert (killed.best.name, killed.best.eval) == (smoke.result.best.name, smoke.result.best.eval)
    assert killed.steps_trained_total == smoke.result.steps_trained_total


def three_trials(name: str, checkpoint_every_steps: int, max_steps: int, **extra) -> SweepRequest:
    """A small sweep on validation loss: three learning rates, one promoted past rung 2."""
    base = RunConfig(
        name="base",
        model="tiny-bert",
        max_length=32,
        max_train_samples=160,
        max_eval_samples=32,
        select_best_by="loss",
        validation_fraction=0.2,
        checkpoint_every_steps=checkpoint_every_steps,
        precision="fp32",
    )
    space = {"learning_rate": Choice(values=[3e-4, 1e-3, 3e-3])}
    return SweepRequest(
        name=name,
        base=base,
        space=space,
        sampler="grid",
        n_trials=3,
        eta=3,
        min_steps=2,
        max_steps=max_steps,
        metric="loss",
        **extra,
    )


def test_continue_as_new_carries_the_whole_sweep(settings):
    """A sweep that continues as new after every rung result (its history bounded to one) makes
    the decisions ASHA's rule gives: 3 trials, one promoted to the top, two pruned."""
    req = three_trials("sweep-can", checkpoint_every_steps=10, max_steps=6, continue_after_events=1)

    async def scenario():
        async with workers(settings) as client:
            sweep_id = await start_sweep(client, req, settings)
            result = await sweep_result(client, sweep_id)
            runs = [wf async for wf in client.list_workflows(f"WorkflowId = '{sweep_id}'")]
            return result, len(runs)

    result, runs = asyncio.run(scenario())
    # Run 1 trains trials 0 and 1 to the first rung (trial 2 waits for both results), run 2
    # samples and trains trial 2 (ASHA then promotes one), run 3 trains it to the top.
    assert runs == 3
    assert sorted(t.status for t in result.trials) == ["completed", "pruned", "pruned"]
    assert result.steps_trained_total == 3 * 2 + 4
    (done,) = [t for t in result.trials if t.status == "completed"]
    assert result.best is not None and result.best.name == done.name
    assert set(done.rung_metrics) == {2, 6} and done.eval is not None
    losses = {t.name: t.rung_metrics[2] for t in result.trials}
    assert done.name == min(losses, key=lambda name: losses[name] or float("inf"))


def test_cancelling_the_sweep_stops_its_trials_and_kills_its_runs(settings):
    """A sweep cancelled while its promoted trial trains: that trial ends cancelled (its MLflow
    run KILLED), the others as ASHA left them, and the result still names the best so far."""
    # The promoted trial trains on until cancelled.
    req = three_trials("sweep-cancel", checkpoint_every_steps=50, max_steps=5000)

    async def scenario():
        async with workers(settings) as client:
            sweep_id = await start_sweep(client, req, settings)

            async def promoted_trains() -> bool:
                p = await sweep_progress(client, sweep_id)
                return any(t.status == "running" and t.rung >= 1 for t in p.trials)

            await apoll(promoted_trains, SWEEP_TIMEOUT_S, "the promoted trial to train")
            await cancel_sweep(client, sweep_id)
            return await sweep_result(client, sweep_id), await sweep_progress(client, sweep_id)

    result, progress = asyncio.run(scenario())
    assert progress.status == "cancelled"
    assert sorted(t.status for t in result.trials) == ["cancelled", "pruned", "pruned"]
    (cancelled,) = [t for t in progress.trials if t.status == "cancelled"]
    assert result.best is not None and result.best.name == cancelled.name  # best so far
    mlflow = MlflowClient(settings.mlflow_tracking_uri)
    assert mlflow.get_run(cancelled.mlflow_run_id or "").info.status == "KILLED"
    assert mlflow.get_run(result.mlflow_parent_run_id or "").info.status == "KILLED"


def test_a_cancel_that_comes_with_the_end_of_its_rung_still_ends_the_trial(settings):
    """The coordinator is away while a trial's rung finishes training, and the trial's cancel
    comes before it is back: the sweep sees both at once. Cancelling the rung's task asks a
    child that has already completed, whose result then arrives as if nothing was asked; the
    trial must still end cancelled, not go on to be promoted or pruned."""
    req = three_trials("sweep-late-cancel", checkpoint_every_steps=10, max_steps=6)
    req = req.model_copy(update={"max_concurrent": 1})

    async def scenario() -> SweepResult:
        async with workers(settings, roles=("training",)) as client:
            async with build_worker(client, "eval", settings):  # the coordinator
                sweep_id = await start_sweep(client, req, settings)
                rung = client.get_workflow_handle(f"{sweep_id}--trial-000--r0")
                await apoll(rung.describe, SWEEP_TIMEOUT_S, "trial-000's first rung to start")
            await rung.result()  # trained while the coordinator was away
            await client.get_workflow_handle(sweep_id).signal(
                SweepWorkflow.cancel_trial, "trial-000"
            )
            async with build_worker(client, "eval", settings):
                return await sweep_result(client, sweep_id)

    result = asyncio.run(scenario())
    statuses = {t.name: t.status for t in result.trials}
    assert statuses["trial-000"] == "cancelled", statuses
    # The other two reach the first rung alone: fewer than eta, so the better one goes on.
    assert sorted(statuses.values()) == ["cancelled", "completed", "pruned"], statuses

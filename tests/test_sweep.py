"""Sweeps end to end on real Temporal and MLflow servers, tiny-bert on real data (sweep-smoke).

One sweep answers most questions: trials pruned at rungs end pruned in the result and in
MLflow, the best trial trained to max_steps ends with exactly the metrics of its configuration
trained straight through (an ordinary experiment), the parent run names it, and the recorded
history replays against the workflow code.
"""

from __future__ import annotations

import asyncio

from mlflow import MlflowClient
from temporalio.worker import Replayer

from harness.temporal import workers
from orchestration.client import experiment_result, start_experiment
from orchestration.converter import data_converter
from orchestration.presets import sweep_preset
from orchestration.sweep.client import start_sweep, sweep_progress, sweep_result
from orchestration.sweep.space import trial_config
from orchestration.sweep.tracking import TAG_SWEEP_BEST, TAG_SWEEP_STATUS
from orchestration.sweep.workflow import SweepWorkflow
from orchestration.types import ExperimentRequest


def test_smoke_sweep_prunes_promotes_from_checkpoints_and_tracks(settings):
    req = sweep_preset("sweep-smoke")

    async def scenario():
        async with workers(settings) as client:
            sweep_id = await start_sweep(client, req, settings)
            result = await sweep_result(client, sweep_id)
            progress = await sweep_progress(client, sweep_id)
            history = await client.get_workflow_handle(sweep_id).fetch_history()
            assert result.best is not None
            best = next(t for t in progress.trials if t.name == result.best.name)
            straight = ExperimentRequest(
                name="sweep-straight", runs=[trial_config(req, best.name, best.params)]
            )
            exp_id = await start_experiment(client, straight, settings)
            reference = await experiment_result(client, exp_id)
            return sweep_id, result, progress, history, reference

    sweep_id, result, progress, history, reference = asyncio.run(scenario())
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
    (run,) = reference.runs
    assert run.eval is not None
    assert result.best.eval.model_dump() == run.eval.model_dump()
    assert progress.status == "completed" and progress.best == result.best.name

    mlflow = MlflowClient(settings.mlflow_tracking_uri)
    parent = mlflow.get_run(result.mlflow_parent_run_id)
    assert parent.data.tags[TAG_SWEEP_BEST] == result.best.name
    assert parent.info.status == "FINISHED"
    assert "leaderboard.json" in [a.path for a in mlflow.list_artifacts(parent.info.run_id)]
    by_name = {t.name: t for t in progress.trials}
    for trial in result.trials:
        tracked = mlflow.get_run(by_name[trial.name].mlflow_run_id)
        assert tracked.data.tags[TAG_SWEEP_STATUS] == trial.status
        assert tracked.info.status == "FINISHED"
        logged = mlflow.get_metric_history(tracked.info.run_id, f"sweep_{req.metric}")
        assert {m.step: m.value for m in logged} == trial.rung_metrics
    champion = mlflow.get_model_version_by_alias(req.name, "champion")
    assert champion.run_id == by_name[result.best.name].mlflow_run_id
    asyncio.run(
        Replayer(workflows=[SweepWorkflow], data_converter=data_converter).replay_workflow(history)
    )

"""What an uninterrupted run ends with, and every way an experiment's result falls short of it.

`reference()` trains a configuration with the ML core alone, once per configuration;
`incoherence()` lists each difference between a result and those references (a status, a
metric, a second MLflow run, a loss step missing or logged twice, a second registered model).
The fault tests and scripts/chaos.py end with it: faults may cost time, never correctness.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run, ViewType
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory

from orchestration.ml import runner
from orchestration.ml.evaluation import evaluate
from orchestration.ml.snapshot import make_snapshot
from orchestration.ml.training import TrainingHooks
from orchestration.settings import Settings
from orchestration.types import EvalMetrics, ExperimentResult, RunConfig


@dataclass(frozen=True)
class Expected:
    final_step: int
    eval: EvalMetrics
    loss_steps: list[int]  # the steps at which training logged its loss


_references: dict[str, Expected] = {}


def reference(cfg: RunConfig, settings: Settings) -> Expected:
    """What an uninterrupted run of `cfg` ends with (computed once per configuration), trained
    the way a worker with `settings` trains it: in a run process of its own, with the same
    threads."""
    key = cfg.model_dump_json(exclude={"name"})
    if key not in _references:
        snapshot = make_snapshot(
            cfg, settings.snapshot_dir, settings.data_dir, settings.local_roots
        )
        steps: list[int] = []
        hooks = TrainingHooks(on_log=lambda step, m: steps.append(step) if "loss" in m else None)
        with tempfile.TemporaryDirectory() as tmp:
            job = runner.RunJob(
                config=cfg,
                snapshot_path=snapshot.path,
                run_key="reference/run",
                store_root=tmp,
                store_work_dir=Path(tmp) / "work",
                local_roots=settings.local_roots,
            )
            options = runner.RunnerOptions(
                threads=settings.threads_per_run, deterministic=settings.deterministic
            )
            result = runner.run_training(job, options, hooks)
            metrics = evaluate(result.model_uri, snapshot.path, cfg.max_length, device=cfg.device)
        _references[key] = Expected(result.final_step, metrics, steps)
    return _references[key]


def config_runs(mlflow: MlflowClient, experiment_name: str, exp_id: str, name: str) -> list[Run]:
    """Every MLflow run (deleted ones too) of configuration `name` of Temporal experiment
    `exp_id`."""
    found = mlflow.get_experiment_by_name(experiment_name)
    return (
        []
        if found is None
        else mlflow.search_runs(
            [found.experiment_id],
            run_view_type=ViewType.ALL,
            filter_string=f"tags.`temporal.experiment_id` = '{exp_id}' "
            f"and tags.`bertfleet.config` = '{name}'",
        )
    )


def incoherence(
    result: ExperimentResult, expected: dict[str, Expected], tracking_uri: str
) -> list[str]:
    """Every way `result` falls short of: each configuration completed with its reference's
    final step and metrics, tracked by exactly one FINISHED MLflow run whose loss curve has each
    of the reference's steps once and which registered one model version. [] when coherent."""
    problems: list[str] = []
    mlflow = MlflowClient(tracking_uri)
    if sorted(r.name for r in result.runs) != sorted(expected):
        return [f"configurations {[r.name for r in result.runs]}, expected {sorted(expected)}"]
    for run in result.runs:
        want = expected[run.name]
        if run.status != "completed":
            problems.append(f"{run.name}: {run.status} ({run.error})")
            continue
        if (run.final_step, run.eval) != (want.final_step, want.eval):
            problems.append(
                f"{run.name}: step {run.final_step}, {run.eval}; the reference: "
                f"step {want.final_step}, {want.eval}"
            )
        found = config_runs(mlflow, result.name, result.experiment_id, run.name)
        seen = [(r.info.run_id, r.info.status, r.info.lifecycle_stage) for r in found]
        if seen != [(run.mlflow_run_id, "FINISHED", "active")]:
            problems.append(f"{run.name}: MLflow runs {seen}, expected one FINISHED")
            continue
        run_id = found[0].info.run_id  # the result's own, as just checked
        if found[0].data.metrics.get("eval_accuracy") != want.eval.accuracy:
            problems.append(f"{run.name}: MLflow eval_accuracy {found[0].data.metrics}")
        steps = sorted(m.step for m in mlflow.get_metric_history(run_id, "loss"))
        if steps != want.loss_steps:
            problems.append(
                f"{run.name}: loss logged at steps {steps}, the reference at {want.loss_steps}"
            )
        versions = mlflow.search_model_versions(f"run_id = '{run_id}'")
        if len(versions) != 1:
            problems.append(f"{run.name}: {len(versions)} registered model versions")
    return problems


def activity_attempts(history: WorkflowHistory, activity_type: str) -> list[int]:
    """The attempt number of each recorded start of `activity_type` (the last attempt only is
    recorded for retried activities)."""
    scheduled = {
        e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    }
    return [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        and scheduled[e.activity_task_started_event_attributes.scheduled_event_id] == activity_type
    ]


_CLOSED = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "activity_task_completed_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: "activity_task_failed_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: "activity_task_timed_out_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED: "activity_task_canceled_event_attributes",
}


def activity_seconds(history: WorkflowHistory, activity_type: str) -> list[float]:
    """How long each recorded attempt of `activity_type` ran on its worker (started to closed):
    how fast a worker answered, whatever time the task waited in the queue for a free slot."""
    scheduled = {
        e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    }
    started = {
        e.event_id: e.event_time.ToDatetime()
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        and scheduled[e.activity_task_started_event_attributes.scheduled_event_id] == activity_type
    }
    return [
        (e.event_time.ToDatetime() - started[attributes.started_event_id]).total_seconds()
        for e in history.events
        if (name := _CLOSED.get(e.event_type))
        and (attributes := getattr(e, name)).started_event_id in started
    ]

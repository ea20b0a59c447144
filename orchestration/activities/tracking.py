"""MLflow as activities (eval queue) and as hooks the training/eval activities call in-process.

Run ids are created by the coordinator (activities below) and live in workflow state, so every
retry of training or evaluation reattaches to the same MLflow run instead of making another.
"""

from __future__ import annotations

import asyncio
import functools
import re

from temporalio import activity

from orchestration.settings import Settings
from orchestration.types import (
    EvalInput,
    EvalMetrics,
    FinishRunInput,
    OpenExperimentInput,
    OpenRunInput,
    TrainInput,
)
from tracking import runs
from tracking.buffer import MetricsLogger
from tracking.models import log_eval, log_model


def registered_model_name(experiment_name: str, config_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"{experiment_name}.{config_name}")


class TrackingActivities:
    def __init__(self, settings: Settings) -> None:
        self._uri = settings.mlflow_tracking_uri
        self._ui = settings.temporal_ui_url

    @activity.defn(name="open_experiment")
    async def open_experiment(self, inp: OpenExperimentInput) -> list[str]:
        ids = await asyncio.to_thread(
            runs.open_experiment, self._uri, inp.name, inp.experiment_id, self._ui, inp.config_names
        )
        return list(ids)

    @activity.defn(name="open_config_run")
    async def open_config_run(self, inp: OpenRunInput) -> str:
        return await asyncio.to_thread(
            runs.open_config_run, self._uri, inp.mlflow_experiment_id, inp.parent_run_id,
            inp.config, inp.experiment_id, inp.training_workflow_id, inp.eval_workflow_id, self._ui,
        )

    @activity.defn(name="finish_run")
    async def finish_run(self, inp: FinishRunInput) -> None:
        await asyncio.to_thread(runs.finish_run, self._uri, inp.run_id, inp.status, inp.error)


class TrainingTracker:
    """What the train activity logs for one run: snapshot, metrics, checkpoints, system load."""

    def __init__(self, settings: Settings, inp: TrainInput) -> None:
        assert inp.mlflow_run_id
        self._uri = settings.mlflow_tracking_uri
        self._run_id = inp.mlflow_run_id
        self.metrics = MetricsLogger(self._uri, self._run_id)
        self._system = runs_system_metrics(self._uri, self._run_id)

    def log_snapshot(self, inp: TrainInput, model_source: str) -> None:
        runs.log_snapshot(self._uri, self._run_id, inp.snapshot, model_source)

    def close(self) -> None:
        if self._system is not None:
            self._system.stop()
        self.metrics.close()


def runs_system_metrics(uri: str, run_id: str):
    from tracking.buffer import start_system_metrics

    return start_system_metrics(uri, run_id)


def record_eval(settings: Settings, inp: EvalInput, metrics: EvalMetrics) -> str:
    """Eval metrics and the final model into the run; returns the registered model's URI."""
    assert inp.mlflow_run_id
    uri = settings.mlflow_tracking_uri
    log_eval(uri, inp.mlflow_run_id, metrics)
    model_uri = log_model(
        uri, inp.mlflow_run_id, inp.training.model_uri,
        registered_model_name(inp.experiment_name, inp.config.name), metrics,
    )
    runs.finish_run(uri, inp.mlflow_run_id, "FINISHED")
    return model_uri


def eval_recorder(settings: Settings):
    return functools.partial(record_eval, settings)

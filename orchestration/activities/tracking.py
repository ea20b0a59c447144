"""MLflow as activities (eval queue), and the per-run tracker the train activity uses in-process.

Run ids are created by the coordinator (activities below) and live in workflow state, so every
retry of training or evaluation reattaches to the same MLflow run instead of making another.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from pathlib import Path

from temporalio import activity

import tracking
from orchestration.ml.errors import ConfigError
from orchestration.ml.model_catalog import describe_model
from orchestration.settings import Settings
from orchestration.types import (
    ChampionInput,
    CheckpointInfo,
    EvalInput,
    EvalMetrics,
    FinishRunInput,
    OpenExperimentInput,
    OpenRunInput,
    TrainingProgress,
    TrainInput,
)
from tracking.client import TAG_PRECISION, TAG_PRECISION_REASON


class TrackingActivities:
    def __init__(self, settings: Settings) -> None:
        self._uri = settings.mlflow_tracking_uri
        self._ui = settings.temporal_ui_url
        self._namespace = settings.temporal_namespace

    @activity.defn(name="open_experiment")
    async def open_experiment(self, inp: OpenExperimentInput) -> list[str]:
        ids = await asyncio.to_thread(
            tracking.open_experiment,
            self._uri,
            inp.name,
            inp.experiment_id,
            self._ui,
            inp.config_names,
            temporal_namespace=self._namespace,
        )
        return list(ids)

    @activity.defn(name="open_config_run")
    async def open_config_run(self, inp: OpenRunInput) -> str:
        return await asyncio.to_thread(
            tracking.open_config_run,
            self._uri,
            inp.mlflow_experiment_id,
            inp.parent_run_id,
            inp.config,
            inp.experiment_id,
            inp.training_workflow_id,
            inp.eval_workflow_id,
            self._ui,
            temporal_namespace=self._namespace,
        )

    @activity.defn(name="finish_run")
    async def finish_run(self, inp: FinishRunInput) -> None:
        await asyncio.to_thread(tracking.finish_run, self._uri, inp.run_id, inp.status, inp.error)

    @activity.defn(name="set_champion")
    async def set_champion(self, inp: ChampionInput) -> str:
        """Alias `champion` on the best configuration's registered version; its name ("" when
        none has a version to point at)."""
        found = await asyncio.to_thread(tracking.set_champion, self._uri, inp.runs, inp.metric)
        return found or ""


class TrainingTracker:
    """What one training attempt sends to its MLflow run. Never fails training: MLflow being
    down only delays the metrics (buffered, retried); `close()` reports what could not be sent.

    An attempt resumed from `resumed` (whose uri is the checkpoint's folder on this host) first
    replays the checkpoint's own log history: the crashed attempt may have died with its last
    points still buffered, and the Trainer does not log steps before the checkpoint again. The
    buffer drops what the server already holds, so the curves end up complete with no step
    twice.
    """

    def __init__(
        self,
        settings: Settings,
        inp: TrainInput,
        resumed: CheckpointInfo | None = None,
        memory: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        assert inp.mlflow_run_id
        self._uri = settings.mlflow_tracking_uri
        self._run_id = inp.mlflow_run_id
        self._metrics = tracking.MetricsLogger(self._uri, self._run_id)
        # True once close() found MLflow unreachable with points still buffered.
        self.undelivered = False
        if resumed is not None:
            _replay_checkpoint(self._metrics, resumed, inp.config.checkpoint_every_steps)
        # `memory`: the run process's own memory, next to the machine's in the system metrics.
        self._system = tracking.start_system_metrics(self._uri, self._run_id, extra=memory)
        self._inp = inp
        self._model_source = _model_source(settings, inp.config.model)
        self._snapshot_error: str | None = None
        self._precision: str | None = None
        self._log_snapshot()

    def _log_snapshot(self) -> None:
        """Params and dataset input; if MLflow is down now, `close()` tries again."""
        try:
            tracking.log_snapshot(self._uri, self._run_id, self._inp.snapshot, self._model_source)
            self._snapshot_error = None
        except Exception as err:  # training goes on; reported at close if still failing
            self._snapshot_error = f"snapshot params not logged: {err}"

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._metrics.log(step, metrics)

    def log_progress(self, progress: TrainingProgress) -> None:
        """Throughput as a curve (the Trainer itself logs only a whole-run average at the end),
        and the precision the run trains in as tags (an attempt on another machine may differ:
        tags, unlike params, can change)."""
        if progress.precision and progress.precision != self._precision:
            self._precision = progress.precision
            self._metrics.set_tags(
                {
                    TAG_PRECISION: progress.precision,
                    TAG_PRECISION_REASON: progress.precision_reason or "",
                }
            )
        if progress.samples_per_second is not None:
            self._metrics.log(progress.step, {"samples_per_second": progress.samples_per_second})

    def log_checkpoint(self, info: CheckpointInfo) -> None:
        self._metrics.log_checkpoint(info)

    def close(self) -> str | None:
        """Flush what is buffered; returns a message if anything could not be delivered."""
        self._system.stop()
        try:
            self._metrics.close()
        except tracking.TrackingError as err:
            self.undelivered = isinstance(err, tracking.TrackingUnavailable)
            return f"MLflow: {err}"
        if self._snapshot_error:
            self._log_snapshot()
        return self._snapshot_error


def _replay_checkpoint(
    metrics: tracking.MetricsLogger, checkpoint: CheckpointInfo, every: int
) -> None:
    """Queue what a checkpoint (its folder on this host) says was logged up to it: the Trainer's
    log history, and a checkpoint_step point per checkpoint (the Trainer saves at each multiple
    of the interval and at the last step; only the metric: the checkpoint.latest tag keeps the
    store's URI). The logger drops what the server already holds."""
    for step, values in _logged_history(checkpoint.uri):
        metrics.log(step, values)
    for step in [*range(every, checkpoint.step, every), checkpoint.step]:
        metrics.log(step, {"checkpoint_step": float(step)})


def _model_source(settings: Settings, model: str) -> str:
    try:
        spec = describe_model(model, settings.local_roots)
        return f"{spec.kind}:{spec.path}"
    except Exception:  # the model is checked again, with a clear error, by training
        return model


def deliver_backlog(settings: Settings, inp: EvalInput) -> None:
    """What training could not send because MLflow was down as it ended: its points, from the
    final checkpoint (`inp.training.metrics_backlog`, a folder on this host), and the snapshot
    params in case they never made it either. Raises TrackingUnavailable while MLflow is still
    away, so the activity retries later."""
    backlog = inp.training.metrics_backlog
    assert backlog and inp.mlflow_run_id
    tracking.log_snapshot(
        settings.mlflow_tracking_uri,
        inp.mlflow_run_id,
        inp.training.snapshot,
        _model_source(settings, inp.config.model),
    )
    metrics = tracking.MetricsLogger(settings.mlflow_tracking_uri, inp.mlflow_run_id)
    _replay_checkpoint(metrics, backlog, inp.config.checkpoint_every_steps)
    metrics.close(timeout_s=10)  # not longer: a retry of the activity tries again


def _logged_history(checkpoint_uri: str) -> list[tuple[int, dict[str, float]]]:
    """(step, metrics) of every log entry the Trainer saved in a checkpoint; [] if unreadable."""
    try:
        state = json.loads((Path(checkpoint_uri) / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return []
    return [
        (
            int(entry["step"]),
            {k: float(v) for k, v in entry.items() if k != "step" and isinstance(v, (int, float))},
        )
        for entry in state.get("log_history", [])
        if "step" in entry
    ]


class RecordingStopped(Exception):
    """The recording was cancelled (the run was cancelled while it was being recorded)."""


def record_eval(
    settings: Settings,
    inp: EvalInput,
    metrics: EvalMetrics,
    stop: threading.Event | None = None,
) -> str:
    """Eval metrics and the final model into the run, which then ends FINISHED.

    Returns the registered model's URI (`models:/<experiment>/<version>`). Cancel wins: before
    registering and before ending FINISHED it checks `stop` (set when the activity is
    cancelled) and the run's status, so a run already marked KILLED is never registered or
    turned FINISHED by a late recording.
    """
    assert inp.mlflow_run_id
    uri, run_id = settings.mlflow_tracking_uri, inp.mlflow_run_id

    def still_wanted(what: str) -> None:
        if stop is not None and stop.is_set():
            raise RecordingStopped(f"cancelled before {what}")
        if tracking.run_status(uri, run_id) == "KILLED":
            raise ConfigError(f"the MLflow run {run_id} was ended KILLED (cancelled); not {what}")

    still_wanted("recording the evaluation")
    if inp.training.metrics_backlog:
        deliver_backlog(settings, inp)
    # At the last training step: the epoch-end evaluations share these keys, and MLflow's
    # headline value of a key is the one at the highest step.
    tracking.log_eval(uri, run_id, metrics, step=inp.training.final_step)
    tracking.log_training_outcome(uri, run_id, inp.training)
    snapshot = inp.training.snapshot
    still_wanted("registering the model")
    model_uri = tracking.log_model(
        uri,
        run_id,
        inp.training.model_uri,
        tracking.registered_model_name(inp.experiment_name),
        tracking.version_tags(inp.config.name, inp.experiment_id, metrics, snapshot),
        max_length=inp.config.max_length,
        text_pair=snapshot.schema_.text_pair_field is not None,
    )
    still_wanted("ending the run FINISHED")
    tracking.finish_run(uri, run_id, "FINISHED")
    return model_uri

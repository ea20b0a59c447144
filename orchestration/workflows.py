"""Deterministic orchestration: no I/O, no clocks but workflow.now(), no ML here.

CoordinatorWorkflow  one experiment: opens its MLflow parent run, then per configuration runs
                     TrainingWorkflow and, as soon as that ends, EvalWorkflow. Configurations
                     are independent: one failing or being cancelled never touches the others.
                     Once all have ended, the best gets the registry alias `champion`.
TrainingWorkflow     snapshot -> train (heartbeating, resumable from its last checkpoint).
EvalWorkflow         evaluate the final model, then log metrics and register the model (two
                     activities: retrying the second never repeats the first).
InferenceWorkflow    one prediction, as a local activity on an eval worker that keeps models
                     loaded.

Versioning (orchestration.deployment): every workflow is pinned to the worker version it started
on, so a running experiment keeps its code through a rolling upgrade; only InferenceWorkflow
(one short activity, no state to replay) is marked AUTO_UPGRADE and moves to the current version.
The coordinator sets the search attributes of orchestration.search where the client could.

Temporal knows them by their registered names (what `temporal workflow list` shows and
`WorkflowType = '...'` queries match): CoordinatorWorkflow, CheckpointedBertTrainingWorkflow,
BertEvalWorkflow and BertInferenceWorkflow.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Literal

from temporalio import workflow
from temporalio.common import RetryPolicy, VersioningBehavior
from temporalio.exceptions import ActivityError, ChildWorkflowError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from orchestration.types import (
        MAX_REPORTED_CLASSES,
        ChampionInput,
        EvalInput,
        EvalMetrics,
        EvalResult,
        ExperimentProgress,
        ExperimentRequest,
        ExperimentResult,
        FinishRunInput,
        InferenceRequest,
        InferenceResult,
        OpenExperimentInput,
        OpenRunInput,
        RecordEvalInput,
        RunConfig,
        RunProgress,
        RunResult,
        Snapshot,
        SnapshotInput,
        TrainingProgress,
        TrainingResult,
        TrainingWorkflowInput,
        TrainInput,
        cap_error,
    )

from orchestration import search
from orchestration.timeouts import (
    EVAL_TIMEOUT,
    EVALUATE_MAX_ATTEMPTS,
    PREDICT_MAX_ATTEMPTS,
    PREDICT_TIMEOUT,
    RECORD_EVAL_MAX_ATTEMPTS,
    RETRY_MAX_INTERVAL,
    SNAPSHOT_MIN_HEARTBEAT_S,
    SNAPSHOT_TIMEOUT,
    TRACKING_MAX_ATTEMPTS,
    TRACKING_MAX_INTERVAL,
    TRACKING_TIMEOUT,
    TRAIN_TIMEOUT,
)

# Also the type of a payload that fails validation (orchestration.converter): a workflow whose
# input is bad fails at once, naming the field.
NON_RETRYABLE = ["ConfigError"]
MlflowStatus = Literal["FINISHED", "FAILED", "KILLED"]
# Tracking must not hold training hostage: bounded retries, then the run continues untracked
# and the result says why.
TRACKING_RETRY = RetryPolicy(
    maximum_interval=TRACKING_MAX_INTERVAL, maximum_attempts=TRACKING_MAX_ATTEMPTS
)


def _retry(attempts: int) -> RetryPolicy:
    """Backoff capped at 30 s; configuration errors are final."""
    return RetryPolicy(
        maximum_interval=RETRY_MAX_INTERVAL,
        maximum_attempts=attempts,
        non_retryable_error_types=NON_RETRYABLE,
    )


def root_message(err: BaseException) -> str:
    """The innermost cause's message: what actually went wrong, without Temporal's wrapping,
    capped so results and progress stay far below Temporal's payload limit."""
    while isinstance(err, (ChildWorkflowError, ActivityError)) and err.cause is not None:
        err = err.cause
    return cap_error(str(err) or type(err).__name__) or ""


def summarised_metrics(metrics: EvalMetrics) -> EvalMetrics:
    """The metrics as the experiment's progress and result keep them: per-class outputs only up
    to MAX_REPORTED_CLASSES (32 runs of a 256-class confusion matrix would approach Temporal's
    payload limit); MLflow holds the whole matrix either way."""
    if len(metrics.label_names) <= MAX_REPORTED_CLASSES and (
        metrics.confusion_matrix is None or len(metrics.confusion_matrix) <= MAX_REPORTED_CLASSES
    ):
        return metrics
    return metrics.model_copy(update={"confusion_matrix": None, "label_names": []})


@workflow.defn(
    name="CheckpointedBertTrainingWorkflow", versioning_behavior=VersioningBehavior.PINNED
)
class TrainingWorkflow:
    def __init__(self) -> None:
        self._progress = TrainingProgress()

    @workflow.run
    async def run(self, inp: TrainingWorkflowInput) -> TrainingResult:
        no_retry_config = _retry(inp.max_attempts)
        self._progress.phase = "snapshotting"
        snapshot: Snapshot = await workflow.execute_activity(
            "snapshot",
            SnapshotInput(config=inp.config),
            result_type=Snapshot,
            start_to_close_timeout=SNAPSHOT_TIMEOUT,
            heartbeat_timeout=timedelta(
                seconds=max(inp.heartbeat_timeout_s, SNAPSHOT_MIN_HEARTBEAT_S)
            ),
            retry_policy=no_retry_config,
        )
        self._progress.phase = "training"
        result: TrainingResult = await workflow.execute_activity(
            "train",
            TrainInput(
                config=inp.config,
                snapshot=snapshot,
                run_key=f"{inp.experiment_id}/{inp.config.name}",
                mlflow_run_id=inp.mlflow_run_id,
                stop_at_step=inp.stop_at_step,
            ),
            result_type=TrainingResult,
            # Training may legitimately take days; liveness comes from the short heartbeat
            # timeout, so a dead worker is noticed within seconds, not at the end.
            start_to_close_timeout=TRAIN_TIMEOUT,
            heartbeat_timeout=timedelta(seconds=inp.heartbeat_timeout_s),
            retry_policy=no_retry_config,
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        self._progress.phase = "done"
        self._progress.step = result.final_step
        return result

    @workflow.signal
    def report_progress(self, progress: TrainingProgress) -> None:
        """Sent by the train activity every few seconds. Signals may arrive out of order: a
        report is kept only if it comes from a newer attempt (which may legitimately restart
        from an earlier checkpoint step) or from the same attempt at the same or a later step."""
        current = self._progress
        if progress.attempt > current.attempt or (
            progress.attempt == current.attempt and progress.step >= current.step
        ):
            self._progress = progress.model_copy(update={"phase": current.phase})

    @workflow.query
    def progress(self) -> TrainingProgress:
        return self._progress


@workflow.defn(name="BertEvalWorkflow", versioning_behavior=VersioningBehavior.PINNED)
class EvalWorkflow:
    @workflow.run
    async def run(self, inp: EvalInput) -> EvalResult:
        # Evaluation and uploading the model heartbeat every few seconds, like training, so a
        # dead eval worker is noticed as fast as a dead training worker.
        heartbeat_timeout = timedelta(seconds=inp.heartbeat_timeout_s)
        metrics: EvalMetrics = await workflow.execute_activity(
            "evaluate_model",
            inp,
            result_type=EvalMetrics,
            start_to_close_timeout=EVAL_TIMEOUT,
            heartbeat_timeout=heartbeat_timeout,
            retry_policy=_retry(EVALUATE_MAX_ATTEMPTS),
        )
        if not inp.mlflow_run_id:
            return EvalResult(metrics=metrics, model_uri=inp.training.model_uri)
        # The metrics are in this workflow's history now: retrying the recording (MLflow down,
        # the worker lost mid-upload) never evaluates again, so it may retry for longer.
        model_uri: str = await workflow.execute_activity(
            "record_eval",
            RecordEvalInput(eval=inp, metrics=metrics),
            result_type=str,
            start_to_close_timeout=EVAL_TIMEOUT,
            heartbeat_timeout=heartbeat_timeout,
            retry_policy=_retry(RECORD_EVAL_MAX_ATTEMPTS),
            # Cancel wins over a late recording: the coordinator marks the run KILLED only
            # once this activity has stopped (it checks before registering and finishing).
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        return EvalResult(metrics=metrics, model_uri=model_uri)


@workflow.defn(name="BertInferenceWorkflow", versioning_behavior=VersioningBehavior.AUTO_UPGRADE)
class InferenceWorkflow:
    @workflow.run
    async def run(self, req: InferenceRequest) -> InferenceResult:
        # A local activity: `predict` runs on the eval worker that took this workflow task (it
        # keeps the models loaded), and the whole call is one workflow task instead of two plus
        # an activity round trip: about a third less latency per prediction (docs/performance.md).
        return await workflow.execute_local_activity(
            "predict",
            req,
            result_type=InferenceResult,
            start_to_close_timeout=PREDICT_TIMEOUT,
            retry_policy=RetryPolicy(
                maximum_attempts=PREDICT_MAX_ATTEMPTS, non_retryable_error_types=NON_RETRYABLE
            ),
        )


@workflow.defn(name="CoordinatorWorkflow", versioning_behavior=VersioningBehavior.PINNED)
class CoordinatorWorkflow:
    @workflow.init
    def __init__(self, req: ExperimentRequest) -> None:
        # Built from the request before any signal is handled: `cancel_run` can tell this
        # experiment's configurations from unknown names from the first moment.
        exp_id = workflow.info().workflow_id
        self._progress = ExperimentProgress(
            experiment_id=exp_id,
            name=req.name,
            runs=[
                RunProgress(
                    name=c.name,
                    training_workflow_id=f"{exp_id}--{c.name}--train",
                    eval_workflow_id=f"{exp_id}--{c.name}--eval",
                )
                for c in req.runs
            ],
        )
        self._results: dict[str, RunResult] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # Configurations asked to stop. Kept, not just acted on: a cancel that arrives before
        # a configuration's task has started is applied by the task when it starts.
        self._cancel_requested: set[str] = set()

    @workflow.run
    async def run(self, req: ExperimentRequest) -> ExperimentResult:
        # The starter records the training queue in the memo: the workflow cannot read the
        # environment, and the request stays free of deployment details.
        training_queue = workflow.memo_value(
            "training_queue", "bert-training-task-queue", type_hint=str
        )
        cancelled = False
        try:
            tracking_error = await self._open_tracking(req)
        except asyncio.CancelledError:
            # The experiment was cancelled while its parent run was being opened (MLflow slow
            # or down): no configuration has started; each one now ends cancelled untrained.
            cancelled = True
            tracking_error = None
            self._cancel_requested.update(c.name for c in req.runs)
        self._tasks = {
            c.name: asyncio.create_task(self._run_config(req, c, training_queue, tracking_error))
            for c in req.runs
        }
        try:
            await workflow.wait(list(self._tasks.values()))
        except asyncio.CancelledError:
            # The whole experiment was cancelled: stop every configuration still at work (each
            # records its own outcome) and wait for them, so the result stays coherent.
            cancelled = True
            for c in req.runs:
                self._cancel(c.name)
            await workflow.wait(list(self._tasks.values()))
        self._progress.status = "cancelled" if cancelled else "completed"
        # A history begun by workers without this update (an unversioned fleet mid-upgrade,
        # BERTFLEET_DEPLOYMENT=none) replays without it.
        if search.searchable() and workflow.patched("search-attributes"):
            workflow.upsert_search_attributes([search.STATUS.value_set(self._outcome())])
        # Experiments started before champions existed replay without the activity.
        if workflow.patched("champion-alias"):
            await self._set_champion(req)
        await self._finish_parent()
        return ExperimentResult(
            experiment_id=self._progress.experiment_id,
            name=req.name,
            runs=[self._results[c.name] for c in req.runs],
            mlflow_experiment_id=self._progress.mlflow_experiment_id,
            mlflow_parent_run_id=self._progress.mlflow_parent_run_id,
            champion=self._progress.champion,
        )

    async def _open_tracking(self, req: ExperimentRequest) -> str | None:
        """Opens the parent run; None, or why the experiment goes on untracked. Raises
        asyncio.CancelledError if the experiment is cancelled meanwhile."""
        try:
            ids: list[str] = await workflow.execute_activity(
                "open_experiment",
                OpenExperimentInput(
                    experiment_id=self._progress.experiment_id,
                    name=req.name,
                    config_names=[c.name for c in req.runs],
                ),
                result_type=list[str],
                start_to_close_timeout=TRACKING_TIMEOUT,
                retry_policy=TRACKING_RETRY,
            )
        except ActivityError as err:
            if is_cancelled_exception(err):  # the activity's cancellation comes back as its error
                raise asyncio.CancelledError() from err
            return f"MLflow tracking unavailable: {root_message(err)}"
        self._progress.mlflow_experiment_id, self._progress.mlflow_parent_run_id = ids
        return None

    def _find(self, name: str) -> RunProgress | None:
        return next((r for r in self._progress.runs if r.name == name), None)

    def _run(self, name: str) -> RunProgress:
        state = self._find(name)
        assert state is not None
        return state

    def _cancel(self, name: str) -> None:
        """Stop one configuration, once. Its task is cancelled only while it is at work: a task
        that has not taken its first step checks `_cancel_requested` itself when it does
        (cancelling it now would end it before it records anything), and one already ending
        must be left to record its outcome (a cancel would interrupt that)."""
        if name in self._cancel_requested:
            return
        self._cancel_requested.add(name)
        task, state = self._tasks.get(name), self._run(name)
        if (
            task is not None
            and state.started_at is not None
            and state.status in ("queued", "training", "evaluating")
        ):
            task.cancel()

    async def _run_config(
        self,
        req: ExperimentRequest,
        cfg: RunConfig,
        training_queue: str,
        tracking_error: str | None,
    ) -> None:
        state = self._run(cfg.name)
        state.started_at = workflow.now().isoformat()
        result = RunResult(
            name=cfg.name,
            status="failed",
            training_workflow_id=state.training_workflow_id,
            eval_workflow_id=state.eval_workflow_id,
        )
        try:
            if cfg.name in self._cancel_requested:  # cancelled before it could start
                raise asyncio.CancelledError()
            if tracking_error is None:
                state.mlflow_run_id = await self._open_run(cfg, state)
            result.mlflow_run_id = state.mlflow_run_id
            state.status = "training"
            training: TrainingResult = await workflow.execute_child_workflow(
                TrainingWorkflow.run,
                TrainingWorkflowInput(
                    experiment_id=self._progress.experiment_id,
                    experiment_name=req.name,
                    config=cfg,
                    heartbeat_timeout_s=req.heartbeat_timeout_s,
                    max_attempts=req.max_attempts,
                    mlflow_run_id=state.mlflow_run_id,
                ),
                id=state.training_workflow_id,
                task_queue=training_queue,
                search_attributes=search.run_attributes(req.name, cfg),
            )
            result.snapshot_id = training.snapshot.snapshot_id
            result.final_step = training.final_step
            result.selected_step = training.selected_step
            result.stop_reason = training.stop_reason
            state.status = "evaluating"
            outcome: EvalResult = await workflow.execute_child_workflow(
                EvalWorkflow.run,
                EvalInput(
                    config=cfg,
                    training=training,
                    experiment_name=req.name,
                    experiment_id=self._progress.experiment_id,
                    mlflow_run_id=state.mlflow_run_id,
                    heartbeat_timeout_s=req.heartbeat_timeout_s,
                ),
                id=state.eval_workflow_id,
                search_attributes=search.run_attributes(req.name, cfg),
            )
            result.status = state.status = "completed"
            result.eval = state.eval = summarised_metrics(outcome.metrics)
            result.model_uri = state.model_uri = outcome.model_uri
            # A backlog of metrics reached MLflow with the evaluation (record_eval).
            result.error = tracking_error or (
                None if training.metrics_backlog else training.tracking_error
            )
        except (asyncio.CancelledError, ChildWorkflowError, ActivityError) as err:
            if is_cancelled_exception(err):
                result.status = state.status = "cancelled"
                await self._finish_run(state, "KILLED", "cancelled")
            else:
                result.status = state.status = "failed"
                result.error = state.error = root_message(err)
                await self._finish_run(state, "FAILED", result.error)
        # Not in a `finally`: when a worker evicts this workflow from its cache the coroutine
        # is torn down outside the workflow's event loop, where workflow.now() would raise.
        state.finished_at = workflow.now().isoformat()
        self._results[cfg.name] = result

    def _outcome(self) -> str:
        """BertStatus at the end: cancelled, failed (a configuration failed) or completed."""
        if self._progress.status == "cancelled":
            return "cancelled"
        return "failed" if any(r.status == "failed" for r in self._progress.runs) else "completed"

    async def _open_run(self, cfg: RunConfig, state: RunProgress) -> str:
        run_id: str = await workflow.execute_activity(
            "open_config_run",
            OpenRunInput(
                experiment_id=self._progress.experiment_id,
                mlflow_experiment_id=self._progress.mlflow_experiment_id or "",
                parent_run_id=self._progress.mlflow_parent_run_id or "",
                config=cfg,
                training_workflow_id=state.training_workflow_id or "",
                eval_workflow_id=state.eval_workflow_id or "",
            ),
            result_type=str,
            start_to_close_timeout=TRACKING_TIMEOUT,
            retry_policy=TRACKING_RETRY,
        )
        return run_id

    async def _finish_run(
        self, state: RunProgress, status: MlflowStatus, error: str | None
    ) -> None:
        if state.mlflow_run_id is None:
            return
        try:
            await workflow.execute_activity(
                "finish_run",
                FinishRunInput(run_id=state.mlflow_run_id, status=status, error=error),
                start_to_close_timeout=TRACKING_TIMEOUT,
                retry_policy=TRACKING_RETRY,
            )
        except ActivityError as err:
            state.error = f"{state.error or ''} (MLflow status not recorded: {root_message(err)})"

    async def _set_champion(self, req: ExperimentRequest) -> None:
        """The registry alias `champion` on the best configuration by the experiment's selection
        metric (chosen in the activity). Tracking never fails the experiment: if MLflow stays
        away, the experiment ends without a champion and the progress says so in a log line."""
        runs = [self._results[c.name] for c in req.runs]
        if not any((r.model_uri or "").startswith("models:/") for r in runs):
            return  # nothing registered (untracked, or no configuration completed)
        try:
            champion: str = await workflow.execute_activity(
                "set_champion",
                ChampionInput(runs=runs, metric=req.selection_metric),
                result_type=str,
                start_to_close_timeout=TRACKING_TIMEOUT,
                retry_policy=TRACKING_RETRY,
            )
            self._progress.champion = champion or None
        except ActivityError as err:
            workflow.logger.warning("champion alias not set: %s", root_message(err))

    async def _finish_parent(self) -> None:
        """KILLED if the experiment was cancelled, FAILED if a configuration failed, FINISHED
        if one completed (a configuration the user cancelled is not a failure), else KILLED
        (every configuration was cancelled one by one)."""
        if self._progress.mlflow_parent_run_id is None:
            return
        runs = self._progress.runs
        status: MlflowStatus
        if self._progress.status == "cancelled":
            status = "KILLED"
        elif any(r.status == "failed" for r in runs):
            status = "FAILED"
        elif any(r.status == "completed" for r in runs):
            status = "FINISHED"
        else:
            status = "KILLED"
        errors = "; ".join(f"{r.name}: {r.error}" for r in runs if r.error)
        await self._finish_run(
            RunProgress(name="parent", mlflow_run_id=self._progress.mlflow_parent_run_id),
            status,
            None if status == "FINISHED" else errors or None,
        )

    @workflow.signal
    def cancel_run(self, name: str) -> None:
        """Cancel one configuration; its siblings carry on. It may arrive before the
        configuration has started (the parent run still opening): it then ends cancelled
        without training. Unknown names are logged and ignored; repeats are ignored."""
        if self._find(name) is None:
            workflow.logger.warning("cancel_run: no configuration %r in this experiment", name)
            return
        self._cancel(name)

    @workflow.query
    def progress(self) -> ExperimentProgress:
        return self._progress

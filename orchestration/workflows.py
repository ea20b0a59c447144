"""Deterministic orchestration: no I/O, no clocks but workflow.now(), no ML here.

CoordinatorWorkflow  one experiment: opens its MLflow parent run, then per configuration runs
                     TrainingWorkflow and, as soon as that ends, EvalWorkflow. Configurations
                     are independent: one failing or being cancelled never touches the others.
TrainingWorkflow     snapshot -> train (heartbeating, resumable from its last checkpoint).
EvalWorkflow         evaluate the final model, then log metrics and register the model (two
                     activities: retrying the second never repeats the first).
InferenceWorkflow    one prediction, as a local activity on an eval worker that keeps models
                     loaded.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ChildWorkflowError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from orchestration.types import (
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
        RunProgress,
        RunResult,
        Snapshot,
        SnapshotInput,
        TrainingProgress,
        TrainingResult,
        TrainingWorkflowInput,
        TrainInput,
    )

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

NON_RETRYABLE = ["ConfigError"]
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


def _root_message(err: BaseException) -> str:
    """The innermost cause's message: what actually went wrong, without Temporal's wrapping."""
    while isinstance(err, (ChildWorkflowError, ActivityError)) and err.cause is not None:
        err = err.cause
    return str(err) or type(err).__name__


@workflow.defn
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
        """Sent by the train activity every few seconds; older attempts' reports are ignored."""
        if progress.attempt >= self._progress.attempt or self._progress.phase != "training":
            self._progress = progress.model_copy(update={"phase": self._progress.phase})

    @workflow.query
    def progress(self) -> TrainingProgress:
        return self._progress


@workflow.defn
class EvalWorkflow:
    @workflow.run
    async def run(self, inp: EvalInput) -> EvalResult:
        # Evaluation and uploading the model heartbeat every few seconds, like training, so a
        # dead eval worker is noticed as fast as a dead training worker.
        options = dict(
            start_to_close_timeout=EVAL_TIMEOUT,
            heartbeat_timeout=timedelta(seconds=inp.heartbeat_timeout_s),
        )
        if not workflow.patched("evaluate-then-record"):  # histories from before the split
            return await workflow.execute_activity(
                "evaluate",
                inp,
                result_type=EvalResult,
                **options,
                retry_policy=_retry(EVALUATE_MAX_ATTEMPTS),
            )
        metrics = await workflow.execute_activity(
            "evaluate_model",
            inp,
            result_type=EvalMetrics,
            **options,
            retry_policy=_retry(EVALUATE_MAX_ATTEMPTS),
        )
        if not inp.mlflow_run_id:
            return EvalResult(metrics=metrics, model_uri=inp.training.model_uri)
        # The metrics are in this workflow's history now: retrying the recording (MLflow down,
        # the worker lost mid-upload) never evaluates again, so it may retry for longer.
        model_uri = await workflow.execute_activity(
            "record_eval",
            RecordEvalInput(eval=inp, metrics=metrics),
            result_type=str,
            **options,
            retry_policy=_retry(RECORD_EVAL_MAX_ATTEMPTS),
        )
        return EvalResult(metrics=metrics, model_uri=model_uri)


@workflow.defn
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


@workflow.defn
class CoordinatorWorkflow:
    def __init__(self) -> None:
        self._progress: ExperimentProgress | None = None
        self._results: dict[str, RunResult] = {}
        self._tasks: dict[str, asyncio.Task] = {}

    @workflow.run
    async def run(self, req: ExperimentRequest) -> ExperimentResult:
        exp_id = workflow.info().workflow_id
        # The starter records the training queue in the memo: the workflow cannot read the
        # environment, and the request stays free of deployment details.
        training_queue = workflow.memo_value("training_queue", "bert-training", type_hint=str)
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
        tracking_error = await self._open_tracking(req)
        self._tasks = {
            c.name: asyncio.create_task(self._run_config(req, c, training_queue, tracking_error))
            for c in req.runs
        }
        try:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        except asyncio.CancelledError:
            # The whole experiment was cancelled: every config task was cancelled with it and
            # records its own outcome; wait for them so the result stays coherent.
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            self._progress.status = "cancelled"
        else:
            self._progress.status = "completed"
        await self._finish_parent()
        return ExperimentResult(
            experiment_id=exp_id,
            name=req.name,
            runs=[self._results[c.name] for c in req.runs],
            mlflow_experiment_id=self._progress.mlflow_experiment_id,
            mlflow_parent_run_id=self._progress.mlflow_parent_run_id,
        )

    async def _open_tracking(self, req: ExperimentRequest) -> str | None:
        assert self._progress is not None
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
            return f"MLflow tracking unavailable: {_root_message(err)}"
        self._progress.mlflow_experiment_id, self._progress.mlflow_parent_run_id = ids
        return None

    def _run(self, name: str) -> RunProgress:
        assert self._progress is not None
        return next(r for r in self._progress.runs if r.name == name)

    async def _run_config(self, req, cfg, training_queue: str, tracking_error: str | None) -> None:
        state = self._run(cfg.name)
        state.started_at = workflow.now().isoformat()
        result = RunResult(
            name=cfg.name,
            status="failed",
            training_workflow_id=state.training_workflow_id,
            eval_workflow_id=state.eval_workflow_id,
        )
        try:
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
            )
            result.snapshot_id = training.snapshot.snapshot_id
            result.final_step = training.final_step
            state.status = "evaluating"
            outcome: EvalResult = await workflow.execute_child_workflow(
                EvalWorkflow.run,
                EvalInput(
                    config=cfg,
                    training=training,
                    experiment_name=req.name,
                    mlflow_run_id=state.mlflow_run_id,
                    heartbeat_timeout_s=req.heartbeat_timeout_s,
                ),
                id=state.eval_workflow_id,
            )
            result.status = state.status = "completed"
            result.eval = state.eval = outcome.metrics
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
                result.error = state.error = _root_message(err)
                await self._finish_run(state, "FAILED", result.error)
        # Not in a `finally`: when a worker evicts this workflow from its cache the coroutine
        # is torn down outside the workflow's event loop, where workflow.now() would raise.
        state.finished_at = workflow.now().isoformat()
        self._results[cfg.name] = result

    async def _open_run(self, cfg, state: RunProgress) -> str:
        assert self._progress is not None
        return await workflow.execute_activity(
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

    async def _finish_run(self, state: RunProgress, status: str, error: str | None) -> None:
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
            state.error = f"{state.error or ''} (MLflow status not recorded: {_root_message(err)})"

    async def _finish_parent(self) -> None:
        assert self._progress is not None
        if self._progress.mlflow_parent_run_id is None:
            return
        ok = all(r.status == "completed" for r in self._progress.runs)
        cancelled = self._progress.status == "cancelled"
        await self._finish_run(
            RunProgress(name="parent", mlflow_run_id=self._progress.mlflow_parent_run_id),
            "KILLED" if cancelled else ("FINISHED" if ok else "FAILED"),
            None
            if ok
            else "; ".join(f"{r.name}: {r.error}" for r in self._progress.runs if r.error) or None,
        )

    @workflow.signal
    def cancel_run(self, name: str) -> None:
        """Cancel one configuration; its siblings carry on."""
        task = self._tasks.get(name)
        if task is not None and not task.done():
            task.cancel()

    @workflow.query
    def progress(self) -> ExperimentProgress | None:
        return self._progress

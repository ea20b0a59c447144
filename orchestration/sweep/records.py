"""The sweep's MLflow records, written by activities the SweepWorkflow schedules.

A parent run for the sweep (opened once, before the first trial), one child run per trial
(opened before its first rung), and a record each time a trial's status changes. Records run as
side tasks the workflow awaits before it continues as new or ends: MLflow being slow or down
delays nothing, and a record that cannot be written is logged, not retried forever.
"""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.exceptions import ActivityError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from orchestration.sweep.tracking import TrialRecord
    from orchestration.sweep.types import SweepProgress, SweepRequest, TrialState
    from orchestration.types import OpenExperimentInput, OpenRunInput, RunConfig
    from orchestration.workflows import TRACKING_RETRY, root_message

from orchestration.timeouts import TRACKING_TIMEOUT


class SweepRecords:
    """Mixed into SweepWorkflow: its tracking, apart from the search itself."""

    _req: SweepRequest
    _progress: SweepProgress
    _side: list[asyncio.Task[None]]

    async def _open_tracking(self, req: SweepRequest) -> None:
        try:
            ids: list[str] = await workflow.execute_activity(
                "open_experiment",
                OpenExperimentInput(
                    experiment_id=self._progress.sweep_id, name=req.name, config_names=["sweep"]
                ),
                result_type=list[str],
                start_to_close_timeout=TRACKING_TIMEOUT,
                retry_policy=TRACKING_RETRY,
            )
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise asyncio.CancelledError() from err
            workflow.logger.warning("sweep untracked: %s", root_message(err))
            return
        self._progress.mlflow_experiment_id, self._progress.mlflow_parent_run_id = ids

    async def _open_run(self, cfg: RunConfig, trial: TrialState) -> str:
        sweep_id = self._progress.sweep_id
        run_id: str = await workflow.execute_activity(
            "open_config_run",
            OpenRunInput(
                experiment_id=sweep_id,
                mlflow_experiment_id=self._progress.mlflow_experiment_id or "",
                parent_run_id=self._progress.mlflow_parent_run_id or "",
                config=cfg,
                training_workflow_id=f"{sweep_id}--{trial.name}--r0",
                eval_workflow_id=f"{sweep_id}--{trial.name}--eval",
            ),
            result_type=str,
            start_to_close_timeout=TRACKING_TIMEOUT,
            retry_policy=TRACKING_RETRY,
        )
        return run_id

    def _record(self, trial: TrialState, finish: str | None) -> None:
        if trial.mlflow_run_id is None:
            return
        record = TrialRecord(
            run_id=trial.mlflow_run_id,
            metric=self._req.metric,
            status=trial.status,
            rung=trial.rung,
            rung_metrics=dict(trial.rung_metrics),
            finish=finish,
            error=trial.error,
        )
        self._side.append(asyncio.create_task(self._track("sweep_record_trial", record)))

    async def _track(self, activity: str, payload: object) -> None:
        try:
            await workflow.execute_activity(
                activity,
                payload,
                start_to_close_timeout=TRACKING_TIMEOUT,
                retry_policy=TRACKING_RETRY,
            )
        except ActivityError as err:
            workflow.logger.warning("%s not recorded: %s", activity, root_message(err))

"""Training-queue activities: make the snapshot, train with checkpoints, resume after a crash."""

from __future__ import annotations

import asyncio
import functools
import threading

from temporalio import activity
from temporalio.client import Client

from orchestration.activities._threads import WORKER_ID, run_in_thread
from orchestration.activities.tracking import TrainingTracker
from orchestration.ml.checkpoints import CheckpointStore
from orchestration.ml.snapshot import make_snapshot
from orchestration.ml.training import TrainingHooks, train
from orchestration.settings import Settings
from orchestration.types import (
    CheckpointInfo,
    Snapshot,
    SnapshotInput,
    TrainingProgress,
    TrainingResult,
    TrainInput,
)


class _Latest:
    """The newest progress the training thread reported; read by the heartbeat loop."""

    def __init__(self, attempt: int, resumed: CheckpointInfo | None) -> None:
        self._lock = threading.Lock()
        self._progress = TrainingProgress(
            phase="training", worker=WORKER_ID, attempt=attempt, checkpoint=resumed,
            step=resumed.step if resumed else 0, resumed_from_step=resumed.step if resumed else None,
        )

    def update(self, progress: TrainingProgress) -> None:
        with self._lock:
            checkpoint = progress.checkpoint or self._progress.checkpoint
            self._progress = progress.model_copy(
                update={"worker": WORKER_ID, "attempt": self._progress.attempt,
                        "phase": "training", "checkpoint": checkpoint,
                        "resumed_from_step": self._progress.resumed_from_step}
            )

    def checkpoint(self, info: CheckpointInfo) -> None:
        with self._lock:
            self._progress = self._progress.model_copy(update={"checkpoint": info})

    def get(self) -> TrainingProgress:
        with self._lock:
            return self._progress


class TrainingActivities:
    def __init__(self, client: Client, settings: Settings) -> None:
        self._client = client  # to signal progress to the training workflow
        self._settings = settings
        self._store = CheckpointStore(settings.checkpoint_root)

    @activity.defn(name="snapshot")
    async def snapshot(self, inp: SnapshotInput) -> Snapshot:
        s = self._settings
        work = functools.partial(
            make_snapshot, inp.config, s.snapshot_dir, s.data_dir, s.local_roots
        )
        return await run_in_thread(work, threading.Event())

    def _resume_point(self, run_key: str) -> CheckpointInfo | None:
        """The newest complete checkpoint: from the last heartbeat, or found in the store.

        The store is at least as fresh as the heartbeat (a checkpoint may complete just before
        the worker dies, too late to be heartbeated), so both are considered.
        """
        candidates: list[CheckpointInfo] = []
        details = activity.info().heartbeat_details
        if details:
            beat = TrainingProgress.model_validate(details[0])
            if beat.checkpoint and self._store.is_complete(beat.checkpoint.uri):
                candidates.append(beat.checkpoint)
        stored = self._store.latest(run_key)
        if stored is not None:
            candidates.append(stored)
        return max(candidates, key=lambda c: c.step, default=None)

    @activity.defn(name="train")
    async def train(self, inp: TrainInput) -> TrainingResult:
        info = activity.info()
        resume = self._resume_point(inp.run_key)
        if resume:
            activity.logger.info("resuming %s from step %d (%s)", inp.run_key, resume.step, resume.uri)
        latest = _Latest(info.attempt, resume)
        sink = TrainingTracker(self._settings, inp) if inp.mlflow_run_id else None
        stop = threading.Event()

        def on_checkpoint(ckpt: CheckpointInfo) -> None:
            latest.checkpoint(ckpt)
            if sink:
                sink.log_checkpoint(ckpt)

        hooks = TrainingHooks(
            on_progress=latest.update,
            on_checkpoint=on_checkpoint,
            on_log=sink.log if sink else None,
            should_stop=stop.is_set,
        )
        workflow = self._client.get_workflow_handle(info.workflow_id)
        last_sent: list[TrainingProgress | None] = [None]

        async def tick() -> None:
            progress = latest.get()
            activity.heartbeat(progress.model_dump(mode="json"))
            if progress != last_sent[0]:
                last_sent[0] = progress
                try:
                    await workflow.signal("report_progress", progress)
                except Exception as err:  # progress is best effort; the heartbeat is what counts
                    activity.logger.warning("progress signal failed: %s", err)

        work = functools.partial(
            train, inp.config, inp.snapshot.path, self._store, inp.run_key, hooks,
            resume_from=resume.uri if resume else None, local_roots=self._settings.local_roots,
        )
        try:
            result = await run_in_thread(work, stop, tick)
        finally:
            tracking_error = await asyncio.to_thread(sink.close) if sink else None
        await tick()
        return result.model_copy(update={"tracking_error": tracking_error})

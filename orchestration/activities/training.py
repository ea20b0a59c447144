"""Training-queue activities: make the snapshot, train with checkpoints, resume after a crash.

A run may resume on any worker: the checkpoint store (`open_store`) may be an object store, so
the resume point is downloaded first, and the snapshot is published to the store, because the
worker that made it may be another host.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from pathlib import Path

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from orchestration.activities._threads import run_in_thread
from orchestration.activities.tracking import TrainingTracker
from orchestration.ml.errors import StorageError
from orchestration.ml.remote_store import open_store
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

# Attempts a run gets when its checkpoint store refuses writes (read-only, unwritable, full).
STORAGE_ATTEMPTS = 3


class _Latest:
    """The newest progress the training thread reported; read by the heartbeat loop."""

    def __init__(self, attempt: int, resumed: CheckpointInfo | None, worker: str) -> None:
        self._lock = threading.Lock()
        self._progress = TrainingProgress(
            phase="training",
            worker=worker,
            attempt=attempt,
            checkpoint=resumed,
            step=resumed.step if resumed else 0,
            resumed_from_step=resumed.step if resumed else None,
        )

    def update(self, progress: TrainingProgress) -> None:
        with self._lock:
            checkpoint = progress.checkpoint or self._progress.checkpoint
            self._progress = progress.model_copy(
                update={
                    "worker": self._progress.worker,
                    "attempt": self._progress.attempt,
                    "phase": "training",
                    "checkpoint": checkpoint,
                    "resumed_from_step": self._progress.resumed_from_step,
                }
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
        self._store = open_store(
            settings.checkpoint_root,
            settings.checkpoint_work_dir,
            **settings.checkpoint_store_options,
        )
        # One device per concurrent run (the worker takes as many runs as there are slots).
        self._devices: asyncio.Queue[str] = asyncio.Queue()
        for device in settings.device_slots:
            self._devices.put_nowait(device)

    def _make_snapshot(self, inp: SnapshotInput) -> Snapshot:
        s = self._settings
        snapshot = make_snapshot(inp.config, s.snapshot_dir, s.data_dir, s.local_roots)
        self._store.publish_snapshot(Path(snapshot.path), snapshot.snapshot_id)
        return snapshot

    @activity.defn(name="snapshot")
    async def snapshot(self, inp: SnapshotInput) -> Snapshot:
        return await run_in_thread(functools.partial(self._make_snapshot, inp), threading.Event())

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

    def _localise(self, inp: TrainInput) -> tuple[CheckpointInfo | None, str | None, str]:
        """The resume point, its folder on this host and the snapshot's (downloaded if need be)."""
        resume = self._resume_point(inp.run_key)
        local = self._store.local_copy(resume.uri) if resume else None
        return resume, local, self._store.local_snapshot(inp.snapshot, self._settings.snapshot_dir)

    @activity.defn(name="train")
    async def train(self, inp: TrainInput) -> TrainingResult:
        device = await self._devices.get()
        try:
            return await self._train(inp, device)
        finally:
            self._devices.put_nowait(device)

    async def _train(self, inp: TrainInput, device: str) -> TrainingResult:
        info = activity.info()
        config = inp.config
        if device != "auto" and config.device == "auto":
            config = config.model_copy(update={"device": device})
        stop = threading.Event()
        try:
            resume, local, snapshot_path = await run_in_thread(
                functools.partial(self._localise, inp), stop
            )
        except StorageError as err:
            raise _storage_error(err, info.attempt) from None
        if resume:
            activity.logger.info(
                "resuming %s from step %d (%s)", inp.run_key, resume.step, resume.uri
            )
        latest = _Latest(info.attempt, resume, self._settings.worker_name)
        # The tracker reads the checkpoint's own log history: give it the local copy. It talks
        # to MLflow, which may be slow or down: in a thread, heartbeating, like everything else.
        local_resume = resume.model_copy(update={"uri": local}) if resume else None
        sink = (
            await run_in_thread(
                functools.partial(TrainingTracker, self._settings, inp, local_resume), stop
            )
            if inp.mlflow_run_id
            else None
        )

        def on_progress(progress: TrainingProgress) -> None:
            latest.update(progress)
            if sink:
                sink.log_progress(progress)

        def on_checkpoint(ckpt: CheckpointInfo) -> None:
            latest.checkpoint(ckpt)
            if sink:
                sink.log_checkpoint(ckpt)

        hooks = TrainingHooks(
            on_progress=on_progress,
            on_checkpoint=on_checkpoint,
            on_log=sink.log if sink else None,
            should_stop=stop.is_set,
        )
        assert info.workflow_id is not None  # started by a TrainingWorkflow, never standalone
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

        def work() -> TrainingResult:
            try:
                return train(
                    config,
                    snapshot_path,
                    self._store,
                    inp.run_key,
                    hooks,
                    resume_from=local,
                    local_roots=self._settings.local_roots,
                )
            finally:  # a stopped run's last checkpoint still reaches the store
                self._store.flush(inp.run_key)

        try:
            result = await run_in_thread(work, stop, tick)
        except StorageError as err:
            raise _storage_error(err, info.attempt) from None
        finally:  # close() waits up to 30 s for MLflow: keep heartbeating meanwhile
            tracking_error = (
                await run_in_thread(sink.close, threading.Event(), tick) if sink else None
            )
        # MLflow still away: the final checkpoint holds every point; EvalWorkflow sends them.
        backlog = latest.get().checkpoint if sink and sink.undelivered else None
        await tick()
        return result.model_copy(
            update={"tracking_error": tracking_error, "metrics_backlog": backlog}
        )


def _storage_error(err: StorageError, attempt: int) -> ApplicationError:
    """Another worker may mount a healthy store: retry a little, then fail for good."""
    return ApplicationError(
        str(err), type="StorageError", non_retryable=attempt >= STORAGE_ATTEMPTS
    )

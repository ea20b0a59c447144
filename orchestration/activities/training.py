"""Training-queue activities: make the snapshot, train with checkpoints, resume after a crash.

Each training attempt runs in a process of its own (`orchestration.ml.runner`), taken from a
pool of warm ones; the activity stays in the worker and supervises it:

- relays the process's progress and checkpoints as heartbeats and `report_progress` signals,
  and its log points to MLflow (the process itself never talks to Temporal or MLflow);
- samples its memory: in the progress and MLflow's system metrics, and against
  BERTFLEET_RUN_MEMORY_LIMIT; a run over it, or killed by the kernel, or out of GPU memory,
  fails its own attempt with an out-of-memory error (retried once, then final);
- on cancellation asks the process to stop, and kills it after CANCEL_GRACE_S;
- on worker shutdown (Ctrl-C, SIGTERM) asks it to write a checkpoint at its current step, then
  fails the attempt with a retryable error, so the retry resumes exactly there.

A run may resume on any worker: the checkpoint store (`open_store`) may be an object store, so
the resume point is downloaded first, and the snapshot is published to the store, because the
worker that made it may be another host.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import threading
import weakref
from pathlib import Path

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from orchestration.activities._threads import heartbeat_interval, run_in_thread
from orchestration.activities.tracking import TrainingTracker
from orchestration.ml.errors import StorageError
from orchestration.ml.models import check_config
from orchestration.ml.remote_store import open_store
from orchestration.ml.runner import (
    STOP_CHECKPOINT,
    STOP_NOW,
    RunJob,
    RunnerOptions,
    RunnerPool,
    RunProcess,
)
from orchestration.ml.snapshot import make_snapshot
from orchestration.settings import Settings
from orchestration.timeouts import CANCEL_GRACE_S, RUN_MEMORY_SAMPLE_S
from orchestration.types import (
    CheckpointInfo,
    RunConfig,
    Snapshot,
    SnapshotInput,
    TrainingProgress,
    TrainingResult,
    TrainInput,
)

# Attempts a run gets when its checkpoint store refuses writes (read-only, unwritable, full).
STORAGE_ATTEMPTS = 3
# Out-of-memory attempts a configuration gets: one more try (the machine may have been busier
# than usual), then it fails with what to change.
OUT_OF_MEMORY_ATTEMPTS = 2


class _Latest:
    """The newest progress of the run, as heartbeated: what the run process reported, plus
    what the worker knows (attempt, worker, memory, threads, out-of-memory count)."""

    def __init__(
        self,
        attempt: int,
        resumed: CheckpointInfo | None,
        worker: str,
        threads: int,
        out_of_memory: int,
    ) -> None:
        self._lock = threading.Lock()
        self._progress = TrainingProgress(
            phase="training",
            worker=worker,
            attempt=attempt,
            checkpoint=resumed,
            step=resumed.step if resumed else 0,
            resumed_from_step=resumed.step if resumed else None,
            threads=threads,
            out_of_memory=out_of_memory,
        )

    # Reported by the worker itself, never by the run process.
    _OWN = (
        "worker",
        "attempt",
        "resumed_from_step",
        "threads",
        "out_of_memory",
        "memory_mb",
        "peak_memory_mb",
    )

    def update(self, progress: TrainingProgress) -> None:
        with self._lock:
            own = {name: getattr(self._progress, name) for name in self._OWN}
            gpu = {
                name: getattr(progress, name) or getattr(self._progress, name)
                for name in ("gpu_memory_mb", "gpu_peak_memory_mb")
            }
            self._progress = progress.model_copy(
                update={
                    **own,
                    **gpu,
                    "phase": "training",
                    "checkpoint": progress.checkpoint or self._progress.checkpoint,
                }
            )

    def set(self, **values) -> None:
        with self._lock:
            self._progress = self._progress.model_copy(update=values)

    def checkpoint(self, info: CheckpointInfo) -> None:
        self.set(checkpoint=info)

    def get(self) -> TrainingProgress:
        with self._lock:
            return self._progress

    def memory_metrics(self) -> dict[str, float]:
        """The run's memory for MLflow's system metrics (MB, like MLflow's own)."""
        p = self.get()
        values = {
            "run_memory_rss_megabytes": p.memory_mb,
            "run_memory_peak_rss_megabytes": p.peak_memory_mb,
            "run_gpu_memory_megabytes": p.gpu_memory_mb,
            "run_gpu_memory_peak_megabytes": p.gpu_peak_memory_mb,
        }
        return {name: value for name, value in values.items() if value is not None}


def _relay(process: RunProcess, latest: _Latest, sink: TrainingTracker | None) -> tuple | None:
    """Runs in a thread: the process's events into the heartbeat state and MLflow, until its
    final message (returned), or None if it ended without one."""
    for event in process.events():
        kind = event[0]
        if kind == "progress":
            latest.update(event[1])
            if sink:
                sink.log_progress(event[1])
        elif kind == "checkpoint":
            latest.checkpoint(event[1])
            if sink:
                sink.log_checkpoint(event[1])
        elif kind == "log" and sink:
            sink.log(event[1], event[2])
        elif kind in ("result", "error"):
            return event
    return None


async def _first(*waits) -> None:
    """Returns when the first of `waits` does (the others are cancelled)."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def _carried_out_of_memory(details) -> int:
    """Out-of-memory attempts so far, from the previous attempt's last heartbeat."""
    try:
        return TrainingProgress.model_validate(details[0]).out_of_memory if details else 0
    except Exception:
        return 0


def _oom_kills() -> int | None:
    """The kernel's count of OOM kills in this worker's cgroup (v2), if it can be read."""
    try:
        with open("/sys/fs/cgroup/memory.events") as f:
            for line in f:
                name, _, value = line.partition(" ")
                if name == "oom_kill":
                    return int(value)
    except (OSError, ValueError):
        pass
    return None


_instances: weakref.WeakSet[TrainingActivities] = weakref.WeakSet()


def drain() -> None:
    """The worker was told to stop (Ctrl-C, SIGTERM): every run of this process writes a
    checkpoint at its current step at once, without waiting for the Temporal worker's shutdown
    to reach the activity (a few hundred milliseconds: steps, on a small model). Call it from
    the event loop's thread."""
    for instance in list(_instances):
        instance._draining.set()


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
        # Every run process of this worker gets the same threads: a run's result must not
        # depend on which process it got, nor on what else the worker trains.
        self._runners = RunnerPool(
            RunnerOptions(threads=settings.threads_per_run, deterministic=settings.deterministic)
        )
        self._draining = asyncio.Event()  # set by drain()
        _instances.add(self)
        self._top_up()

    def _top_up(self) -> None:
        """Every second, in the event loop's thread: towards one warm run process per free
        slot (at most BERTFLEET_WARM_PROCESSES), started one at a time."""
        self._runners.fill(min(self._settings.warm_processes, self._devices.qsize()))
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to keep warm for
            asyncio.get_running_loop().call_later(1.0, self._top_up)

    def close(self) -> None:
        """Stop the warm run processes (a worker shutting down)."""
        self._runners.close()

    def _make_snapshot(self, inp: SnapshotInput) -> Snapshot:
        s = self._settings
        snapshot = make_snapshot(inp.config, s.snapshot_dir, s.data_dir, s.local_roots)
        try:
            self._store.publish_snapshot(Path(snapshot.path), snapshot.snapshot_id)
        except OSError as err:
            if isinstance(err, StorageError):
                raise
            raise StorageError(
                f"checkpoint store: cannot publish snapshot {snapshot.snapshot_id} "
                f"({err.strerror or type(err).__name__}); free space or fix permissions there, "
                "or set BERTFLEET_CHECKPOINT_STORE to a writable volume with room"
            ) from None
        return snapshot

    @activity.defn(name="snapshot")
    async def snapshot(self, inp: SnapshotInput) -> Snapshot:
        try:
            return await run_in_thread(
                functools.partial(self._make_snapshot, inp), threading.Event()
            )
        except StorageError as err:  # full or read-only: a few tries (another host?), then final
            raise _storage_error(err, activity.info().attempt) from None

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
        s = self._settings
        config = inp.config
        if device != "auto" and config.device == "auto":
            config = config.model_copy(update={"device": device})
        # A bad model, max_length or device fails here, in a second, without a run process.
        await run_in_thread(
            functools.partial(check_config, config, s.local_roots), threading.Event()
        )
        try:
            resume, local, snapshot_path = await run_in_thread(
                functools.partial(self._localise, inp), threading.Event()
            )
        except StorageError as err:
            raise _storage_error(err, info.attempt) from None
        if resume:
            activity.logger.info(
                "resuming %s from step %d (%s)", inp.run_key, resume.step, resume.uri
            )
        latest = _Latest(
            info.attempt,
            resume,
            s.worker_name,
            s.threads_per_run,
            _carried_out_of_memory(info.heartbeat_details),
        )
        # The tracker reads the checkpoint's own log history: give it the local copy. It talks
        # to MLflow, which may be slow or down: in a thread, heartbeating, like everything else.
        local_resume = resume.model_copy(update={"uri": local}) if resume else None
        sink = (
            await run_in_thread(
                functools.partial(
                    TrainingTracker, s, inp, local_resume, memory=latest.memory_metrics
                ),
                threading.Event(),
            )
            if inp.mlflow_run_id
            else None
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

        job = RunJob(
            config=config,
            snapshot_path=snapshot_path,
            run_key=inp.run_key,
            store_root=s.checkpoint_root,
            store_work_dir=s.checkpoint_work_dir,
            store_options=s.checkpoint_store_options,
            resume_from=local,
            local_roots=s.local_roots,
            attempt=info.attempt,
            stop_at_step=inp.stop_at_step,
        )
        oom_kills = _oom_kills()
        process = self._runners.take()  # in the event loop's thread: see RunProcess
        process.start(job)
        try:
            final, shutting_down, over_limit = await self._supervise(process, latest, sink, tick)
        finally:
            await asyncio.to_thread(process.close, CANCEL_GRACE_S)
            # close() waits up to 30 s for MLflow: keep heartbeating meanwhile
            tracking_error = (
                await run_in_thread(sink.close, threading.Event(), tick) if sink else None
            )
        if final is not None and final[0] == "result":
            result: TrainingResult = final[1]
            # MLflow still away: the final checkpoint holds every point; EvalWorkflow sends them.
            backlog = latest.get().checkpoint if sink and sink.undelivered else None
            await tick()
            return result.model_copy(
                update={"tracking_error": tracking_error, "metrics_backlog": backlog}
            )
        await tick()
        raise self._failure(final, process, config, latest, shutting_down, over_limit, oom_kills)

    async def _supervise(
        self, process: RunProcess, latest: _Latest, sink: TrainingTracker | None, tick
    ) -> tuple[tuple | None, bool, int | None]:
        """Heartbeat, watch memory and relay until the run process reports its end; honour
        cancellation and worker shutdown. Returns (final message or None, whether the worker
        is shutting down, the resident bytes that broke the memory limit or None)."""
        loop = asyncio.get_running_loop()
        limit = self._settings.run_memory_limit
        relay = asyncio.ensure_future(asyncio.to_thread(_relay, process, latest, sink))
        shutdown = asyncio.ensure_future(
            _first(activity.wait_for_worker_shutdown(), self._draining.wait())
        )
        shutting_down, over_limit = False, None
        next_beat = loop.time() + heartbeat_interval()
        try:
            while not relay.done():
                await asyncio.wait(
                    {relay} if shutting_down else {relay, shutdown}, timeout=RUN_MEMORY_SAMPLE_S
                )
                if shutdown.done() and not shutting_down:
                    shutting_down = True
                    activity.logger.info(
                        "worker shutting down: %s writes a checkpoint at its current step",
                        activity.info().workflow_id,
                    )
                    process.request_stop(STOP_CHECKPOINT)
                memory = process.memory()
                if memory is not None:
                    latest.set(memory_mb=memory[0] / 1e6, peak_memory_mb=memory[1] / 1e6)
                    if limit and memory[0] > limit and over_limit is None:
                        over_limit = memory[0]
                        process.kill()
                if loop.time() >= next_beat:
                    next_beat = loop.time() + heartbeat_interval()
                    await tick()
        except asyncio.CancelledError:
            # Cancelled (by a request, or the worker's graceful period is over): stop now.
            process.request_stop(STOP_NOW)
            await asyncio.wait({relay}, timeout=CANCEL_GRACE_S)
            process.kill()
            await asyncio.wait({relay}, timeout=CANCEL_GRACE_S)
            raise
        finally:
            shutdown.cancel()
        return relay.result(), shutting_down, over_limit

    def _failure(
        self,
        final: tuple | None,
        process: RunProcess,
        config: RunConfig,
        latest: _Latest,
        shutting_down: bool,
        over_limit: int | None,
        oom_kills: int | None,
    ) -> ApplicationError:
        """The ApplicationError that ends an attempt whose run process did not succeed."""
        attempt = latest.get().attempt
        if over_limit is not None:
            limit = self._settings.run_memory_limit or 0
            return self._out_of_memory(
                f"the run's process used {over_limit / 2**20:.0f} MiB, over the per-run limit "
                f"BERTFLEET_RUN_MEMORY_LIMIT={self._settings.run_memory_limit_env} "
                f"({limit / 2**20:.0f} MiB), and was stopped",
                config,
                latest,
            )
        if final is None:
            code = process.returncode
            if code == -signal.SIGKILL and not process.killed:
                after = _oom_kills()
                cause = (
                    "the kernel's out-of-memory killer ended the run's process"
                    if oom_kills is not None and after is not None and after > oom_kills
                    else "the run's process was killed (SIGKILL), most likely by the kernel's "
                    "out-of-memory killer"
                )
                return self._out_of_memory(cause, config, latest)
            return ApplicationError(
                f"the run's training process ended with status {code} before reporting a "
                "result (see the worker's log)",
                type="TrainingCrashed",
            )
        _, kind, message, detail = final
        if kind == "config":
            return ApplicationError(message, type="ConfigError", non_retryable=True)
        if kind == "storage":
            return _storage_error(StorageError(message), attempt)
        if kind == "out_of_memory":
            return self._out_of_memory(message, config, latest)
        if kind == "stopped" and shutting_down:
            step, checkpoint = detail["step"], detail["checkpoint"]
            where = (
                f"wrote a checkpoint at step {checkpoint.step}; the next attempt resumes there"
                if checkpoint is not None
                else "had no checkpoint yet; the next attempt starts over"
            )
            return ApplicationError(
                f"worker {self._settings.worker_name} shut down at step {step}: the run {where}",
                type="WorkerShutdown",
            )
        activity.logger.error("training failed: %s\n%s", message, detail.get("traceback", ""))
        return ApplicationError(f"training failed: {message}", type="TrainingCrashed")

    def _out_of_memory(self, cause: str, config: RunConfig, latest: _Latest) -> ApplicationError:
        """Out of memory: retried once (the machine may have been busier), then final. The count
        travels in the heartbeat details, which the next attempt reads."""
        count = latest.get().out_of_memory + 1
        latest.set(out_of_memory=count)
        activity.heartbeat(latest.get().model_dump(mode="json"))
        final = count >= OUT_OF_MEMORY_ATTEMPTS
        smaller = "fp16" if config.device.startswith("cuda") else "bf16"
        trains_in = latest.get().precision or config.precision  # auto, as resolved if known
        advice = (
            f"make the run smaller: a lower batch_size (now {config.batch_size}) or max_length "
            f"(now {config.max_length})"
            + (f", or precision {smaller}" if trains_in == "fp32" else "")
            + "; or give each run more memory (BERTFLEET_RUN_MEMORY_LIMIT, or fewer runs per "
            "worker: BERTFLEET_MAX_CONCURRENT_TRAINING)"
        )
        outcome = (
            f"out of memory in {count} attempts: the configuration fails"
            if final
            else "retrying once; a second time fails the configuration"
        )
        return ApplicationError(
            f"{cause}. To fix it, {advice}. ({outcome})",
            type="OutOfMemory",
            non_retryable=final,
        )


def _storage_error(err: StorageError, attempt: int) -> ApplicationError:
    """Another worker may mount a healthy store: retry a little, then fail for good."""
    return ApplicationError(
        str(err), type="StorageError", non_retryable=attempt >= STORAGE_ATTEMPTS
    )

"""One process per training attempt: its own RNG, memory, GIL and CPU threads.

The training worker never trains in its own process. Each attempt runs in a child started with
`python -m orchestration.ml.runner FD` (a fresh interpreter: nothing is forked from a process
whose torch threads already exist), so:

- runs never share torch's global RNG (dropout), which is what makes the same configuration give
  bit-identical results whatever else the worker trains;
- a run that runs out of memory, or is killed for using too much, takes only itself down;
- a cancel or a shutdown reaches the run at its next step end, and a run that does not stop is
  killed, not waited for (a thread cannot be killed; a process can).

Threads are set before torch is imported (OMP_NUM_THREADS, MKL_NUM_THREADS, then
`torch.set_num_threads`), OpenMP threads sleep rather than spin while waiting
(`OMP_WAIT_POLICY=PASSIVE` unless set), and the child ignores SIGINT and SIGTERM: a Ctrl-C
reaches the whole process group, and it is the worker that decides how its runs stop.

Protocol, over a socket pair with multiprocessing's framing (pickled tuples):

    parent -> child  ("job", RunJob) once, then ("stop", "checkpoint" | "now") at any time
    child -> parent  ("ready",) once imported, ("started", pid) once it has its job, then any
                     number of ("progress", TrainingProgress),
                     ("checkpoint", CheckpointInfo), ("log", step, metrics); last, exactly
                     one of ("result", TrainingResult) or ("error", kind, message, detail)

Error kinds: "config" (no retry can fix it), "storage" (the checkpoint store refused), "stopped"
(a stop request was honoured; detail: step, checkpoint), "out_of_memory" (CUDA/MPS/CPU
allocator), "crash" (anything else; detail: traceback). A child that ends without a final
message was killed: by its parent (cancel, memory limit) or by the kernel (the OOM killer).

A child may start before it has a job (`RunnerPool`): it imports torch and the training code,
then waits, so the next run starts in a fraction of a second instead of after seconds of
imports. The pool starts them one at a time (a new one once the previous is imported), so the
first is ready as soon as possible instead of all importing at once. A child exits when its
connection closes: the parent closed it, or died.

This module imports nothing heavy at module level: the child must set its thread environment
before torch is imported. `BERTFLEET_RUN_INIT` ("module:function,...") names functions the
child calls before waiting for its job (tests install fault injection with it, the bench its
step probe).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from orchestration.ml.errors import ConfigError, StorageError
from orchestration.settings import REPO_ROOT
from orchestration.types import CheckpointInfo, RunConfig, TrainingProgress, TrainingResult

if TYPE_CHECKING:
    from orchestration.ml.checkpoints import CheckpointStore
    from orchestration.ml.training import TrainingHooks

STOP_CHECKPOINT = "checkpoint"  # write a checkpoint at the current step, then stop
STOP_NOW = "now"  # stop at the next step end, writing nothing more
_INIT_VARIABLE = "BERTFLEET_RUN_INIT"
_ORPHANED = 70  # exit status of a child whose parent went away


@dataclass(frozen=True)
class RunJob:
    """Everything one attempt needs, sent to its process (pickled)."""

    config: RunConfig
    snapshot_path: str
    run_key: str
    store_root: str
    store_work_dir: Path
    store_options: dict[str, Any] = field(default_factory=dict)
    resume_from: str | None = None  # a complete checkpoint's folder on this host
    local_roots: list[Path] = field(default_factory=list)
    attempt: int = 1
    stop_at_step: int | None = None  # stop there with a checkpoint (TrainInput.stop_at_step)


@dataclass(frozen=True)
class RunnerOptions:
    """How every run process of a worker is set up (the same for all, so a run's result never
    depends on which of them it got)."""

    threads: int
    deterministic: bool = False

    def env(self) -> dict[str, str]:
        threads = str(self.threads)
        env = {
            **os.environ,
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "OPENBLAS_NUM_THREADS": threads,
            "BERTFLEET_RUN_THREADS": threads,
            "BERTFLEET_RUN_DETERMINISTIC": "1" if self.deterministic else "",
            "BERTFLEET_RUN_PARENT": str(os.getpid()),
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
        }
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        if self.deterministic:  # read by cuBLAS when it creates its handle: before any CUDA work
            env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        return env


class RunFailed(Exception):
    """A run process ended with an error (see `kind`), or without a result (`kind` "killed")."""

    def __init__(self, kind: str, message: str, detail: dict | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.detail = detail or {}


# ---- parent side ---------------------------------------------------------------------------------

_live: weakref.WeakSet[RunProcess] = weakref.WeakSet()


class RunProcess:
    """One run process, seen from the worker.

    Start it from a thread that lives as long as the process should (the event loop's, or the
    main thread): on Linux the child is killed when the thread that started it ends
    (PR_SET_PDEATHSIG), which is what stops a run whose worker was SIGKILLed mid-step."""

    def __init__(self, options: RunnerOptions) -> None:
        ours, theirs = socket.socketpair()
        with theirs:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "orchestration.ml.runner", str(theirs.fileno())],
                env=options.env(),
                pass_fds=(theirs.fileno(),),
            )
        self.conn = Connection(ours.detach())
        self.options = options
        self.born = time.monotonic()
        self.killed = False  # True once kill() sent SIGKILL
        self.has_job = False  # False while it waits, warm, for one
        self._send_lock = threading.Lock()
        self._status_path = f"/proc/{self.proc.pid}/status"
        _live.add(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ready(self) -> bool:
        """True once an idle process has imported everything (its "ready" message is waiting
        to be read; only for a process nobody reads from yet)."""
        try:
            return self.conn.poll()
        except OSError:
            return False

    def start(self, job: RunJob) -> None:
        self.has_job = True
        self._send(("job", job))

    def request_stop(self, mode: str) -> None:
        """Ask the run to stop at its next step end (STOP_CHECKPOINT: after saving there)."""
        self._send(("stop", mode))

    def _send(self, message: tuple) -> None:
        with self._send_lock, contextlib.suppress(OSError):  # gone already: its end is reported
            self.conn.send(message)

    def events(self) -> Iterator[tuple]:
        """The child's messages, until its end of the connection closes (blocking)."""
        while True:
            try:
                yield self.conn.recv()
            except (EOFError, OSError):
                return

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.killed = True
            self.proc.kill()

    def wait(self, timeout_s: float) -> int | None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self.proc.wait(timeout_s)
        return None

    def close(self, grace_s: float = 0.0) -> None:
        """End the process (after `grace_s` to exit by itself) and release the connection."""
        if grace_s and self.wait(grace_s) is None:
            self.kill()
        self.kill()
        self.proc.wait()
        self.conn.close()

    def memory(self) -> tuple[int, int] | None:
        """(resident bytes now, peak resident bytes) of the process; None once it is gone."""
        try:
            with open(self._status_path) as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            return _kib(fields["VmRSS"]), _kib(fields["VmHWM"])
        except (OSError, KeyError, ValueError):
            return None


def _kib(value: str) -> int:
    return int(value.split()[0]) * 1024


class RunnerPool:
    """Run processes started ahead of need: imported and waiting for a job."""

    def __init__(self, options: RunnerOptions) -> None:
        self.options = options
        self._idle: list[RunProcess] = []

    def fill(self, count: int) -> None:
        """Work towards `count` idle processes: start one more unless one is still importing
        (call it again, e.g. every second, to get there; never stops extra ones)."""
        self._idle = [p for p in self._idle if p.alive()]
        if len(self._idle) < count and all(p.ready() for p in self._idle):
            self._idle.append(RunProcess(self.options))

    def take(self) -> RunProcess:
        """An idle process if there is one, else a new one (which imports before it trains)."""
        while self._idle:
            process = self._idle.pop(0)
            if process.alive():
                return process
            process.close()
        return RunProcess(self.options)

    def close(self) -> None:
        for process in self._idle:
            process.close()
        self._idle = []


@atexit.register
def close_all() -> None:
    """End every run process this process started (a worker's exit, a test session's end)."""
    for process in list(_live):
        with contextlib.suppress(Exception):
            process.close()


def run_training(
    job: RunJob, options: RunnerOptions, hooks: TrainingHooks | None = None
) -> TrainingResult:
    """Train `job` in a run process of its own and wait for it, relaying progress, checkpoints
    and logs to `hooks` (the stop checks are not used). Raises ConfigError, StorageError, or
    RunFailed as the run process reports. For scripts and tests: the worker supervises its run
    processes itself (orchestration.activities.training)."""
    process = RunProcess(options)
    try:
        process.start(job)
        final: tuple | None = None
        for event in process.events():
            if event[0] == "progress" and hooks and hooks.on_progress:
                hooks.on_progress(event[1])
            elif event[0] == "checkpoint" and hooks and hooks.on_checkpoint:
                hooks.on_checkpoint(event[1])
            elif event[0] == "log" and hooks and hooks.on_log:
                hooks.on_log(event[1], event[2])
            elif event[0] in ("result", "error"):
                final = event
                break
    finally:
        process.close(grace_s=30)
    if final is None:
        raise RunFailed("killed", f"run process ended with status {process.returncode}")
    if final[0] == "result":
        return final[1]
    _, kind, message, detail = final
    if kind == "config":
        raise ConfigError(message)
    if kind == "storage":
        raise StorageError(message)
    raise RunFailed(kind, message, detail)


# ---- child side ----------------------------------------------------------------------------------

_job: RunJob | None = None


def current_job() -> RunJob | None:
    """In a run process, the job it trains (None before it has one, and in any other process)."""
    return _job


class _Control(threading.Thread):
    """Reads the parent's stop requests; exits the process when the parent is gone."""

    def __init__(self, conn: Connection) -> None:
        super().__init__(daemon=True, name="run-control")
        self.conn = conn
        self.mode: str | None = None

    def run(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                os._exit(_ORPHANED)  # nobody to report to: the worker died or gave up on us
            if message[0] == "stop" and self.mode != STOP_NOW:
                self.mode = message[1]


def _die_with_parent() -> None:
    """Linux: be killed when the worker is (even while frozen: a SIGKILLed worker's child
    would otherwise keep training, or sit stopped, holding its memory)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    parent = os.environ.get("BERTFLEET_RUN_PARENT")
    if parent and os.getppid() != int(parent):  # it died before prctl took effect
        os._exit(_ORPHANED)


def _gpu_memory() -> tuple[float, float] | None:
    """(MB torch holds on the current GPU now, at its peak), once CUDA is in use."""
    import torch

    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    device = torch.cuda.current_device()
    return torch.cuda.memory_reserved(device) / 1e6, torch.cuda.max_memory_reserved(device) / 1e6


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA's and MPS's out-of-memory errors, and the CPU allocator's."""
    import torch

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, (MemoryError, torch.cuda.OutOfMemoryError)):
            return True
        text = str(seen)
        if isinstance(seen, RuntimeError) and (
            "out of memory" in text.lower() or "DefaultCPUAllocator: can't allocate" in text
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _train(job: RunJob, conn: Connection, control: _Control) -> None:
    from orchestration.ml.remote_store import open_store
    from orchestration.ml.training import TrainingHooks, TrainingStopped, train

    lock = threading.Lock()

    def send(message: tuple) -> None:
        try:
            with lock:
                conn.send(message)
        except OSError:
            os._exit(_ORPHANED)

    def progress(p: TrainingProgress) -> None:
        gpu = _gpu_memory()
        if gpu:
            p = p.model_copy(update={"gpu_memory_mb": gpu[0], "gpu_peak_memory_mb": gpu[1]})
        send(("progress", p))

    def checkpoint(info: CheckpointInfo) -> None:
        send(("checkpoint", info))

    hooks = TrainingHooks(
        on_progress=progress,
        on_checkpoint=checkpoint,
        on_log=lambda step, metrics: send(("log", step, metrics)),
        should_stop=lambda: control.mode == STOP_NOW,
        should_save_and_stop=lambda: control.mode == STOP_CHECKPOINT,
    )
    try:
        # A RemoteCheckpointStore has CheckpointStore's interface (not its class).
        store = cast(
            "CheckpointStore", open_store(job.store_root, job.store_work_dir, **job.store_options)
        )
        try:
            result = train(
                job.config,
                job.snapshot_path,
                store,
                job.run_key,
                hooks,
                resume_from=job.resume_from,
                local_roots=job.local_roots,
                stop_at_step=job.stop_at_step,
            )
        finally:  # a stopped run's last checkpoint still reaches the store
            store.flush(job.run_key)
        send(("result", result))
    except TrainingStopped as stop:
        send(("error", "stopped", str(stop), {"step": stop.step, "checkpoint": stop.checkpoint}))
    except ConfigError as err:
        send(("error", "config", str(err), {}))
    except StorageError as err:
        send(("error", "storage", str(err), {}))
    except BaseException as err:  # reported, and the process ends: nothing else to protect
        kind = "out_of_memory" if is_out_of_memory(err) else "crash"
        message = f"{type(err).__name__}: {err}"
        send(("error", kind, message, {"traceback": traceback.format_exc()}))


def _call_init_hooks() -> None:
    import importlib

    for name in filter(None, os.environ.get(_INIT_VARIABLE, "").split(",")):
        module, _, function = name.strip().partition(":")
        getattr(importlib.import_module(module), function)()


def main(argv: list[str]) -> None:
    global _job
    for sig in (signal.SIGINT, signal.SIGTERM):  # the worker decides how its runs stop
        signal.signal(sig, signal.SIG_IGN)
    _die_with_parent()
    conn = Connection(int(argv[0]))
    import torch  # after the thread variables, which the parent set in our environment

    threads = int(os.environ.get("BERTFLEET_RUN_THREADS") or 0)
    if threads:
        torch.set_num_threads(threads)
    if os.environ.get("BERTFLEET_RUN_DETERMINISTIC"):
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    _call_init_hooks()
    import orchestration.ml.training  # noqa: F401 - the slow import, done before the job comes

    try:
        conn.send(("ready",))
        message = conn.recv()
    except (EOFError, OSError):
        return  # never used: the pool was closed, or the worker ended
    _job = message[1]
    control = _Control(conn)
    control.start()
    conn.send(("started", os.getpid()))
    _train(_job, conn, control)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # everything is reported: skip seconds of interpreter and library teardown


if __name__ == "__main__":
    # Through the importable module, not this `__main__` copy of it: current_job() must see the
    # job from anywhere in the process.
    from orchestration.ml import runner

    runner.main(sys.argv[1:])

"""The product, started the way a user runs it, in a throw-away folder.

A Temporal dev server and an MLflow server on free loopback ports (the product's own
TemporalServer/MlflowServer), a training worker and an eval worker as separate processes (through
bench.worker, i.e. with step timing), all pointed at a temporary data dir whose built-in datasets
link to the repo's. Nothing here touches the user's `.data/` state.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from orchestration.ml.checkpoints import CheckpointStore
from orchestration.servers import MlflowServer, TemporalServer, free_port, stop_process
from orchestration.settings import REPO_ROOT, Settings, settings


def builtin_data_dir() -> Path:
    """The repo's extracted built-in datasets (`make install` writes them; extract if missing)."""
    data_dir = settings().data_dir
    folder = data_dir / "builtin"
    if not (folder / "rotten_tomatoes.csv").exists():
        subprocess.run(
            [sys.executable, "-m", "orchestration.ml.builtin_data", "--data-dir", str(data_dir)],
            check=True,
        )
    return folder


@dataclass
class WorkerProcess:
    role: str
    proc: subprocess.Popen
    log: Path
    start_s: float  # from spawn until it polls its task queue
    wanted: bool = True  # False once the bench stops or kills it on purpose

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss(self) -> int:
        """The worker process's resident memory, without its run processes."""
        return psutil.Process(self.pid).memory_info().rss

    def tree_rss(self) -> int:
        """The worker's resident memory with its run processes' (warm or training)."""
        return sum(rss for _, rss in _tree(psutil.Process(self.pid)))

    def settle(self, timeout_s: float = 120.0) -> None:
        """Wait until the worker's process tree stops growing (its warm run processes done
        importing), so an idle figure is idle."""
        deadline = time.monotonic() + timeout_s
        previous = -1
        while time.monotonic() < deadline:
            now = self.tree_rss()
            if abs(now - previous) < 0.01 * now:
                return
            previous = now
            time.sleep(1.0)

    def interrupt(self, timeout_s: float = 60.0) -> None:
        """Ctrl-C (SIGINT to the worker), and wait for it to exit."""
        self.wanted = False
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=timeout_s)

    def kill(self) -> None:
        self.wanted = False
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.wanted = False
        stop_process(self.proc)


class Stack:
    def __init__(self, root: Path, max_concurrent: int) -> None:
        self.root = root
        data_dir = root / "data"
        (data_dir / "local").mkdir(parents=True)
        (data_dir / "builtin").symlink_to(builtin_data_dir())
        self.probe_file = root / "steps.jsonl"
        self.temporal = TemporalServer(
            data_dir=root / "temporal", port=free_port(), ui_port=free_port()
        )
        self.mlflow = MlflowServer(data_dir=root / "mlflow", port=free_port())
        self.settings = Settings(
            data_dir=data_dir,
            temporal_address=self.temporal.address,
            temporal_ui_url=self.temporal.ui_url,
            training_queue="bench-training",
            eval_queue="bench-eval",
            mlflow_tracking_uri=self.mlflow.url,
            max_concurrent_training=max_concurrent,
            local_roots_env=str(data_dir / "local"),
        )
        self.store = CheckpointStore(self.settings.checkpoint_root)
        self.workers: list[WorkerProcess] = []
        self._spawned = itertools.count(1)  # next() is atomic: workers start from threads

    def run_dir(self, experiment_id: str, config_name: str) -> str:
        """The Trainer output_dir of a configuration: how the probe names its run."""
        return str(self.store.run_dir(f"{experiment_id}/{config_name}"))

    def start_servers(self) -> float:
        """Start both servers at once; returns the seconds until both were healthy."""
        started = time.monotonic()
        errors: list[BaseException] = []

        def start(server) -> None:
            try:
                server.start(wait_s=180)
            except BaseException as err:  # re-raised below, in the caller's thread
                errors.append(err)

        threads = [threading.Thread(target=start, args=(s,)) for s in (self.temporal, self.mlflow)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return time.monotonic() - started

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            **self.settings.as_env(),
            "BENCH_PROBE_FILE": str(self.probe_file),
            "PYTHONUNBUFFERED": "1",
        }
        # What the product's run processes use unless told otherwise; the plain script too, so
        # both sides wait for their threads the same way.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        return env

    def start_worker(self, role: str, timeout_s: float = 180) -> WorkerProcess:
        log = self.root / "logs" / f"{role}-{next(self._spawned)}.log"
        log.parent.mkdir(exist_ok=True)
        started = time.monotonic()
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.worker", "--role", role],
                cwd=REPO_ROOT,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        worker = WorkerProcess(role, proc, log, 0.0)
        self.workers.append(worker)
        deadline = started + timeout_s
        while "polling" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{role} worker did not start; its log:\n{tail}")
            time.sleep(0.1)
        worker.start_s = time.monotonic() - started
        return worker

    async def guard(self, awaitable, timeout_s: float = 3600):
        """Await `awaitable`, failing fast if a worker dies that the bench did not stop (nothing
        would ever finish the run), or after `timeout_s`."""
        task = asyncio.ensure_future(awaitable)
        deadline = time.monotonic() + timeout_s
        while True:
            done, _ = await asyncio.wait({task}, timeout=1.0)
            if done:
                return task.result()
            dead = [w for w in self.workers if w.wanted and w.proc.poll() is not None]
            if dead or time.monotonic() > deadline:
                task.cancel()
                if dead:
                    w = dead[0]
                    raise RuntimeError(
                        f"bench: the {w.role} worker (pid {w.pid}) exited with "
                        f"{w.proc.returncode} while a run needed it; see {w.log}"
                    )
                raise TimeoutError(f"bench: no result after {timeout_s:.0f}s")

    def worker(self, role: str) -> WorkerProcess:
        """The newest live worker of `role`."""
        return next(w for w in reversed(self.workers) if w.role == role and w.proc.poll() is None)

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        for server in (self.temporal, self.mlflow):
            server.stop()


def _tree(process: psutil.Process) -> list[tuple[int, int]]:
    """(pid, resident bytes) of `process` and its descendants (a worker's run processes)."""
    out = []
    for p in [process, *process.children(recursive=True)]:
        try:
            out.append((p.pid, p.memory_info().rss))
        except psutil.Error:
            continue
    return out


class PeakRss:
    """Samples the resident memory of a process and its descendants (a worker and its run
    processes) every 100 ms while the block runs: the peak of their sum (`peak`) and each
    process's own peak (`peaks`, by pid)."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self._process = psutil.Process(pid)
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.peak = 0
        self.peaks: dict[int, int] = {}

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                sample = _tree(self._process)
            except psutil.Error:
                return
            for pid, rss in sample:
                self.peaks[pid] = max(self.peaks.get(pid, 0), rss)
            self.peak = max(self.peak, sum(rss for _, rss in sample))
            self._stop.wait(self._interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

"""The product, started the way a user runs it, in a throw-away folder.

A Temporal dev server and an MLflow server on free loopback ports, a training worker and an eval
worker as separate processes (through bench.worker, i.e. with step timing), all pointed at a
temporary data dir whose built-in datasets link to the repo's: the harness's servers, data dir
and worker processes (harness.servers, harness.processes). Nothing here touches the user's
`.data/` state.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import psutil

from harness import servers
from harness.processes import WorkerProcess, settings_env
from orchestration.ml.checkpoints import CheckpointStore

T = TypeVar("T")


class Stack:
    def __init__(self, root: Path, max_concurrent: int) -> None:
        self.root = root
        self.probe_file = root / "steps.jsonl"
        self.temporal = servers.temporal_server(root / "temporal")
        self.mlflow = servers.mlflow_server(root / "mlflow")
        self.settings = servers.stack_settings(
            servers.make_data_dir(root / "data"),
            self.temporal,
            self.mlflow,
            queues="bench",
            max_concurrent_training=max_concurrent,
        )
        self.store = CheckpointStore(self.settings.checkpoint_root)
        self.workers: list[WorkerProcess] = []
        self._spawned = itertools.count(1)  # next() is atomic: workers start from threads

    def run_dir(self, experiment_id: str, config_name: str) -> str:
        """The Trainer output_dir of a configuration: how the probe names its run."""
        return str(self.store.run_dir(f"{experiment_id}/{config_name}"))

    def start_servers(self) -> float:
        """Start both servers at once; returns the seconds until both were healthy."""
        return servers.start_servers(self.temporal, self.mlflow, wait_s=180)

    def env(self) -> dict[str, str]:
        """The environment of the bench's processes: the stack's settings and the probe file."""
        return settings_env(self.settings, BENCH_PROBE_FILE=str(self.probe_file))

    def start_worker(self, role: str) -> WorkerProcess:
        """A worker process of `role` through bench.worker (the product's worker with step
        timing); its start_s is the seconds from spawn until it polls its task queue."""
        log = self.root / "logs" / f"{role}-{next(self._spawned)}.log"
        log.parent.mkdir(exist_ok=True)
        worker = WorkerProcess(
            self.settings,
            role,
            log,
            module="bench.worker",
            env={"BENCH_PROBE_FILE": str(self.probe_file)},
        )
        self.workers.append(worker)
        return worker

    async def guard(self, awaitable: Awaitable[T], timeout_s: float = 3600) -> T:
        """Await `awaitable`, failing fast if a worker dies that the bench did not stop (nothing
        would ever finish the run), or after `timeout_s`."""
        task = asyncio.ensure_future(awaitable)
        deadline = time.monotonic() + timeout_s
        while True:
            done, _ = await asyncio.wait({task}, timeout=1.0)
            if done:
                return task.result()
            dead = [w for w in self.workers if w.died]
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

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user + system) used so far by each part of the stack, children
        included (a worker's run processes, also those that ended): the difference of two calls
        says what each part cost in between. A call walks every process of the machine (tens
        of milliseconds on a busy one): call it around a run, never while one is timed."""
        parts = {"temporal server": self.temporal.pid(), "mlflow server": self.mlflow.pid()}
        for role in ("training", "eval"):
            live = [w for w in self.workers if w.role == role and w.proc.poll() is None]
            if live:
                parts[f"{role} worker"] = live[-1].pid
        return {name: _cpu(pid) for name, pid in parts.items() if pid}

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        self.temporal.stop()
        self.mlflow.stop()


def _tree(process: psutil.Process) -> list[tuple[int, int]]:
    """(pid, resident bytes) of `process` and its descendants (a worker's run processes)."""
    out = []
    for p in [process, *process.children(recursive=True)]:
        try:
            out.append((p.pid, p.memory_info().rss))
        except psutil.Error:
            continue
    return out


def _cpu(pid: int) -> float:
    """CPU seconds of `pid`, its live descendants and the children it has reaped."""
    try:
        root = psutil.Process(pid)
        total = sum(root.cpu_times()[2:4])  # children_user, children_system: the reaped ones
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += sum(p.cpu_times()[:2])
        return total
    except psutil.Error:
        return 0.0


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

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

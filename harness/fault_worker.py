"""A worker that freezes itself at a chosen point, or traces its optimizer steps:

    python -m harness.fault_worker --role ROLE [--pauses PLAN] [--trace-steps DIR]

With a plan it freezes itself (SIGSTOP) when an activity attempt reaches a chosen point (mid
snapshot, a few steps in, halfway through writing a checkpoint, right after one, halfway
through recording an evaluation), so a test can check what the disk and MLflow hold at that
instant and then SIGKILL it there, exactly, instead of hoping to hit the moment from outside.
With a trace folder it records each run's last optimizer step, so scripts/chaos.py, which
kills at random, can count exactly the steps each kill lost. Training runs in a process of its
own (orchestration.ml.runner): the worker passes the plan and trace on to each run process
(BERTFLEET_RUN_INIT), which is then the one that freezes. Otherwise it is the product's
worker (orchestration.workers.run_worker), settings from the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from harness.processes import WorkerProcess
from orchestration.ml.checkpoints import CheckpointStore
from orchestration.settings import Settings
from orchestration.workers import run_worker


def start(
    cfg: Settings, role: str, log: Path, plan: str | None = None, trace: Path | None = None
) -> WorkerProcess:
    """This module as a worker process of `role` with `cfg`'s settings (see install_pauses for
    `plan`, install_step_trace for `trace`)."""
    args = (["--pauses", plan] if plan else []) + (["--trace-steps", str(trace)] if trace else [])
    return WorkerProcess(cfg, role, log, module="harness.fault_worker", args=args)


def _freeze() -> None:
    # Aimed at this thread, so this thread stops first (a signal sent to the process may be
    # taken by another thread while this one runs on for a moment), then every other one.
    signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)


def _wrap(owner: object, name: str, when: Callable[..., bool], after: bool) -> None:
    """Freeze before (or after) `owner.name` runs, whenever `when(*args)` is true."""
    real = getattr(owner, name)

    @functools.wraps(real)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not after and when(*args, **kwargs):
            _freeze()
        out = real(*args, **kwargs)
        if after and when(*args, **kwargs):
            _freeze()
        return out

    setattr(owner, name, wrapper)


def install_pauses(plan: str) -> None:
    """Make this process freeze at each point of `plan`, "POINT#ATTEMPT,...", when the activity
    attempt running there is ATTEMPT. POINT is snapshot, early@N, checkpoint-write@N,
    after-checkpoint@N (N a training step) or eval. Keyed by attempt, one plan serves every
    worker: whichever takes attempt k freezes at point k, and the next attempt finds another."""
    import tracking
    from orchestration.ml import snapshot
    from orchestration.ml.training import _HookCallback

    for item in plan.split(","):
        point, _, attempt = item.partition("#")
        kind, _, arg = point.partition("@")
        at, nth = int(arg or 0), int(attempt)

        def now(step: int | None = None, at: int = at, nth: int = nth) -> bool:
            return _attempt() == nth and step in (None, at)

        if kind == "snapshot":  # the first snapshot file written, the folder not yet in place
            pq = snapshot.pq
            snapshot.pq = SimpleNamespace(read_table=pq.read_table, write_table=pq.write_table)
            _wrap(snapshot.pq, "write_table", lambda *a, now=now, **k: now(), after=True)
        elif kind == "early":  # N optimizer steps in, before any checkpoint
            _wrap(
                _HookCallback,
                "on_step_end",
                lambda s, a, state, c, now=now, **k: now(state.global_step),
                after=True,
            )
        elif kind == "checkpoint-write":  # the Trainer wrote checkpoint-N, no COMPLETE marker yet
            _wrap(
                CheckpointStore,
                "mark_complete",
                lambda s, key, step, *a, now=now: now(step),
                after=False,
            )
        elif kind == "after-checkpoint":  # checkpoint-N marked and rotated, maybe not heartbeated
            _wrap(
                _HookCallback,
                "on_save",
                lambda s, a, state, c, now=now, **k: now(state.global_step),
                after=True,
            )
        elif kind == "eval":  # eval metrics in MLflow, the model not yet logged nor registered
            _wrap(tracking, "log_eval", lambda *a, now=now, **k: now(), after=True)
        else:
            raise ValueError(f"unknown pause point {point!r}")


def _attempt() -> int:
    """The activity attempt this code runs for: in a run process, its job's; else the
    activity's."""
    from temporalio import activity

    from orchestration.ml import runner

    job = runner.current_job()
    return job.attempt if job is not None else activity.info().attempt


_PLAN, _TRACE = "BERTFLEET_FAULT_PAUSES", "BERTFLEET_FAULT_TRACE"


def init_run_process() -> None:
    """Called by each run process before it trains (BERTFLEET_RUN_INIT): the worker's plan and
    trace, in the process where training runs."""
    if os.environ.get(_PLAN):
        install_pauses(os.environ[_PLAN])
    if os.environ.get(_TRACE):
        install_step_trace(Path(os.environ[_TRACE]))


def install_step_trace(folder: Path) -> None:
    """After every optimizer step, write it to `folder/<run key>`: what a killed worker had
    reached, exactly, for scripts/chaos.py to count the steps a kill lost."""
    from orchestration.ml.training import _HookCallback

    folder.mkdir(parents=True, exist_ok=True)
    real = _HookCallback.on_step_end

    def on_step_end(self: Any, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        path = folder / self.run_key.replace("/", "__")
        tmp = path.with_suffix(".tmp")
        tmp.write_text(str(state.global_step))
        os.replace(tmp, path)  # a kill mid-write leaves the previous step, never half a number
        return real(self, args, state, control, **kwargs)

    setattr(_HookCallback, "on_step_end", on_step_end)  # noqa: B010 - mypy forbids assigning a method


def traced_step(folder: Path, run_key: str) -> int:
    """The last optimizer step a traced worker completed in run `run_key` (0: none yet)."""
    path = folder / run_key.replace("/", "__")
    return int(path.read_text()) if path.exists() else 0


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="A worker that freezes itself at one point.")
    parser.add_argument("--role", choices=["training", "eval"], required=True)
    parser.add_argument("--pauses", help="POINT#ATTEMPT,... (see install_pauses)")
    parser.add_argument("--trace-steps", type=Path, help="see install_step_trace")
    args = parser.parse_args(argv)
    if args.pauses:
        install_pauses(args.pauses)  # the snapshot and eval points run in the worker itself
        os.environ[_PLAN] = args.pauses
    if args.trace_steps:
        os.environ[_TRACE] = str(args.trace_steps)
    if args.pauses or args.trace_steps:  # training points: in each run process
        os.environ["BERTFLEET_RUN_INIT"] = "harness.fault_worker:init_run_process"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(run_worker(args.role, Settings()))  # from the environment, like workers.py


if __name__ == "__main__":
    main(sys.argv[1:])

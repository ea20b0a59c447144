"""Fault injection for tests/test_faults.py and scripts/chaos.py.

- `reference()`: what an uninterrupted run of a configuration ends with, trained with the ML
  core alone; `incoherence()`: every way an experiment's result falls short of it (a status, a
  metric, a second MLflow run, a loss step missing or logged twice, a second registered model).
- `Worker`: a worker process, `python -m tests.fault_injection --role ROLE [--pauses PLAN]`.
  With a plan it freezes itself (SIGSTOP) when an activity attempt reaches a chosen point (mid
  snapshot, a few steps in, halfway through writing a checkpoint, right after one, halfway
  through recording an evaluation), so a test can check what the disk and MLflow hold at that
  instant and then SIGKILL it there, exactly, instead of hoping to hit the moment from outside.
  With a trace folder it records each run's last optimizer step, so scripts/chaos.py, which
  kills at random, can count exactly the steps each kill lost.
  Training runs in a process of its own (orchestration.ml.runner): the worker passes the plan
  and trace on to each run process (BERTFLEET_RUN_INIT), which is then the one that freezes;
  `frozen()` and `kill()` cover the worker's whole process tree, like a machine dying.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import psutil
from mlflow import MlflowClient
from mlflow.entities import ViewType
from temporalio.api.enums.v1 import EventType

from orchestration.ml import runner
from orchestration.ml.checkpoints import CheckpointStore
from orchestration.ml.evaluation import evaluate
from orchestration.ml.snapshot import make_snapshot
from orchestration.ml.training import TrainingHooks
from orchestration.settings import REPO_ROOT, Settings
from orchestration.types import EvalMetrics, ExperimentResult, RunConfig
from orchestration.workers import run_worker
from tests.conftest import poll, settings_env

# ---- the uninterrupted reference and the coherence check ---------------------------------------


@dataclass(frozen=True)
class Expected:
    final_step: int
    eval: EvalMetrics
    loss_steps: list[int]  # the steps at which training logged its loss


_references: dict[str, Expected] = {}


def reference(cfg: RunConfig, settings: Settings) -> Expected:
    """What an uninterrupted run of `cfg` ends with (computed once per configuration), trained
    the way a worker with `settings` trains it: in a run process of its own, with the same
    threads."""
    key = cfg.model_dump_json(exclude={"name"})
    if key not in _references:
        snapshot = make_snapshot(
            cfg, settings.snapshot_dir, settings.data_dir, settings.local_roots
        )
        steps: list[int] = []
        hooks = TrainingHooks(on_log=lambda step, m: steps.append(step) if "loss" in m else None)
        with tempfile.TemporaryDirectory() as tmp:
            job = runner.RunJob(
                config=cfg,
                snapshot_path=snapshot.path,
                run_key="reference/run",
                store_root=tmp,
                store_work_dir=Path(tmp) / "work",
                local_roots=settings.local_roots,
            )
            options = runner.RunnerOptions(
                threads=settings.threads_per_run, deterministic=settings.deterministic
            )
            result = runner.run_training(job, options, hooks)
            metrics = evaluate(result.model_uri, snapshot.path, cfg.max_length, device=cfg.device)
        _references[key] = Expected(result.final_step, metrics, steps)
    return _references[key]


def config_runs(mlflow: MlflowClient, experiment_name: str, exp_id: str, name: str) -> list:
    """Every MLflow run (deleted ones too) of configuration `name` of Temporal experiment
    `exp_id`."""
    found = mlflow.get_experiment_by_name(experiment_name)
    return (
        []
        if found is None
        else mlflow.search_runs(
            [found.experiment_id],
            run_view_type=ViewType.ALL,
            filter_string=f"tags.`temporal.experiment_id` = '{exp_id}' "
            f"and tags.`bertfleet.config` = '{name}'",
        )
    )


def incoherence(
    result: ExperimentResult, expected: dict[str, Expected], tracking_uri: str
) -> list[str]:
    """Every way `result` falls short of: each configuration completed with its reference's
    final step and metrics, tracked by exactly one FINISHED MLflow run whose loss curve has each
    of the reference's steps once and which registered one model version. [] when coherent."""
    problems = []
    mlflow = MlflowClient(tracking_uri)
    if sorted(r.name for r in result.runs) != sorted(expected):
        return [f"configurations {[r.name for r in result.runs]}, expected {sorted(expected)}"]
    for run in result.runs:
        want = expected[run.name]
        if run.status != "completed":
            problems.append(f"{run.name}: {run.status} ({run.error})")
            continue
        if (run.final_step, run.eval) != (want.final_step, want.eval):
            problems.append(
                f"{run.name}: step {run.final_step}, {run.eval}; the reference: "
                f"step {want.final_step}, {want.eval}"
            )
        found = config_runs(mlflow, result.name, result.experiment_id, run.name)
        seen = [(r.info.run_id, r.info.status, r.info.lifecycle_stage) for r in found]
        if seen != [(run.mlflow_run_id, "FINISHED", "active")]:
            problems.append(f"{run.name}: MLflow runs {seen}, expected one FINISHED")
            continue
        if found[0].data.metrics.get("eval_accuracy") != want.eval.accuracy:
            problems.append(f"{run.name}: MLflow eval_accuracy {found[0].data.metrics}")
        steps = sorted(m.step for m in mlflow.get_metric_history(run.mlflow_run_id, "loss"))
        if steps != want.loss_steps:
            problems.append(
                f"{run.name}: loss logged at steps {steps}, the reference at {want.loss_steps}"
            )
        versions = mlflow.search_model_versions(f"run_id = '{run.mlflow_run_id}'")
        if len(versions) != 1:
            problems.append(f"{run.name}: {len(versions)} registered model versions")
    return problems


def activity_attempts(history, activity_type: str) -> list[int]:
    """The attempt number of each recorded start of `activity_type` (the last attempt only is
    recorded for retried activities)."""
    scheduled = {
        e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    }
    return [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        and scheduled[e.activity_task_started_event_attributes.scheduled_event_id] == activity_type
    ]


# ---- worker processes that freeze at a chosen point ---------------------------------------------


def _freeze() -> None:
    # Aimed at this thread, so this thread stops first (a signal sent to the process may be
    # taken by another thread while this one runs on for a moment), then every other one.
    signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)


def _wrap(owner, name: str, when, after: bool) -> None:
    """Freeze before (or after) `owner.name` runs, whenever `when(*args)` is true."""
    real = getattr(owner, name)

    @functools.wraps(real)
    def wrapper(*args, **kwargs):
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

        def now(step: int | None = None, at=at, nth=nth) -> bool:
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

    def on_step_end(self, args, state, control, **kwargs):
        path = folder / self.run_key.replace("/", "__")
        tmp = path.with_suffix(".tmp")
        tmp.write_text(str(state.global_step))
        os.replace(tmp, path)  # a kill mid-write leaves the previous step, never half a number
        return real(self, args, state, control, **kwargs)

    _HookCallback.on_step_end = on_step_end


def traced_step(folder: Path, run_key: str) -> int:
    path = folder / run_key.replace("/", "__")
    return int(path.read_text()) if path.exists() else 0


class Worker:
    """`python -m tests.fault_injection --role ROLE [--pauses PLAN] [--trace-steps DIR]` with
    `cfg`'s settings."""

    def __init__(
        self,
        cfg: Settings,
        role: str,
        log: Path,
        plan: str | None = None,
        trace: Path | None = None,
    ) -> None:
        self.role, self.log = role, log
        command = [sys.executable, "-m", "tests.fault_injection", "--role", role]
        command += (["--pauses", plan] if plan else []) + (
            ["--trace-steps", str(trace)] if trace else []
        )
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=settings_env(cfg),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        poll(
            lambda: "polling" in log.read_text(errors="replace") or self.proc.poll() is not None,
            180,
            what=f"{role} worker to start",
        )
        assert self.proc.poll() is None, log.read_text()

    def tree(self) -> list[int]:
        """The worker's pid and its run processes'."""
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            children = []
        return [self.proc.pid, *(c.pid for c in children)]

    def frozen(self) -> bool:
        """True once every thread of the worker, or of one of its run processes, is stopped."""
        return any(_stopped(pid) for pid in self.tree())

    def kill(self) -> None:
        """SIGKILL the worker and its run processes at once, like a machine dying."""
        for pid in self.tree():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)


def _stopped(pid: int) -> bool:
    try:
        stats = [p.read_text() for p in Path(f"/proc/{pid}/task").glob("*/stat")]
    except OSError:
        return False
    return bool(stats) and all(s.rsplit(")", 1)[1].split()[0] in "Tt" for s in stats)


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
        os.environ["BERTFLEET_RUN_INIT"] = "tests.fault_injection:init_run_process"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(run_worker(args.role, Settings()))  # from the environment, like workers.py


if __name__ == "__main__":
    main(sys.argv[1:])

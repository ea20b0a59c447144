"""Workers. The training worker runs training workflows and their activities (GPU/CPU heavy,
bounded concurrency); the eval worker runs the coordinator, evaluation, inference and tracking.

    python -m orchestration.workers               # both, as two processes; Ctrl-C stops both
    python -m orchestration.workers --role training [--max-concurrent N | --devices cuda:0,cuda:1]
    python -m orchestration.workers --role eval [--eval-queue NAME]

Every option has an environment variable (README, docs/deploy.md); a flag overrides it. A
training worker takes one run per device slot: `--devices cuda:0,cuda:1` trains two runs at
once, one per GPU (a configuration whose device is "auto" gets the free slot's device).

Each process imports only what its role runs: the supervisor (`--role both`) only starts and
watches the two workers, and the training worker hands training to run processes of its own, so
neither loads torch; the eval worker loads it with its first evaluation or prediction
(docs/performance.md, "Idle memory").
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING

from orchestration.settings import Settings, settings
from orchestration.timeouts import EVAL_WORKER_SLOTS, GRACEFUL_SHUTDOWN, HEARTBEAT_THROTTLE

if TYPE_CHECKING:
    from temporalio.client import Client
    from temporalio.worker import Worker


def build_worker(client: Client, role: str, cfg: Settings) -> Worker:
    # Imported here, not at the top: the supervisor imports this module too (module docstring).
    from temporalio.worker import Worker

    from orchestration.activities import eval_activities, training_activities
    from orchestration.deployment import deployment_config
    from orchestration.sweep.workflow import SweepWorkflow
    from orchestration.workflows import (
        CoordinatorWorkflow,
        EvalWorkflow,
        InferenceWorkflow,
        TrainingWorkflow,
    )

    if role == "training":
        return Worker(
            client,
            task_queue=cfg.training_queue,
            workflows=[TrainingWorkflow],
            activities=training_activities(client, cfg),
            max_concurrent_activities=len(cfg.device_slots),
            graceful_shutdown_timeout=timedelta(seconds=cfg.graceful_shutdown_s),
            max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
            identity=cfg.worker_name,
            deployment_config=deployment_config(cfg),
        )
    return Worker(
        client,
        task_queue=cfg.eval_queue,
        workflows=[CoordinatorWorkflow, EvalWorkflow, InferenceWorkflow, SweepWorkflow],
        activities=eval_activities(cfg),
        max_concurrent_activities=EVAL_WORKER_SLOTS,
        graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        identity=cfg.worker_name,
        deployment_config=deployment_config(cfg),
    )


async def run_worker(role: str, cfg: Settings) -> None:
    from orchestration.client import connect
    from orchestration.deployment import promote_on_start
    from orchestration.ml.errors import ConfigError
    from orchestration.ml.model_catalog import check_device
    from orchestration.ml.runner import close_all as close_run_processes

    if role == "training":  # a slot naming a missing GPU would fail every run it takes
        try:
            for device in set(cfg.device_slots):
                check_device(device)
        except ConfigError as err:
            raise SystemExit(f"BERTFLEET_DEVICES / --devices: {err}") from None
        try:
            cfg.run_memory_limit  # noqa: B018 - validates BERTFLEET_RUN_MEMORY_LIMIT
            cfg.threads_per_run  # noqa: B018 - validates BERTFLEET_THREADS_PER_RUN
        except ValueError as err:
            raise SystemExit(str(err)) from None
    try:
        cfg.versioned  # noqa: B018 - validates BERTFLEET_PROMOTE
    except ValueError as err:
        raise SystemExit(str(err)) from None
    client = await connect(cfg)
    worker = build_worker(client, role, cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        stop.set()
        if role == "training":  # runs checkpoint where they are at once (see drain)
            from orchestration.activities.training import drain  # loaded by build_worker

            drain()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    slots = (
        f", devices {','.join(cfg.device_slots)}, {cfg.threads_per_run} threads per run"
        + (f", {cfg.run_memory_limit_env} per run" if cfg.run_memory_limit_env else "")
        if role == "training"
        else ""
    )
    version = f" as {cfg.deployment_name}:{cfg.build_id}" if cfg.versioned else ""
    try:
        async with worker:
            # The version registers with the worker's first poll; making it current (when
            # BERTFLEET_PROMOTE says so) comes before "polling", which tests and scripts await.
            try:
                if await promote_on_start(client, cfg):
                    version += " (now current)"
            except Exception as err:  # serving pinned work beats exiting over a routing call
                logging.warning(
                    "%s worker could not make %s:%s current (%s); it serves its version's work. "
                    "Retry with `python -m orchestration.deployment set-current`",
                    role,
                    cfg.deployment_name,
                    cfg.build_id,
                    err,
                )
            print(
                f"{role} worker {cfg.worker_name} polling '{worker.task_queue}' on "
                f"{cfg.temporal_address}{version}{slots}",
                flush=True,
            )
            await stop.wait()
            # Leaving the block shuts the worker down: running trainings write a checkpoint at
            # their current step and hand it over (GRACEFUL_SHUTDOWN), then it exits.
            print(f"{role} worker stopping", flush=True)
    finally:
        close_run_processes()


def run_both(extra: list[str]) -> int:
    """Supervise one process per role: a crash in one is visible, Ctrl-C stops both."""
    procs = [
        subprocess.Popen([sys.executable, "-m", "orchestration.workers", "--role", role, *extra])
        for role in ("training", "eval")
    ]

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Set explicitly: a process started in the background by a non-interactive shell inherits
    # SIGINT ignored, and Python then never raises KeyboardInterrupt. SIGTERM stops both too.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupted)
    try:
        while all(p.poll() is None for p in procs):
            try:
                procs[0].wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
    except KeyboardInterrupt:
        pass
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    return max(p.wait() or 0 for p in procs)


# Flags that override a Settings field (and its environment variable), passed on by --role both.
_FLAGS = {
    "--max-concurrent": ("max_concurrent_training", int, "concurrent training runs (training)"),
    "--devices": ("devices_env", str, "comma-separated devices, one run each: cuda:0,cuda:1"),
    "--training-queue": ("training_queue", str, "training task queue"),
    "--eval-queue": ("eval_queue", str, "eval/coordinator task queue"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the Temporal workers.")
    parser.add_argument("--role", choices=["training", "eval", "both"], default="both")
    for flag, (field, kind, text) in _FLAGS.items():
        parser.add_argument(
            flag, dest=field, type=kind, help=text, metavar=flag[2:].upper().replace("-", "_")
        )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    given = {field: value for field, *_ in _FLAGS.values() if (value := getattr(args, field))}
    cfg = replace(settings(), **given)
    try:
        cfg.device_slots  # noqa: B018 - validates BERTFLEET_DEVICES / --devices
    except ValueError as err:
        parser.error(str(err))
    if args.role == "both":
        sys.exit(
            run_both(
                [
                    arg
                    for flag, (field, *_) in _FLAGS.items()
                    if field in given
                    for arg in (flag, str(given[field]))
                ]
            )
        )
    asyncio.run(run_worker(args.role, cfg))


if __name__ == "__main__":
    main()

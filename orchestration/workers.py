"""Workers. The training worker runs training workflows and their activities (GPU/CPU heavy,
bounded concurrency); the eval worker runs the coordinator, evaluation, inference and tracking.

    python -m orchestration.workers               # both, as two processes; Ctrl-C stops both
    python -m orchestration.workers --role training [--max-concurrent N]
    python -m orchestration.workers --role eval
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

from temporalio.client import Client
from temporalio.worker import Worker

from orchestration.activities import eval_activities, training_activities
from orchestration.client import connect
from orchestration.settings import Settings, settings
from orchestration.workflows import (
    CoordinatorWorkflow,
    EvalWorkflow,
    InferenceWorkflow,
    TrainingWorkflow,
)

# On Ctrl-C a running training is told to stop and given this long to do so; it resumes from
# its last checkpoint on the next worker that picks it up.
GRACEFUL_SHUTDOWN = timedelta(seconds=15)


def build_worker(client: Client, role: str, cfg: Settings) -> Worker:
    if role == "training":
        return Worker(
            client,
            task_queue=cfg.training_queue,
            workflows=[TrainingWorkflow],
            activities=training_activities(client, cfg),
            max_concurrent_activities=cfg.max_concurrent_training,
            graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
        )
    return Worker(
        client,
        task_queue=cfg.eval_queue,
        workflows=[CoordinatorWorkflow, EvalWorkflow, InferenceWorkflow],
        activities=eval_activities(cfg),
        max_concurrent_activities=8,
        graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
    )


async def run_worker(role: str, cfg: Settings) -> None:
    client = await connect(cfg)
    worker = build_worker(client, role, cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"{role} worker polling '{worker.task_queue}' on {cfg.temporal_address}", flush=True)
    async with worker:
        await stop.wait()
        print(f"{role} worker stopping", flush=True)


def run_both(extra: list[str]) -> int:
    """Supervise one process per role: a crash in one is visible, Ctrl-C stops both."""
    procs = [
        subprocess.Popen([sys.executable, "-m", "orchestration.workers", "--role", role, *extra])
        for role in ("training", "eval")
    ]
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


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the Temporal workers.")
    parser.add_argument("--role", choices=["training", "eval", "both"], default="both")
    parser.add_argument("--max-concurrent", type=int, help="concurrent training runs (training)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = settings()
    if args.max_concurrent:
        cfg = replace(cfg, max_concurrent_training=args.max_concurrent)
    if args.role == "both":
        extra = ["--max-concurrent", str(args.max_concurrent)] if args.max_concurrent else []
        sys.exit(run_both(extra))
    asyncio.run(run_worker(args.role, cfg))


if __name__ == "__main__":
    main()

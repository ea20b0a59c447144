"""Recovery: SIGKILL the training worker mid-run, start a new one, time the way back.

Timeline: kill -> Temporal declares the attempt dead when its heartbeat timeout expires (the
pending activity then shows attempt 2, scheduled one retry interval later: detection = that
scheduled time - the interval) -> the retry starts on the new worker (the history's
ActivityTaskStarted) -> the resumed run's first new step (probe). Steps lost are the
steps the killed worker finished after the checkpoint the new one resumed from.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from temporalio.client import Client

from bench.history import pending_attempt, workflow_times
from bench.probe import Timeline, read_events
from bench.stack import Stack
from harness.polling import apoll
from orchestration.client import experiment_result, start_experiment
from orchestration.types import ExperimentRequest, RunConfig


def _seconds(timestamp) -> float | None:
    return timestamp.ToMicroseconds() / 1e6 if timestamp.seconds else None


async def _train_until(
    stack: Stack,
    client: Client,
    cfg: RunConfig,
    name: str,
    heartbeat_timeout_s: int,
    step: int,
) -> tuple[str, str, Callable[[], Timeline]]:
    """Start a one-configuration experiment `name` and wait until its run has done `step`
    steps; returns its experiment id, training workflow id and a reader of its timeline."""
    req = ExperimentRequest(name=name, heartbeat_timeout_s=heartbeat_timeout_s, runs=[cfg])
    experiment_id = await start_experiment(client, req, stack.settings)
    run_dir = stack.run_dir(experiment_id, cfg.name)

    def timeline() -> Timeline:
        return Timeline(read_events(str(stack.probe_file)).get(run_dir, []))

    await stack.guard(
        apoll(
            lambda: timeline().steps_done() >= step,
            3600,
            f"step {step}",
            interval_s=0.02,
            retry_on=(),
        )
    )
    return experiment_id, f"{experiment_id}--{cfg.name}--train", timeline


async def _first_step_on(stack: Stack, timeline: Callable[[], Timeline], pid: int) -> None:
    """Wait until the worker process `pid` (the replacement) has finished a step of the run."""
    await stack.guard(
        apoll(
            lambda: timeline().of_pid(pid).first("step_end"),
            1800,
            "the first step on the new worker",
            interval_s=0.1,
            retry_on=(),
        )
    )


async def run_recovery(
    stack: Stack, client: Client, cfg: RunConfig, heartbeat_timeout_s: int, kill_at_step: int
) -> dict:
    """Train `cfg`, SIGKILL the training worker once the run reaches `kill_at_step`, start a
    replacement at once, and time detection, pick-up and the first resumed step."""
    experiment_id, training_id, timeline = await _train_until(
        stack, client, cfg, "recovery", heartbeat_timeout_s, kill_at_step
    )
    victim = stack.worker("training")
    before = await pending_attempt(client, training_id, "train")
    killed = time.time()
    victim.kill()
    # A supervisor would restart the worker at once; its start-up overlaps the detection wait.
    restart = asyncio.ensure_future(asyncio.to_thread(stack.start_worker, "training"))

    async def retried():
        info = await pending_attempt(client, training_id, "train")
        return info if info is not None and info.attempt >= 2 else None

    retry = await apoll(
        retried,
        heartbeat_timeout_s * 4 + 120,
        "Temporal to retry the attempt",
        interval_s=0.1,
        retry_on=(),
    )
    seen = time.time()
    replacement = await restart
    await _first_step_on(stack, timeline, replacement.pid)
    result = await stack.guard(experiment_result(client, experiment_id))
    run = result.runs[0]
    train_span = (await workflow_times(client, training_id)).activity("train")
    retry_started = train_span.started
    assert retry_started is not None  # the run completed, so its last train attempt started

    events = timeline()
    old, new = events.of_pid(victim.pid), events.of_pid(replacement.pid)
    step_at_kill = old.steps_done()
    resumed_from = new.require_first("step_begin")["step"]
    detected: float | None = None
    scheduled = _seconds(retry.scheduled_time)
    if retry.attempt == 2 and scheduled is not None:
        backoff = retry.activity_options.retry_policy.initial_interval.ToTimedelta()
        detected = scheduled - backoff.total_seconds()
    last_beat = _seconds(before.last_heartbeat_time) if before else None
    first_new_step = new.require_first("step_end")["t"]
    return {
        "heartbeat_timeout_s": heartbeat_timeout_s,
        "checkpoint_every_steps": cfg.checkpoint_every_steps,
        "status": run.status,
        "final_step": run.final_step,
        "attempts": train_span.attempt,
        "step_at_kill": step_at_kill,
        "resumed_from_step": resumed_from,
        "steps_lost": step_at_kill - resumed_from,
        "last_heartbeat_before_kill_s": round(killed - last_beat, 3) if last_beat else None,
        "detection_s": round(detected - killed, 3) if detected else None,
        "detection_seen_by_bench_s": round(seen - killed, 3),
        "detection_after_last_heartbeat_s": (
            round(detected - last_beat, 3) if detected and last_beat else None
        ),
        "new_worker_start_s": round(replacement.start_s, 3),
        "retry_started_s": round(retry_started - killed, 3),
        "kill_to_first_new_step_s": round(first_new_step - killed, 3),
        "phases": [
            {"phase": "detect (heartbeat timeout)", "s": round(detected - killed, 3)},
            {
                "phase": "retry backoff, pick-up by new worker",
                "s": round(retry_started - detected, 3),
            },
            {
                "phase": "load model and checkpoint, first step",
                "s": round(first_new_step - retry_started, 3),
            },
        ]
        if detected
        else [],
    }


async def run_interrupt_recovery(
    stack: Stack, client: Client, cfg: RunConfig, heartbeat_timeout_s: int, stop_at_step: int
) -> dict:
    """Train `cfg`, Ctrl-C (SIGINT) the training worker once the run reaches `stop_at_step`,
    start a replacement at once, and count the steps lost and the seconds to resume.

    The worker's run writes a checkpoint at the step it has reached and hands the attempt back
    (retryable), the worker exits, and the retry resumes from that checkpoint on the new
    worker: no heartbeat timeout to wait for, no step lost."""
    experiment_id, training_id, timeline = await _train_until(
        stack, client, cfg, "interrupt", heartbeat_timeout_s, stop_at_step
    )
    victim = stack.worker("training")
    step_at_signal = timeline().steps_done()
    signalled = time.time()
    await asyncio.to_thread(victim.interrupt)
    exited = time.time()
    # Like the SIGKILL case: a supervisor restarts the worker at once.
    replacement = await asyncio.to_thread(stack.start_worker, "training")
    await _first_step_on(stack, timeline, replacement.pid)
    result = await stack.guard(experiment_result(client, experiment_id))
    run = result.runs[0]
    train_span = (await workflow_times(client, training_id)).activity("train")
    events = timeline()
    old, new = events.of_pid(victim.pid), events.of_pid(replacement.pid)
    stopped_at = old.steps_done()
    begun, ended = new.first("step_begin"), new.first("step_end")
    assert begun is not None and ended is not None and train_span.started is not None
    resumed_from, first_new_step = begun["step"], ended["t"]
    periodic = stopped_at // cfg.checkpoint_every_steps * cfg.checkpoint_every_steps
    return {
        "signal": "SIGINT (Ctrl-C)",
        "checkpoint_every_steps": cfg.checkpoint_every_steps,
        "status": run.status,
        "final_step": run.final_step,
        "attempts": train_span.attempt,
        "step_at_signal": step_at_signal,
        "stopped_at_step": stopped_at,
        "resumed_from_step": resumed_from,
        "steps_lost": stopped_at - resumed_from,
        "steps_since_periodic_checkpoint": stopped_at - periodic,
        "worker_exit_s": round(exited - signalled, 3),
        "new_worker_start_s": round(replacement.start_s, 3),
        "retry_started_s": round(train_span.started - signalled, 3),
        "signal_to_first_new_step_s": round(first_new_step - signalled, 3),
    }

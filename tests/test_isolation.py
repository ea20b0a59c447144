"""One process per training attempt (orchestration.ml.runner), against real servers.

- Reproducible by default: identical configurations trained side by side on one worker, and a
  later launch, end with bit-identical eval metrics.
- Out of memory is one run's problem: a run over BERTFLEET_RUN_MEMORY_LIMIT fails alone, with
  a message saying what to change, after one retry; its sibling completes undisturbed and the
  worker keeps serving.
- A graceful stop loses no step: SIGTERM to a training worker makes its run write a checkpoint
  at the step it is at; the next attempt resumes exactly there.
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow import MlflowClient
from temporalio.api.enums.v1 import EventType

from harness import fault_worker
from harness.coherence import activity_attempts, incoherence, reference
from harness.fault_worker import traced_step
from harness.polling import apoll
from harness.processes import WorkerProcess
from harness.runs import SHORT
from harness.servers import make_data_dir
from harness.temporal import handle_of, workers
from orchestration.client import experiment_result, start_experiment
from orchestration.ml.checkpoints import CheckpointStore
from orchestration.ml.precision import resolve_precision
from orchestration.settings import Settings
from orchestration.timeouts import GRACEFUL_SHUTDOWN
from orchestration.types import ExperimentRequest, RunConfig
from orchestration.workflows import TrainingWorkflow

# 480 rows / 16 = 30 steps an epoch, 60 in all; tiny-bert trains with dropout, so runs that
# shared torch's RNG (threads of one process) ended with different metrics.
TINY: dict[str, Any] = {**SHORT, "checkpoint_every_steps": 20, "seed": 11}


def own_data_dir(settings: Settings, tmp_path: Path) -> Settings:
    """The test's settings with a data dir of its own (no snapshot or checkpoint is reused)."""
    data = make_data_dir(tmp_path / "data")
    return replace(settings, data_dir=data, local_roots_env=str(data / "local"))


def _train_span(history) -> tuple[float, float]:
    """When the last attempt of `train` started and when it completed (seconds)."""
    started = [
        e.event_time.ToMicroseconds() / 1e6
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    completed = [
        e.event_time.ToMicroseconds() / 1e6
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
    ]
    return started[-1], completed[-1]  # snapshot first, then train


def test_identical_configurations_side_by_side_and_relaunched_match_bit_for_bit(settings, tmp_path):
    """Two configurations identical but for their names train at once on one worker with the
    default settings (two runs at a time), then the same configuration is launched again
    alone: all three end with the same eval loss and accuracy, to the last bit."""
    cfg = own_data_dir(settings, tmp_path)
    assert cfg.max_concurrent_training == 2 and not cfg.threads_per_run_env  # the defaults
    twins = ExperimentRequest(
        name="twins", runs=[RunConfig(name="a", **TINY), RunConfig(name="b", **TINY)]
    )
    later = ExperimentRequest(name="later", runs=[RunConfig(name="c", **TINY)])

    async def scenario():
        async with workers(cfg) as client:
            first = await experiment_result(client, await start_experiment(client, twins, cfg))
            handles = [handle_of(client, r.training_workflow_id) for r in first.runs]
            spans = [_train_span(await h.fetch_history()) for h in handles]
            progress = [await h.query(TrainingWorkflow.progress) for h in handles]
            second = await experiment_result(client, await start_experiment(client, later, cfg))
            return first, spans, progress, second

    first, spans, progress, second = asyncio.run(scenario())
    runs = [*first.runs, *second.runs]
    assert [r.status for r in runs] == ["completed"] * 3, [(r.name, r.error) for r in runs]
    (a_start, a_end), (b_start, b_end) = spans
    overlap = min(a_end, b_end) - max(a_start, b_start)
    assert overlap > 0.5 * min(a_end - a_start, b_end - b_start), spans  # side by side
    metrics = {(r.final_step, r.eval.loss, r.eval.accuracy) for r in runs}
    assert len(metrics) == 1, [(r.name, r.eval) for r in runs]
    assert all(r.eval == runs[0].eval for r in runs)  # confusion matrices, F1... too
    # Each run's own memory, in its progress and in MLflow's system metrics.
    mlflow = MlflowClient(cfg.mlflow_tracking_uri)
    # The precision `auto` resolved to on this worker, in its progress and the MLflow run.
    expected = resolve_precision("auto", torch.device("cpu"))
    for run, p in zip(first.runs, progress, strict=True):
        assert p.threads == cfg.threads_per_run and p.worker == cfg.worker_name, p
        assert (p.precision, p.precision_reason) == (expected.precision, expected.reason), p
        tags = mlflow.get_run(run.mlflow_run_id).data.tags
        assert tags["bertfleet.precision"] == expected.precision, tags
        assert tags["bertfleet.precision_reason"] == expected.reason, tags
        assert 100 < p.memory_mb <= p.peak_memory_mb < 4000, p
        history = mlflow.get_metric_history(run.mlflow_run_id, "system/run_memory_rss_megabytes")
        peaks = mlflow.get_metric_history(run.mlflow_run_id, "system/run_memory_peak_rss_megabytes")
        assert history and all(100 < m.value < 4000 for m in history), history
        assert peaks and max(m.value for m in peaks) >= max(m.value for m in history), peaks
    print(f"three runs, one result: {metrics}")


def test_run_over_its_memory_limit_fails_alone_and_the_worker_keeps_serving(settings, tmp_path):
    """With BERTFLEET_RUN_MEMORY_LIMIT=1G, a run whose batches need about 1.8 GiB (long IMDb
    reviews, batch 64, max_length 512) is stopped in its first step, on both of its attempts,
    and fails with an out-of-memory message naming what to change. Its sibling, training on
    the same worker at the same time (about 0.6 GiB), completes with exactly the metrics of an
    uninterrupted run, and the worker trains the next experiment."""
    cfg = replace(own_data_dir(settings, tmp_path), run_memory_limit_env="1G")
    sibling = RunConfig(name="sibling", **TINY)
    hog = RunConfig(
        **{
            **TINY,
            "name": "hog",
            "dataset": "imdb-reviews",
            "max_train_samples": 128,
            "batch_size": 64,
            "max_length": 512,
            "precision": "fp32",  # so the advice names bf16 whatever this machine's default
        }
    )
    expected = {"sibling": reference(sibling, cfg)}
    req = ExperimentRequest(name="oom", heartbeat_timeout_s=10, runs=[sibling, hog])
    next_one = ExperimentRequest(
        name="after-oom", runs=[RunConfig(name="next", **{**TINY, "epochs": 1})]
    )

    async def scenario():
        async with workers(cfg, roles=("eval",)) as client:
            exp_id = await start_experiment(client, req, cfg)
            result = await experiment_result(client, exp_id)
            histories = {
                r.name: await handle_of(client, r.training_workflow_id).fetch_history()
                for r in result.runs
            }
            alive = trainer.proc.poll() is None
            after = await experiment_result(client, await start_experiment(client, next_one, cfg))
            progress = await handle_of(client, after.runs[0].training_workflow_id).query(
                TrainingWorkflow.progress
            )
            return result, histories, alive and trainer.proc.poll() is None, after, progress

    trainer = WorkerProcess(cfg, "training", tmp_path / "training.log")
    try:
        result, histories, alive, after, progress = asyncio.run(scenario())
    finally:
        trainer.stop()
    good, bad = result.runs
    assert not incoherence(
        result.model_copy(update={"runs": [good]}), expected, cfg.mlflow_tracking_uri
    )
    assert bad.status == "failed", bad
    assert "OutOfMemory: the run's process used" in bad.error, bad.error
    for words in ("BERTFLEET_RUN_MEMORY_LIMIT=1G", "batch_size (now 64)", "max_length (now 512)"):
        assert words in bad.error, bad.error
    assert "precision bf16" in bad.error and "the configuration fails" in bad.error, bad.error
    assert activity_attempts(histories["hog"], "train") == [2]  # retried once, then final
    assert activity_attempts(histories["sibling"], "train") == [1]
    tracked = MlflowClient(cfg.mlflow_tracking_uri).get_run(bad.mlflow_run_id)
    assert tracked.info.status == "FAILED" and "OutOfMemory: " in tracked.data.tags["error"]
    assert alive  # through the out-of-memory attempts and the next experiment
    assert after.runs[0].status == "completed", after.runs[0]
    assert progress.worker.endswith(f":{trainer.proc.pid}"), progress.worker
    print(f"out-of-memory error: {bad.error}")


@pytest.mark.fault
def test_sigterm_mid_run_checkpoints_the_current_step_and_the_retry_resumes_there(
    settings, tmp_path
):
    """SIGTERM to the training worker between two periodic checkpoints: its run finishes the
    step it is in, writes a checkpoint there and hands it over, the worker exits within its
    grace period, and the attempt on the next worker resumes from that very step (0 steps
    lost; the last periodic checkpoint would have cost the steps since). The result equals an
    uninterrupted run's."""
    cfg = own_data_dir(settings, tmp_path)
    # 1600 long IMDb reviews / 16 = 100 steps of about 0.1 s; periodic checkpoints every 25.
    config = RunConfig(
        **{
            **TINY,
            "name": "drained",
            "dataset": "imdb-reviews",
            "max_length": 256,
            "max_train_samples": 1600,
            "epochs": 1,
            "checkpoint_every_steps": 25,
        }
    )
    expected = {"drained": reference(config, cfg)}
    trace = tmp_path / "steps"
    req = ExperimentRequest(name="drain", heartbeat_timeout_s=10, runs=[config])
    store = CheckpointStore(cfg.checkpoint_root)

    started: list[WorkerProcess] = []

    def start_training_worker(n: int) -> WorkerProcess:
        started.append(
            fault_worker.start(cfg, "training", tmp_path / f"training-{n}.log", trace=trace)
        )
        return started[-1]

    async def scenario():
        async with workers(cfg, roles=("eval",)) as client:
            first = await asyncio.to_thread(start_training_worker, 0)
            exp_id = await start_experiment(client, req, cfg)
            run_key = f"{exp_id}/drained"

            async def past_a_checkpoint():
                return traced_step(trace, run_key) >= 35

            await apoll(past_a_checkpoint, 180, "the run to pass step 35")
            signalled_at = traced_step(trace, run_key)
            signalled = time.monotonic()
            first.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(first.proc.wait, 60)
            exited_s = time.monotonic() - signalled
            stopped_at = traced_step(trace, run_key)
            checkpoints = [c.step for c in store.checkpoints(run_key)]
            await asyncio.to_thread(start_training_worker, 1)
            result = await experiment_result(client, exp_id)
            handle = handle_of(client, result.runs[0].training_workflow_id)
            progress = await handle.query(TrainingWorkflow.progress)
            history = await handle.fetch_history()
            return signalled_at, code, exited_s, stopped_at, checkpoints, result, progress, history

    try:
        signalled_at, code, exited_s, stopped_at, checkpoints, result, progress, history = (
            asyncio.run(scenario())
        )
    finally:  # the replacement worker, and the first one if the test failed before its exit
        for worker in started:
            if worker.proc.poll() is None:
                worker.kill()
    assert code == 0 and exited_s < GRACEFUL_SHUTDOWN.total_seconds(), (code, exited_s)
    # The stop reached the run within a few steps of about 0.1 s (the worker's signal handler,
    # a message to the run process, the end of the step under way; more on a loaded machine),
    # and it checkpointed the step it had reached.
    assert signalled_at <= stopped_at <= signalled_at + 5, (signalled_at, stopped_at)
    assert checkpoints[-1] == stopped_at, checkpoints
    assert progress.attempt == 2 and progress.resumed_from_step == stopped_at  # 0 steps lost
    assert activity_attempts(history, "train") == [2]
    problems = incoherence(result, expected, cfg.mlflow_tracking_uri)
    assert not problems, "\n".join(problems)
    print(
        f"SIGTERM after step {signalled_at}: checkpoint at {stopped_at}, worker exited in "
        f"{exited_s:.1f}s, resumed from {progress.resumed_from_step}"
    )


pytestmark = pytest.mark.timeout(900)

"""End to end on a real Temporal dev server and MLflow server, with tiny-bert on real data."""

from __future__ import annotations

import asyncio

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError
from temporalio.worker import Replayer

from harness.polling import apoll
from harness.runs import HEARTBEAT_S, TINY
from harness.temporal import handle_of, workers
from orchestration.client import (
    cancel_run,
    experiment_progress,
    experiment_result,
    start_experiment,
)
from orchestration.types import ExperimentRequest, RunConfig
from orchestration.workflows import (
    CoordinatorWorkflow,
    EvalWorkflow,
    InferenceWorkflow,
    TrainingWorkflow,
)


async def _running(client, workflow_id) -> bool:
    status = (await client.get_workflow_handle(workflow_id).describe()).status
    return status == WorkflowExecutionStatus.RUNNING


def test_fan_out_fan_in_eval_starts_before_slower_sibling(settings):
    # "slow" has far more steps than it will ever train: it is cancelled once the event under
    # test (the fast configuration's evaluation starting) has been seen, so how fast either
    # one trains on this machine cannot decide the outcome.
    req = ExperimentRequest(
        name="fanout",
        runs=[
            RunConfig(name="fast", epochs=1, max_train_samples=64, seed=1, **TINY),
            RunConfig(name="slow", max_steps=100_000, max_train_samples=480, seed=1, **TINY),
        ],
    )

    async def scenario():
        async with workers(settings) as client:
            exp_id = await start_experiment(client, req, settings)
            fast_eval, slow_training = f"{exp_id}--fast--eval", f"{exp_id}--slow--train"
            await apoll(
                lambda: client.get_workflow_handle(fast_eval).describe(),
                300,
                "the fast configuration's evaluation to start",
                retry_on=(RPCError,),
            )
            slow_was_training = await _running(client, slow_training)
            await cancel_run(client, exp_id, "slow")
            result = await experiment_result(client, exp_id)
            histories = [
                await handle_of(client, wid).fetch_history()
                for wid in (exp_id, f"{exp_id}--fast--train", fast_eval, slow_training)
            ]
            return exp_id, result, slow_was_training, histories

    exp_id, result, slow_was_training, histories = asyncio.run(scenario())
    assert exp_id.startswith("experiment-fanout-")
    # The fast configuration's evaluation began while the slow one was still training.
    assert slow_was_training
    assert [r.status for r in result.runs] == ["completed", "cancelled"], result
    fast = result.runs[0]
    assert fast.eval is not None and 0.0 <= fast.eval.accuracy <= 1.0
    assert fast.eval.num_samples == 64 and fast.final_step == 4
    for run in result.runs:
        assert run.training_workflow_id == f"{exp_id}--{run.name}--train"
    # Recorded histories (a cancelled training among them) replay deterministically against
    # the current workflow code.
    replayer = Replayer(
        workflows=[CoordinatorWorkflow, TrainingWorkflow, EvalWorkflow, InferenceWorkflow],
        data_converter=_converter(),
    )
    for history in histories:
        asyncio.run(replayer.replay_workflow(history))


def _converter():
    from orchestration.converter import data_converter

    return data_converter


def test_bad_config_fails_alone_without_retries(settings):
    req = ExperimentRequest(
        name="badrow",
        runs=[
            RunConfig(name="good", epochs=1, max_train_samples=64, **TINY),
            RunConfig(
                name="bad-column", epochs=1, max_train_samples=64, label_field="stars", **TINY
            ),
        ],
    )

    async def scenario():
        async with workers(settings) as client:
            exp_id = await start_experiment(client, req, settings)
            result = await experiment_result(client, exp_id)
            bad = result.runs[1]
            history = await handle_of(client, bad.training_workflow_id).fetch_history()
            return result, history

    result, history = asyncio.run(scenario())
    good, bad = result.runs
    assert good.status == "completed" and good.eval.accuracy is not None
    assert bad.status == "failed"
    assert "label_field" in bad.error and "stars" in bad.error, bad.error
    started = [
        e for e in history.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    assert len(started) == 1 and started[0].activity_task_started_event_attributes.attempt == 1


# make test kills workers at every stage in tests/test_faults.py, checked against a reference run.
@pytest.mark.fault
@pytest.mark.fault_full
def test_killed_training_worker_resumes_from_checkpoint(settings, worker_processes):
    """SIGKILL the training worker mid-run; a new one continues from the last checkpoint, and
    the result equals an uninterrupted run of the same configuration."""
    cfg = dict(epochs=2, max_train_samples=480, seed=3, **TINY)  # 60 steps
    interrupted = ExperimentRequest(
        name="killed", heartbeat_timeout_s=HEARTBEAT_S, runs=[RunConfig(name="victim", **cfg)]
    )
    reference = ExperimentRequest(name="reference", runs=[RunConfig(name="victim", **cfg)])

    async def scenario():
        async with workers(settings, roles=("eval",)) as client:
            worker = worker_processes("training")
            exp_id = await start_experiment(client, interrupted, settings)

            async def checkpoint_step():
                progress = await experiment_progress(client, exp_id)
                t = progress.runs[0].training
                return t.checkpoint.step if t and t.checkpoint and t.checkpoint.step >= 10 else 0

            killed_at = await apoll(checkpoint_step, 180, "a checkpoint at step >= 10")
            worker.kill()
            worker_processes("training")

            async def resumed():
                t = (await experiment_progress(client, exp_id)).runs[0].training
                return t if t and t.attempt >= 2 and t.resumed_from_step else None

            after = await apoll(resumed, 120, "the second attempt to report progress")
            result = await experiment_result(client, exp_id)
            ref_id = await start_experiment(client, reference, settings)
            ref = await experiment_result(client, ref_id)
            return killed_at, after, result, ref

    killed_at, after, result, ref = asyncio.run(scenario())
    run = result.runs[0]
    assert run.status == "completed", run
    assert after.resumed_from_step >= killed_at, (after, killed_at)
    assert after.step >= after.resumed_from_step
    assert run.final_step == 60
    assert run.eval.accuracy == ref.runs[0].eval.accuracy
    assert run.eval.loss == ref.runs[0].eval.loss

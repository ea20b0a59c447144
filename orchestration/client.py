"""Client-side API shared by the CLI and the Gradio app: launch, watch, cancel, predict.

Everything here talks to Temporal only; live progress merges the coordinator's view (status of
each configuration) with each running TrainingWorkflow's (step, loss, checkpoint).
"""

from __future__ import annotations

import asyncio
import uuid

from temporalio.client import (
    Client,
    TLSConfig,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
)
from temporalio.service import RPCError, RPCStatusCode

from orchestration.converter import data_converter
from orchestration.input_checks import check_name
from orchestration.search import start_searchable
from orchestration.settings import Settings, settings
from orchestration.timeouts import INFERENCE_TIMEOUT, QUERY_TIMEOUT
from orchestration.types import (
    ExperimentProgress,
    ExperimentRequest,
    ExperimentResult,
    InferenceRequest,
    InferenceResult,
    TrainingProgress,
)
from orchestration.workflows import CoordinatorWorkflow, InferenceWorkflow, TrainingWorkflow


async def connect(cfg: Settings | None = None) -> Client:
    cfg = cfg or settings()
    tls: TLSConfig | bool = False
    if cfg.temporal_tls_cert or cfg.temporal_tls_ca:
        tls = TLSConfig(
            server_root_ca_cert=_read(cfg.temporal_tls_ca),
            client_cert=_read(cfg.temporal_tls_cert),
            client_private_key=_read(cfg.temporal_tls_key),
        )
    return await Client.connect(
        cfg.temporal_address,
        namespace=cfg.temporal_namespace,
        data_converter=data_converter,
        tls=tls or bool(cfg.temporal_api_key),
        api_key=cfg.temporal_api_key or None,
    )


def _read(path: str) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def experiment_id_for(name: str) -> str:
    """Readable and unique: `experiment-<name>-<8 hex>`."""
    return f"experiment-{name}-{uuid.uuid4().hex[:8]}"


async def start_experiment(
    client: Client, req: ExperimentRequest, cfg: Settings | None = None
) -> str:
    """Start an experiment, searchable by its name (orchestration.search) where the namespace
    has the attributes; where it has not, it runs all the same and a warning says why."""
    cfg = cfg or settings()
    experiment_id = experiment_id_for(req.name)
    await start_searchable(
        client,
        CoordinatorWorkflow.run,
        req,
        req.name,
        id=experiment_id,
        task_queue=cfg.eval_queue,
        memo={"training_queue": cfg.training_queue, "experiment_name": req.name},
    )
    return experiment_id


async def experiment_result(client: Client, experiment_id: str) -> ExperimentResult:
    return await client.get_workflow_handle(experiment_id, result_type=ExperimentResult).result()


async def training_progress(client: Client, workflow_id: str) -> TrainingProgress | None:
    try:
        return await client.get_workflow_handle(workflow_id).query(
            TrainingWorkflow.progress, rpc_timeout=QUERY_TIMEOUT
        )
    except RPCError:
        return None  # not started yet, or no worker to answer right now


async def experiment_progress(client: Client, experiment_id: str) -> ExperimentProgress:
    """The coordinator's view, with step/loss/checkpoint filled in from running trainings."""
    handle = client.get_workflow_handle(experiment_id)
    progress: ExperimentProgress | None = await handle.query(
        CoordinatorWorkflow.progress, rpc_timeout=QUERY_TIMEOUT
    )
    if progress is None:  # the coordinator has not run its first task yet
        raise RuntimeError(f"experiment {experiment_id} has not started yet; try again shortly")
    running = [
        (r, r.training_workflow_id)
        for r in progress.runs
        if r.status in ("training", "evaluating") and r.training_workflow_id
    ]
    found = await asyncio.gather(*(training_progress(client, wid) for _, wid in running))
    for (run, _), training in zip(running, found, strict=True):
        if training is not None:
            run.training = training
            if run.status == "training" and training.phase in ("queued", "snapshotting"):
                run.status = "snapshotting"
    return progress


async def list_experiments(client: Client, limit: int = 20) -> list[tuple[str, str]]:
    """Recent experiments, newest first, as (workflow id, status)."""
    found = []
    async for wf in client.list_workflows("WorkflowType = 'CoordinatorWorkflow'", limit=limit):
        status = wf.status.name.lower() if isinstance(wf.status, WorkflowExecutionStatus) else "?"
        found.append((wf.id, status))
    return found


class NotAnExperiment(ValueError):
    """The id names no running experiment (unknown, another kind of workflow, or ended)."""


_LIST_HINT = (
    "list them with `temporal workflow list --query \"WorkflowType='CoordinatorWorkflow'\"`"
)


async def experiment_handle(
    client: Client, experiment_id: str
) -> tuple[WorkflowHandle, WorkflowExecutionDescription]:
    """The handle of a running experiment; NotAnExperiment, naming the field, for an id that is
    unknown, belongs to another workflow (a training run, a prediction) or has ended."""
    try:
        check_name("experiment_id", experiment_id)
    except ValueError as err:
        raise NotAnExperiment(str(err)) from None
    handle = client.get_workflow_handle(experiment_id)
    try:
        described = await handle.describe()
    except RPCError as err:
        if err.status not in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
            raise
        raise NotAnExperiment(
            f"experiment_id: no experiment {experiment_id!r}; {_LIST_HINT}"
        ) from None
    if described.workflow_type != "CoordinatorWorkflow":
        raise NotAnExperiment(
            f"experiment_id: {experiment_id!r} is a {described.workflow_type}, not an "
            f"experiment; give an experiment id (experiment-<name>-<8 hex>), {_LIST_HINT}"
        )
    if described.status != WorkflowExecutionStatus.RUNNING:
        state = described.status.name.lower() if described.status else "not running"
        raise NotAnExperiment(f"experiment_id: experiment {experiment_id} is already {state}")
    return handle, described


async def cancel_experiment(client: Client, experiment_id: str) -> None:
    handle, _ = await experiment_handle(client, experiment_id)
    await handle.cancel()


async def cancel_run(client: Client, experiment_id: str, name: str) -> None:
    handle, _ = await experiment_handle(client, experiment_id)
    await handle.signal(CoordinatorWorkflow.cancel_run, name)


async def predict(
    client: Client, req: InferenceRequest, cfg: Settings | None = None
) -> InferenceResult:
    cfg = cfg or settings()
    return await client.execute_workflow(
        InferenceWorkflow.run,
        req,
        id=f"inference-{uuid.uuid4().hex[:12]}",
        task_queue=cfg.eval_queue,
        execution_timeout=INFERENCE_TIMEOUT,
    )

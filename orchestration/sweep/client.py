"""Client-side API of sweeps, for the CLI and the app: start, watch, cancel, wait."""

from __future__ import annotations

import uuid

from temporalio.client import Client

from orchestration.search import start_searchable
from orchestration.settings import Settings, settings
from orchestration.sweep.types import SweepInput, SweepProgress, SweepRequest, SweepResult
from orchestration.sweep.workflow import SweepWorkflow
from orchestration.timeouts import QUERY_TIMEOUT


def sweep_id_for(name: str) -> str:
    """Readable and unique: `sweep-<name>-<8 hex>`."""
    return f"sweep-{name}-{uuid.uuid4().hex[:8]}"


async def start_sweep(client: Client, req: SweepRequest, cfg: Settings | None = None) -> str:
    """Start a SweepWorkflow on the coordinator's (eval) queue, searchable by the sweep's name
    (orchestration.search); its workflow id."""
    cfg = cfg or settings()
    sweep_id = sweep_id_for(req.name)
    await start_searchable(
        client,
        SweepWorkflow.run,
        SweepInput(request=req),
        req.name,
        id=sweep_id,
        task_queue=cfg.eval_queue,
        memo={"training_queue": cfg.training_queue, "experiment_name": req.name},
    )
    return sweep_id


async def sweep_progress(client: Client, sweep_id: str) -> SweepProgress:
    progress: SweepProgress | None = await client.get_workflow_handle(sweep_id).query(
        SweepWorkflow.progress, rpc_timeout=QUERY_TIMEOUT
    )
    if progress is None:
        raise RuntimeError(f"sweep {sweep_id} has not started yet; try again shortly")
    return progress


async def sweep_result(client: Client, sweep_id: str) -> SweepResult:
    """The result, following continue-as-new to the last run."""
    return await client.get_workflow_handle(sweep_id, result_type=SweepResult).result()


async def cancel_trial(client: Client, sweep_id: str, name: str) -> None:
    await client.get_workflow_handle(sweep_id).signal(SweepWorkflow.cancel_trial, name)


async def cancel_sweep(client: Client, sweep_id: str) -> None:
    await client.get_workflow_handle(sweep_id).cancel()


async def list_sweeps(client: Client, limit: int = 20) -> list[tuple[str, str]]:
    """Recent sweeps, newest first, as (workflow id, status); a sweep continued as new is
    listed once per run (the running one first)."""
    found = []
    async for wf in client.list_workflows("WorkflowType = 'SweepWorkflow'", limit=limit):
        status = wf.status.name.lower() if wf.status is not None else "?"
        found.append((wf.id, status))
    return found

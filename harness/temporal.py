"""Temporal from inside a test's own process: workers on its event loop, and look-ups."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from temporalio.client import Client, WorkflowHandle, WorkflowHistory

from orchestration.client import connect
from orchestration.deployment import promote_on_start
from orchestration.settings import Settings
from orchestration.types import RunResult
from orchestration.workers import build_worker


@asynccontextmanager
async def workers(
    cfg: Settings, roles: Sequence[str] = ("training", "eval")
) -> AsyncIterator[Client]:
    """Workers of `roles` running in this event loop while the block runs; yields their
    client; their version is made current as a worker process does it (BERTFLEET_PROMOTE).
    (Worker processes, which a test can kill, are harness.processes.WorkerProcess.)"""
    client = await connect(cfg)
    async with AsyncExitStack() as stack:
        for role in roles:
            await stack.enter_async_context(build_worker(client, role, cfg))
        await promote_on_start(client, cfg)
        yield client


def coordinator_count(cfg: Settings, workflow_type: str = "CoordinatorWorkflow") -> int:
    """How many experiments (coordinator workflows; or sweeps, with "SweepWorkflow") Temporal
    knows, running or closed."""

    async def count() -> int:
        client = await connect(cfg)
        query = f"WorkflowType = '{workflow_type}'"
        return len([wf async for wf in client.list_workflows(query)])

    # In a thread of its own: Playwright's sync API keeps an event loop in the test's thread.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, count()).result()


def handle_of(client: Client, workflow_id: str | None) -> WorkflowHandle[Any, Any]:
    """The handle of a configuration's training or eval workflow, whose id a result or progress
    report gives once the workflow has started."""
    assert workflow_id is not None, "the workflow has not started"
    return client.get_workflow_handle(workflow_id)


async def training_histories(
    client: Client, runs: Sequence[RunResult]
) -> tuple[dict[str, WorkflowHistory], dict[str, float]]:
    """For each configuration of an ended experiment: its training workflow's history, and the
    seconds that workflow ran (start to close)."""
    histories, seconds = {}, {}
    for run in runs:
        handle = handle_of(client, run.training_workflow_id)
        histories[run.name] = await handle.fetch_history()
        described = await handle.describe()
        assert described.close_time is not None, f"{run.name}: training has not ended"
        seconds[run.name] = (described.close_time - described.start_time).total_seconds()
    return histories, seconds

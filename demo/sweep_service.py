"""The app's side of a sweep: launch it, list it, watch it, cancel a trial or all of it.

Calls go through the engine's client (orchestration/sweep/client.py). Progress comes only from
the SweepWorkflow's `progress` query, as an experiment's does from its coordinator's; once a
sweep has ended its progress is kept, since it no longer changes. Whether an id names a sweep or
an experiment is asked of Temporal once (the workflow's type) and kept.
"""

from __future__ import annotations

import threading

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from demo.backend import Backend
from orchestration.input_checks import check_name
from orchestration.sweep.client import (
    cancel_sweep,
    cancel_trial,
    list_sweeps,
    start_sweep,
    sweep_progress,
    sweep_result,
)
from orchestration.sweep.types import SweepProgress, SweepRequest, SweepResult

SWEEP_WORKFLOW = "SweepWorkflow"
_LIST_HINT = f"list them with `temporal workflow list --query \"WorkflowType='{SWEEP_WORKFLOW}'\"`"


class NotASweep(ValueError):
    """The id names no running sweep (unknown, another kind of workflow, or ended)."""


class Sweeps:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._lock = threading.Lock()
        self._kinds: dict[str, str] = {}  # workflow id -> workflow type
        self._final: dict[str, SweepProgress] = {}
        self._results: dict[str, SweepResult] = {}

    def launch(self, req: SweepRequest) -> str:
        """Start the SweepWorkflow; its workflow id."""

        async def start(client: Client) -> str:
            return await start_sweep(client, req, self.backend.cfg)

        sweep_id = self.backend.call(start)
        with self._lock:
            self._kinds[sweep_id] = SWEEP_WORKFLOW
        return sweep_id

    def list(self, limit: int = 30) -> list[tuple[str, str]]:
        """Recent sweeps, newest first, as (workflow id, status); a sweep that continued as new
        is listed once, with its latest run's status."""
        seen: dict[str, str] = {}
        for wid, status in self.backend.call(list_sweeps, limit * 2):
            if wid not in seen or seen[wid] == "continued_as_new":
                seen[wid] = status
        sweeps = list(seen.items())[:limit]
        with self._lock:
            self._kinds.update({wid: SWEEP_WORKFLOW for wid, _ in sweeps})
        return sweeps

    def is_sweep(self, workflow_id: str) -> bool:
        """Whether the id names a SweepWorkflow (asked of Temporal once, then kept)."""
        if workflow_id not in self._kinds:

            async def kind(client: Client) -> str:
                try:
                    described = await client.get_workflow_handle(workflow_id).describe()
                except RPCError as err:
                    if err.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
                        return "unknown"
                    raise
                return described.workflow_type

            found = self.backend.call(kind)
            if found == "unknown":
                return False
            with self._lock:
                self._kinds[workflow_id] = found
        return self._kinds[workflow_id] == SWEEP_WORKFLOW

    def progress(self, sweep_id: str) -> SweepProgress:
        """The workflow's own view (trials, rungs, best, steps); kept once the sweep ended."""
        if sweep_id in self._final:
            return self._final[sweep_id]
        progress = self.backend.call(sweep_progress, sweep_id, timeout=10)
        if progress.status != "running":
            with self._lock:
                self._final[sweep_id] = progress
        return progress

    def result(self, sweep_id: str) -> SweepResult | None:
        """The sweep's result once it has ended; None while it runs."""
        if sweep_id not in self._results:
            if self.progress(sweep_id).status == "running":
                return None
            self._results[sweep_id] = self.backend.call(sweep_result, sweep_id)
        return self._results[sweep_id]

    def cancel_trial(self, sweep_id: str, trial: str) -> None:
        """Stop one trial (it ends `cancelled`); the sweep carries on with the others."""

        async def signal(client: Client) -> None:
            await _check_running(client, sweep_id)
            await cancel_trial(client, sweep_id, trial)

        self.backend.call(signal)

    def cancel(self, sweep_id: str) -> None:
        """Cancel the whole sweep: its running trials stop, nothing new starts."""

        async def cancel(client: Client) -> None:
            await _check_running(client, sweep_id)
            await cancel_sweep(client, sweep_id)

        self.backend.call(cancel)


async def _check_running(client: Client, sweep_id: str) -> None:
    """NotASweep, naming the field, unless the id names a running sweep."""
    try:
        check_name("sweep_id", sweep_id)
    except ValueError as err:
        raise NotASweep(str(err)) from None
    handle = client.get_workflow_handle(sweep_id)
    try:
        described = await handle.describe()
    except RPCError as err:
        if err.status not in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
            raise
        raise NotASweep(f"sweep_id: no sweep {sweep_id!r}; {_LIST_HINT}") from None
    if described.workflow_type != SWEEP_WORKFLOW:
        raise NotASweep(
            f"sweep_id: {sweep_id!r} is a {described.workflow_type}, not a sweep; {_LIST_HINT}"
        )
    if described.status != WorkflowExecutionStatus.RUNNING:
        state = described.status.name.lower() if described.status else "not running"
        raise NotASweep(f"sweep_id: sweep {sweep_id} is already {state}")

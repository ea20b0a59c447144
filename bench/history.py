"""When things happened on the Temporal side, read back from workflow histories.

Every activity's and workflow task's scheduled, started and closed times are in its
workflow's history (server clock; the server runs on this machine, so it agrees with
time.time() here).
"""

from __future__ import annotations

from dataclasses import dataclass

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

_CLOSED = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "activity_task_completed_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: "activity_task_failed_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: "activity_task_timed_out_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED: "activity_task_canceled_event_attributes",
}


@dataclass
class ActivitySpan:
    name: str
    scheduled: float
    started: float | None = None
    closed: float | None = None
    attempt: int = 1


@dataclass
class WorkflowTaskSpan:
    scheduled: float
    started: float | None = None
    completed: float | None = None

    def times(self) -> tuple[float, float, float]:
        """(scheduled, started, completed), for a task known to have completed."""
        if self.started is None or self.completed is None:
            raise RuntimeError("bench: the workflow task has not completed yet")
        return self.scheduled, self.started, self.completed


@dataclass
class WorkflowTimes:
    started: float
    closed: float
    activities: list[ActivitySpan]
    workflow_tasks: list[WorkflowTaskSpan]

    def activity(self, name: str) -> ActivitySpan:
        return next(a for a in self.activities if a.name == name)


def _seconds(event) -> float:
    return event.event_time.ToMicroseconds() / 1e6


async def workflow_times(client: Client, workflow_id: str) -> WorkflowTimes:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    spans: dict[int, ActivitySpan] = {}
    tasks: list[WorkflowTaskSpan] = []
    for e in history.events:
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
            tasks.append(WorkflowTaskSpan(_seconds(e)))
        elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            tasks[-1].started = _seconds(e)
        elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            tasks[-1].completed = _seconds(e)
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            name = e.activity_task_scheduled_event_attributes.activity_type.name
            spans[e.event_id] = ActivitySpan(name, _seconds(e))
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attrs = e.activity_task_started_event_attributes
            span = spans[attrs.scheduled_event_id]
            span.started, span.attempt = _seconds(e), attrs.attempt
        elif e.event_type in _CLOSED:
            attrs = getattr(e, _CLOSED[e.event_type])
            spans[attrs.scheduled_event_id].closed = _seconds(e)
    events = history.events
    return WorkflowTimes(_seconds(events[0]), _seconds(events[-1]), list(spans.values()), tasks)


async def recent(client: Client, workflow_type: str, limit: int) -> list[WorkflowTimes]:
    """The newest `limit` closed executions of `workflow_type`, timed."""
    ids = [
        wf.id
        async for wf in client.list_workflows(
            f"WorkflowType = '{workflow_type}' AND ExecutionStatus = 'Completed'", limit=limit
        )
    ]
    return [await workflow_times(client, wid) for wid in ids]


async def pending_attempt(client: Client, workflow_id: str, activity: str):
    """The pending activity's info (attempt, heartbeat and attempt times), or None."""
    desc = await client.get_workflow_handle(workflow_id).describe()
    for info in desc.raw_description.pending_activities:
        if info.activity_type.name == activity:
            return info
    return None

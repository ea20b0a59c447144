"""One way to reach MLflow: an explicit client per tracking URI, bounded timeouts, clear errors.

Activities run in worker processes where several trainings share one process, so nothing here
touches MLflow's fluent (process-global) active-run API: every call names its tracking URI and
run id. MLflow reads its HTTP limits from the environment on every request; `tracking/__init__`
sets short defaults so a dead server costs seconds, not the library's default minutes.
"""

from __future__ import annotations

from functools import lru_cache

from mlflow import MlflowClient
from mlflow.exceptions import RestException

# Tag keys shared by the writer (runs.py) and the reader (reader.py).
TAG_KIND = "bertfleet.kind"  # "experiment" on the parent run, "config" on each child
TAG_CONFIG = "bertfleet.config"
TAG_CONFIGS = "bertfleet.configs"
TAG_EXPERIMENT_ID = "temporal.experiment_id"
TAG_WORKFLOW_ID = "temporal.workflow_id"
TAG_TRAINING_WF = "temporal.training_workflow_id"
TAG_EVAL_WF = "temporal.eval_workflow_id"
TAG_UI = "temporal.ui"
TAG_TRAINING_UI = "temporal.training_ui"
TAG_EVAL_UI = "temporal.eval_ui"
TAG_PARENT = "mlflow.parentRunId"
TAG_ERROR = "error"
TAG_CHECKPOINT = "checkpoint.latest"
TAG_STOP_REASON = "bertfleet.stop_reason"  # done, or early_stopping
TAG_SELECTED_STEP = "bertfleet.selected_step"  # the published checkpoint's, with select_best_by
TAG_SELECTED_VALUE = "bertfleet.selected_value"  # its validation metric
TAG_PRECISION = "bertfleet.precision"  # what the configuration's precision resolved to
TAG_PRECISION_REASON = "bertfleet.precision_reason"

# Server-side answers that a retry cannot change (anything else, e.g. a refused connection or a
# 5xx, is treated as the server being away for a while).
_PERMANENT_CODES = {
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_DOES_NOT_EXIST",
    "RESOURCE_ALREADY_EXISTS",
    "INVALID_STATE",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "BAD_REQUEST",
    "ENDPOINT_NOT_FOUND",
    "INVALID_REQUEST",
}


class TrackingError(RuntimeError):
    """MLflow refused or lost tracking data; the message says what and how much."""


class TrackingUnavailable(TrackingError):
    """The tracking server could not be reached in time; `pending` points were not delivered."""

    def __init__(self, message: str, pending: int = 0) -> None:
        super().__init__(message)
        self.pending = pending


@lru_cache(maxsize=32)
def client(tracking_uri: str) -> MlflowClient:
    """The client for one server. MlflowClient holds no per-run state, so threads may share it."""
    if not tracking_uri:
        raise TrackingError(
            "tracking_uri is empty; set MLFLOW_TRACKING_URI (e.g. http://127.0.0.1:5000)"
        )
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def is_permanent(err: BaseException) -> bool:
    """True when the server answered and said no (retrying would get the same answer)."""
    return isinstance(err, RestException) and err.error_code in _PERMANENT_CODES


def workflow_ui_link(temporal_ui_url: str, workflow_id: str, namespace: str = "default") -> str:
    """The Temporal UI page of one workflow (all its runs and retries)."""
    return f"{temporal_ui_url.rstrip('/')}/namespaces/{namespace}/workflows/{workflow_id}"


def filter_value(value: str) -> str:
    """A value for a single-quoted MLflow search filter (whose grammar has no escape for ')."""
    if "'" in value:
        raise TrackingError(f"{value!r}: quotes are not allowed in MLflow names and ids")
    return value

"""Everything MLflow: run lifecycle, buffered metrics, results and models, reading runs back.

Callers pass the tracking URI explicitly everywhere (no fluent/global MLflow state), so several
trainings in threads of one worker process each write to their own run.

MLflow reads its HTTP limits from the environment on each request. Its defaults (120 s timeout,
7 retries with long backoff) can hold a caller for many minutes when the server is down; these
defaults bound one call to roughly 3-5 s against a dead server and ~35 s against a hung one,
while still riding out a blip. Values already set in the environment win.
"""

import os

from orchestration.environment import apply_defaults

apply_defaults()  # no telemetry, also when tracking is imported on its own

os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
# MlflowClient.set_terminated prints "View run ... at ..." to stdout; workers have no use for it.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # tqdm bars in worker logs

from tracking.buffer import MetricsLogger
from tracking.client import TrackingError, TrackingUnavailable
from tracking.models import (
    download_model,
    log_eval,
    log_model,
    registered_model_name,
    version_tags,
)
from tracking.reader import (
    compare_url,
    finished_runs_with_models,
    list_experiments,
    list_runs,
    metric_history,
)
from tracking.registry import CHAMPION, list_aliases, set_alias, set_champion
from tracking.runs import (
    finish_run,
    log_snapshot,
    log_training_outcome,
    open_config_run,
    open_experiment,
    run_status,
)
from tracking.system import start_system_metrics

__all__ = [
    "CHAMPION",
    "MetricsLogger",
    "TrackingError",
    "TrackingUnavailable",
    "compare_url",
    "download_model",
    "finish_run",
    "finished_runs_with_models",
    "list_aliases",
    "list_experiments",
    "list_runs",
    "log_eval",
    "log_model",
    "log_snapshot",
    "log_training_outcome",
    "metric_history",
    "open_config_run",
    "open_experiment",
    "registered_model_name",
    "run_status",
    "set_alias",
    "set_champion",
    "start_system_metrics",
    "version_tags",
]

"""Reading runs back for the UI: small plain records, never MLflow entities.

The Gradio app shows lists and tables and links into the MLflow UI (the comparison view), so
what it needs is a handful of fields per run; these functions fetch them in a few calls.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from urllib.parse import quote

from mlflow.entities import ViewType
from mlflow.exceptions import RestException

from tracking.client import (
    TAG_ERROR,
    TAG_EVAL_WF,
    TAG_EXPERIMENT_ID,
    TAG_KIND,
    TAG_PARENT,
    TAG_TRAINING_WF,
    client,
)
from tracking.models import TAG_MODEL_URI

# A summary of a configuration, in this order, for pickers ("tiny-bert movie-snippets lr=...").
_SUMMARY_PARAMS = (
    ("model", ""),
    ("dataset", ""),
    ("learning_rate", "lr="),
    ("epochs", "epochs="),
    ("batch_size", "bs="),
    ("max_length", "len="),
)


@dataclass(frozen=True)
class ExperimentSummary:
    experiment_id: str
    name: str
    last_update_time: int | None


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    name: str
    status: str  # RUNNING, FINISHED, FAILED, KILLED, SCHEDULED
    experiment_id: str
    kind: str | None  # "experiment" (parent run), "config", or None for foreign runs
    parent_run_id: str | None
    temporal_experiment_id: str | None
    training_workflow_id: str | None
    eval_workflow_id: str | None
    model_uri: str | None
    error: str | None
    start_time: int | None
    end_time: int | None
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # latest value per key


@dataclass(frozen=True)
class ModelChoice:
    """A finished run with a registered model, as the try-inference picker lists it."""

    model_uri: str
    run_id: str
    run_name: str
    experiment_name: str
    summary: str
    eval_accuracy: float | None


def list_experiments(tracking_uri: str) -> list[ExperimentSummary]:
    """Active experiments, most recently updated first."""
    exps = client(tracking_uri).search_experiments(
        view_type=ViewType.ACTIVE_ONLY, order_by=["last_update_time DESC"]
    )
    return [ExperimentSummary(e.experiment_id, e.name, e.last_update_time) for e in exps]


def list_runs(tracking_uri: str, experiment_name_or_id: str) -> list[RunSummary]:
    """Runs of one experiment (parent and children), newest first; [] if there is none."""
    c = client(tracking_uri)
    exp = c.get_experiment_by_name(experiment_name_or_id)
    if exp is None:
        try:
            exp = c.get_experiment(experiment_name_or_id)
        except RestException as err:  # not an id either (ids are integers on this server)
            if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return []
            raise
    runs = c.search_runs(
        [exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1000
    )
    return [_summary(r) for r in runs]


def finished_runs_with_models(tracking_uri: str) -> list[ModelChoice]:
    """Every FINISHED run that registered a model, best eval accuracy first."""
    c = client(tracking_uri)
    names = {e.experiment_id: e.name for e in c.search_experiments(view_type=ViewType.ACTIVE_ONLY)}
    if not names:
        return []
    runs = c.search_runs(
        list(names),
        filter_string=f"attributes.status = 'FINISHED' and tags.`{TAG_MODEL_URI}` LIKE 'models:/%'",
        max_results=1000,
    )
    choices = [
        ModelChoice(
            model_uri=r.data.tags[TAG_MODEL_URI],
            run_id=r.info.run_id,
            run_name=r.info.run_name or r.info.run_id,
            experiment_name=names[r.info.experiment_id],
            summary=summarize(r.data.params),
            eval_accuracy=r.data.metrics.get("eval_accuracy"),
        )
        for r in runs
    ]
    return sorted(choices, key=lambda m: -(m.eval_accuracy if m.eval_accuracy is not None else -1))


def summarize(params: dict[str, str]) -> str:
    """A configuration in a few words, from its params as logged (`str` of each RunConfig
    field): "tiny-bert <dataset> lr=5e-05 epochs=1.0 bs=16 len=64"."""
    return " ".join(f"{prefix}{params[k]}" for k, prefix in _SUMMARY_PARAMS if k in params)


def metric_history(tracking_uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) pairs of one metric, by step."""
    history = client(tracking_uri).get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in history)


def compare_url(
    tracking_uri: str, experiment_id: str, run_ids: list[str], ui_url: str | None = None
) -> str:
    """The MLflow UI's compare-runs page for `run_ids` (parallel coordinates, charts, diffs).

    `ui_url` is where a browser reaches MLflow, when that differs from the tracking URI.
    """

    def encode(values: list[str]) -> str:  # the UI reads the same JSON it writes
        return quote(json.dumps(values, separators=(",", ":")))

    base = (ui_url or tracking_uri).rstrip("/")
    return f"{base}/#/compare-runs?runs={encode(run_ids)}&experiments={encode([experiment_id])}"


def _summary(run) -> RunSummary:
    tags = run.data.tags
    return RunSummary(
        run_id=run.info.run_id,
        name=run.info.run_name or run.info.run_id,
        status=run.info.status,
        experiment_id=run.info.experiment_id,
        kind=tags.get(TAG_KIND),
        parent_run_id=tags.get(TAG_PARENT),
        temporal_experiment_id=tags.get(TAG_EXPERIMENT_ID),
        training_workflow_id=tags.get(TAG_TRAINING_WF),
        eval_workflow_id=tags.get(TAG_EVAL_WF),
        model_uri=tags.get(TAG_MODEL_URI),
        error=tags.get(TAG_ERROR),
        start_time=run.info.start_time,
        end_time=run.info.end_time,
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
    )

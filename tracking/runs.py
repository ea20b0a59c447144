"""Experiment and run lifecycle, safe to repeat.

Temporal retries activities, and an attempt may die after MLflow created something but before
Temporal recorded the result. So every "open" first looks for what an earlier attempt created
(by tags carrying the Temporal ids) and only then creates; repeating a call converges on the
same experiment, parent run and child runs. Params are immutable in MLflow; re-logging the same
value is accepted by the server, so a retry re-logs everything and a genuinely different value
fails loudly instead of being silently kept.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from orchestration.types import RunConfig, Snapshot, TrainingResult
from tracking.client import (
    TAG_CONFIG,
    TAG_CONFIGS,
    TAG_ERROR,
    TAG_EVAL_UI,
    TAG_EVAL_WF,
    TAG_EXPERIMENT_ID,
    TAG_KIND,
    TAG_PARENT,
    TAG_SELECTED_STEP,
    TAG_SELECTED_VALUE,
    TAG_STOP_REASON,
    TAG_TRAINING_UI,
    TAG_TRAINING_WF,
    TAG_UI,
    TAG_WORKFLOW_ID,
    TrackingError,
    client,
    filter_value,
    workflow_ui_link,
)

FINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
# MLflow limits (mlflow.utils.validation): dataset digests are at most 36 characters, param
# values 6000; longer values are cut here rather than rejected by the server.
_MAX_DIGEST = 36
_MAX_PARAM = 6000
# Every run gets exactly these snapshot params, so all runs share one param key set and the
# MLflow compare views line them up.
SNAPSHOT_PARAM_KEYS = (
    "schema.text_field",
    "schema.text_pair_field",
    "schema.label_field",
    "schema.task_type",
    "schema.num_labels",
    "schema.label_names",
    "snapshot_id",
    "model_source",
    "split",
    "train_rows",
    "eval_rows",
)


def open_experiment(
    tracking_uri: str,
    name: str,
    temporal_experiment_id: str,
    temporal_ui_url: str,
    config_names: Sequence[str],
    *,
    temporal_namespace: str = "default",
) -> tuple[str, str]:
    """The MLflow experiment `name` and this Temporal experiment's parent run: (exp id, run id).

    Its tags link to the coordinator in the Temporal UI of `temporal_namespace`."""
    c = client(tracking_uri)
    experiment_id = _experiment_id(c, name)
    run_id = _find_or_create_run(
        c,
        experiment_id,
        run_name=temporal_experiment_id,
        match={TAG_EXPERIMENT_ID: temporal_experiment_id, TAG_KIND: "experiment"},
        tags={
            TAG_WORKFLOW_ID: temporal_experiment_id,
            TAG_UI: workflow_ui_link(temporal_ui_url, temporal_experiment_id, temporal_namespace),
            TAG_CONFIGS: ",".join(config_names),
        },
    )
    return experiment_id, run_id


def open_config_run(
    tracking_uri: str,
    mlflow_experiment_id: str,
    parent_run_id: str,
    cfg: RunConfig,
    temporal_experiment_id: str,
    training_workflow_id: str,
    eval_workflow_id: str,
    temporal_ui_url: str,
    *,
    temporal_namespace: str = "default",
) -> str:
    """The child run of one configuration, with every RunConfig field as a param; its tags link
    to its workflows in the Temporal UI of `temporal_namespace`."""
    c = client(tracking_uri)

    def ui(workflow_id: str) -> str:
        return workflow_ui_link(temporal_ui_url, workflow_id, temporal_namespace)

    run_id = _find_or_create_run(
        c,
        mlflow_experiment_id,
        run_name=cfg.name,
        match={TAG_EXPERIMENT_ID: temporal_experiment_id, TAG_CONFIG: cfg.name},
        tags={
            TAG_KIND: "config",
            TAG_PARENT: parent_run_id,
            TAG_WORKFLOW_ID: temporal_experiment_id,
            TAG_TRAINING_WF: training_workflow_id,
            TAG_EVAL_WF: eval_workflow_id,
            TAG_UI: ui(temporal_experiment_id),
            TAG_TRAINING_UI: ui(training_workflow_id),
            TAG_EVAL_UI: ui(eval_workflow_id),
        },
    )
    _log_params(c, run_id, cfg.model_dump())
    return run_id


def log_snapshot(tracking_uri: str, run_id: str, snapshot: Snapshot, model_source: str) -> None:
    """What the run trains on: schema params, a dataset input whose digest is the snapshot id
    and whose profile carries the dataset card (rows, removed rows, label balance, split), and
    the card itself as `dataset_card.md` / `dataset_card.json` artifacts."""
    schema = snapshot.schema_
    values = {
        "schema.text_field": schema.text_field,
        "schema.text_pair_field": schema.text_pair_field,
        "schema.label_field": schema.label_field,
        "schema.task_type": schema.task_type,
        "schema.num_labels": schema.num_labels,
        "schema.label_names": _label_names_param(schema.label_names),
        "snapshot_id": snapshot.snapshot_id,
        "model_source": model_source,
        "split": snapshot.split,
        "train_rows": snapshot.train_rows,
        "eval_rows": snapshot.eval_rows,
    }
    assert tuple(values) == SNAPSHOT_PARAM_KEYS
    c = client(tracking_uri)
    _log_params(c, run_id, values)
    dataset = Dataset(
        name=snapshot.dataset,
        digest=snapshot.snapshot_id[:_MAX_DIGEST],
        source_type="local",  # the MLflow UI shows {"uri": ...} of a "local" source as a path
        source=json.dumps({"uri": snapshot.source}),
        schema=schema.model_dump_json(),
        profile=json.dumps(_profile(snapshot)),
    )
    tags = [
        InputTag(MLFLOW_DATASET_CONTEXT, "train"),
        InputTag("bertfleet.snapshot_id", snapshot.snapshot_id),
    ]
    # The server keeps one input per (dataset, run), so repeating this is harmless.
    c.log_inputs(run_id, [DatasetInput(dataset, tags=tags)])
    if snapshot.card is not None:  # artifacts are overwritten by a retry, never duplicated
        c.log_text(run_id, snapshot.card.markdown(), "dataset_card.md")
        c.log_dict(run_id, snapshot.card.model_dump(), "dataset_card.json")


def _profile(snapshot: Snapshot) -> dict[str, object]:
    """The snapshot's own rows and, when it has one, what its dataset card says."""
    profile: dict[str, object] = {
        "train_rows": snapshot.train_rows,
        "eval_rows": snapshot.eval_rows,
        "split": snapshot.split,
        "train_label_counts": snapshot.train_label_counts,
        "eval_label_counts": snapshot.eval_label_counts,
    }
    card = snapshot.card
    if card is not None:
        profile["description"] = f"{card.title}. {card.provenance} Split: {card.split_method}."
        profile["dataset_rows"] = card.rows
        profile["source_rows"] = card.source_rows
        profile["removed"] = card.removed.model_dump()
        profile["label_counts"] = card.label_counts
    return profile


def log_training_outcome(tracking_uri: str, run_id: str, result: TrainingResult) -> None:
    """Why training stopped and, with select_best_by, which step's weights were published (and
    their validation score): tags, so repeating this changes nothing."""
    tags: dict[str, str] = {TAG_STOP_REASON: result.stop_reason}
    if result.selected_step is not None:
        tags[TAG_SELECTED_STEP] = str(result.selected_step)
        tags[TAG_SELECTED_VALUE] = repr(result.selected_value)
    client(tracking_uri).log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])


# MLflow refuses a param value over 6000 characters: long label lists are cut to fit (the
# snapshot's dataset input keeps the whole schema).
_MAX_PARAM_CHARS = 6000


def _label_names_param(names: list[str]) -> str:
    text = json.dumps(names)
    kept = len(names)
    while len(text) > _MAX_PARAM_CHARS - 40 and kept:
        kept = kept * 3 // 4
        text = json.dumps([*names[:kept], f"... {len(names) - kept} more"])
    return text


def run_status(tracking_uri: str, run_id: str) -> str:
    """The run's status in MLflow: RUNNING, FINISHED, FAILED, KILLED or SCHEDULED."""
    return str(client(tracking_uri).get_run(run_id).info.status)


def finish_run(tracking_uri: str, run_id: str, status: str, error: str | None = None) -> None:
    """End a run truthfully; a failure's message goes to a tag and to error.txt."""
    if status not in FINAL_STATUSES:
        raise TrackingError(f"status: {status!r} is not one of {', '.join(FINAL_STATUSES)}")
    c = client(tracking_uri)
    if error:
        # Tag values are capped by MLflow; the artifact keeps the whole text.
        c.set_tag(run_id, TAG_ERROR, error[:5000])
        if status == "FAILED":
            c.log_text(run_id, error, "error.txt")
    c.set_terminated(run_id, status=status)


def _experiment_id(c: MlflowClient, name: str) -> str:
    exp = c.get_experiment_by_name(name)
    if exp is None:
        try:
            return c.create_experiment(name)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = c.get_experiment_by_name(name)  # a concurrent attempt created it first
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        c.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def _find_or_create_run(
    c: MlflowClient,
    experiment_id: str,
    run_name: str,
    match: dict[str, str],
    tags: dict[str, str],
) -> str:
    """The run carrying all `match` tags, created if none; its tags refreshed, status RUNNING."""
    found = _search(c, experiment_id, match)
    if found:
        run_id = found[0]
        c.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        if c.get_run(run_id).info.status != "RUNNING":
            c.update_run(run_id, status="RUNNING")  # re-attached by a new attempt: live again
        return run_id
    created = c.create_run(experiment_id, run_name=run_name, tags={**match, **tags}).info.run_id
    # Two attempts racing past the search each create a run; everyone keeps the oldest.
    found = _search(c, experiment_id, match)
    winner = found[0] if found else created
    if winner != created:
        c.delete_run(created)
    return winner


def _search(c: MlflowClient, experiment_id: str, match: dict[str, str]) -> list[str]:
    """Ids of active runs carrying all `match` tags, oldest first."""
    query = " and ".join(f"tags.`{k}` = '{filter_value(v)}'" for k, v in match.items())
    runs = c.search_runs([experiment_id], filter_string=query, max_results=100)
    oldest_first = sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))
    return [r.info.run_id for r in oldest_first]


def _log_params(c: MlflowClient, run_id: str, values: Mapping[str, object]) -> None:
    params = [Param(k, str(v)[:_MAX_PARAM]) for k, v in values.items()]
    for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        c.log_batch(run_id, params=params[i : i + 100])

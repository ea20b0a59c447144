"""Results: evaluation metrics, the confusion matrix, the model and its registry version.

The model is logged as an MLflow Model (`model/`: a pyfunc around the saved folder, see
tracking/mlflow_model.py), so `mlflow.pyfunc.load_model("models:/...")` and `mlflow models
serve` work on every registered version. All configurations of an experiment are versions of
one registered model named after the experiment; each version is tagged with its configuration,
its eval metrics and its dataset, and the experiment's best one carries the alias `champion`
(tracking/registry.py). Every step can be repeated by a retried activity: metrics already on
the run are not re-logged and a run registers one version only.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import uuid
from pathlib import Path

import mlflow.artifacts
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.utils.time import get_current_time_millis

from orchestration.types import MAX_REPORTED_CLASSES, EvalMetrics, Snapshot
from tracking.client import TrackingError, client, filter_value
from tracking.mlflow_model import hf_folder, save_pyfunc

TAG_MODEL_URI = "bertfleet.model_uri"
# Model version tags: the configuration a version was trained with, and its launch.
TAG_CONFIG = "config"
TAG_EXPERIMENT = "experiment_id"
TAG_COLLAPSED = "bertfleet.collapsed"
MODEL_ARTIFACT_PATH = "model"
_EVAL_KEYS = ("accuracy", "macro_f1", "precision", "recall", "loss", "mse")


def registered_model_name(experiment_name: str) -> str:
    """The experiment's name: every configuration of it (of every launch) registers a version
    of this one model, tagged with the configuration (TAG_CONFIG).

    The name already matches orchestration.types.NAME_PATTERN; anything MLflow forbids in a
    registered name ('/', ':', '@') or that would read badly in a URI becomes '_'.
    """
    return re.sub(r"[^A-Za-z0-9_.-]", "_", experiment_name)[:200]


def version_tags(
    config_name: str,
    experiment_id: str | None,
    metrics: EvalMetrics | None,
    snapshot: Snapshot | None,
) -> dict[str, str]:
    """The tags of a registered version: its configuration, the launch it came from, the eval
    metrics, and the facts of the dataset it was trained and evaluated on."""
    tags = {TAG_CONFIG: config_name}
    if experiment_id:
        tags[TAG_EXPERIMENT] = experiment_id
    if metrics is not None:
        tags.update({k: str(v) for k, v in eval_metric_values(metrics).items()})
    if snapshot is not None:
        tags.update(dataset_tags(snapshot))
    return tags


def dataset_tags(snapshot: Snapshot) -> dict[str, str]:
    """What a model version records of its data; the one place a dataset card's fields go."""
    tags = {
        "dataset": snapshot.dataset,
        "dataset_source": snapshot.source,
        "dataset_snapshot": snapshot.snapshot_id,
        "dataset_split": snapshot.split,
        "dataset_train_rows": str(snapshot.train_rows),
        "dataset_eval_rows": str(snapshot.eval_rows),
        "task_type": snapshot.schema_.task_type,
    }
    if snapshot.eval_label_counts:
        tags["dataset_eval_label_counts"] = json.dumps(snapshot.eval_label_counts)[:4000]
    if snapshot.card is not None:
        # MLflow caps a tag value at a few thousand characters; a card is well under that.
        tags["dataset_card"] = snapshot.card.markdown()[:4000]
    return tags


def eval_metric_values(metrics: EvalMetrics) -> dict[str, float]:
    """The final metrics as logged: eval_accuracy, eval_macro_f1, ... (absent ones left out)."""
    values = {f"eval_{k}": getattr(metrics, k) for k in _EVAL_KEYS}
    values["eval_samples"] = metrics.num_samples
    # The baseline and the collapse flag are metrics too, so MLflow's charts and compare views
    # put them next to accuracy (collapsed: 1 when the model predicted one class only).
    values["majority_baseline"] = metrics.majority_baseline
    values["collapsed"] = None if metrics.collapsed is None else int(metrics.collapsed)
    return {k: float(v) for k, v in values.items() if v is not None}


def log_eval(tracking_uri: str, run_id: str, metrics: EvalMetrics, step: int = 0) -> None:
    """Final metrics at `step` (the last training step) plus the confusion matrix (JSON, and a
    PNG up to MAX_REPORTED_CLASSES classes)."""
    c = client(tracking_uri)
    values = eval_metric_values(metrics)
    # A retry must not add a second point per metric. One batch logs them all, so a point of
    # the first key at `step` means an earlier attempt got through (an equal value at another
    # step, e.g. an epoch-end evaluation, does not).
    if not any(m.step == step for m in c.get_metric_history(run_id, next(iter(values)))):
        now = get_current_time_millis()
        c.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])
    if metrics.collapsed is not None:
        c.set_tag(run_id, TAG_COLLAPSED, str(metrics.collapsed).lower())
    if metrics.confusion_matrix:
        labels = metrics.label_names or [str(i) for i in range(len(metrics.confusion_matrix))]
        c.log_dict(
            run_id, {"labels": labels, "matrix": metrics.confusion_matrix}, "confusion_matrix.json"
        )
        if len(labels) <= MAX_REPORTED_CLASSES:  # beyond, an image would be huge and unreadable
            with tempfile.TemporaryDirectory() as tmp:
                png = Path(tmp) / "confusion_matrix.png"
                _plot_confusion(metrics.confusion_matrix, labels, png)
                c.log_artifact(run_id, str(png))


def log_model(
    tracking_uri: str,
    run_id: str,
    model_dir: str,
    registered_name: str,
    tags: dict[str, str] | None = None,
    max_length: int | None = None,
    text_pair: bool = False,
) -> str:
    """Log `model_dir` as the run's MLflow Model (`model/`), register it, tag the version;
    "models:/<name>/<version>". `max_length`: the configuration's (see save_pyfunc)."""
    c = client(tracking_uri)
    version = _version_of_run(c, registered_name, run_id)
    if version is None:
        if not (Path(model_dir) / "config.json").is_file():
            raise TrackingError(
                f"model_dir: {model_dir} has no config.json; pass the folder "
                "written by save_pretrained"
            )
        # Logged under a fixed path of the run: a retry overwrites the same files, and the
        # version below is created once per run.
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / MODEL_ARTIFACT_PATH
            save_pyfunc(model_dir, str(staged), max_length=max_length, text_pair=text_pair)
            c.log_artifacts(run_id, str(staged), MODEL_ARTIFACT_PATH)
        try:
            c.create_registered_model(registered_name)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source = f"{c.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT_PATH}"
        created = c.create_model_version(
            registered_name, source, run_id=run_id, await_creation_for=30
        ).version
        version = _one_version_of_run(c, registered_name, run_id, created)
    for key, value in (tags or {}).items():
        c.set_model_version_tag(registered_name, str(version), key, value)
    uri = f"models:/{registered_name}/{version}"
    c.set_tag(run_id, TAG_MODEL_URI, uri)
    return uri


def download_model(tracking_uri: str, model_uri: str, dest_root: str) -> str:
    """The Hugging Face folder of `model_uri` on this host; downloaded once, then from cache.

    The folder appears atomically (download to a temp dir, then rename), so concurrent callers
    never see half a model. "models:/<name>/<version>" is resolved to the version's source;
    "models:/<name>@<alias>" first to the version the alias points at now (one MLflow call
    per use: an alias may move). Of an MLflow Model, the folder it wraps is returned.
    """
    model_uri = _pin_alias(tracking_uri, model_uri)
    key = hashlib.sha256(f"{tracking_uri}|{model_uri}".encode()).hexdigest()[:20]
    final = Path(dest_root) / key
    if final.is_dir():
        return str(hf_folder(final))
    source = _resolve_source(tracking_uri, model_uri)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(dest_root) / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
    try:
        got = mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=str(tmp), tracking_uri=tracking_uri
        )
        try:
            Path(got).rename(final)
        except OSError:
            if not final.is_dir():  # not a lost race with another downloader
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(hf_folder(final))


def _pin_alias(tracking_uri: str, model_uri: str) -> str:
    """ "models:/<name>@<alias>" as the version it points at now; any other URI as it is."""
    match = re.fullmatch(r"models:/([^/@]+)@([^/@]+)", model_uri)
    if match is None:
        return model_uri
    found = client(tracking_uri).get_model_version_by_alias(match[1], match[2])
    return f"models:/{match[1]}/{found.version}"


def _resolve_source(tracking_uri: str, model_uri: str) -> str:
    match = re.fullmatch(r"models:/([^/]+)/(\d+)", model_uri)
    if match is None:
        if model_uri.startswith("models:/"):
            raise TrackingError(
                f"model_uri: {model_uri!r} must name a version or an alias, e.g. "
                "models:/my-experiment/1 or models:/my-experiment@champion"
            )
        return model_uri  # runs:/..., mlflow-artifacts:/... are downloadable as they are
    source = client(tracking_uri).get_model_version(match[1], match[2]).source
    if not source:
        raise TrackingError(f"model_uri: {model_uri!r} has no source to download the model from")
    return source


def _version_of_run(c, name: str, run_id: str) -> str | None:
    query = f"name = '{filter_value(name)}' and run_id = '{filter_value(run_id)}'"
    versions = c.search_model_versions(query)
    return min((v.version for v in versions), key=int, default=None)


def _one_version_of_run(c, name: str, run_id: str, created: str) -> str:
    """The run's lowest version, every later one deleted. Two attempts of one recording can
    overlap (a retry started while a starved or dying attempt still runs), and each may find no
    version and create one; each then keeps the lowest and deletes the rest, so both end with
    the same single version whatever their order."""
    query = f"name = '{filter_value(name)}' and run_id = '{filter_value(run_id)}'"
    versions = sorted({v.version for v in c.search_model_versions(query)} | {created}, key=int)
    for extra in versions[1:]:
        try:
            c.delete_model_version(name, extra)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":  # the other attempt deleted it
                raise
    return versions[0]


def _plot_confusion(matrix: list[list[int]], labels: list[str], path: Path) -> None:
    # The object-oriented API touches no pyplot global state, so concurrent threads are safe.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    size = max(3.0, 0.6 * len(labels) + 1.5)
    fig = Figure(figsize=(size, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(
                j,
                i,
                str(count),
                ha="center",
                va="center",
                color="white" if count > peak / 2 else "black",
            )
    fig.tight_layout()
    fig.savefig(path, dpi=100)

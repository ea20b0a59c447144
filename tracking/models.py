"""Results: evaluation metrics, the confusion matrix, the model folder and its registry version.

The model is logged as a plain folder of artifacts (`model/`: config, safetensors, tokenizer),
not through `mlflow.transformers.log_model`, which needs extra imports and the hub; the
inference side loads it back with `from_pretrained`. Every step can be repeated by a retried
activity: metrics already on the run are not re-logged and a run registers one version only.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
import uuid
from pathlib import Path

import mlflow.artifacts
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.utils.time import get_current_time_millis

from orchestration.types import MAX_REPORTED_CLASSES, EvalMetrics
from tracking.client import TrackingError, client, filter_value

TAG_MODEL_URI = "bertfleet.model_uri"
MODEL_ARTIFACT_PATH = "model"
_EVAL_KEYS = ("accuracy", "macro_f1", "precision", "recall", "loss", "mse")


def registered_model_name(experiment_name: str, config_name: str) -> str:
    """`<experiment>-<config>`: one registry entry per configuration of an experiment.

    Both names already match orchestration.types.NAME_PATTERN; anything MLflow forbids in a
    registered name ('/', ':') or that would read badly in a URI becomes '_'.
    """
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{experiment_name}-{config_name}")[:200]


def eval_metric_values(metrics: EvalMetrics) -> dict[str, float]:
    """The final metrics as logged: eval_accuracy, eval_macro_f1, ... (absent ones left out)."""
    values = {f"eval_{k}": getattr(metrics, k) for k in _EVAL_KEYS}
    values["eval_samples"] = metrics.num_samples
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
    metrics: EvalMetrics | None = None,
) -> str:
    """Upload `model_dir` as the run's `model/` artifacts, register it; "models:/<name>/<v>"."""
    c = client(tracking_uri)
    version = _version_of_run(c, registered_name, run_id)
    if version is None:
        if not (Path(model_dir) / "config.json").is_file():
            raise TrackingError(
                f"model_dir: {model_dir} has no config.json; pass the folder "
                "written by save_pretrained"
            )
        c.log_artifacts(run_id, model_dir, MODEL_ARTIFACT_PATH)
        try:
            c.create_registered_model(registered_name)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source = f"{c.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT_PATH}"
        version = c.create_model_version(
            registered_name, source, run_id=run_id, await_creation_for=30
        ).version
    for key, value in eval_metric_values(metrics).items() if metrics else ():
        c.set_model_version_tag(registered_name, str(version), key, str(value))
    uri = f"models:/{registered_name}/{version}"
    c.set_tag(run_id, TAG_MODEL_URI, uri)
    return uri


def download_model(tracking_uri: str, model_uri: str, dest_root: str) -> str:
    """A local folder holding the model of `model_uri`; downloaded once, then served from cache.

    The folder appears atomically (download to a temp dir, then rename), so concurrent callers
    never see half a model. "models:/<name>/<version>" is resolved to the version's source.
    """
    key = hashlib.sha256(f"{tracking_uri}|{model_uri}".encode()).hexdigest()[:20]
    final = Path(dest_root) / key
    if final.is_dir():
        return str(final)
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
    return str(final)


def _resolve_source(tracking_uri: str, model_uri: str) -> str:
    match = re.fullmatch(r"models:/([^/]+)/(\d+)", model_uri)
    if match is None:
        if model_uri.startswith("models:/"):
            raise TrackingError(
                f"model_uri: {model_uri!r} must name a version, e.g. models:/my-experiment-run1/1"
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

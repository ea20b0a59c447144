"""The contract between the UI, the CLI, the workflows and the activities.

Everything that crosses a process boundary (Temporal payloads, the Gradio API, the CLI's
JSON) is one of these pydantic models, so bad input is refused at the edge with a message that
names the field, long before a worker spends time on it.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import JsonDict

from orchestration.input_checks import check_model_uri, check_name, has_visible
from orchestration.timeouts import HEARTBEAT_TIMEOUT_S, TRAINING_MAX_ATTEMPTS

# A documented limit: one experiment fans out to at most this many configurations. Beyond it a
# launch is refused (the coordinator's history and the machine would not cope gracefully).
MAX_RUNS_PER_EXPERIMENT = 32
MAX_INFERENCE_TEXTS = 64
MAX_INFERENCE_CHARS = 10_000
# The most classes a classification dataset may have (enforced when its schema is inferred).
MAX_CLASSES = 256
# Per-class outputs (confusion matrix, label names) travel in workflow payloads, progress
# queries and the experiment's result only up to this many classes: 32 runs of a 256-class
# matrix would approach Temporal's 2 MB payload limit. Beyond it the summary metrics remain.
MAX_REPORTED_CLASSES = 50
# A label is a class name, not a text: longer values are refused when the schema is inferred.
MAX_LABEL_CHARS = 100
# Error texts kept in workflow state and results (the full text is in the worker's log).
MAX_ERROR_CHARS = 2000

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$"
_NAME_HELP = "use 1-48 letters, digits, '.', '_' or '-', starting with a letter or digit"

RunStatus = Literal[
    "queued", "snapshotting", "training", "evaluating", "completed", "failed", "cancelled"
]
TaskType = Literal["auto", "classification", "regression"]
Precision = Literal["fp32", "bf16", "fp16"]


class _Model(BaseModel):
    # NaN and infinities are refused in every numeric field, nested models included: a NaN
    # learning rate would otherwise pass every bound (all comparisons with NaN are false).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _Report(_Model):
    """What workers report (progress, metrics): a value that is not a number (a diverged loss)
    is reported as unknown (None) rather than failing the report; JSON carries it as null
    anyway."""

    @field_validator("*", mode="before")
    @classmethod
    def _finite_or_unknown(cls, value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value


def cap_error(text: str | None) -> str | None:
    """An error text short enough for workflow state and results (MAX_ERROR_CHARS)."""
    if text is None or len(text) <= MAX_ERROR_CHARS:
        return text
    note = f"... ({len(text)} characters, see the worker log)"
    return text[: MAX_ERROR_CHARS - len(note)] + note


def _valid_name(value: str) -> str:
    if not re.fullmatch(NAME_PATTERN, value):
        raise ValueError(_NAME_HELP)
    return value


# Names are checked by a validator rather than Field(pattern=...): the constraint would fail
# first with a bare "should match pattern", and the message saying how to fix it never showed.
_NAME_SCHEMA: JsonDict = {"pattern": NAME_PATTERN}


class RunConfig(_Model):
    """One fine-tuning configuration: a row of the experiment table."""

    name: str = Field(json_schema_extra=_NAME_SCHEMA, description="unique within the experiment")
    model: str = Field(default="tiny-bert", min_length=1, max_length=1000)
    dataset: str = Field(default="rotten_tomatoes", min_length=1, max_length=1000)
    dataset_config: str | None = Field(default=None, max_length=200)
    dataset_revision: str | None = Field(default=None, max_length=200)
    text_field: str | None = Field(default=None, max_length=200)
    text_pair_field: str | None = Field(default=None, max_length=200)
    label_field: str | None = Field(default=None, max_length=200)
    task_type: TaskType = "auto"
    learning_rate: float = Field(default=5e-5, gt=0, le=1)
    epochs: float = Field(default=1.0, gt=0, le=100)
    batch_size: int = Field(default=16, ge=1, le=1024)
    max_length: int = Field(default=64, ge=8, le=8192)
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0, le=1)
    seed: int = Field(default=42, ge=0, le=2**31 - 1)
    max_train_samples: int | None = Field(default=None, ge=1)
    max_eval_samples: int | None = Field(default=None, ge=1)
    eval_fraction: float = Field(
        default=0.2, gt=0, lt=1, description="share held out when the source has no eval split"
    )
    checkpoint_every_steps: int = Field(default=50, ge=1)
    keep_checkpoints: int = Field(default=2, ge=1, le=100)
    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:N or mps")
    precision: Precision = "fp32"

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise ValueError("device must be one of auto, cpu, cuda, cuda:N, mps")
        return value

    @field_validator("name")
    @classmethod
    def _name_help(cls, value: str) -> str:
        return _valid_name(value)

    @field_validator(
        "model",
        "dataset",
        "dataset_config",
        "dataset_revision",
        "text_field",
        "text_pair_field",
        "label_field",
    )
    @classmethod
    def _openable(cls, value: str | None, info: Any) -> str | None:
        return value if value is None else check_name(info.field_name, value)


class ExperimentRequest(_Model):
    """What a user launches: a named list of configurations trained in parallel."""

    name: str = Field(json_schema_extra=_NAME_SCHEMA)
    runs: list[RunConfig] = Field(min_length=1, max_length=MAX_RUNS_PER_EXPERIMENT)
    # Liveness of a training attempt: a worker that stops heartbeating for this long is
    # considered dead and the attempt is retried elsewhere from its last checkpoint.
    heartbeat_timeout_s: int = Field(default=HEARTBEAT_TIMEOUT_S, ge=2, le=600)
    max_attempts: int = Field(default=TRAINING_MAX_ATTEMPTS, ge=1, le=100)

    @field_validator("name")
    @classmethod
    def _name_help(cls, value: str) -> str:
        return _valid_name(value)

    @model_validator(mode="after")
    def _unique_names(self) -> ExperimentRequest:
        seen: set[str] = set()
        for i, run in enumerate(self.runs):
            if run.name in seen:
                raise ValueError(
                    f"runs[{i}].name: duplicate configuration name {run.name!r}; "
                    "give every configuration its own name"
                )
            seen.add(run.name)
        return self


class DatasetSchema(_Report):
    """Which columns hold what, and what kind of task they make."""

    text_field: str
    text_pair_field: str | None = None
    label_field: str
    task_type: Literal["classification", "regression"]
    num_labels: int
    label_names: list[str] = Field(default_factory=list)


class Snapshot(_Model):
    """A frozen, content-addressed copy of the rows one configuration trains and evaluates on."""

    snapshot_id: str
    path: str
    dataset: str
    source: str
    schema_: DatasetSchema = Field(alias="schema")
    train_rows: int
    eval_rows: int
    split: Literal["source", "seeded"]

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)


class CheckpointInfo(_Report):
    uri: str
    step: int
    epoch: float = 0.0
    loss: float | None = None


class TrainingProgress(_Report):
    """What a running training attempt reports, and a TrainingWorkflow query returns."""

    phase: Literal["queued", "snapshotting", "training", "done"] = "queued"
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    loss: float | None = None
    samples_per_second: float | None = None
    checkpoint: CheckpointInfo | None = None
    worker: str | None = None
    attempt: int = 1
    resumed_from_step: int | None = None
    # The run's own process (each attempt trains in one): resident memory now and at its peak,
    # and on a GPU the memory torch holds there; sampled by the worker every fraction of a second.
    memory_mb: float | None = None
    peak_memory_mb: float | None = None
    gpu_memory_mb: float | None = None
    gpu_peak_memory_mb: float | None = None
    threads: int | None = Field(default=None, description="CPU threads the run trains with")
    # Attempts of this configuration that ran out of memory so far (carried from attempt to
    # attempt in the heartbeat): the second one fails the configuration instead of retrying.
    out_of_memory: int = 0


class EvalMetrics(_Report):
    accuracy: float | None = None
    macro_f1: float | None = None
    precision: float | None = None
    recall: float | None = None
    loss: float | None = None
    mse: float | None = None
    confusion_matrix: list[list[int]] | None = None
    label_names: list[str] = Field(default_factory=list)
    num_samples: int = 0


class TrainingResult(_Report):
    model_uri: str
    snapshot: Snapshot
    final_step: int
    train_loss: float | None = None
    train_seconds: float = 0.0
    tracking_error: str | None = None
    # Set when MLflow was still unreachable as training ended: the final checkpoint, whose
    # trainer state holds every logged point. EvalWorkflow delivers them before the results.
    metrics_backlog: CheckpointInfo | None = None


class RunProgress(_Report):
    """One configuration's live state, as the coordinator query returns it."""

    name: str
    status: RunStatus = "queued"
    training_workflow_id: str | None = None
    eval_workflow_id: str | None = None
    training: TrainingProgress | None = None
    eval: EvalMetrics | None = None
    error: str | None = None
    mlflow_run_id: str | None = None
    model_uri: str | None = None
    started_at: str | None = None
    finished_at: str | None = None


class ExperimentProgress(_Model):
    experiment_id: str
    name: str
    status: Literal["running", "completed", "cancelled"] = "running"
    mlflow_experiment_id: str | None = None
    mlflow_parent_run_id: str | None = None
    runs: list[RunProgress]


class RunResult(_Report):
    name: str
    status: RunStatus
    eval: EvalMetrics | None = None
    error: str | None = None
    model_uri: str | None = None
    snapshot_id: str | None = None
    final_step: int | None = None
    mlflow_run_id: str | None = None
    training_workflow_id: str | None = None
    eval_workflow_id: str | None = None


class ExperimentResult(_Model):
    experiment_id: str
    name: str
    runs: list[RunResult]
    mlflow_experiment_id: str | None = None
    mlflow_parent_run_id: str | None = None


class InferenceRequest(_Model):
    model_uri: str = Field(
        min_length=1, max_length=1000, description="a finished run's model folder or MLflow URI"
    )
    texts: list[str] = Field(min_length=1, max_length=MAX_INFERENCE_TEXTS)
    text_pairs: list[str] | None = Field(default=None, max_length=MAX_INFERENCE_TEXTS)
    max_length: int = Field(default=128, ge=8, le=8192)

    @field_validator("model_uri")
    @classmethod
    def _served_here(cls, value: str) -> str:
        return check_model_uri(value)

    @field_validator("texts", "text_pairs")
    @classmethod
    def _texts_fit(cls, texts: list[str] | None, info: Any) -> list[str] | None:
        for i, text in enumerate(texts or []):
            if not has_visible(text):
                raise ValueError(
                    f"{info.field_name}[{i}] is empty (no visible character); enter some text "
                    "to classify"
                )
            if len(text) > MAX_INFERENCE_CHARS:
                raise ValueError(
                    f"{info.field_name}[{i}] has {len(text)} characters; the limit is "
                    f"{MAX_INFERENCE_CHARS}"
                )
        return texts


class LabelScore(_Model):
    label: str
    score: float


class InferenceResult(_Model):
    predictions: list[list[LabelScore]] = Field(description="per text, labels by score, best first")
    latency_ms: float
    model_uri: str


# --- Workflow and activity inputs: one model per call, so fields can be added compatibly. ---


class TrainingWorkflowInput(_Model):
    experiment_id: str
    experiment_name: str
    config: RunConfig
    heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S
    max_attempts: int = TRAINING_MAX_ATTEMPTS
    mlflow_run_id: str | None = None


class SnapshotInput(_Model):
    config: RunConfig


class TrainInput(_Model):
    config: RunConfig
    snapshot: Snapshot
    run_key: str = Field(description="names the run's folder in the checkpoint store")
    mlflow_run_id: str | None = None


class EvalInput(_Model):
    config: RunConfig
    training: TrainingResult
    experiment_name: str
    mlflow_run_id: str | None = None
    heartbeat_timeout_s: int = Field(default=HEARTBEAT_TIMEOUT_S, ge=2, le=600)


class OpenExperimentInput(_Model):
    experiment_id: str
    name: str
    config_names: list[str]


class OpenRunInput(_Model):
    experiment_id: str
    mlflow_experiment_id: str
    parent_run_id: str
    config: RunConfig
    training_workflow_id: str
    eval_workflow_id: str


class FinishRunInput(_Model):
    run_id: str
    status: Literal["FINISHED", "FAILED", "KILLED"]
    error: str | None = None


class RecordEvalInput(_Model):
    """What the record_eval activity logs: an evaluation already done (kept in the workflow's
    history, so retrying the recording never repeats it)."""

    eval: EvalInput
    metrics: EvalMetrics


class EvalResult(_Model):
    metrics: EvalMetrics
    model_uri: str = Field(description="registered MLflow model if tracked, else the model folder")

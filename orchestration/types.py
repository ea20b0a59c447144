"""The contract between the UI, the CLI, the workflows and the activities.

Everything that crosses a process boundary (Temporal payloads, the Gradio API, the CLI's
JSON) is one of these pydantic models, so bad input is refused at the edge with a message that
names the field, long before a worker spends time on it.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import JsonDict

from orchestration.timeouts import HEARTBEAT_TIMEOUT_S, TRAINING_MAX_ATTEMPTS

# A documented limit: one experiment fans out to at most this many configurations. Beyond it a
# launch is refused (the coordinator's history and the machine would not cope gracefully).
MAX_RUNS_PER_EXPERIMENT = 32
MAX_INFERENCE_TEXTS = 64
MAX_INFERENCE_CHARS = 10_000

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$"
_NAME_HELP = "use 1-48 letters, digits, '.', '_' or '-', starting with a letter or digit"

RunStatus = Literal[
    "queued", "snapshotting", "training", "evaluating", "completed", "failed", "cancelled"
]
TaskType = Literal["auto", "classification", "regression"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    model: str = Field(default="tiny-bert", min_length=1, max_length=300)
    dataset: str = Field(default="rotten_tomatoes", min_length=1, max_length=300)
    dataset_config: str | None = None
    dataset_revision: str | None = None
    text_field: str | None = None
    text_pair_field: str | None = None
    label_field: str | None = None
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
    precision: Precision = Field(
        default="auto",
        description="auto: bf16 where the device does bf16 natively (CPU flags, CUDA capability), "
        "else fp32",
    )

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


class DatasetSchema(_Model):
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

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class CheckpointInfo(_Model):
    uri: str
    step: int
    epoch: float = 0.0
    loss: float | None = None


class TrainingProgress(_Model):
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
    precision: Literal["fp32", "bf16", "fp16"] | None = Field(
        default=None, description="what the configuration's precision resolved to on this device"
    )
    precision_reason: str | None = None
    # Attempts of this configuration that ran out of memory so far (carried from attempt to
    # attempt in the heartbeat): the second one fails the configuration instead of retrying.
    out_of_memory: int = 0


class EvalMetrics(_Model):
    accuracy: float | None = None
    macro_f1: float | None = None
    precision: float | None = None
    recall: float | None = None
    loss: float | None = None
    mse: float | None = None
    confusion_matrix: list[list[int]] | None = None
    label_names: list[str] = Field(default_factory=list)
    num_samples: int = 0


class TrainingResult(_Model):
    model_uri: str
    snapshot: Snapshot
    final_step: int
    train_loss: float | None = None
    train_seconds: float = 0.0
    precision: Literal["fp32", "bf16", "fp16"] | None = None  # as resolved, like its reason
    precision_reason: str | None = None
    tracking_error: str | None = None
    # Set when MLflow was still unreachable as training ended: the final checkpoint, whose
    # trainer state holds every logged point. EvalWorkflow delivers them before the results.
    metrics_backlog: CheckpointInfo | None = None


class RunProgress(_Model):
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


class RunResult(_Model):
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
    model_uri: str = Field(min_length=1, description="a finished run's model folder or MLflow URI")
    texts: list[str] = Field(min_length=1, max_length=MAX_INFERENCE_TEXTS)
    text_pairs: list[str] | None = None
    max_length: int | None = Field(
        default=None, ge=8, le=8192, description="tokens per text; None: the trained length"
    )

    @field_validator("texts")
    @classmethod
    def _texts_fit(cls, texts: list[str]) -> list[str]:
        for i, text in enumerate(texts):
            if not text.strip():
                raise ValueError(f"texts[{i}] is empty; enter some text to classify")
            if len(text) > MAX_INFERENCE_CHARS:
                raise ValueError(
                    f"texts[{i}] has {len(text)} characters; the limit is {MAX_INFERENCE_CHARS}"
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

"""The contract between the UI, the CLI, the workflows and the activities.

Everything that crosses a process boundary (Temporal payloads, the Gradio API, the CLI's
JSON) is one of these pydantic models, so bad input is refused at the edge with a message that
names the field, long before a worker spends time on it.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
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
Precision = Literal["auto", "fp32", "bf16", "fp16"]
# What picks an experiment's best configuration (the registry alias `champion`): `auto` is
# macro-F1 for classification and mse (lowest) for regression; loss and mse: lowest wins.
SelectionMetric = Literal["auto", "accuracy", "macro_f1", "precision", "recall", "loss", "mse"]
# Learning-rate schedules of transformers' get_scheduler that need no extra arguments and no
# metric (reduce_lr_on_plateau would read the held-out eval metrics, which never steer training).
SchedulerType = Literal[
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
]
# What picks a run's best checkpoint on its validation rows (select_best_by).
CheckpointMetric = Literal["accuracy", "macro_f1", "loss"]
# rung: stopped at the step its TrainInput asked for (a sweep's rung), checkpointed to continue.
StopReason = Literal["done", "early_stopping", "rung"]


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
    dataset: str = Field(
        default="movie-snippets",
        min_length=1,
        max_length=1000,
        description="a built-in (movie-snippets, imdb-reviews, bbc-articles), a local file or "
        "folder, or a Hugging Face Hub id",
    )
    dataset_config: str | None = Field(default=None, max_length=200)
    dataset_revision: str | None = Field(default=None, max_length=200)
    text_field: str | None = Field(default=None, max_length=200)
    text_pair_field: str | None = Field(default=None, max_length=200)
    label_field: str | None = Field(default=None, max_length=200)
    task_type: TaskType = "auto"
    learning_rate: float = Field(
        default=1e-4, gt=0, le=1, description="peak learning rate of the AdamW optimizer"
    )
    epochs: float = Field(
        default=1.0, gt=0, le=100, description="passes over the training rows (max_steps wins)"
    )
    batch_size: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="rows per forward pass (per optimizer step: "
        "batch_size x gradient_accumulation_steps)",
    )
    max_length: int = Field(default=64, ge=8, le=8192)
    warmup_ratio: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="share of the optimizer steps spent warming the learning rate up from 0",
    )
    weight_decay: float = Field(
        default=0.01, ge=0, le=1, description="AdamW weight decay (not on biases and LayerNorm)"
    )
    lr_scheduler_type: SchedulerType = Field(
        default="linear",
        description="learning-rate schedule after warmup: " + ", ".join(get_args(SchedulerType)),
    )
    gradient_accumulation_steps: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="batches whose gradients add up to one optimizer "
        "step: a larger effective batch in the memory of one",
    )
    max_steps: int | None = Field(
        default=None, ge=1, description="optimizer steps to train for; overrides epochs when set"
    )
    seed: int = Field(
        default=42,
        ge=0,
        le=2**31 - 1,
        description="model initialisation and dropout; the data comes from data_seed",
    )
    data_seed: int = Field(
        default=0,
        ge=0,
        le=2**31 - 1,
        description="which rows a cap samples and the order training sees them in; "
        "configurations with the same data_seed train on identical rows, so they compare "
        "hyperparameters rather than samples",
    )
    max_train_samples: int | None = Field(default=None, ge=1)
    max_eval_samples: int | None = Field(default=None, ge=1)
    eval_fraction: float = Field(
        default=0.2, gt=0, lt=1, description="share held out when the source has no eval split"
    )
    checkpoint_every_steps: int = Field(
        default=50, ge=1, description="optimizer steps between checkpoints"
    )
    keep_checkpoints: int = Field(
        default=2, ge=1, le=100, description="newest checkpoints kept (the best one is kept too)"
    )
    select_best_by: CheckpointMetric | None = Field(
        default=None,
        description="accuracy, macro_f1 or loss: publish the checkpoint scoring best on the "
        "validation rows instead of the last step's weights (null: the last step's)",
    )
    eval_every_steps: int | None = Field(
        default=None,
        ge=1,
        description="optimizer steps between validation evaluations "
        "(with select_best_by; null: every checkpoint_every_steps)",
    )
    validation_fraction: float = Field(
        default=0.1,
        gt=0,
        le=0.5,
        description="share of the training rows held out, the same "
        "for every seed, to select on (with select_best_by); the eval split stays untouched",
    )
    early_stopping_patience: int | None = Field(
        default=None,
        ge=1,
        description="stop after this many validation evaluations without "
        "improvement (with select_best_by); null: train the whole schedule",
    )
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

    @field_validator("precision")
    @classmethod
    def _precision_fits_device(cls, value: str, info: ValidationInfo) -> str:
        # Known at the edge when the device is named; with device auto, the worker decides.
        device = info.data.get("device")
        if value == "fp16" and device in ("cpu", "mps"):
            raise ValueError(f"fp16 needs a CUDA GPU (device is {device}); use auto, bf16 or fp32")
        return value

    @field_validator("name")
    @classmethod
    def _name_help(cls, value: str) -> str:
        return _valid_name(value)

    # The recipe's fields that depend on others are checked in field validators (each sees the
    # fields declared before it, in info.data), so an error names the field to change.

    @field_validator("lr_scheduler_type")
    @classmethod
    def _warmup_applies(cls, value: str, info: ValidationInfo) -> str:
        if value == "constant" and info.data.get("warmup_ratio", 0) > 0:
            raise ValueError(
                "constant ignores warmup_ratio; use constant_with_warmup, or set warmup_ratio to 0"
            )
        return value

    @field_validator("select_best_by")
    @classmethod
    def _metric_fits_task(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value in ("accuracy", "macro_f1") and info.data.get("task_type") == "regression":
            raise ValueError(f"{value} needs a classification task; use loss for regression")
        return value

    @field_validator("eval_every_steps", "validation_fraction", "early_stopping_patience")
    @classmethod
    def _needs_selection(cls, value: float | None, info: ValidationInfo) -> float | None:
        # Runs only for values given. A value equal to the default needs no select_best_by
        # either: every serialised RunConfig (a Temporal payload, the CLI's JSON) carries them.
        default = cls.model_fields[info.field_name or ""].default
        needs = value is not None and value != default
        if needs and "select_best_by" in info.data and not info.data["select_best_by"]:
            raise ValueError(
                "applies only with select_best_by; set select_best_by "
                f"({', '.join(get_args(CheckpointMetric))}) too, or leave this unset"
            )
        max_steps = info.data.get("max_steps")
        if info.field_name == "eval_every_steps" and value and max_steps and value > max_steps:
            raise ValueError(
                f"{value} is more than max_steps ({max_steps}): only the last step would be "
                "evaluated; lower it"
            )
        return value

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
    selection_metric: SelectionMetric = "auto"

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


SplitMethod = Literal["source", "seeded", "grouped"]


class RemovedRows(_Model):
    """Rows the snapshot's cleaning dropped before splitting, by reason."""

    duplicates: int = Field(default=0, description="repeats of an earlier row's exact text")
    conflicting: int = Field(
        default=0, description="every copy of a text that carries more than one label"
    )
    eval_overlap: int = Field(
        default=0, description="train rows whose text is also an eval text (source splits)"
    )


class DatasetCard(_Model):
    """What a dataset is and what was done to it, computed from its rows (before any cap)."""

    dataset: str
    title: str
    source: str = Field(description="the identity of the rows: package, file or hub revision")
    provenance: str = ""
    citation: str = ""
    source_rows: int = Field(description="usable rows (text and label) before cleaning")
    rows: int = Field(description="rows after cleaning")
    removed: RemovedRows = Field(default_factory=RemovedRows)
    label_counts: dict[str, int] = Field(default_factory=dict, description="after cleaning")
    split: SplitMethod
    split_method: str = Field(description="how train and eval rows were told apart, in words")
    train_rows: int
    eval_rows: int
    eval_label_counts: dict[str, int] = Field(default_factory=dict)

    def markdown(self) -> str:
        """The card as Markdown, for the app and the MLflow artifact."""
        total = sum(self.label_counts.values())
        balance = ", ".join(
            f"{name} {count:,} ({count / total:.1%})" for name, count in self.label_counts.items()
        )
        removed = self.removed
        lines = [
            f"### {self.title}",
            f"`{self.dataset}` · source `{self.source}`",
            "",
            self.provenance,
            "",
            f"- **Rows**: {self.rows:,} after cleaning ({self.source_rows:,} in the source): "
            f"{self.train_rows:,} train, {self.eval_rows:,} eval",
            f"- **Removed**: {removed.duplicates:,} exact duplicate texts, {removed.conflicting:,} "
            f"copies of texts with conflicting labels, {removed.eval_overlap:,} train rows whose "
            "text is an eval text",
            f"- **Labels**: {balance or 'numeric (regression)'}",
            f"- **Split**: {self.split_method}",
        ]
        if self.eval_label_counts:
            eval_total = sum(self.eval_label_counts.values())
            top = max(self.eval_label_counts.values())
            lines.append(
                f"- **Majority baseline** (always the commonest label of the whole eval split): "
                f"{top / eval_total:.1%}"
            )
        if self.citation:
            lines.append(f"- **Cite**: {self.citation}")
        return "\n".join(lines)


class Snapshot(_Model):
    """A frozen, content-addressed copy of the rows one configuration trains and evaluates on."""

    snapshot_id: str
    path: str
    dataset: str
    source: str
    schema_: DatasetSchema = Field(alias="schema")
    train_rows: int
    eval_rows: int
    split: SplitMethod
    card: DatasetCard | None = None
    # Label counts of the snapshot's own (capped) rows: the eval split's majority baseline.
    train_label_counts: dict[str, int] = Field(default_factory=dict)
    eval_label_counts: dict[str, int] = Field(default_factory=dict)

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
    precision: Literal["fp32", "bf16", "fp16"] | None = Field(
        default=None, description="what the configuration's precision resolved to on this device"
    )
    precision_reason: str | None = None
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
    majority_baseline: float | None = Field(
        default=None, description="accuracy of always answering the eval split's commonest label"
    )
    collapsed: bool | None = Field(
        default=None, description="the model predicted one class for every eval row"
    )


class TrainingResult(_Report):
    model_uri: str
    snapshot: Snapshot
    final_step: int
    train_loss: float | None = None
    train_seconds: float = 0.0
    stop_reason: StopReason = Field(
        default="done", description="done: the whole schedule ran; early_stopping: patience ran out"
    )
    selected_step: int | None = Field(
        default=None, description="the step whose weights were published (select_best_by set)"
    )
    selected_value: float | None = Field(
        default=None, description="its validation metric (select_best_by's)"
    )
    validation: dict[str, float] = Field(
        default_factory=dict,
        description="the validation evaluation at final_step, if one ran there (select_best_by)",
    )
    precision: Literal["fp32", "bf16", "fp16"] | None = None  # as resolved, like its reason
    precision_reason: str | None = None
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
    champion: str | None = Field(default=None, description="the configuration set as champion")


class RunResult(_Report):
    name: str
    status: RunStatus
    eval: EvalMetrics | None = None
    error: str | None = None
    model_uri: str | None = None
    snapshot_id: str | None = None
    final_step: int | None = None
    selected_step: int | None = Field(
        default=None, description="the published checkpoint's step when select_best_by is set"
    )
    stop_reason: StopReason | None = None
    mlflow_run_id: str | None = None
    training_workflow_id: str | None = None
    eval_workflow_id: str | None = None


class ExperimentResult(_Model):
    experiment_id: str
    name: str
    runs: list[RunResult]
    mlflow_experiment_id: str | None = None
    mlflow_parent_run_id: str | None = None
    champion: str | None = Field(default=None, description="the configuration set as champion")


class InferenceRequest(_Model):
    model_uri: str = Field(
        min_length=1, max_length=1000, description="a finished run's model folder or MLflow URI"
    )
    texts: list[str] = Field(min_length=1, max_length=MAX_INFERENCE_TEXTS)
    text_pairs: list[str] | None = Field(default=None, max_length=MAX_INFERENCE_TEXTS)
    max_length: int | None = Field(
        default=None, ge=8, le=8192, description="tokens per text; None: the trained length"
    )

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
    stop_at_step: int | None = Field(
        default=None, ge=1, description="stop there with a checkpoint (a sweep's rung)"
    )


class SnapshotInput(_Model):
    config: RunConfig


class TrainInput(_Model):
    config: RunConfig
    snapshot: Snapshot
    run_key: str = Field(description="names the run's folder in the checkpoint store")
    mlflow_run_id: str | None = None
    stop_at_step: int | None = Field(
        default=None,
        ge=1,
        description="stop at this step, after a checkpoint there, if it is before the schedule's "
        "end: a later call continues from it exactly as if never stopped (a sweep's rung)",
    )


class EvalInput(_Model):
    config: RunConfig
    training: TrainingResult
    experiment_name: str
    mlflow_run_id: str | None = None
    heartbeat_timeout_s: int = Field(default=HEARTBEAT_TIMEOUT_S, ge=2, le=600)
    experiment_id: str | None = Field(default=None, description="the coordinator's workflow id")


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


class ChampionInput(_Model):
    """The ended configurations of an experiment; the best by `metric` becomes its champion."""

    runs: list[RunResult]
    metric: SelectionMetric = "auto"


class RecordEvalInput(_Model):
    """What the record_eval activity logs: an evaluation already done (kept in the workflow's
    history, so retrying the recording never repeats it)."""

    eval: EvalInput
    metrics: EvalMetrics


class EvalResult(_Model):
    metrics: EvalMetrics
    model_uri: str = Field(description="registered MLflow model if tracked, else the model folder")

"""The sweep contract: what a user asks for (SweepRequest), what the SweepWorkflow reports while
it runs (SweepProgress, through its `progress` query) and what it returns (SweepResult, also the
CLI's `--json`).

A sweep searches a space of RunConfig fields around a base configuration: every trial is the
base with the trial's params set, trained with the schedule of `max_steps` from the start and
stopped at ASHA's rungs (`min_steps * eta**k`) to be promoted or pruned on a validation metric
(orchestration/sweep/asha.py). Only the trials that reach `max_steps` are evaluated on the
held-out eval split.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from orchestration.sweep.asha import Asha
from orchestration.timeouts import HEARTBEAT_TIMEOUT_S, TRAINING_MAX_ATTEMPTS
from orchestration.types import (
    _NAME_SCHEMA,
    EvalMetrics,
    RunConfig,
    _Model,
    _Report,
    _valid_name,
)

# A documented limit: continue-as-new keeps the history bounded, but every trial's state
# travels in the progress query and the result (a few hundred bytes each).
MAX_SWEEP_TRIALS = 1000
MAX_SWEEP_CONCURRENCY = 32

SamplerName = Literal["grid", "random", "tpe"]
# Validation metrics a trial reports at each rung (orchestration/ml/selection.py computes them
# on the rows carved from the training rows, never on the eval split).
SweepMetric = Literal["accuracy", "macro_f1", "loss"]
Direction = Literal["maximize", "minimize"]
TrialStatus = Literal[
    "running",  # training towards its next rung
    "paused",  # reached a rung, waiting: promoted once enough trials rank below it, else pruned
    "promoted",  # promoted at its rung, waiting for a training slot to continue
    "pruned",  # stopped at a rung by ASHA
    "completed",  # trained to max_steps (and evaluated on the eval split)
    "failed",
    "cancelled",
]
ENDED: tuple[TrialStatus, ...] = ("pruned", "completed", "failed", "cancelled")
ParamValue = float | int | str


class Choice(_Model):
    """A field's values to choose from (grid, random and TPE all take them)."""

    values: list[int | float | str] = Field(min_length=1, max_length=100)

    @field_validator("values")
    @classmethod
    def _distinct(cls, values: list[ParamValue]) -> list[ParamValue]:
        if len(set(values)) != len(values):
            raise ValueError("values repeat; list each value once")
        return values


class Range(_Model):
    """A field's interval: uniform, log-uniform (low > 0) or integers (low and high whole)."""

    low: float
    high: float
    scale: Literal["uniform", "log", "int"] = "uniform"

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.scale == "log" and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        if self.scale == "int" and not (self.low.is_integer() and self.high.is_integer()):
            raise ValueError("an int range needs whole low and high")
        return self


SearchSpace = dict[str, Choice | Range]


class SweepRequest(_Model):
    """An adaptive search: `n_trials` configurations around `base`, `max_concurrent` training
    at once, promoted or pruned by ASHA at steps min_steps * eta**k (and max_steps)."""

    name: str = Field(json_schema_extra=_NAME_SCHEMA)
    base: RunConfig = Field(description="every field a trial does not search; max_steps is set")
    space: SearchSpace = Field(min_length=1, description="RunConfig field -> Choice or Range")
    sampler: SamplerName = "tpe"
    n_trials: int = Field(default=9, ge=1, le=MAX_SWEEP_TRIALS)
    max_concurrent: int = Field(default=2, ge=1, le=MAX_SWEEP_CONCURRENCY)
    eta: int = Field(default=3, ge=2, le=10, description="ASHA's reduction factor")
    min_steps: int = Field(default=20, ge=1, description="the first rung, in optimizer steps")
    max_steps: int = Field(default=180, ge=1, description="the top rung: a trial's whole schedule")
    metric: SweepMetric = Field(default="accuracy", description="on the validation rows")
    direction: Direction | None = Field(
        default=None, description="null: minimize loss, maximize the others"
    )
    sampler_seed: int = Field(default=0, ge=0, le=2**31 - 1)
    budget_steps: int | None = Field(
        default=None, ge=1, description="no new trial starts once this many steps are trained"
    )
    budget_seconds: int | None = Field(
        default=None, ge=1, description="no new trial starts once trials trained this long"
    )
    heartbeat_timeout_s: int = Field(default=HEARTBEAT_TIMEOUT_S, ge=2, le=600)
    max_attempts: int = Field(default=TRAINING_MAX_ATTEMPTS, ge=1, le=100)
    continue_after_events: int = Field(
        default=200,
        ge=1,
        le=10_000,
        description="rung results after which the workflow continues as new (bounded history)",
    )

    @field_validator("name")
    @classmethod
    def _name_help(cls, value: str) -> str:
        return _valid_name(value)

    @model_validator(mode="after")
    def _steps(self) -> SweepRequest:
        if self.min_steps > self.max_steps:
            raise ValueError(
                f"min_steps ({self.min_steps}) is above max_steps ({self.max_steps}); lower it"
            )
        # Checked here rather than imported at module level: space.py needs these types.
        from orchestration.sweep.space import check_space

        check_space(self)
        return self

    @property
    def goal(self) -> Direction:
        if self.direction:
            return self.direction
        return "minimize" if self.metric == "loss" else "maximize"

    def rungs(self) -> list[int]:
        """Rung steps: min_steps * eta**k below max_steps, then max_steps."""
        steps, k = [], 0
        while self.min_steps * self.eta**k < self.max_steps:
            steps.append(self.min_steps * self.eta**k)
            k += 1
        return [*steps, self.max_steps]


class TrialState(_Report):
    """One trial as the sweep's progress query and result show it."""

    name: str
    number: int
    params: dict[str, ParamValue]
    status: TrialStatus = "running"
    rung: int = Field(default=0, description="index of the rung it trains towards or stands at")
    steps_trained: int = 0
    train_seconds: float = 0.0
    rung_metrics: dict[int, float | None] = Field(
        default_factory=dict, description="rung step -> validation metric"
    )
    eval: EvalMetrics | None = None
    model_uri: str | None = None
    mlflow_run_id: str | None = None
    error: str | None = None


class SweepProgress(_Model):
    sweep_id: str
    name: str
    status: Literal["running", "completed", "cancelled"] = "running"
    metric: SweepMetric = "accuracy"
    direction: Direction = "maximize"
    trials: list[TrialState] = Field(default_factory=list)
    rungs: list[int] = Field(default_factory=list)
    best: str | None = Field(default=None, description="best trial at the highest rung so far")
    steps_trained_total: int = 0
    steps_full_budget: int = 0
    mlflow_experiment_id: str | None = None
    mlflow_parent_run_id: str | None = None


class BestTrial(_Model):
    name: str
    params: dict[str, ParamValue]
    eval: EvalMetrics | None = None
    model_uri: str | None = None


class TrialResult(_Model):
    name: str
    status: TrialStatus
    params: dict[str, ParamValue]
    steps_trained: int
    rung_metrics: dict[int, float | None] = Field(default_factory=dict)
    eval: EvalMetrics | None = None
    error: str | None = None


class SweepResult(_Model):
    """The sweep's outcome; `--json` prints it (the CLI's documented shape)."""

    experiment_id: str
    best: BestTrial | None
    trials: list[TrialResult]
    steps_trained_total: int
    steps_full_budget: int = Field(description="what training every trial to max_steps costs")
    mlflow_experiment_id: str | None = None
    mlflow_parent_run_id: str | None = None


def steps_full_budget(trials: int, max_steps: int) -> int:
    return trials * max_steps


def is_better(a: float, b: float, direction: Direction) -> bool:
    """a strictly better than b."""
    return a < b if direction == "minimize" else a > b


def finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


class SweepCarry(_Model):
    """The sweep's whole state: what continue-as-new hands to the next run."""

    progress: SweepProgress
    asha: Asha
    promoted_queue: list[str] = Field(
        default_factory=list, description="promoted trials waiting for a slot, in order"
    )
    sampling_stopped: bool = Field(default=False, description="a budget ran out")


class SweepInput(_Model):
    """SweepWorkflow's input: the request, and the state when continued as new."""

    request: SweepRequest
    carry: SweepCarry | None = None

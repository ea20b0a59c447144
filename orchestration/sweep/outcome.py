"""What a sweep's state amounts to: its best trial, its leaderboard and its result. Pure
functions of the SweepProgress, used by the workflow (deterministic) and nothing else."""

from __future__ import annotations

from typing import Literal

from orchestration.sweep.tracking import LeaderboardRow, SweepVerdict
from orchestration.sweep.types import (
    BestTrial,
    SweepProgress,
    SweepResult,
    TrialResult,
    TrialState,
)


def _last(trial: TrialState) -> tuple[int, float | None]:
    """The highest rung step the trial reached, and its metric there."""
    if not trial.rung_metrics:
        return 0, None
    step = max(trial.rung_metrics)
    return step, trial.rung_metrics[step]


def ranked(p: SweepProgress) -> list[TrialState]:
    """Trials best first: the highest rung reached, then the metric there (a missing value
    last), then trial number. Failed trials go last."""
    sign = -1 if p.direction == "maximize" else 1

    def key(t: TrialState) -> tuple:
        step, value = _last(t)
        return (t.status == "failed", -step, value is None, sign * (value or 0.0), t.number)

    return sorted(p.trials, key=key)


def best_trial(p: SweepProgress) -> TrialState | None:
    """The best trial at the highest rung reached, failed trials aside."""
    found = [t for t in ranked(p) if t.status != "failed" and _last(t)[1] is not None]
    return found[0] if found else None


def verdict(p: SweepProgress, cancelled: bool) -> SweepVerdict | None:
    """The parent run's record: FINISHED when a trial completed, KILLED when the sweep was
    cancelled, else FAILED; None when the sweep is untracked."""
    if p.mlflow_parent_run_id is None:
        return None
    best = best_trial(p)
    finish: Literal["FINISHED", "FAILED", "KILLED"] = (
        "KILLED"
        if cancelled
        else "FINISHED"
        if any(t.status == "completed" for t in p.trials)
        else "FAILED"
    )
    return SweepVerdict(
        parent_run_id=p.mlflow_parent_run_id,
        best=best.name if best else None,
        best_model_uri=best.model_uri if best else None,
        leaderboard=[
            LeaderboardRow(
                trial=t.name,
                status=t.status,
                rung=t.rung,
                steps_trained=t.steps_trained,
                metric=_last(t)[1],
                params=t.params,
                eval=t.eval,
            )
            for t in ranked(p)
        ],
        finish=finish,
    )


def result(p: SweepProgress) -> SweepResult:
    best = best_trial(p)
    return SweepResult(
        experiment_id=p.sweep_id,
        best=BestTrial(name=best.name, params=best.params, eval=best.eval, model_uri=best.model_uri)
        if best
        else None,
        trials=[
            TrialResult(
                name=t.name,
                status=t.status,
                params=t.params,
                steps_trained=t.steps_trained,
                rung_metrics=t.rung_metrics,
                eval=t.eval,
                error=t.error,
            )
            for t in p.trials
        ],
        steps_trained_total=p.steps_trained_total,
        steps_full_budget=p.steps_full_budget,
        mlflow_experiment_id=p.mlflow_experiment_id,
        mlflow_parent_run_id=p.mlflow_parent_run_id,
    )

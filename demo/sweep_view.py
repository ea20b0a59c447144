"""A sweep as the Runs and Compare tabs show it, from the SweepWorkflow's `progress` query alone.

Runs: every trial at every rung it reached, rung by rung (the successive-halving bracket), with
its decision there (promoted, pruned, completed...), the steps it has trained and its validation
metric at that rung; a trial still training shows under the rung it is heading for. Compare: the
leaderboard, trials ranked by how far they got and then by their metric at the highest rung
they reached (the validation split: what the sweep selects on), the best trial marked ★ and its
held-out eval scores next to it.
"""

from __future__ import annotations

import math

from demo.backend import Backend
from orchestration.sweep.types import ENDED, SweepProgress, TrialState

RUNG_COLUMNS = ["rung", "trial", "decision", "steps trained", "metric", "params", "accuracy"]
LEADERBOARD_COLUMNS = [
    "rank",
    "trial",
    "best",
    "status",
    "rung steps",
    "validation metric",
    "eval accuracy",
    "eval macro_f1",
    "steps trained",
    "params",
]


def params_text(params: dict) -> str:
    """`learning_rate=0.0003 · batch_size=16`: floats short, in the space's order."""
    return " · ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def _metric(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _lower_is_better(progress: SweepProgress) -> bool:
    return progress.direction == "minimize"


def rung_rows(progress: SweepProgress) -> list[list]:
    """One row per (rung, trial that reached it or is training toward it), lowest rung first,
    and within a rung the best metric first."""
    rungs = list(progress.rungs)
    flip = -1.0 if _lower_is_better(progress) else 1.0
    keyed: list[tuple[tuple, list]] = []
    for trial in progress.trials:
        reached = sorted(s for s in trial.rung_metrics if s in rungs)
        for i, step in enumerate(reached):
            last = i == len(reached) - 1
            # A running trial that has a rung behind it was promoted there.
            decision = "promoted" if not last or trial.status == "running" else trial.status
            value = trial.rung_metrics[step]
            order = math.inf if value is None else -flip * value
            keyed.append(((rungs.index(step), 0, order, trial.number), _row(trial, step, decision)))
        if trial.status == "running" and 0 <= trial.rung < len(rungs):
            heading = rungs[trial.rung]
            if heading not in reached:
                keyed.append(((trial.rung, 1, 0.0, trial.number), _row(trial, heading, "running")))
    keyed.sort(key=lambda pair: pair[0])
    return [row for _, row in keyed]


def _row(trial: TrialState, step: int, decision: str) -> list:
    accuracy = trial.eval.accuracy if trial.eval and decision == "completed" else None
    return [
        f"{step} steps",
        trial.name,
        decision,
        trial.steps_trained,
        _metric(trial.rung_metrics.get(step)),
        params_text(trial.params),
        _metric(accuracy),
    ]


def counts(progress: SweepProgress) -> dict[str, int]:
    found: dict[str, int] = {}
    for trial in progress.trials:
        found[trial.status] = found.get(trial.status, 0) + 1
    return found


def header_text(progress: SweepProgress) -> str:
    """The Runs tab's line over a sweep: status, trials by status, the steps it has cost so far
    against training every trial to the maximum, and the best trial so far."""
    by_status = counts(progress)
    ended = sum(by_status.get(s, 0) for s in ENDED)
    parts = [
        f"**{progress.name}** — **{progress.status}**, {ended}/{len(progress.trials)} trials ended",
        ", ".join(f"{n} {s}" for s, n in sorted(by_status.items())),
    ]
    if progress.steps_full_budget:
        share = 100 * progress.steps_trained_total / progress.steps_full_budget
        parts.append(
            f"{progress.steps_trained_total} of {progress.steps_full_budget} steps "
            f"({share:.0f}% of training every trial to the maximum)"
        )
    if progress.best:
        parts.append(f"best trial: **{progress.best}**")
    return " · ".join(p for p in parts if p)


def _rank_key(progress: SweepProgress, trial: TrialState) -> tuple:
    flip = -1.0 if _lower_is_better(progress) else 1.0
    top = max(trial.rung_metrics, default=0)
    value = trial.rung_metrics.get(top)
    order = math.inf if value is None else -flip * value
    return (trial.name != progress.best, -top, order, trial.number)


def leaderboard_rows(progress: SweepProgress) -> list[list]:
    """Trials ranked: the best first, then by the highest rung reached and the metric there."""
    rows = []
    ranked = sorted(progress.trials, key=lambda t: _rank_key(progress, t))
    for rank, trial in enumerate(ranked, start=1):
        top = max(trial.rung_metrics, default=None)
        e = trial.eval
        rows.append(
            [
                rank,
                trial.name,
                "★" if trial.name == progress.best else "",
                trial.status,
                "" if top is None else top,
                _metric(None if top is None else trial.rung_metrics[top]),
                _metric(e.accuracy if e else None),
                _metric(e.macro_f1 if e else None),
                trial.steps_trained,
                params_text(trial.params),
            ]
        )
    return rows


def cancellable(progress: SweepProgress) -> list[str]:
    """Trials a cancel can still reach."""
    return [t.name for t in progress.trials if t.status not in ENDED]


def runs_header(backend: Backend, sweep_id: str, progress: SweepProgress) -> str:
    """The Runs tab's header over a sweep, with links to its workflow and MLflow experiment."""
    links = [f"[Temporal workflow]({backend.workflow_url(sweep_id)})"]
    if progress.mlflow_experiment_id:
        links.append(
            f"[MLflow experiment]({backend.mlflow_experiment_url(progress.mlflow_experiment_id)})"
        )
    return (
        header_text(progress)
        + f" · sweep `{sweep_id}`, selected on validation {progress.metric} · "
        + " · ".join(links)
    )


def compare_note(backend: Backend, progress: SweepProgress) -> str:
    """The Compare tab's line over a sweep's leaderboard: how many trials finished, the best
    one with its scores and model, and the MLflow experiment (parallel coordinates of all)."""
    by_status = counts(progress)
    text = (
        f"**{progress.name}** (sweep, **{progress.status}**): {len(progress.trials)} trials, "
        f"{by_status.get('completed', 0)} completed and evaluated on the eval split, "
        f"{by_status.get('pruned', 0)} pruned. Ranked by validation {progress.metric} at the "
        "highest rung each reached."
    )
    best = next((t for t in progress.trials if t.name == progress.best), None)
    if best is not None:
        top = max(best.rung_metrics, default=None)
        scores = (
            []
            if top is None
            else [f"validation {progress.metric} {_metric(best.rung_metrics[top])} at {top} steps"]
        )
        if best.eval and best.eval.accuracy is not None:
            scores.append(f"eval accuracy {best.eval.accuracy:.4f}")
        text += f" Best trial: ★ **{best.name}** ({', '.join(scores)}; {params_text(best.params)})"
        if best.model_uri:
            text += f", model `{best.model_uri}`: pick it on **Try inference**"
        text += "."
    if progress.mlflow_experiment_id:
        url = backend.mlflow_experiment_url(progress.mlflow_experiment_id)
        text += f" [Every trial in MLflow]({url})."
    return text

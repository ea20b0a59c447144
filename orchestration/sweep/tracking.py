"""The sweep in MLflow: tags and rung metrics of each trial's child run, and the parent's verdict.

Each trial has a child run like an experiment's configuration (opened by `open_config_run`, its
training logging validation metrics at every evaluation). The sweep adds:

- per trial: the metric `sweep_<metric>` at step = each rung's step (MLflow's parallel
  coordinates and compare views then show every trial at its last rung), and the tags
  `bertfleet.sweep.status` (completed, pruned, failed, cancelled) and `bertfleet.sweep.rung`.
  A pruned trial ends FINISHED, not KILLED: it ran exactly as the search intended and its
  checkpoint is good; the status tag says it was pruned. Cancelled trials end KILLED, failed
  ones FAILED, completed ones FINISHED (by record_eval, which registers their model).
- on the parent: the tag `bertfleet.sweep.best` (the best trial's name), the leaderboard as a
  table artifact (leaderboard.json, mlflow.log_table), and the registry alias `champion` on the
  best trial's registered model version.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from temporalio import activity

from orchestration.settings import Settings
from orchestration.sweep.types import ParamValue, TrialStatus
from orchestration.types import EvalMetrics, _Model
from tracking.client import client
from tracking.registry import CHAMPION, set_alias, version_of
from tracking.runs import finish_run

TAG_SWEEP_STATUS = "bertfleet.sweep.status"
TAG_SWEEP_RUNG = "bertfleet.sweep.rung"
TAG_SWEEP_BEST = "bertfleet.sweep.best"
LEADERBOARD = "leaderboard.json"


class TrialRecord(_Model):
    run_id: str
    metric: str
    status: TrialStatus
    rung: int
    rung_metrics: dict[int, float | None]
    finish: Literal["FINISHED", "FAILED", "KILLED"] | None = None
    error: str | None = None


class LeaderboardRow(_Model):
    trial: str
    status: TrialStatus
    rung: int
    steps_trained: int
    metric: float | None
    params: dict[str, ParamValue]
    eval: EvalMetrics | None = None


class SweepVerdict(_Model):
    parent_run_id: str
    best: str | None
    best_model_uri: str | None
    leaderboard: list[LeaderboardRow]
    finish: Literal["FINISHED", "FAILED", "KILLED"]


def record_trial(tracking_uri: str, inp: TrialRecord) -> None:
    c = client(tracking_uri)
    for step, value in sorted(inp.rung_metrics.items()):
        if value is not None:
            c.log_metric(inp.run_id, f"sweep_{inp.metric}", value, step=step)
    c.set_tag(inp.run_id, TAG_SWEEP_STATUS, inp.status)
    c.set_tag(inp.run_id, TAG_SWEEP_RUNG, str(inp.rung))
    if inp.finish:
        finish_run(tracking_uri, inp.run_id, inp.finish, inp.error)


def record_verdict(tracking_uri: str, inp: SweepVerdict) -> str | None:
    """Leaderboard, best trial and champion alias on the parent run, then its end; returns the
    champion's model URI (None if the best trial has no registered version)."""
    import mlflow

    c = client(tracking_uri)
    table = {
        "trial": [r.trial for r in inp.leaderboard],
        "status": [r.status for r in inp.leaderboard],
        "rung": [r.rung for r in inp.leaderboard],
        "steps_trained": [r.steps_trained for r in inp.leaderboard],
        "metric": [r.metric for r in inp.leaderboard],
        "eval_accuracy": [r.eval.accuracy if r.eval else None for r in inp.leaderboard],
        "params": [str(r.params) for r in inp.leaderboard],
    }
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.log_table(table, LEADERBOARD, run_id=inp.parent_run_id)
    if inp.best:
        c.set_tag(inp.parent_run_id, TAG_SWEEP_BEST, inp.best)
    champion = None
    if version_of(inp.best_model_uri):
        champion = set_alias(tracking_uri, inp.best_model_uri or "", CHAMPION)
    finish_run(tracking_uri, inp.parent_run_id, inp.finish)
    return champion


class SweepTrackingActivities:
    def __init__(self, settings: Settings) -> None:
        self._uri = settings.mlflow_tracking_uri

    @activity.defn(name="sweep_record_trial")
    async def record_trial(self, inp: TrialRecord) -> None:
        await asyncio.to_thread(record_trial, self._uri, inp)

    @activity.defn(name="sweep_record_verdict")
    async def record_verdict(self, inp: SweepVerdict) -> str:
        return await asyncio.to_thread(record_verdict, self._uri, inp) or ""

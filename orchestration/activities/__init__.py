"""Thin async activity wrappers: heartbeats, cancellation and retry classification around the
ML core (orchestration.ml) and tracking (tracking/)."""

from __future__ import annotations

from temporalio.client import Client

from orchestration.activities.evaluation import EvalActivities
from orchestration.activities.training import TrainingActivities
from orchestration.settings import Settings


def training_activities(client: Client, cfg: Settings) -> list:
    acts = TrainingActivities(client, cfg)
    return [acts.snapshot, acts.train]


def eval_activities(cfg: Settings) -> list:
    acts = EvalActivities(cfg)
    return [acts.evaluate, acts.predict]

"""Thin async activity wrappers: heartbeats, cancellation and retry classification around the
ML core (orchestration.ml) and tracking (tracking/)."""

from __future__ import annotations

from temporalio.client import Client

from orchestration.activities.evaluation import EvalActivities
from orchestration.activities.tracking import TrackingActivities
from orchestration.activities.training import TrainingActivities
from orchestration.settings import Settings


def training_activities(client: Client, cfg: Settings) -> list:
    acts = TrainingActivities(client, cfg)
    return [acts.snapshot, acts.train]


def eval_activities(cfg: Settings) -> list:
    acts, track = EvalActivities(cfg), TrackingActivities(cfg)
    return [
        acts.evaluate_model,
        acts.record_eval,
        acts.predict,
        track.open_experiment,
        track.open_config_run,
        track.finish_run,
        track.set_champion,
    ]

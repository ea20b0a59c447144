"""Thin async activity wrappers: heartbeats, cancellation and retry classification around the
ML core (orchestration.ml) and tracking (tracking/)."""

from __future__ import annotations

from temporalio.client import Client

from orchestration.activities.evaluation import EvalActivities
from orchestration.activities.tracking import TrackingActivities
from orchestration.activities.training import TrainingActivities
from orchestration.settings import Settings
from orchestration.sweep.suggest import suggest_activity
from orchestration.sweep.tracking import SweepTrackingActivities


def training_activities(client: Client, cfg: Settings) -> list:
    acts = TrainingActivities(client, cfg)
    return [acts.snapshot, acts.train]


def eval_activities(cfg: Settings) -> list:
    acts, track = EvalActivities(cfg), TrackingActivities(cfg)
    sweep = SweepTrackingActivities(cfg)
    return [
        suggest_activity,
        sweep.record_trial,
        sweep.record_verdict,
        acts.evaluate_model,
        acts.record_eval,
        acts.predict,
        track.open_experiment,
        track.open_config_run,
        track.finish_run,
        track.set_champion,
    ]

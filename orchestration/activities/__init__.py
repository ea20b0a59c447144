"""Thin async activity wrappers: heartbeats, cancellation and retry classification around the
ML core (orchestration.ml) and tracking (tracking/).

Each role's activities are imported when that role's worker asks for them, not with the
package: evaluation and inference pull in torch and transformers (~300 MB), which the training
worker (its runs train in processes of their own) has no use for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from temporalio.client import Client

    from orchestration.settings import Settings


def training_activities(client: Client, cfg: Settings) -> list:
    from orchestration.activities.training import TrainingActivities

    acts = TrainingActivities(client, cfg)
    return [acts.snapshot, acts.train]


def eval_activities(cfg: Settings) -> list:
    from orchestration.activities.evaluation import EvalActivities
    from orchestration.activities.tracking import TrackingActivities
    from orchestration.sweep.suggest import suggest_activity
    from orchestration.sweep.tracking import SweepTrackingActivities

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

"""The app's sweep endpoints through gradio_client: a bad sweep is refused by field and starts
nothing; a launched sweep is listed and watched; one trial is cancelled while its siblings carry
on, then the whole sweep. Real Temporal, MLflow, workers and the app process (conftest)."""

from __future__ import annotations

import json

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from harness.polling import poll
from harness.temporal import coordinator_count
from orchestration.presets import sweep_preset

SWEEPS = "SweepWorkflow"


def test_bad_sweeps_are_refused_by_field(settings, start_app):
    app = Client(start_app(settings).url, verbose=False)
    before = coordinator_count(settings, SWEEPS)
    bad = sweep_preset("sweep-smoke").model_dump(mode="json")
    bad["space"]["dataset"] = {"values": ["imdb-reviews"]}
    with pytest.raises(AppError, match=r"space\.dataset: cannot be searched"):
        app.predict(json.dumps(bad), api_name="/sweep_launch")
    bad = sweep_preset("sweep-smoke").model_dump(mode="json")
    bad["base"]["dataset"] = "no_such_dataset"
    with pytest.raises(AppError, match=r"base, dataset: 'no_such_dataset' is not a built-in"):
        app.predict(json.dumps(bad), api_name="/sweep_launch")
    with pytest.raises(AppError, match="unknown sweep preset 'nope'"):
        app.predict("nope", api_name="/sweep_launch")
    assert coordinator_count(settings, SWEEPS) == before


def test_cancel_a_trial_then_the_sweep_through_the_api(settings, worker_processes, start_app):
    worker_processes("training")
    worker_processes("eval")
    app = Client(start_app(settings).url, verbose=False)
    poll(lambda: "✓ workers" in app.predict(api_name="/health"), 30, "workers to poll")
    sweep_id = app.predict("sweep-smoke", api_name="/sweep_launch")["sweep_id"]
    assert sweep_id.startswith("sweep-sweep-smoke-")
    assert sweep_id in [s["sweep_id"] for s in app.predict(api_name="/sweeps")]

    def running_trial():
        progress = app.predict(sweep_id, api_name="/sweep_progress")
        return next((t["name"] for t in progress["trials"] if t["status"] == "running"), None)

    trial = poll(running_trial, 120, "a trial to train", interval_s=1.0)
    assert app.predict(sweep_id, trial, api_name="/cancel_trial") == f"cancel requested for {trial}"

    def status_of(name):
        progress = app.predict(sweep_id, api_name="/sweep_progress")
        return next(t["status"] for t in progress["trials"] if t["name"] == name)

    poll(lambda: status_of(trial) == "cancelled", 120, f"{trial} to end cancelled", interval_s=1.0)
    assert app.predict(sweep_id, api_name="/sweep_progress")["status"] == "running"
    app.predict(sweep_id, api_name="/cancel_sweep")

    def ended():
        progress = app.predict(sweep_id, api_name="/sweep_progress")
        return progress if progress["status"] != "running" else None

    progress = poll(ended, 120, "the sweep to end", interval_s=1.0)
    assert progress["status"] == "cancelled", progress
    assert all(t["status"] != "running" for t in progress["trials"]), progress
    # Once ended, it is no longer a sweep a cancel can reach; an experiment id is not a sweep.
    with pytest.raises(AppError, match=f"sweep_id: sweep {sweep_id} is already"):
        app.predict(sweep_id, api_name="/cancel_sweep")
    with pytest.raises(AppError, match="sweep_id: no sweep 'experiment-nope-1'"):
        app.predict("experiment-nope-1", "t", api_name="/cancel_trial")

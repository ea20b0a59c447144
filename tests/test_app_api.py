"""The Gradio app as a subprocess (`python -m demo`), driven through gradio_client.

Real Temporal and MLflow servers, worker processes and the app process (conftest, harness); the
smoke preset trains two tiny-bert configurations of ~40 steps each.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError, AuthenticationError

from demo.backend import Backend
from demo.compare_tab import COLUMNS, DEFAULT_METRIC, comparison
from demo.configs import LaunchRefused, preset_rows, rows_from_request, validate
from demo.runs_tab import PALETTE, curve_update, smoothed
from demo.service import Service
from harness.polling import poll
from harness.processes import start_together
from harness.runs import SMOKE_TIMEOUT_S
from harness.servers import running, temporal_server
from harness.temporal import coordinator_count
from orchestration.presets import NOTES, PRESETS, preset
from orchestration.servers import free_port
from orchestration.settings import Settings
from orchestration.types import ExperimentProgress, RunProgress


def wait_until_ended(app: Client, experiment_id: str) -> dict:
    def ended():
        progress = app.predict(experiment_id, api_name="/progress")
        return progress if progress["status"] != "running" else None

    return poll(ended, SMOKE_TIMEOUT_S, f"{experiment_id} to end", interval_s=1.0)


def test_presets_say_what_they_are_for_and_compare_on_the_same_rows():
    assert set(NOTES) == set(PRESETS) and "plumbing" in NOTES["smoke"]
    for name in PRESETS:
        runs = preset(name).runs
        # Configurations differ in what their names say, never in the rows they train on.
        assert len({(r.dataset, r.data_seed, r.max_train_samples) for r in runs}) == 1, name
    demo = preset("demo").runs
    assert len(demo) == 3 and all((r.max_eval_samples or 0) >= 1000 for r in demo)


def test_table_holds_presets_exactly_and_names_bad_cells(data_dir):
    cfg = Settings(data_dir=data_dir, local_roots_env=str(data_dir / "local"))
    for name in PRESETS:
        req = preset(name)
        assert validate(req.name, rows_from_request(req), cfg) == req
    _, rows = preset_rows("smoke")
    rows[0][5] = 16.5  # batch_size
    rows[1][0] = rows[0][0]  # a duplicate name
    rows[1][10] = '{"warmup_ratio": 2}'  # a field from the JSON column
    with pytest.raises(LaunchRefused) as refused:
        validate("bad name!", rows, cfg)
    assert refused.value.problems == [
        "row 1 (name 'tiny-lr5e-4'), batch_size: Input should be a valid integer, got a number "
        "with a fractional part",
        "row 2 (name 'tiny-lr5e-4'), warmup_ratio: must be < 1",
        "experiment name: use 1-48 letters, digits, '.', '_' or '-', starting with a letter or "
        "digit",
    ]
    _, rows = preset_rows("smoke")
    rows[1][0] = rows[0][0]
    with pytest.raises(LaunchRefused, match=r"row 2 \(name 'tiny-lr5e-4'\), name: duplicate"):
        validate("smoke", rows, cfg)


def test_loss_chart_draws_late_configurations_and_smooths():
    progress = ExperimentProgress(
        experiment_id="e", name="e", runs=[RunProgress(name=n) for n in ("a", "b", "c")]
    )
    first = [(1, 1.0, "b"), (2, 0.0, "b")]
    # Every configuration has its colour (by its place in the experiment) and a row from the
    # first draw, so the chart's colour domain never has to grow: "a" and "c", not started
    # yet, are one row without a loss each.
    colors = {"a": PALETTE[0], "b": PALETTE[1], "c": PALETTE[2]}
    early = curve_update(progress, first)
    assert early["color_map"] == colors
    assert list(early["value"]["configuration"]) == ["b", "b", "a", "c"]
    assert early["value"]["loss"].isna().tolist() == [False, False, True, True]
    later = curve_update(progress, [(1, 2.0, "a"), *first])
    assert later["color_map"] == colors
    assert list(later["value"]["configuration"]) == ["a", "b", "b", "c"]
    assert curve_update(progress, [])["value"] is None
    # Smoothing: 0 is raw; otherwise a bias-corrected moving average per configuration.
    assert smoothed(first, 0.0) == first
    assert smoothed([(1, 2.0, "a"), *first], 0.5) == [
        (1, 2.0, "a"),
        (1, 1.0, "b"),
        (2, pytest.approx(1 / 3), "b"),  # (0.5 * 0.5 * 1 + 0.5 * 0) / (1 - 0.25)
    ]


def test_invalid_rows_are_refused_and_start_nothing(settings, start_app):
    app = Client(start_app(settings).url, verbose=False)
    before = coordinator_count(settings)
    bad = {
        "name": "bad",
        "runs": [
            {"name": "ok", "model": "tiny-bert"},
            {"name": "neg", "learning_rate": -0.001, "dataset": "no_such_dataset"},
        ],
    }
    with pytest.raises(AppError) as refused:
        app.predict(json.dumps(bad), api_name="/launch")
    message = str(refused.value)
    assert "row 2 (name 'neg'), learning_rate: must be > 0" in message, message
    assert "row 2 (name 'neg'), dataset: 'no_such_dataset' is not a built-in" in message, message
    assert "row 1" not in message, message
    with pytest.raises(AppError, match="unknown preset 'nope'"):
        app.predict("nope", api_name="/launch")
    outside = {"name": "outside", "runs": [{"name": "etc", "dataset": "/etc/passwd"}]}
    with pytest.raises(AppError, match=r"row 1 \(name 'etc'\), dataset: '/etc/passwd' is outside"):
        app.predict(json.dumps(outside), api_name="/launch")
    assert coordinator_count(settings) == before


def test_launch_poll_predict_and_cancel_through_the_api(settings, worker_processes, start_app):
    # Browsers reach MLflow at another address than the app does (as in deploy/compose.yaml).
    browser_mlflow = "http://mlflow.example.test:5000"
    *_, started = start_together(
        lambda: worker_processes("training"),
        lambda: worker_processes("eval"),
        lambda: start_app(replace(settings, mlflow_ui_url_env=browser_mlflow)),
    )
    app = Client(started.url, verbose=False)
    poll(lambda: "✓ workers" in app.predict(api_name="/health"), 30, "workers to poll")

    launched = app.predict("smoke", api_name="/launch")
    experiment_id = launched["experiment_id"]
    assert experiment_id.startswith("experiment-smoke-")
    assert launched["temporal_url"] == (
        f"{settings.temporal_ui_url}/namespaces/default/workflows/{experiment_id}"
    )
    assert launched["mlflow_url"].startswith(f"{browser_mlflow}/#/experiments/"), launched
    listed = [e["experiment_id"] for e in app.predict(api_name="/experiments")]
    assert experiment_id in listed

    progress = wait_until_ended(app, experiment_id)
    assert progress["status"] == "completed"
    assert [r["status"] for r in progress["runs"]] == ["completed", "completed"], progress
    for run in progress["runs"]:
        assert run["training"]["step"] == run["training"]["total_steps"] == 40, run
        assert 0.0 <= run["eval"]["accuracy"] <= 1.0

    result = app.predict(experiment_id, api_name="/result")
    # The two configurations differ in seed, not data_seed: one snapshot, one baseline.
    first, second = result["runs"]
    assert first["snapshot_id"] == second["snapshot_id"]
    baseline = first["eval"]["majority_baseline"]
    assert 0.5 <= baseline < 1 and second["eval"]["majority_baseline"] == baseline
    assert all(isinstance(r["eval"]["collapsed"], bool) for r in result["runs"])
    # The Compare tab: ranked by macro-F1, each next to the baseline with a verdict.
    rows, figure, *_ = comparison(Service(Backend(settings)), experiment_id, DEFAULT_METRIC)
    f1_column, baseline_column = COLUMNS.index("macro_f1"), COLUMNS.index("majority_baseline")
    verdict_column = COLUMNS.index("verdict")
    assert [row[f1_column] for row in rows] == sorted(
        (row[f1_column] for row in rows), reverse=True
    )
    assert {row[baseline_column] for row in rows} == {round(baseline, 4)}
    for row in rows:
        run = next(r for r in result["runs"] if r["name"] == row[1])
        expected = "collapsed" if run["eval"]["collapsed"] else "points over majority"
        assert expected in row[verdict_column], row
    assert "majority baseline" in [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    models = app.predict(experiment_id, api_name="/models")
    uris = {m["model_uri"] for m in models}
    assert {r["model_uri"] for r in result["runs"]} <= uris, (result, models)
    texts = ["A moving, beautifully acted film.", "Dull and far too long."]
    answer = app.predict(result["runs"][0]["model_uri"], texts, api_name="/predict")
    assert len(answer["predictions"]) == 2
    for scores in answer["predictions"]:
        assert {s["label"] for s in scores} == {"fresh", "rotten"}
        assert sum(s["score"] for s in scores) == pytest.approx(1.0, abs=1e-4)
    assert answer["latency_ms"] > 0
    move_the_champion(app, experiment_id, result)
    cancel_one_then_all(app)


def move_the_champion(app: Client, experiment_id: str, result: dict) -> None:
    """The experiment ended with a champion; the Compare tab's API moves it to the other
    configuration, and predictions through `models:/smoke@champion` follow."""
    champion = app.predict(experiment_id, api_name="/champion")
    assert champion == result["champion"] and champion in {r["name"] for r in result["runs"]}
    alias = "models:/smoke@champion"
    listed = app.predict(experiment_id, api_name="/models")
    assert listed[0]["model_uri"] == alias and listed[0]["label"].startswith("★ smoke@champion")
    other = next(r for r in result["runs"] if r["name"] != champion)
    assert app.predict(experiment_id, other["name"], api_name="/set_champion") == alias
    assert app.predict(experiment_id, api_name="/champion") == other["name"]
    texts = ["Dull and far too long."]
    through_alias = app.predict(alias, texts, api_name="/predict")["predictions"]
    assert (
        through_alias == app.predict(other["model_uri"], texts, api_name="/predict")["predictions"]
    )
    with pytest.raises(AppError, match="configuration: 'nope' has no registered model"):
        app.predict(experiment_id, "nope", api_name="/set_champion")


def test_app_starts_without_servers_and_recovers(settings, start_app, tmp_path):
    """Temporal and MLflow down: the app serves anyway and says so; once Temporal is back,
    the same app reaches it without a restart. (Behind a login, which is checked too.)"""
    down = replace(
        settings,
        temporal_address=f"127.0.0.1:{free_port()}",
        mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}",
    )
    url = start_app(down, auth="alice:s3cret").url
    with pytest.raises(AuthenticationError):
        Client(url, verbose=False)
    app = Client(url, auth=("alice", "s3cret"), verbose=False)
    health = app.predict(api_name="/health")
    assert (
        f"Temporal is not reachable at {down.temporal_address} — start it with `make up`" in health
    ), health
    assert f"MLflow is not reachable at {down.mlflow_tracking_uri}" in health, health
    with pytest.raises(AppError, match="Temporal is not reachable"):
        app.predict("smoke", api_name="/launch")
    assert app.predict("", api_name="/models") == []

    temporal = temporal_server(
        tmp_path / "late-temporal", port=int(down.temporal_address.rsplit(":", 1)[1])
    )
    with running(temporal):
        health = poll(
            lambda: (h := app.predict(api_name="/health")) and "✓ Temporal" in h and h,
            30,
            "the app to reach Temporal",
        )
        assert "no worker polls" in health, health
        assert app.predict(api_name="/experiments") == []


def cancel_one_then_all(app: Client) -> None:
    """Cancelling one configuration leaves its sibling to complete; cancelling an experiment
    cancels every configuration."""
    tiny = {
        "model": "tiny-bert",
        "max_length": 32,
        "max_eval_samples": 64,
        "checkpoint_every_steps": 20,
    }
    # A short heartbeat timeout: a cancelled activity hears of it at its next heartbeat, which
    # Temporal's SDK sends at most every 0.8 x heartbeat timeout.
    req: dict[str, Any] = {
        "name": "cancels",
        "heartbeat_timeout_s": 5,
        "runs": [
            {"name": "short", "epochs": 1, "max_train_samples": 64, **tiny},
            {"name": "long", "epochs": 50, "max_train_samples": 480, **tiny},  # 1500 steps
        ],
    }
    experiment_id = app.predict(json.dumps(req), api_name="/launch")["experiment_id"]

    def long_is_training():
        runs = app.predict(experiment_id, api_name="/progress")["runs"]
        training = runs[1]["training"]
        return runs[1]["status"] == "training" and training and training["step"] > 0

    poll(long_is_training, 180, "the long configuration to train", interval_s=0.5)
    app.predict(experiment_id, "long", api_name="/cancel_run")
    progress = wait_until_ended(app, experiment_id)
    assert progress["status"] == "completed"
    assert [r["status"] for r in progress["runs"]] == ["completed", "cancelled"], progress
    assert progress["runs"][1]["training"]["step"] < 1500

    long_runs = [req["runs"][1], {**req["runs"][1], "name": "long-2"}]
    whole = app.predict(
        json.dumps({**req, "name": "cancel-all", "runs": long_runs}), api_name="/launch"
    )
    app.predict(whole["experiment_id"], api_name="/cancel_experiment")
    progress = wait_until_ended(app, whole["experiment_id"])
    assert progress["status"] == "cancelled"
    assert {r["status"] for r in progress["runs"]} == {"cancelled"}, progress

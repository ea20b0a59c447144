"""The training recipe: schedule, gradient accumulation, max_steps, and best-checkpoint selection
with early stopping, on a real tiny BERT and the synthetic task (harness.synthetic).

Selection evaluates on rows carved from the training split, saves the best checkpoint, protects
it from rotation and publishes its weights; an interrupted run resumed from a checkpoint makes
the same decisions and ends with the same weights as a straight one.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from pydantic import ValidationError
from safetensors.torch import load_file
from sklearn.metrics import f1_score
from transformers import EvalPrediction

from demo.configs import COLUMNS, LaunchRefused, more_fields_help, parse_launch_input
from harness.runs import SHORT
from harness.synthetic import SELECTING, config, write_snapshot
from harness.temporal import workers
from orchestration.client import experiment_result, start_experiment
from orchestration.ml.checkpoints import CheckpointStore
from orchestration.ml.errors import ConfigError
from orchestration.ml.selection import carve_validation, classification_metrics
from orchestration.ml.training import TrainingHooks, TrainingStopped, train
from orchestration.settings import Settings
from orchestration.types import ExperimentRequest, RunConfig, TrainingProgress


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> str:
    return write_snapshot(tmp_path_factory.mktemp("snap") / "synthetic")


def _weights(folder: str | Path) -> dict[str, torch.Tensor]:
    return load_file(f"{folder}/model.safetensors")


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Seen:
    """What the hooks saw: progress reports and logged points."""

    def __init__(self) -> None:
        self.progress: list[TrainingProgress] = []
        self.logs: list[tuple[int, dict[str, float]]] = []

    def hooks(self, **extra) -> TrainingHooks:
        return TrainingHooks(
            on_progress=self.progress.append,
            on_log=lambda step, metrics: self.logs.append((step, metrics)),
            **extra,
        )

    def values(self, key: str) -> dict[int, float]:
        return {step: m[key] for step, m in self.logs if key in m}


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"eval_every_steps": 5}, "eval_every_steps", "only with select_best_by"),
        ({"early_stopping_patience": 2}, "early_stopping_patience", "only with select_best_by"),
        ({"validation_fraction": 0.2}, "validation_fraction", "only with select_best_by"),
        ({"select_best_by": "f1"}, "select_best_by", "'accuracy', 'macro_f1' or 'loss'"),
        (
            {"select_best_by": "accuracy", "task_type": "regression"},
            "select_best_by",
            "use loss for regression",
        ),
        ({"lr_scheduler_type": "constant"}, "lr_scheduler_type", "constant_with_warmup"),
        ({"lr_scheduler_type": "step"}, "lr_scheduler_type", "'linear', 'cosine'"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps", "greater than"),
        ({"max_steps": 0}, "max_steps", "greater than"),
        (
            {"select_best_by": "loss", "max_steps": 10, "eval_every_steps": 20},
            "eval_every_steps",
            "more than max_steps (10)",
        ),
        ({"select_best_by": "loss", "validation_fraction": 0.9}, "validation_fraction", "0.5"),
        ({"warmup_ratio": 1.0}, "warmup_ratio", "less than 1"),
    ],
)
def test_recipe_fields_are_refused_with_the_field_named(fields, field, words):
    with pytest.raises(ValidationError) as refused:
        RunConfig(name="r", **fields)
    errors = refused.value.errors()
    assert [e["loc"] for e in errors] == [(field,)], errors
    assert words in errors[0]["msg"], errors[0]["msg"]


def test_recipe_defaults_follow_published_fine_tuning_recipes():
    cfg = RunConfig(name="r")
    assert (cfg.learning_rate, cfg.warmup_ratio, cfg.weight_decay) == (1e-4, 0.1, 0.01)
    assert (cfg.lr_scheduler_type, cfg.gradient_accumulation_steps, cfg.max_steps) == (
        "linear",
        1,
        None,
    )
    assert cfg.select_best_by is None and cfg.early_stopping_patience is None
    # The interactions that are allowed: constant without warmup, selection with its knobs.
    allowed = [
        cfg,
        RunConfig(name="r", lr_scheduler_type="constant", warmup_ratio=0),
        RunConfig(name="r", select_best_by="loss", eval_every_steps=5, early_stopping_patience=1),
        RunConfig(name="r", max_steps=10, select_best_by="accuracy", eval_every_steps=10),
    ]
    # Every field serialised (a Temporal payload, the CLI's JSON) reads back as the same config.
    for run in allowed:
        assert RunConfig.model_validate_json(run.model_dump_json()) == run
        assert RunConfig(**run.model_dump()) == run


def test_launch_input_takes_the_recipe_and_names_a_bad_field(data_dir):
    """The CLI's and the app's JSON launch input (and the table's `more` column) carry every
    recipe field, refused per row and field; the app lists them with their help."""
    cfg = Settings(data_dir=data_dir, local_roots_env=str(data_dir / "local"))
    recipe = {
        "lr_scheduler_type": "cosine",
        "gradient_accumulation_steps": 2,
        "max_steps": 40,
        "select_best_by": "macro_f1",
        "eval_every_steps": 10,
        "early_stopping_patience": 3,
    }
    good = {"name": "recipe", "runs": [{"name": "a", **recipe}]}
    run = parse_launch_input(json.dumps(good), cfg).runs[0]
    assert run.model_dump(include=set(recipe)) == recipe
    patient_only = {"name": "b", "max_steps": 5, "early_stopping_patience": 2}
    bad = {"name": "recipe", "runs": [{"name": "a", **recipe}, patient_only]}
    with pytest.raises(LaunchRefused) as refused:
        parse_launch_input(json.dumps(bad), cfg)
    assert refused.value.problems == [
        "row 2 (name 'b'), early_stopping_patience: applies only with select_best_by; set "
        "select_best_by (accuracy, macro_f1, loss) too, or leave this unset"
    ]
    listed = more_fields_help()
    for field in (*recipe, "warmup_ratio", "weight_decay", "validation_fraction"):
        assert f"| `{field}` |" in listed
    assert not [c for c in COLUMNS if f"| `{c}` |" in listed]


def test_validation_rows_are_carved_from_training_rows_the_same_way_every_time():
    rows: dict[str, list] = {
        "text": [f"t{i}" for i in range(100)],
        "label": [i % 2 for i in range(100)],
    }
    train_rows, held = carve_validation(rows, 0.1)
    assert len(held["text"]) == 10 and len(train_rows["text"]) == 90
    assert set(held["text"]).isdisjoint(train_rows["text"])
    assert sorted(held["text"] + train_rows["text"]) == sorted(rows["text"])
    assert carve_validation(rows, 0.1) == (train_rows, held)  # no seed of the run's involved
    assert held["text"] != rows["text"][:10]  # shuffled, not the first rows
    with pytest.raises(ConfigError, match=r"^validation_fraction: 0.1 of 4 training rows"):
        carve_validation({"text": list("abcd"), "label": [0, 1, 0, 1]}, 0.1)


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_validation_macro_f1_is_the_final_evaluations_macro_f1(classes):
    rng = np.random.default_rng(classes)
    for n in (1, 7, 50):  # few rows: classes never seen nor predicted count as 0
        logits, labels = rng.normal(size=(n, classes)), rng.integers(0, classes, size=n)
        ours = classification_metrics(EvalPrediction(predictions=logits, label_ids=labels))
        predicted = logits.argmax(axis=-1)
        macro = {"labels": list(range(classes)), "average": "macro", "zero_division": 0}
        assert ours["macro_f1"] == pytest.approx(f1_score(labels, predicted, **macro), abs=1e-12)
        assert ours["accuracy"] == np.mean(predicted == labels)


def test_gradient_accumulation_adds_batches_up_to_one_optimizer_step(snapshot, tmp_path):
    store = CheckpointStore(tmp_path)
    seen = Seen()
    cfg = config(epochs=1, gradient_accumulation_steps=4, checkpoint_every_steps=100)
    result = train(cfg, snapshot, store, "exp/accumulate", seen.hooks())
    # 320 rows / 16 = 20 batches an epoch, 4 per optimizer step: 5 steps.
    assert result.final_step == 5
    assert {p.total_steps for p in seen.progress} == {5}
    assert [p.step for p in seen.progress][-1] == 5
    assert max(seen.values("epoch").values()) == pytest.approx(1.0)
    assert result.stop_reason == "done" and result.selected_step is None


def test_max_steps_overrides_epochs_and_schedulers_shape_the_learning_rate(snapshot, tmp_path):
    store = CheckpointStore(tmp_path)
    linear, constant = Seen(), Seen()
    cfg = config(epochs=3, max_steps=8, checkpoint_every_steps=5)
    result = train(cfg, snapshot, store, "exp/max-steps", linear.hooks())
    assert result.final_step == 8 and {p.total_steps for p in linear.progress} == {8}
    assert [c.step for c in store.checkpoints("exp/max-steps")] == [5, 8]
    rates = list(linear.values("learning_rate").values())
    # One warmup step (10 % of 8, rounded up) from 0 to the peak, then a linear decay.
    assert len(rates) == 8 and rates[0] == 0 and rates[1] == cfg.learning_rate
    assert rates[1:] == sorted(rates[1:], reverse=True) and rates[-1] < rates[1] / 4

    flat = cfg.model_copy(update={"lr_scheduler_type": "constant", "warmup_ratio": 0.0})
    train(flat, snapshot, store, "exp/constant", constant.hooks())
    assert set(constant.values("learning_rate").values()) == {cfg.learning_rate}


@pytest.fixture(scope="module")
def straight(snapshot, tmp_path_factory):
    """One uninterrupted run with selection and early stopping."""
    store = CheckpointStore(tmp_path_factory.mktemp("selecting"))
    seen = Seen()
    result = train(config(**SELECTING), snapshot, store, "exp/straight", seen.hooks())
    return store, result, seen


def test_early_stopping_stops_and_publishes_the_best_checkpoint(straight):
    store, result, seen = straight
    accuracy = seen.values("validation_accuracy")
    assert result.stop_reason == "early_stopping" and result.final_step < 54
    assert sorted(accuracy) == list(range(10, result.final_step + 1, 10))
    best = result.selected_step
    assert best is not None and result.selected_value == max(accuracy.values()) == accuracy[best]
    assert all(accuracy[step] < accuracy[best] for step in accuracy if step < best)
    assert result.final_step == best + 2 * 10  # two evaluations without improvement
    # Never the held-out eval split during training: that stays the final verdict.
    assert not [m for _, m in seen.logs if any(k.startswith("eval_") for k in m)]
    assert set(seen.values("validation_macro_f1")) == set(accuracy)

    # The best checkpoint was saved although off the checkpoint interval, and survived rotation
    # (keep_checkpoints=1) while newer ones came; the published weights are its weights.
    steps = [c.step for c in store.checkpoints("exp/straight")]
    assert best in steps and steps[-1] > best
    published = _weights(result.model_uri)
    assert _same_weights(published, _weights(store.checkpoint_dir("exp/straight", best)))
    latest = store.latest("exp/straight")
    assert latest is not None and not _same_weights(published, _weights(latest.uri))


@pytest.mark.parametrize(
    "stop_at", [35, 40], ids=["between-evaluations", "at-an-evaluation-without-improvement"]
)
def test_resumed_selecting_run_ends_bit_identical_to_the_straight_one(straight, snapshot, stop_at):
    """A worker shutting down at `stop_at` writes a checkpoint there; the retry resumes from it
    and must reach the same best checkpoint, the same early stop and the same weights."""
    store, uninterrupted, seen_straight = straight
    assert uninterrupted.selected_step is not None
    assert uninterrupted.selected_step < stop_at < uninterrupted.final_step
    run_key = f"exp/resumed-{stop_at}"
    steps: list[int] = []

    def shutting_down_at_stop_at() -> bool:  # asked once per step
        steps.append(1)
        return len(steps) >= stop_at

    hooks = TrainingHooks(should_save_and_stop=shutting_down_at_stop_at)
    with pytest.raises(TrainingStopped) as stopped:
        train(config(**SELECTING), snapshot, store, run_key, hooks)
    checkpoint = stopped.value.checkpoint
    assert checkpoint is not None and checkpoint.step == stop_at
    seen = Seen()
    result = train(
        config(**SELECTING), snapshot, store, run_key, seen.hooks(), resume_from=checkpoint.uri
    )
    assert seen.progress[0].step == stop_at
    assert (result.final_step, result.stop_reason, result.selected_step) == (
        uninterrupted.final_step,
        uninterrupted.stop_reason,
        uninterrupted.selected_step,
    )
    assert result.selected_value == uninterrupted.selected_value
    after = {s: v for s, v in seen_straight.values("validation_loss").items() if s > stop_at}
    assert seen.values("validation_loss") == after
    assert _same_weights(_weights(result.model_uri), _weights(uninterrupted.model_uri))


def test_select_best_by_a_class_metric_on_a_regression_task_is_a_config_error(tmp_path):
    snapshot = write_snapshot(tmp_path / "regression", regression=True)
    cfg = config(select_best_by="macro_f1")  # task_type auto: known once the data is read
    with pytest.raises(ConfigError, match=r"^select_best_by: macro_f1 needs a classification"):
        train(cfg, snapshot, CheckpointStore(tmp_path / "checkpoints"), "exp/reg")


def test_rotation_keeps_the_protected_checkpoint(tmp_path):
    store = CheckpointStore(tmp_path)
    for step in (10, 20, 30, 40):
        store.checkpoint_dir("e/r", step).mkdir(parents=True)
        store.mark_complete("e/r", step, epoch=step / 10, loss=None)
    store.prune("e/r", keep=1, protect=20)
    assert [c.step for c in store.checkpoints("e/r")] == [20, 40]
    store.prune("e/r", keep=1)
    assert [c.step for c in store.checkpoints("e/r")] == [40]


def test_an_experiment_reports_and_tracks_the_selected_step_and_why_training_stopped(settings):
    """Through the workflows and MLflow: the result and the run's tags say which step's weights
    were published and why training ended; the validation curve is logged apart from eval_*,
    whose only point is the final verdict on the eval split."""
    cfg = RunConfig(
        name="selecting",
        **{**SHORT, "select_best_by": "loss", "eval_every_steps": 5, "early_stopping_patience": 2},
    )
    req = ExperimentRequest(name="recipe-selects", runs=[cfg])

    async def scenario():
        async with workers(settings) as client:
            return await experiment_result(client, await start_experiment(client, req, settings))

    (run,) = asyncio.run(scenario()).runs
    assert run.status == "completed", run.error
    assert run.selected_step is not None and run.stop_reason in ("done", "early_stopping")
    assert run.final_step is not None and run.selected_step <= run.final_step
    assert (run.stop_reason == "early_stopping") == (run.final_step < 60)
    mlflow = MlflowClient(settings.mlflow_tracking_uri)
    tags = mlflow.get_run(run.mlflow_run_id).data.tags
    assert tags["bertfleet.stop_reason"] == run.stop_reason
    assert tags["bertfleet.selected_step"] == str(run.selected_step)
    curve = mlflow.get_metric_history(run.mlflow_run_id, "validation_loss")
    steps = sorted(m.step for m in curve)
    assert steps == sorted({*range(5, run.final_step + 1, 5), run.final_step})
    best = min(curve, key=lambda m: (m.value, m.step))
    assert best.step == run.selected_step
    assert float(tags["bertfleet.selected_value"]) == pytest.approx(best.value)
    verdict = mlflow.get_metric_history(run.mlflow_run_id, "eval_accuracy")
    assert [m.step for m in verdict] == [run.final_step]

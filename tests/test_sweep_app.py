"""The app's sweep mode without a server: the form's cells to a SweepRequest and back, every
problem named by its field, and a sweep's progress as the Runs and Compare tabs lay it out."""

from __future__ import annotations

import json

import pytest

from demo.backend import Backend
from demo.configs import LaunchRefused
from demo.sweep_form import SweepForm, build_request, form_from_request, parse_sweep_input
from demo.sweep_view import cancellable, compare_note, header_text, leaderboard_rows, rung_rows
from orchestration.presets import SWEEP_PRESETS, sweep_preset
from orchestration.settings import Settings
from orchestration.sweep.types import Choice, Range, SweepProgress, TrialState
from orchestration.types import EvalMetrics


@pytest.fixture
def cfg(data_dir):
    return Settings(data_dir=data_dir, local_roots_env=str(data_dir / "local"))


def test_presets_survive_the_form_exactly(cfg):
    for name in SWEEP_PRESETS:
        req = sweep_preset(name)
        assert build_request(form_from_request(req), cfg) == req, name


def test_form_reads_choices_and_ranges_as_typed(cfg):
    form = SweepForm(
        name="s1",
        base='{"model": "tiny-bert", "max_train_samples": 320}',
        space=[
            ["learning_rate", "", 1e-4, 1e-2, "log"],
            ["batch_size", "8, 16", None, None, ""],
            ["lr_scheduler_type", "linear, cosine", None, None, None],
            ["", None, None, None, None],  # a blank row left at the end
        ],
        sampler="random",
        n_trials=8.0,  # Gradio's numbers are floats
        max_concurrent=2.0,
        eta=3.0,
        min_steps=10.0,
        max_steps=90.0,
        metric="macro_f1",
    )
    req = build_request(form, cfg)
    assert req.space == {
        "learning_rate": Range(low=1e-4, high=1e-2, scale="log"),
        "batch_size": Choice(values=[8, 16]),
        "lr_scheduler_type": Choice(values=["linear", "cosine"]),
    }
    assert (req.n_trials, req.rungs(), req.metric, req.base.max_train_samples) == (
        8,
        [10, 30, 90],
        "macro_f1",
        320,
    )


def test_every_problem_is_named_by_its_field(cfg):
    form = SweepForm(
        name="bad name!",
        base='{"dataset": "no_such_dataset", "learning_rate": -1}',
        space=[
            ["learning_rate", "1, 2", 1, 2, ""],
            ["warmup_ratio", "", 0.5, 0.1, ""],
            ["", "1, 2", None, None, ""],
        ],
        n_trials=0,
    )
    with pytest.raises(LaunchRefused) as refused:
        build_request(form, cfg)
    problems = refused.value.problems
    assert problems[:3] == [
        "space row 1 (learning_rate): give either choices (comma-separated) or a range (low "
        "and high), not both",
        "space row 2 (warmup_ratio): low (0.5) must be below high (0.1)",
        "space row 3, field: name a configuration field, e.g. learning_rate",
    ]
    assert problems[3].startswith("base, dataset: 'no_such_dataset' is not a built-in")
    assert problems[4:] == [
        "name: use 1-48 letters, digits, '.', '_' or '-', starting with a letter or digit",
        "base, learning_rate: must be > 0",
        "n_trials: must be >= 1",
    ]


def test_engine_checks_reach_the_page_in_its_words(cfg):
    unsearchable = SweepForm(name="s", base="{}", space=[["dataset", "a, b", None, None, ""]])
    with pytest.raises(LaunchRefused, match=r"space\.dataset: cannot be searched"):
        build_request(unsearchable, cfg)
    grid = SweepForm(
        name="s", base="{}", space=[["seed", "1, 2", None, None, ""]], sampler="grid", n_trials=3
    )
    with pytest.raises(LaunchRefused, match=r"n_trials: 3 is more than the grid's 2"):
        build_request(grid, cfg)
    with pytest.raises(LaunchRefused, match=r"base: not valid JSON"):
        build_request(SweepForm(name="s", base="{", space=grid.space), cfg)


def test_api_input_is_a_preset_or_a_request(cfg):
    assert parse_sweep_input("sweep-smoke", cfg) == sweep_preset("sweep-smoke")
    with pytest.raises(
        LaunchRefused, match="unknown sweep preset 'nope'; choose one of sweep-smoke"
    ):
        parse_sweep_input("nope", cfg)
    data = sweep_preset("sweep-smoke").model_dump(mode="json")
    data["eta"] = 1
    with pytest.raises(LaunchRefused, match=r"^eta: must be >= 2$"):
        parse_sweep_input(json.dumps(data), cfg)


def trial(number, status, rung_metrics, rung=0, steps=0, accuracy=None, uri=None):
    return TrialState(
        name=f"t{number}",
        number=number,
        params={"learning_rate": 0.00031622, "seed": number},
        status=status,
        rung=rung,
        steps_trained=steps,
        rung_metrics=rung_metrics,
        eval=None if accuracy is None else EvalMetrics(accuracy=accuracy),
        model_uri=uri,
    )


def progress() -> SweepProgress:
    return SweepProgress(
        sweep_id="sweep-x",
        name="x",
        rungs=[5, 15, 45],
        trials=[
            trial(0, "completed", {5: 0.7, 15: 0.75, 45: 0.8}, 2, 45, 0.79, "models:/x/1"),
            trial(1, "pruned", {5: 0.6}, 0, 5),
            trial(2, "running", {5: 0.72}, 1, 9),  # promoted at 5, heading for 15
            trial(3, "pruned", {5: 0.65, 15: 0.7}, 1, 15),
            trial(4, "running", {}, 0, 2),
        ],
        best="t0",
        steps_trained_total=76,
        steps_full_budget=225,
    )


def test_trials_by_rung_with_their_decision_there():
    rows = [(r[0], r[1], r[2], r[4]) for r in rung_rows(progress())]
    assert rows == [
        ("5 steps", "t2", "promoted", "0.7200"),
        ("5 steps", "t0", "promoted", "0.7000"),
        ("5 steps", "t3", "promoted", "0.6500"),
        ("5 steps", "t1", "pruned", "0.6000"),
        ("5 steps", "t4", "running", ""),
        ("15 steps", "t0", "promoted", "0.7500"),
        ("15 steps", "t3", "pruned", "0.7000"),
        ("15 steps", "t2", "running", ""),
        ("45 steps", "t0", "completed", "0.8000"),
    ]
    assert cancellable(progress()) == ["t2", "t4"]


def test_leaderboard_puts_the_best_first_then_the_furthest(cfg):
    rows = leaderboard_rows(progress())
    assert [(r[1], r[2], r[4]) for r in rows] == [
        ("t0", "★", 45),
        ("t3", "", 15),
        ("t2", "", 5),
        ("t1", "", 5),
        ("t4", "", ""),
    ]
    assert rows[0][6] == "0.7900" and rows[0][9] == "learning_rate=0.000316 · seed=0"
    text = header_text(progress())
    assert text.startswith("**x** — **running**, 3/5 trials ended")
    assert "3/5 trials ended" in text and "1 completed, 2 pruned, 2 running" in text
    assert "76 of 225 steps (34% of training every trial to the maximum)" in text
    note = compare_note(Backend(cfg), progress())
    assert "1 completed and evaluated on the eval split, 2 pruned" in note
    assert (
        "Best trial: ★ **t0** (validation accuracy 0.8000 at 45 steps, eval accuracy 0.7900" in note
    )
    assert "model `models:/x/1`: pick it on **Try inference**" in note

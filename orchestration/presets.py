"""Ready-made experiments, each with a note saying what it is for (shown in the app and CLI).

`smoke` checks the plumbing in about a minute; `demo` trains models worth trying within five
minutes on two CPU cores; `quality` is the recipe for a GPU; `lr-sweep` compares learning rates.
Every configuration of a preset shares the default `data_seed`, so they train on the same rows
and differ only in what their names say.
"""

from __future__ import annotations

from typing import Any

from orchestration.sweep.types import Choice, Range, SweepRequest
from orchestration.types import ExperimentRequest, RunConfig


def _experiment(
    name: str, common: dict[str, Any], runs: dict[str, dict[str, Any]]
) -> ExperimentRequest:
    return ExperimentRequest(
        name=name,
        runs=[RunConfig(name=run, **{**common, **fields}) for run, fields in runs.items()],
    )


def _smoke() -> ExperimentRequest:
    common = dict(
        model="tiny-bert",
        dataset="movie-snippets",
        max_length=64,
        batch_size=16,
        epochs=2,
        max_train_samples=320,
        max_eval_samples=160,
        checkpoint_every_steps=10,
    )
    return _experiment(
        "smoke",
        common,
        {
            "tiny-lr5e-4": dict(learning_rate=5e-4, seed=1),
            "tiny-lr1e-3": dict(learning_rate=1e-3, seed=2),
        },
    )


DEMO_LEARNING_RATES = ("5e-5", "1e-4", "2e-4")


# 4,800 rows (300 steps of 16) per configuration: at about 80 samples/s for the whole machine,
# three of them train in under four minutes on two cores, leaving time to evaluate 1,000 rows.
def _demo() -> ExperimentRequest:
    common = dict(
        model="all-MiniLM-L6-v2",
        dataset="movie-snippets",
        max_length=64,
        batch_size=16,
        epochs=1,
        max_train_samples=4800,
        max_eval_samples=1000,
        checkpoint_every_steps=50,
        seed=1,
    )
    return _experiment(
        "demo",
        common,
        {f"minilm-lr{lr}": dict(learning_rate=float(lr)) for lr in DEMO_LEARNING_RATES},
    )


def _quality() -> ExperimentRequest:
    common = dict(
        model="all-MiniLM-L6-v2",
        dataset="imdb-reviews",
        max_length=256,
        batch_size=32,
        epochs=2,
        checkpoint_every_steps=500,
        seed=1,
    )
    return _experiment("quality", common, {"minilm-imdb-256": dict(learning_rate=5e-5)})


def _lr_sweep() -> ExperimentRequest:
    common = dict(
        model="all-MiniLM-L6-v2",
        dataset="movie-snippets",
        max_length=64,
        batch_size=16,
        epochs=1,
        max_train_samples=1600,
        max_eval_samples=1000,
        checkpoint_every_steps=25,
        seed=7,
    )
    return _experiment(
        "lr-sweep",
        common,
        {
            f"minilm-lr{lr}": dict(learning_rate=float(lr))
            for lr in ("1e-5", "3e-5", "1e-4", "3e-4")
        },
    )


NOTES = {
    "smoke": "A plumbing check, not a model: two randomly initialised tiny-bert configurations on "
    "320 rows, about a minute on two cores. Their models usually answer the commonest label "
    "(flagged collapsed); use demo for models worth trying.",
    "demo": "Three all-MiniLM-L6-v2 configurations (learning rates 5e-5, 1e-4, 2e-4) on the same "
    "4,800 movie snippets, evaluated on 1,000 held-out snippets: under five minutes on two CPU "
    "cores, every one well above the majority baseline, the best around 0.80 accuracy.",
    "quality": "Meant for a GPU: all-MiniLM-L6-v2 on the whole imdb-reviews train split (39,664 "
    "reviews) at 256 tokens for 2 epochs, evaluated on all 9,916 held-out reviews; about 0.90 "
    "accuracy. On two CPU cores it takes hours.",
    "lr-sweep": "Four all-MiniLM-L6-v2 learning rates, 1e-5 to 3e-4, on the same 1,600 movie "
    "snippets: how much the learning rate matters.",
}
PRESETS = {"smoke": _smoke, "demo": _demo, "quality": _quality, "lr-sweep": _lr_sweep}


def _sweep_smoke() -> SweepRequest:
    """9 tiny-bert trials, rungs at 5, 15 and 45 steps: 105 steps trained instead of 405."""
    return SweepRequest(
        name="sweep-smoke",
        base=RunConfig(
            name="base",
            model="tiny-bert",
            dataset="movie-snippets",
            max_length=32,
            batch_size=16,
            max_train_samples=320,
            max_eval_samples=64,
            select_best_by="loss",  # the sweep sets it to its metric anyway
            validation_fraction=0.2,
            checkpoint_every_steps=15,
            precision="fp32",
            seed=3,
        ),
        space={
            "learning_rate": Range(low=3e-4, high=3e-3, scale="log"),
            "warmup_ratio": Choice(values=[0.0, 0.1]),
        },
        sampler="tpe",
        n_trials=9,
        max_concurrent=2,
        eta=3,
        min_steps=5,
        max_steps=45,
        # After 5 steps tiny-bert answers the commonest label: accuracies tie, losses do not.
        metric="loss",
    )


def _sweep_demo() -> SweepRequest:
    """18 MiniLM trials on 3,200 snippets, rungs at 25, 75 and 225 steps."""
    return SweepRequest(
        name="sweep-demo",
        base=RunConfig(
            name="base",
            model="all-MiniLM-L6-v2",
            dataset="movie-snippets",
            max_length=64,
            batch_size=16,
            max_train_samples=3200,
            max_eval_samples=1000,
            select_best_by="accuracy",
            validation_fraction=0.1,
            checkpoint_every_steps=75,
            keep_checkpoints=1,  # the rung checkpoint (and the best one): disk, 16+ trials
            seed=1,
        ),
        space={
            "learning_rate": Range(low=2e-5, high=3e-4, scale="log"),
            "warmup_ratio": Choice(values=[0.0, 0.1, 0.2]),
            "batch_size": Choice(values=[16, 32]),
        },
        sampler="tpe",
        n_trials=18,
        max_concurrent=2,
        eta=3,
        min_steps=25,
        max_steps=225,
        metric="accuracy",
    )


SWEEP_NOTES = {
    "sweep-smoke": "A plumbing check of the sweep engine: 9 tiny-bert trials (TPE over learning "
    "rate and warmup), ASHA rungs at 5, 15 and 45 steps on the validation loss; a minute or two "
    "on two quiet cores.",
    "sweep-demo": "18 all-MiniLM-L6-v2 trials (TPE over learning rate, warmup and batch size) on "
    "3,200 movie snippets, ASHA rungs at 25, 75 and 225 steps: the best trial trained to the "
    "end for about a third of the steps of training all of them; minutes on two cores.",
}
SWEEP_PRESETS = {"sweep-smoke": _sweep_smoke, "sweep-demo": _sweep_demo}


def sweep_preset(name: str) -> SweepRequest:
    try:
        return SWEEP_PRESETS[name]()
    except KeyError:
        raise ValueError(
            f"unknown sweep preset {name!r}; choose one of {', '.join(SWEEP_PRESETS)}"
        ) from None


def preset(name: str) -> ExperimentRequest:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None

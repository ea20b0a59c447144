"""Ready-made experiments: `smoke` for a quick check, `demo` for a real model, `lr-sweep`."""

from __future__ import annotations

from orchestration.types import ExperimentRequest, RunConfig


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
    return ExperimentRequest(
        name="smoke",
        runs=[
            RunConfig(name="tiny-lr5e-4", learning_rate=5e-4, seed=1, **common),
            RunConfig(name="tiny-lr1e-3", learning_rate=1e-3, seed=2, **common),
        ],
    )


def _demo() -> ExperimentRequest:
    common = dict(
        model="all-MiniLM-L6-v2",
        dataset="movie-snippets",
        max_length=64,
        batch_size=16,
        epochs=1,
        max_train_samples=1600,
        max_eval_samples=400,
        checkpoint_every_steps=25,
    )
    return ExperimentRequest(
        name="demo",
        runs=[
            RunConfig(name="minilm-lr2e-5", learning_rate=2e-5, seed=1, **common),
            RunConfig(name="minilm-lr5e-5", learning_rate=5e-5, seed=2, **common),
            RunConfig(name="minilm-lr1e-4", learning_rate=1e-4, seed=3, **common),
        ],
    )


def _lr_sweep() -> ExperimentRequest:
    common = dict(
        model="all-MiniLM-L6-v2",
        dataset="movie-snippets",
        max_length=64,
        batch_size=16,
        epochs=1,
        max_train_samples=800,
        max_eval_samples=400,
        checkpoint_every_steps=25,
        seed=7,
    )
    return ExperimentRequest(
        name="lr-sweep",
        runs=[
            RunConfig(name=f"minilm-lr{lr}", learning_rate=float(lr), **common)
            for lr in ("1e-5", "3e-5", "1e-4", "3e-4")
        ],
    )


PRESETS = {"smoke": _smoke, "demo": _demo, "lr-sweep": _lr_sweep}


def preset(name: str) -> ExperimentRequest:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None

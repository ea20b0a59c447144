"""The search space, checked against RunConfig before a sweep starts, and each trial's config.

Only fields that change how a configuration trains, not what it trains on or where, may be
searched: the rows (dataset, caps, data_seed) stay fixed so trials compare hyperparameters, and
the schedule (max_steps, epochs) belongs to ASHA. Every value a domain can produce is checked by
building the trial's RunConfig from the domain's ends (ranges) or every value (choices), so a
bad space fails at the edge with the field's own message, not in trial 17.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from orchestration.types import RunConfig

if TYPE_CHECKING:
    from orchestration.sweep.types import Choice, ParamValue, Range, SweepRequest

# Fields a sweep may search, with whether they take whole numbers.
SEARCHABLE: dict[str, type] = {
    "learning_rate": float,
    "warmup_ratio": float,
    "weight_decay": float,
    "batch_size": int,
    "gradient_accumulation_steps": int,
    "max_length": int,
    "seed": int,
    "lr_scheduler_type": str,
}


def _fail(field: str, message: str) -> ValueError:
    return ValueError(f"space.{field}: {message}")


def grid_size(space: dict[str, Choice | Range]) -> int | None:
    """Configurations in the grid of all choices; None when the space has a range."""
    from orchestration.sweep.types import Choice

    if not all(isinstance(d, Choice) for d in space.values()):
        return None
    return math.prod(len(d.values) for d in space.values() if isinstance(d, Choice))


def trial_config(req: SweepRequest, name: str, params: dict[str, ParamValue]) -> RunConfig:
    """The base with the trial's params and the sweep's schedule: trained to max_steps, with a
    validation evaluation at every rung (select_best_by on the sweep's metric, evaluated every
    gcd of the rung steps), early stopping off (ASHA stops trials)."""
    rungs = req.rungs()
    every = math.gcd(*rungs)
    values: dict[str, Any] = {
        **req.base.model_dump(),
        **params,
        "name": name,
        "max_steps": req.max_steps,
        "select_best_by": req.metric,
        "eval_every_steps": every,
        "early_stopping_patience": None,
        # A checkpoint at every rung too: each rung's stop writes one anyway.
        "checkpoint_every_steps": min(req.base.checkpoint_every_steps, req.max_steps),
    }
    return RunConfig.model_validate(values)


def _candidates(field: str, domain: Choice | Range) -> list[ParamValue]:
    from orchestration.sweep.types import Range

    kind = SEARCHABLE[field]
    if isinstance(domain, Range):
        if kind is str:
            raise _fail(field, "takes names; give a Choice of values, not a Range")
        if kind is int and domain.scale != "int":
            raise _fail(field, f'takes whole numbers; use scale "int" (now "{domain.scale}")')
        ends: list[ParamValue] = [domain.low, domain.high]
        return [int(domain.low), int(domain.high)] if kind is int else ends
    for value in domain.values:
        if kind is str and not isinstance(value, str):
            raise _fail(field, f"takes names; {value!r} is not one")
        if kind is int and not isinstance(value, int):
            raise _fail(field, f"takes whole numbers; {value!r} is not one")
        if kind is float and isinstance(value, str):
            raise _fail(field, f"takes numbers; {value!r} is not one")
    return list(domain.values)


def check_space(req: SweepRequest) -> None:
    """ValueError naming the field for a space no trial could use."""
    for field, domain in req.space.items():
        if field not in SEARCHABLE:
            raise _fail(
                field,
                f"cannot be searched; searchable fields: {', '.join(SEARCHABLE)} "
                "(set the others in base)",
            )
        for value in _candidates(field, domain):
            try:
                trial_config(req, "check", {field: value})
            except ValidationError as err:
                problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())
                raise _fail(
                    field, f"{value!r} makes an invalid configuration: {problems}"
                ) from None
    if req.sampler == "grid":
        size = grid_size(req.space)
        if size is None:
            raise ValueError("space: the grid sampler takes only Choice domains; use random or tpe")
        if req.n_trials > size:
            raise ValueError(
                f"n_trials: {req.n_trials} is more than the grid's {size} configurations; "
                f"set n_trials to at most {size}"
            )

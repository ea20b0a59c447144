"""The sampler, as an activity: the next trial's params from the trials recorded so far.

The workflow keeps every trial's params and results; this activity rebuilds an Optuna study from
them (`create_trial` / `add_trial`) and asks it once. The study lives only for the call, so the
same history always gives the same suggestion, on any worker, after any crash:

- grid: every combination of the choices, in an order shuffled by `sampler_seed`; trial n takes
  the n-th (Optuna's GridSampler draws unvisited points from an RNG it keeps between calls,
  which a rebuilt study would reset);
- random and tpe: Optuna's RandomSampler and TPESampler, seeded with (sampler_seed, trial
  number): each rebuilt sampler starts its RNG afresh, so one seed for every trial would draw
  the same first point every time.

A trial's value is its metric at the first rung (the one every trial reaches); trials still
training are added as RUNNING (TPE's constant liar keeps them from being suggested twice) and
failed ones as FAIL.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import random
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

from temporalio import activity

from orchestration.sweep.types import Choice, ParamValue, Range, SweepRequest
from orchestration.types import _Model

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution


class PastTrial(_Model):
    params: dict[str, ParamValue]
    value: float | None = None
    state: str = "running"  # running, complete or fail


class SuggestInput(_Model):
    request: SweepRequest
    number: int
    history: list[PastTrial]


def _distribution(domain: Choice | Range, integer: bool) -> BaseDistribution:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if isinstance(domain, Choice):
        return CategoricalDistribution(domain.values)
    if domain.scale == "int" or integer:
        return IntDistribution(int(domain.low), int(domain.high))
    return FloatDistribution(domain.low, domain.high, log=domain.scale == "log")


def _grid_point(req: SweepRequest, number: int) -> dict[str, ParamValue]:
    names = sorted(req.space)
    values = [d.values for d in (req.space[n] for n in names) if isinstance(d, Choice)]
    grid = list(itertools.product(*values))
    random.Random(req.sampler_seed).shuffle(grid)
    return dict(zip(names, grid[number % len(grid)], strict=True))


def suggest(inp: SuggestInput) -> dict[str, ParamValue]:
    """The params of trial `inp.number`, a pure function of the input."""
    req = inp.request
    if req.sampler == "grid":
        return _grid_point(req, inp.number)
    import optuna
    from optuna.trial import TrialState, create_trial

    from orchestration.sweep.space import SEARCHABLE

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = {
        name: _distribution(domain, SEARCHABLE[name] is int)
        for name, domain in sorted(req.space.items())
    }
    seed = (req.sampler_seed * 1_000_003 + inp.number) % 2**32
    sampler: Any = (
        optuna.samplers.RandomSampler(seed=seed)
        if req.sampler == "random"
        else optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    )
    study = optuna.create_study(direction=req.goal, sampler=sampler)
    states = {"running": TrialState.RUNNING, "fail": TrialState.FAIL}
    for past in inp.history:
        complete = past.state == "complete" and past.value is not None
        study.add_trial(
            create_trial(
                params=past.params,
                distributions=distributions,
                value=past.value if complete else None,
                state=TrialState.COMPLETE if complete else states.get(past.state, TrialState.FAIL),
            )
        )
    trial = study.ask(distributions)
    return {name: trial.params[name] for name in distributions}


_pool: ProcessPoolExecutor | None = None


def _sampler_process() -> ProcessPoolExecutor:
    """One process for every suggestion of this worker, started on the first: importing Optuna
    and running TPE hold the GIL for seconds on a busy machine, which in a thread of the worker
    would stall its workflow tasks (Temporal's deadlock detector fails a task that does not
    yield within 2 s). The worker's idle memory stays without Optuna until a sweep runs."""
    global _pool
    if _pool is None:
        _pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    return _pool


@activity.defn(name="sweep_suggest")
async def suggest_activity(inp: SuggestInput) -> dict[str, ParamValue]:
    """suggest() in the sampler process; a process that died is replaced on the retry."""
    global _pool
    try:
        return await asyncio.get_running_loop().run_in_executor(_sampler_process(), suggest, inp)
    except BrokenProcessPool:
        _pool = None
        raise

"""The sweep's pure parts: ASHA's rung decisions, the sampler's determinism, the space's checks."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from orchestration.sweep.asha import Asha
from orchestration.sweep.suggest import PastTrial, SuggestInput, suggest
from orchestration.sweep.types import Choice, Range, SweepRequest
from orchestration.types import RunConfig


def _asha(rungs=(1, 3, 9), eta=3, direction="maximize") -> Asha:
    return Asha(rungs=list(rungs), eta=eta, direction=direction)


def _kinds(decisions) -> list[tuple[str, str, int]]:
    return [(d.kind, d.trial, d.rung) for d in decisions]


def test_request_rungs_and_direction():
    req = SweepRequest(
        name="s", base=RunConfig(name="b"), space={"seed": Choice(values=[1, 2])},
        sampler="grid", n_trials=2, min_steps=10, max_steps=100, metric="loss",
    )  # fmt: skip
    assert req.rungs() == [10, 30, 90, 100]
    assert req.goal == "minimize"


def test_promotes_the_best_third_as_results_count_in_trial_order():
    asha = _asha()
    for t in ["t0", "t1", "t2"]:
        asha.add_trial(t)
    asha.report("t2", 0, 0.9)  # arrives first, but counts only after t0 and t1
    assert asha.advance(sampling_done=False) == []
    asha.report("t0", 0, 0.5)
    assert asha.advance(sampling_done=False) == []  # one arrival: floor(1/3) = 0
    asha.report("t1", 0, 0.7)
    assert _kinds(asha.advance(sampling_done=False)) == [("promote", "t2", 0)]
    assert asha.waiting("t0") and asha.waiting("t1") and not asha.waiting("t2")


def test_closing_prunes_the_waiting_and_promotes_one_if_none_was():
    asha = _asha()
    for t, v in [("t0", 0.5), ("t1", 0.7), ("t2", 0.9), ("t3", 0.95)]:
        asha.add_trial(t)
        asha.report(t, 0, v)
    # Three arrivals: t2 is the top third. The fourth outranks it: the top third is t3 now, and
    # the paper's rule promotes it as well (promotions are never taken back).
    assert _kinds(asha.advance(sampling_done=False)) == [("promote", "t2", 0), ("promote", "t3", 0)]
    assert _kinds(asha.advance(sampling_done=True)) == [("prune", "t1", 0), ("prune", "t0", 0)]
    asha.report("t3", 1, 0.7)
    assert asha.advance(sampling_done=True) == []  # t3 counts after t2, promoted before it
    asha.report("t2", 1, 0.8)
    # Rung 1 closes with two arrivals: floor(2/3) = 0 promoted, so its best goes on anyway.
    assert _kinds(asha.advance(sampling_done=True)) == [("promote", "t2", 1), ("prune", "t3", 1)]
    asha.report("t2", 2, 0.85)
    assert _kinds(asha.advance(sampling_done=True)) == [("complete", "t2", 2)]
    assert asha.done and asha.best() == "t2"


def test_promotions_are_final_and_later_arrivals_can_promote_waiting_trials():
    asha = _asha(rungs=(1, 2), eta=2, direction="minimize")
    for t, v in [("a", 0.3), ("b", 0.5), ("c", 0.1), ("d", 0.4)]:
        asha.add_trial(t)
        asha.report(t, 0, v)
    # Taken in order a, b (quota 1: a), c (quota 1), d (quota 2: c next).
    assert _kinds(asha.advance(sampling_done=True)) == [
        ("promote", "a", 0),
        ("promote", "c", 0),
        ("prune", "d", 0),
        ("prune", "b", 0),
    ]


def test_failed_trials_do_not_block_the_order_and_nan_ranks_last():
    asha = _asha(rungs=(1, 3), eta=2)
    for t in ["a", "b", "c"]:
        asha.add_trial(t)
    asha.end("a")
    asha.report("b", 0, None)
    asha.report("c", 0, 0.1)
    assert _kinds(asha.advance(sampling_done=False)) == [("promote", "c", 0)]


def test_the_same_results_in_any_arrival_order_give_the_same_decisions():
    results = {f"t{i}": 0.1 * ((i * 7) % 9) for i in range(9)}

    def run(order: list[str]) -> list[tuple[str, str, int]]:
        asha = _asha()
        for t in results:
            asha.add_trial(t)
        decisions = []
        for t in order:
            asha.report(t, 0, results[t])
            decisions += asha.advance(sampling_done=False)
        return _kinds(decisions + asha.advance(sampling_done=True))

    forward = list(results)
    assert run(forward) == run(forward[::-1]) == run(forward[3:] + forward[:3])


def _request(sampler: str) -> SweepRequest:
    return SweepRequest(
        name="s",
        base=RunConfig(name="b"),
        space={
            "learning_rate": Range(low=1e-5, high=1e-3, scale="log"),
            "batch_size": Choice(values=[8, 16, 32]),
        }
        if sampler != "grid"
        else {"learning_rate": Choice(values=[1e-4, 3e-4]), "batch_size": Choice(values=[8, 16])},
        sampler=sampler,
        n_trials=4,
    )


@pytest.mark.parametrize("sampler", ["grid", "random", "tpe"])
def test_the_same_history_gives_the_same_suggestion(sampler):
    req = _request(sampler)
    history: list[PastTrial] = []
    suggestions = []
    for n in range(4):
        inp = SuggestInput(request=req, number=n, history=history)
        params = suggest(inp)
        assert params == suggest(SuggestInput.model_validate_json(inp.model_dump_json()))
        assert isinstance(params["batch_size"], int)
        suggestions.append(params)
        history = [*history, PastTrial(params=params, value=0.5 + n / 10, state="complete")]
    assert len({tuple(sorted(p.items())) for p in suggestions}) == 4  # no repeats


def test_bad_spaces_are_refused_naming_the_field():
    base = RunConfig(name="b")
    with pytest.raises(ValidationError, match="space.dataset: cannot be searched"):
        SweepRequest(name="s", base=base, space={"dataset": Choice(values=["x"])})
    with pytest.raises(ValidationError, match="space.batch_size: takes whole numbers"):
        SweepRequest(name="s", base=base, space={"batch_size": Range(low=8, high=32)})
    with pytest.raises(ValidationError, match="space.warmup_ratio: 1.5 makes an invalid"):
        SweepRequest(name="s", base=base, space={"warmup_ratio": Choice(values=[0.1, 1.5])})
    with pytest.raises(ValidationError, match="n_trials: 5 is more than the grid's 2"):
        SweepRequest(
            name="s", base=base, space={"seed": Choice(values=[1, 2])}, sampler="grid", n_trials=5
        )
    with pytest.raises(ValidationError, match="min_steps"):
        SweepRequest(
            name="s", base=base, space={"seed": Choice(values=[1, 2])}, min_steps=50, max_steps=10
        )

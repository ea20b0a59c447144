"""The sweep section: ASHA against the same trials all trained to the maximum, in one run.

    python -m bench.sweep            # MiniLM, 16 configurations (a grid over learning rate,
                                     # warmup and batch size); part of `make bench` too
    python -m bench.sweep --quick    # tiny-bert, 4 configurations: a check that it runs

The sweep samples the grid (every configuration once, so "the same trials" are the whole grid)
and prunes with ASHA on the validation rows; then every trial's configuration is trained
straight to max_steps as an ordinary experiment. Figures: the best ASHA trial's held-out
accuracy against the best of the fully trained ones (chosen on the eval split itself: the most
optimistic baseline), and the share of the steps ASHA trained. A trial that ASHA trained to the
end must score exactly what its straight run scores (its rungs resumed from checkpoints).
"""

from __future__ import annotations

from orchestration.environment import apply_defaults

apply_defaults()

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from temporalio.client import Client

from bench.stack import Stack
from orchestration.client import connect, experiment_result, start_experiment
from orchestration.settings import REPO_ROOT
from orchestration.sweep.client import start_sweep, sweep_result
from orchestration.sweep.space import trial_config
from orchestration.sweep.types import Choice, SweepRequest
from orchestration.types import ExperimentRequest, RunConfig

# Targets: within 1 accuracy point of the best full trial, with at most 40 % of the steps.
ACCURACY_GAP = 0.01
STEPS_SHARE = 0.40


def sweep_request(quick: bool, device: str = "cpu") -> SweepRequest:
    base = dict(
        name="base",
        dataset="movie-snippets",
        max_length=64,
        select_best_by="accuracy",
        device=device,
        seed=1,
    )
    if quick:
        return SweepRequest(
            name="bench-sweep-quick",
            base=RunConfig(
                **base,
                model="tiny-bert",
                max_train_samples=320,
                max_eval_samples=200,
                validation_fraction=0.2,
                checkpoint_every_steps=10,
            ),
            space={
                "learning_rate": Choice(values=[3e-4, 1e-3]),
                "warmup_ratio": Choice(values=[0.0, 0.1]),
            },
            sampler="grid",
            n_trials=4,
            max_concurrent=2,
            eta=2,
            min_steps=5,
            max_steps=20,
        )
    return SweepRequest(
        name="bench-sweep",
        base=RunConfig(
            **base,
            model="all-MiniLM-L6-v2",
            # The configurations differ by a few points: 1,200 validation rows (one standard
            # error ~0.012) to decide on, 2,500 held-out rows (~0.008) to score with, so that the
            # decisions and the figures are not mostly the noise of a few hundred rows; 4,800
            # rows left to train on.
            max_train_samples=6000,
            max_eval_samples=2500,
            validation_fraction=0.2,
            checkpoint_every_steps=75,
            keep_checkpoints=1,  # the rung checkpoint (and the best one): disk, 16+ trials
        ),
        space={
            "learning_rate": Choice(values=[2e-5, 5e-5, 1e-4, 2e-4]),
            "warmup_ratio": Choice(values=[0.0, 0.1]),
            "batch_size": Choice(values=[16, 32]),
        },
        sampler="grid",
        n_trials=16,
        max_concurrent=2,
        eta=3,
        min_steps=25,
        max_steps=225,
    )


async def section(stack: Stack, client: Client, req: SweepRequest) -> dict:
    """Run the sweep, then its trials to the end; the figures for results.json `sweep`."""
    began = time.monotonic()
    sweep_id = await start_sweep(client, req, stack.settings)
    asha = await stack.guard(sweep_result(client, sweep_id))
    asha_s = time.monotonic() - began
    full_req = ExperimentRequest(
        name=f"{req.name}-full", runs=[trial_config(req, t.name, t.params) for t in asha.trials]
    )
    began = time.monotonic()
    exp_id = await start_experiment(client, full_req, stack.settings)
    full = await stack.guard(experiment_result(client, exp_id))
    full_s = time.monotonic() - began
    full_acc = {
        r.name: r.eval.accuracy for r in full.runs if r.eval and r.eval.accuracy is not None
    }
    best_full = max(full_acc, key=lambda n: full_acc[n]) if full_acc else None
    best = asha.best
    best_acc = best.eval.accuracy if best and best.eval else None
    completed = [t for t in asha.trials if t.status == "completed" and t.eval]
    steps_share = asha.steps_trained_total / asha.steps_full_budget
    gap = (full_acc[best_full] - best_acc) if best_full and best_acc is not None else None
    return {
        "model": req.base.model,
        "configs": len(asha.trials),
        "rungs": req.rungs(),
        "eta": req.eta,
        "asha": {
            "best": best.name if best else None,
            "best_params": best.params if best else None,
            "best_accuracy": best_acc,
            "steps": asha.steps_trained_total,
            "wall_s": round(asha_s, 1),
            "statuses": {
                s: [t.status for t in asha.trials].count(s)
                for s in ("completed", "pruned", "failed")
            },
        },
        "full": {
            "best": best_full,
            "best_accuracy": full_acc.get(best_full) if best_full else None,
            "steps": asha.steps_full_budget,
            "wall_s": round(full_s, 1),
            "accuracies": full_acc,
        },
        "steps_share": round(steps_share, 4),
        "accuracy_gap": None if gap is None else round(gap, 4),
        # Trials ASHA trained to the end, resumed rung after rung: identical to straight runs?
        "completed_identical": sum(
            1 for t in completed if t.eval and full_acc.get(t.name) == t.eval.accuracy
        ),
        "completed": len(completed),
        "met": {
            "accuracy_within_1_point": gap is not None and gap <= ACCURACY_GAP,
            "steps_at_most_40_percent": steps_share <= STEPS_SHARE,
        },
    }


def targets(s: dict) -> list[tuple]:
    """(metric, target, measured, met) rows for the bench's targets table."""
    return [
        (
            "sweep: best ASHA accuracy, gap to the best full trial",
            f"<= {ACCURACY_GAP}",
            s["accuracy_gap"],
            s["met"]["accuracy_within_1_point"],
        ),
        (
            "sweep: ASHA's steps, share of training every trial to max",
            f"<= {STEPS_SHARE:.0%}",
            s["steps_share"],
            s["met"]["steps_at_most_40_percent"],
        ),
    ]


def markdown(s: dict) -> list[str]:
    """results.md lines for the section."""
    a, f = s["asha"], s["full"]
    return [
        "## Sweep: ASHA against every trial trained to the end",
        f"{s['configs']} configurations of `{s['model']}`, rungs {s['rungs']} (eta {s['eta']}).",
        "",
        "| | best trial | held-out accuracy | steps | wall s |",
        "|---|---|---|---|---|",
        f"| ASHA (selected on validation rows) | {a['best']} | {a['best_accuracy']} | "
        f"{a['steps']} | {a['wall_s']} |",
        f"| all trained to max (best on eval) | {f['best']} | {f['best_accuracy']} | "
        f"{f['steps']} | {f['wall_s']} |",
        "",
        f"Steps share {s['steps_share']:.1%} (target <= 40 %), accuracy gap {s['accuracy_gap']} "
        f"(target <= 0.01); trials ASHA completed that equal their straight run: "
        f"{s['completed_identical']}/{s['completed']}.",
    ]


async def _standalone(quick: bool, device: str, root: Path) -> dict:
    stack = Stack(root, max_concurrent=2)
    try:
        stack.start_servers()
        await asyncio.gather(
            *(asyncio.to_thread(stack.start_worker, role) for role in ("training", "eval"))
        )
        client = await connect(stack.settings)
        return await section(stack, client, sweep_request(quick, device))
    finally:
        stack.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny-bert, 4 configurations")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="folder for sweep.json")
    args = parser.parse_args()
    out = args.out or REPO_ROOT / "bench" / "results" / ("tmp/quick" if args.quick else "")
    with tempfile.TemporaryDirectory(prefix="bertfleet-bench-sweep-") as tmp:
        results = asyncio.run(_standalone(args.quick, args.device, Path(tmp)))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "sweep.json"
    path.write_text(json.dumps({"sweep": results}, indent=2))
    print("\n".join(markdown(results)), file=sys.stderr)
    print(path)


if __name__ == "__main__":
    main()

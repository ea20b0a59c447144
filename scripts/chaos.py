"""Chaos: SIGKILL training workers at random during a 3-configuration experiment, then check
that the experiment still ends coherent.

    .venv/bin/python scripts/chaos.py                    # tiny-bert, a few minutes
    .venv/bin/python scripts/chaos.py --model all-MiniLM-L6-v2 --train-samples 800 --epochs 1
    .venv/bin/python scripts/chaos.py --json chaos.json  # the figures, for docs/reliability.md

It starts its own Temporal and MLflow servers (free loopback ports, a temporary folder), one
eval worker and one training worker per configuration plus a spare, each training one run at a
time (so each run is bit-for-bit reproducible), and launches the experiment with a 4 s
heartbeat timeout. Every few seconds (at random, seeded) it SIGKILLs a training worker whose run
has trained at least one checkpoint interval in its current attempt, and starts a fresh worker
in its place. Bounded: at most --kills kills, none after --duration seconds, and it gives up
after --timeout seconds.

At the end it checks that every configuration completed, that exactly one MLflow run exists
per configuration (FINISHED, its loss curve with every step once, one registered model) and
that the eval metrics equal those of an uninterrupted reference run (trained here with the ML
core alone). Per kill it reports the runs the worker held, the last step each completed
(workers record it after every step, see harness.fault_worker), the newest complete checkpoint
on disk, the step the next attempt resumed from, the steps lost (step at the kill - resume step)
and how long until the run trained again. Exit status 0 when coherent, 1 when not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
from orchestration.environment import apply_defaults

apply_defaults()

from harness import fault_worker, servers
from harness.coherence import incoherence, reference
from harness.fault_worker import traced_step
from harness.processes import WorkerProcess
from harness.runs import HEARTBEAT_S
from orchestration.client import connect, experiment_progress, experiment_result, start_experiment
from orchestration.ml.checkpoints import CheckpointStore
from orchestration.settings import Settings
from orchestration.types import ExperimentRequest, RunConfig


def configs(args: argparse.Namespace) -> list[RunConfig]:
    common = dict(
        model=args.model,
        dataset="movie-snippets",
        max_length=32,
        batch_size=16,
        epochs=args.epochs,
        max_train_samples=args.train_samples,
        max_eval_samples=200,
        checkpoint_every_steps=args.checkpoint_every,
        device="cpu",
    )
    lrs = (1e-3, 5e-4, 2e-4) if args.model == "tiny-bert" else (1e-4, 5e-5, 2e-5)
    return [
        RunConfig(name=f"chaos-{i}", learning_rate=lr, seed=i, **common) for i, lr in enumerate(lrs)
    ]


@dataclass
class Hit:
    """One run held by a killed worker."""

    run: str
    attempt: int
    killed_at_s: float
    step_at_kill: int  # the last optimizer step the killed worker completed, exactly
    checkpoint_step: int  # the newest complete checkpoint on disk at that moment
    resumed_from: int | None = None
    steps_lost: int | None = None
    training_again_after_s: float | None = None


@dataclass
class Kill:
    at_s: float
    pid: int
    hits: list[Hit] = field(default_factory=list)


async def chaos(args, cfg: Settings, runs: list[RunConfig], folder: Path) -> dict:
    """Launch, kill at random while watching progress, wait for the result."""
    rng = random.Random(args.seed)
    store = CheckpointStore(cfg.checkpoint_root)
    logs = iter(folder / f"worker-{i}.log" for i in range(10_000))

    trace = folder / "steps"

    def spawn(role: str) -> asyncio.Future[WorkerProcess]:
        return asyncio.ensure_future(
            asyncio.to_thread(fault_worker.start, cfg, role, next(logs), trace=trace)
        )

    evaluator, *trainers = await asyncio.gather(
        spawn("eval"), *(spawn("training") for _ in range(len(runs) + args.spare))
    )
    starting: list[asyncio.Future[WorkerProcess]] = []
    client = await connect(cfg)
    req = ExperimentRequest(name="chaos", heartbeat_timeout_s=HEARTBEAT_S, runs=runs)
    exp_id = await start_experiment(client, req, cfg)
    started = time.monotonic()
    result_task = asyncio.ensure_future(experiment_result(client, exp_id))
    kills: list[Kill] = []
    open_hits: list[Hit] = []
    next_kill = rng.uniform(args.min_gap, args.max_gap)
    try:
        while not result_task.done():
            await asyncio.wait({result_task}, timeout=0.5)
            trainers += [task.result() for task in starting if task.done()]
            starting = [task for task in starting if not task.done()]
            try:
                progress = await experiment_progress(client, exp_id)
            except Exception:  # the coordinator's worker is busy or restarting; ask again
                continue
            now = time.monotonic() - started
            reports = {r.name: r.training for r in progress.runs if r.training}
            for hit in list(open_hits):  # the run's next attempt is under way
                t = reports.get(hit.run)
                if t and t.attempt > hit.attempt and t.phase in ("training", "done"):
                    hit.resumed_from = t.resumed_from_step or 0
                    hit.steps_lost = hit.step_at_kill - hit.resumed_from
                    hit.training_again_after_s = round(now - hit.killed_at_s, 1)
                    open_hits.remove(hit)
            training = {
                name: t
                for name, t in reports.items()
                if t.phase == "training"
                and next(r.status for r in progress.runs if r.name == name) == "training"
            }
            held = {
                w: [n for n, t in training.items() if (t.worker or "").endswith(f":{w.proc.pid}")]
                for w in trainers
            }
            # Only workers whose runs trained a while in this attempt: a kill while a run is
            # still loading costs nothing and would tell nothing.
            targets = [
                w
                for w, names in held.items()
                if names
                and all(
                    training[n].step - (training[n].resumed_from_step or 0) >= args.min_progress
                    for n in names
                )
            ]
            if now < next_kill or len(kills) >= args.kills or now > args.duration or not targets:
                continue
            victim = rng.choice(targets)
            kill = Kill(at_s=round(now, 1), pid=victim.proc.pid)
            victim.kill()
            for name in held[victim]:
                latest = store.latest(f"{exp_id}/{name}")
                kill.hits.append(
                    Hit(
                        name,
                        training[name].attempt,
                        kill.at_s,
                        traced_step(trace, f"{exp_id}/{name}"),
                        latest.step if latest else 0,
                    )
                )
            trainers.remove(victim)
            starting.append(spawn("training"))
            kills.append(kill)
            open_hits += kill.hits
            print(
                f"[{kill.at_s:6.1f}s] killed worker {kill.pid} holding "
                + ", ".join(
                    f"{h.run} at step {h.step_at_kill} (checkpoint {h.checkpoint_step})"
                    for h in kill.hits
                ),
                flush=True,
            )
            next_kill = now + rng.uniform(args.min_gap, args.max_gap)
        result = result_task.result()
    finally:
        trainers += [await task for task in starting]
        for w in [evaluator, *trainers]:
            w.kill()
    return {
        "experiment_id": exp_id,
        "wall_s": round(time.monotonic() - started, 1),
        "kills": kills,
        "result": result,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-bert")
    parser.add_argument("--train-samples", type=int, default=6400)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--checkpoint-every", type=int, default=25)
    parser.add_argument("--kills", type=int, default=8, help="at most this many kills")
    parser.add_argument(
        "--spare", type=int, default=1, help="training workers beyond one per configuration"
    )
    parser.add_argument("--min-gap", type=float, default=4.0, help="seconds between kills, min")
    parser.add_argument("--max-gap", type=float, default=12.0, help="seconds between kills, max")
    parser.add_argument(
        "--min-progress",
        type=int,
        help="kill only runs that trained this many steps in their attempt "
        "(default: --checkpoint-every, so each attempt checkpointed once)",
    )
    parser.add_argument("--duration", type=float, default=180.0, help="no kill after this")
    parser.add_argument("--timeout", type=float, default=1200.0, help="give up after this")
    parser.add_argument("--seed", type=int, default=0, help="of the kill schedule")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    if args.min_progress is None:
        args.min_progress = args.checkpoint_every

    folder = Path(tempfile.mkdtemp(prefix="bertfleet-chaos-"))
    temporal = servers.temporal_server(folder / "temporal")
    mlflow = servers.mlflow_server(folder / "mlflow")
    data = servers.make_data_dir(folder / "data")
    cfg = servers.stack_settings(data, temporal, mlflow, queues="chaos", max_concurrent_training=1)
    runs = configs(args)
    try:
        with servers.running(temporal, mlflow):
            print(
                f"chaos in {folder}: {len(runs)} x {args.model}, at most {args.kills} kills",
                flush=True,
            )
            outcome = asyncio.run(asyncio.wait_for(chaos(args, cfg, runs, folder), args.timeout))
            print("training the uninterrupted references ...", flush=True)
            started = time.monotonic()
            expected = {r.name: reference(r, cfg) for r in runs}
            reference_s = round(time.monotonic() - started, 1)
            problems = incoherence(outcome["result"], expected, cfg.mlflow_tracking_uri)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)

    kills = outcome["kills"]
    hits = [h for k in kills for h in k.hits]
    lost = [h.steps_lost for h in hits if h.steps_lost is not None]
    back = [h.training_again_after_s for h in hits if h.training_again_after_s is not None]
    figures = {
        "model": args.model,
        "configurations": len(runs),
        "steps_per_run": expected[runs[0].name].final_step,
        "checkpoint_every": args.checkpoint_every,
        "kills_survived": len(kills) if not problems else 0,
        "kills": [asdict(k) for k in kills],
        "steps_lost_per_kill": lost,
        "mean_steps_lost": round(sum(lost) / len(lost), 1) if lost else 0,
        "max_steps_lost": max(lost, default=0),
        "steps_lost_total": sum(lost),
        # Each retry resumed from the newest checkpoint on disk at the kill: at most one
        # checkpoint interval lost.
        "resumed_from_newest_checkpoint": all(
            h.resumed_from is not None and h.resumed_from == h.checkpoint_step for h in hits
        ),
        "steps_total": sum(expected[r.name].final_step for r in runs),
        "seconds_until_training_again": back,
        "experiment_wall_s": outcome["wall_s"],
        "reference_sequential_wall_s": reference_s,
        "coherent": not problems,
        "problems": problems,
    }
    for h in hits:
        print(
            f"  {h.run}: attempt {h.attempt} killed at step {h.step_at_kill}, last checkpoint "
            f"{h.checkpoint_step}, resumed from {h.resumed_from}, steps lost {h.steps_lost}, "
            f"training again after {h.training_again_after_s} s"
        )
    print(
        f"{len(kills)} kills; steps lost per kill: {lost} (every retry resumed from the "
        f"newest checkpoint: {figures['resumed_from_newest_checkpoint']}); experiment "
        f"{outcome['wall_s']} s (uninterrupted references, one after another: {reference_s} s)"
    )
    print(
        "COHERENT: every run completed, one MLflow run each, metrics equal to the reference"
        if not problems
        else "INCOHERENT:\n  " + "\n  ".join(problems)
    )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())

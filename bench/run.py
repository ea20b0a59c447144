"""`make bench`: every benchmark in one invocation, on one machine, one configuration.

    python -m bench.run                 # all-MiniLM-L6-v2, movie-snippets, length 64
    python -m bench.run --quick         # tiny-bert, few rows: a check that it all works (CI)
    python -m bench.run --device cuda   # the same on a GPU; stops at once if there is none
    python -m bench.run --out DIR       # default bench/results (quick: bench/results/tmp/quick)
    python -m bench.run --no-sweep      # without the sweep section (~45 of the full ~70 min)

Everything runs in a temporary folder: its own Temporal and MLflow servers on free ports, its
own workers. Order: snapshot, servers and workers, then the plain Trainer script and the same run
through the product, alternating (overhead, checkpoint cost, submit-to-first-step), the naive
fp32 script and the product on several data seeds, alternating (speed of the default path and
its accuracy, bench/speed.py), inference on the product's model, a killed and recovered run, a
Ctrl-C'd and recovered run, then 1, 2 and 4 configurations at once (also the reproducibility
check: every run trains the same configuration), and last the sweep section (bench/sweep.py:
ASHA against the same trials trained to the end).
"""

from __future__ import annotations

from orchestration.environment import apply_defaults

apply_defaults()  # offline and quiet before anything imports the ML libraries

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

from bench import report
from bench import sweep as bench_sweep
from bench.machine import machine_info, machine_load, training_flops
from bench.recovery import run_interrupt_recovery, run_recovery
from bench.scenarios import run_inference, run_parallel, run_plain, run_product
from bench.speed import run_speed
from bench.stack import Stack
from orchestration.client import connect
from orchestration.ml.snapshot import make_snapshot
from orchestration.settings import REPO_ROOT, Settings
from orchestration.types import RunConfig


@dataclass(frozen=True)
class Profile:
    name: str
    model: str
    train_samples: int  # fixed, so every figure is for the same amount of work
    eval_samples: int
    speed_samples: int  # per data seed in the speed section: long enough for both to learn
    speed_data_seeds: tuple[int, ...]
    parallel_samples: int  # per configuration in the parallel section
    recovery_epochs: float  # long enough to be killed between two checkpoints
    heartbeat_timeout_s: int
    inference_calls: int
    repeats: int  # plain and product runs alternate this many times; the fastest of each counts
    # A fresh training worker per parallel level, so each peak-memory figure starts from the
    # same baseline; the quick check saves those restarts.
    fresh_worker_per_level: bool
    parallel_levels: tuple[int, ...] = (1, 2, 4)


PROFILES = {
    # Overhead: 100 steps of batch 16 = two checkpoints at the default interval (50).
    # Speed: 300 steps (a plain Trainer script reached 0.81 after 4,800 samples) on three
    # data seeds, scored on 1000 eval rows; about 15 of the full profile's ~26 minutes.
    # Four overhead repeats: with two, one slow spell of the machine decided the ratio.
    "full": Profile(
        "full", "all-MiniLM-L6-v2", 1600, 1000, 4800, (0, 1, 2), 800, 1.0, 30, 50, 4, True
    ),
    # Every section, as small as it goes: a check that each one runs and writes its figures.
    "quick": Profile("quick", "tiny-bert", 1600, 200, 320, (0, 1), 320, 2.0, 5, 20, 1, False),
}


def check_device(device: str) -> None:
    """Fail before starting anything when the requested device is not there."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise SystemExit(
            f"bench: --device {device}: CUDA is not available on this machine (torch "
            f"{torch.__version__} is {build}, or no GPU is visible); install the CUDA build of "
            "torch (README, 'Running on a GPU') on a GPU machine, or run with --device cpu"
        )


def base_config(profile: Profile, device: str, precision: str) -> RunConfig:
    return RunConfig(
        name="bench",
        model=profile.model,
        dataset="movie-snippets",
        max_length=64,
        batch_size=16,
        epochs=1.0,
        max_train_samples=profile.train_samples,
        max_eval_samples=profile.eval_samples,
        device=device,
        precision=precision,
        # A published fine-tuning recipe (a plain Trainer script: 0.81 after 4,800 samples),
        # so the accuracies compared in the speed section are those of models that learn.
        learning_rate=1e-4,
        warmup_ratio=0.1,
        weight_decay=0.01,
    )  # seed and checkpoint interval: RunConfig's defaults


async def measure(profile: Profile, cfg: RunConfig, root: Path, sweep: bool = True) -> dict:
    stack = Stack(root, max_concurrent=max(profile.parallel_levels))
    try:
        s = stack.settings
        snapshot = make_snapshot(cfg, s.snapshot_dir, s.data_dir, s.local_roots)
        server_s = stack.start_servers()
        workers = await asyncio.gather(
            *(asyncio.to_thread(stack.start_worker, role) for role in ("training", "eval"))
        )
        client = await connect(s)
        plains, products = [], []
        for i in range(profile.repeats):  # alternating, so slow spells of the machine hit both
            print(
                f"bench: plain Trainer script ({snapshot.train_rows} samples), then the same "
                f"through the product ({i + 1}/{profile.repeats})",
                file=sys.stderr,
            )
            plains.append(run_plain(stack, cfg, snapshot.path))
            products.append(await run_product(stack, client, cfg, snapshot.train_rows))
        product = fastest(products)
        speed, speed_products = await run_speed(
            stack, client, cfg, profile.speed_samples, profile.speed_data_seeds
        )
        print("bench: inference latency", file=sys.stderr)
        inference = await run_inference(
            stack, client, product["model_uri"], profile.inference_calls
        )
        print("bench: recovery after SIGKILL", file=sys.stderr)
        recovery = await run_recovery(
            stack,
            client,
            cfg.model_copy(update={"name": "recovery", "epochs": profile.recovery_epochs}),
            profile.heartbeat_timeout_s,
            kill_at_step=cfg.checkpoint_every_steps * 3 // 2,
        )
        print("bench: recovery after Ctrl-C", file=sys.stderr)
        interrupt = await run_interrupt_recovery(
            stack,
            client,
            cfg.model_copy(update={"name": "interrupt", "epochs": profile.recovery_epochs}),
            profile.heartbeat_timeout_s,
            stop_at_step=cfg.checkpoint_every_steps * 3 // 2,
        )
        print(f"bench: parallel {profile.parallel_levels}", file=sys.stderr)
        parallel = await run_parallel(
            stack,
            client,
            cfg.model_copy(update={"max_train_samples": profile.parallel_samples}),
            list(profile.parallel_levels),
            profile.fresh_worker_per_level,
        )
        swept = {}
        if sweep:
            print("bench: sweep, ASHA against every trial trained to the end", file=sys.stderr)
            swept["sweep"] = await bench_sweep.section(
                stack, client, bench_sweep.sweep_request(profile.name == "quick", cfg.device)
            )
    finally:
        stack.close()
    return {
        "overhead": overhead(plains, products, server_s, max(w.start_s for w in workers)),
        "speed": speed,
        "checkpoint": checkpoint_cost(products + speed_products),
        "recovery": recovery,
        "interrupt": interrupt,
        "parallel": parallel,
        **swept,
        "latency": {
            "submit_to_first_step_s": product["submit_to_first_step_s"],
            "inference": inference,
        },
        "flops": flops(cfg, snapshot.path, fastest(plains), product),
    }


def fastest(runs: list[dict]) -> dict:
    """The run with the shortest training phase: noise from other processes only adds time."""
    return min(runs, key=lambda run: run["training"]["train_s"])


def overhead(plains: list[dict], products: list[dict], server_s: float, worker_s: float) -> dict:
    plain, product = fastest(plains), fastest(products)
    pt, qt = plain["training"], product["training"]
    # Each repeat's pair ran back to back: their ratios show how far one pair can be trusted.
    pairs = [
        q["training"]["train_s"] / p["training"]["train_s"]
        for p, q in zip(plains, products, strict=True)
    ]
    return {
        "plain": plain,
        "product": {k: v for k, v in product.items() if k != "checkpoints"},
        "ratio_training": round(qt["train_s"] / pt["train_s"], 3),
        "ratio_training_per_repeat": [round(x, 3) for x in pairs],
        "ratio_steps_only": round(qt["steps_s"] / pt["steps_s"], 3),
        "ratio_end_to_end": round(product["wall_s"] / plain["wall_s"], 3),
        "repeats": [
            {
                "plain_train_s": p["training"]["train_s"],
                "plain_wall_s": p["wall_s"],
                "product_train_s": q["training"]["train_s"],
                "product_wall_s": q["wall_s"],
            }
            for p, q in zip(plains, products, strict=True)
        ],
        "server_start_s": round(server_s, 2),
        "worker_start_s": round(worker_s, 2),
    }


def checkpoint_cost(products: list[dict]) -> dict:
    """Saves against training time, over every product run (overhead and speed sections)."""
    saves = [{"run": run["run"], **save} for run in products for save in run["checkpoints"]]
    total = sum(s["s"] for s in saves)
    train_s = sum(run["training"]["train_s"] for run in products)
    steps_s = sum(run["training"]["steps_s"] for run in products)
    steps = sum(run["training"]["steps"] for run in products)
    return {
        "runs": len(products),
        "saves": saves,
        "saves_s": round(total, 3),
        "share_percent": round(100 * total / train_s, 2),
        "mean_save_s": round(total / len(saves), 3) if saves else None,
        "mean_step_s": round(steps_s / max(steps, 1), 4),
    }


def flops(cfg: RunConfig, snapshot_path: str, plain: dict, product: dict) -> dict:
    counted = training_flops(cfg, snapshot_path)
    peak = machine_info()["peak"]["fp32_flops"]
    out = dict(counted)
    for name, run in (("plain", plain), ("product", product)):
        rate = counted["train_flops"] / run["training"]["train_s"]
        out[f"{name}_flops_per_s"] = rate
        out[f"{name}_share_of_fp32_peak"] = rate / peak if peak else float("nan")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny-bert, for CI")
    parser.add_argument("--out", type=Path, help="folder for results.json, results.md, chart.png")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument(
        "--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"]
    )  # the product's default; the overhead's plain script trains in what auto resolves to
    parser.add_argument(
        "--no-sweep",
        action="store_true",
        help="leave out the sweep section (the full one takes ~45 min on two cores; "
        "`python -m bench.sweep` runs it alone)",
    )
    args = parser.parse_args()
    check_device(args.device)
    profile = PROFILES["quick" if args.quick else "full"]
    out = args.out or REPO_ROOT / "bench" / "results" / ("tmp/quick" if args.quick else "")
    cfg = base_config(profile, args.device, args.precision)
    started, clock = datetime.now(UTC), time.monotonic()
    load_before = machine_load({os.getpid()})
    with tempfile.TemporaryDirectory(prefix="bertfleet-bench-") as tmp:
        results = asyncio.run(measure(profile, cfg, Path(tmp), sweep=not args.no_sweep))
    results["meta"] = {
        "profile": profile.name,
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - clock, 1),
        "machine": machine_info(),
        "load": {"before": load_before, "after": machine_load({os.getpid()})},
        "config": cfg.model_dump(),
        # Thread settings the workers and the plain script inherit (see docs/performance.md);
        # the bench passes OMP_WAIT_POLICY=PASSIVE unless it is set.
        "env": {
            k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
        },
        "threads_per_run": Settings().threads_per_run,
        "profile_settings": asdict(profile),
    }
    for path in report.write(results, out):
        print(path)


if __name__ == "__main__":
    main()

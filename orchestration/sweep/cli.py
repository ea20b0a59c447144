"""The starter's sweep mode: `--sweep FILE` or a sweep preset, `--wait`, `--json`, `--cancel`.

    python -m orchestration.starter --preset sweep-smoke --json
    python -m orchestration.starter --sweep my_sweep.json --wait
    python -m orchestration.starter --cancel SWEEP_ID [--run TRIAL]

--wait prints one line per trial (rung, status, metric at each rung) as the sweep goes; --json
prints the SweepResult (experiment_id, best, trials, steps_trained_total, steps_full_budget).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from pydantic import ValidationError

from orchestration.client import connect
from orchestration.converter import describe
from orchestration.input_checks import read_request
from orchestration.presets import sweep_preset
from orchestration.settings import settings
from orchestration.sweep.client import (
    cancel_sweep,
    cancel_trial,
    start_sweep,
    sweep_progress,
    sweep_result,
)
from orchestration.sweep.types import SweepProgress, SweepRequest


def load_sweep(args: argparse.Namespace) -> SweepRequest:
    if args.preset:
        req = sweep_preset(args.preset)
    else:
        req = read_request(args.sweep, "--sweep", SweepRequest, "a SweepRequest (docs/sweeps.md)")
    if args.name:
        req = SweepRequest.model_validate({**req.model_dump(), "name": args.name})
    return req


def format_progress(p: SweepProgress) -> list[str]:
    lines = [
        f"{p.name}: {p.status}, {p.steps_trained_total}/{p.steps_full_budget} steps, "
        f"best {p.best or '-'}"
    ]
    for t in p.trials:
        metrics = " ".join(
            f"@{step}={value:.3f}" if value is not None else f"@{step}=nan"
            for step, value in sorted(t.rung_metrics.items())
        )
        lines.append(f"  {t.name} {t.status:9s} rung {t.rung} {metrics} {t.error or ''}".rstrip())
    return lines


async def watch(client, sweep_id: str) -> None:
    """Print the trials whenever they change (every 5 s at most) until the sweep ends."""
    done = asyncio.ensure_future(sweep_result(client, sweep_id))
    shown: list[str] = []
    while not done.done():
        try:
            lines = format_progress(await sweep_progress(client, sweep_id))
            if lines != shown:
                print("\n".join(lines), file=sys.stderr)
                shown = lines
        except Exception as err:  # the eval worker may be restarting; keep waiting
            print(f"(progress unavailable: {err})", file=sys.stderr)
        await asyncio.wait({done}, timeout=5)


async def run_sweep(args: argparse.Namespace) -> int:
    try:
        req = load_sweep(args)
    except ValidationError as err:
        print(f"invalid sweep: {describe(err)}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as err:
        print(f"invalid sweep: {err}", file=sys.stderr)
        return 2
    cfg = settings()
    client = await connect(cfg)
    sweep_id = await start_sweep(client, req, cfg)
    print(f"started {sweep_id}", file=sys.stderr)
    ui = f"{cfg.temporal_ui_url}/namespaces/{cfg.temporal_namespace}/workflows/{sweep_id}"
    print(f"  Temporal UI: {ui}", file=sys.stderr)
    if not (args.wait or args.json):
        return 0
    await watch(client, sweep_id)
    result = await sweep_result(client, sweep_id)
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        for line in format_progress(await sweep_progress(client, sweep_id)):
            print(line)
    return 0 if result.best is not None else 1


async def cancel(args: argparse.Namespace) -> int:
    """Cancel a sweep, or with --run one trial of it."""
    client = await connect(settings())
    if args.run:
        await cancel_trial(client, args.cancel, args.run)
    else:
        await cancel_sweep(client, args.cancel)
    print(f"cancel requested for {args.cancel}{f' / {args.run}' if args.run else ''}")
    return 0

"""Launch an experiment from the command line.

    python -m orchestration.starter --preset smoke --wait --json
    python -m orchestration.starter --config my_experiment.json --wait
    python -m orchestration.starter --cancel EXPERIMENT_ID [--run NAME]
    python -m orchestration.starter --sweep my_sweep.json --json      (or --preset sweep-smoke)

--wait draws one progress bar per configuration (on stderr) until every one has finished;
--json prints the experiment result as JSON on stdout (implies --wait). --cancel stops a running
experiment, or with --run one configuration of it; its training stops within seconds and its
MLflow run ends KILLED. Sweeps (--sweep FILE, the sweep-* presets, --cancel sweep-...):
orchestration/sweep/cli.py and docs/sweeps.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from pydantic import ValidationError
from temporalio.service import RPCError

from orchestration.client import (
    NotAnExperiment,
    cancel_experiment,
    cancel_run,
    connect,
    experiment_handle,
    experiment_progress,
    experiment_result,
    start_experiment,
)
from orchestration.input_checks import read_request
from orchestration.presets import NOTES, PRESETS, SWEEP_NOTES, SWEEP_PRESETS, preset
from orchestration.settings import settings
from orchestration.sweep import cli as sweep_cli
from orchestration.types import EvalMetrics, ExperimentProgress, ExperimentRequest, RunProgress

BAR = 24


def load_request(args: argparse.Namespace) -> ExperimentRequest:
    if args.preset:
        req = preset(args.preset)
    else:
        req = read_request(
            args.config,
            "--config",
            ExperimentRequest,
            "an ExperimentRequest (see orchestration/types.py)",
        )
    if args.name:
        req = ExperimentRequest.model_validate({**req.model_dump(), "name": args.name})
    return req


def verdict(metrics: EvalMetrics | None) -> str:
    """Accuracy against the majority baseline, and whether the model collapsed to one class."""
    if metrics is None or metrics.accuracy is None:
        return ""
    text = f"accuracy {metrics.accuracy:.4f}"
    if metrics.majority_baseline is not None:
        text += f" (majority baseline {metrics.majority_baseline:.4f})"
    if metrics.collapsed:
        text += " COLLAPSED: predicts one class for every eval row"
    return text


def format_run(run: RunProgress) -> str:
    t = run.training
    step, total = (t.step, t.total_steps) if t else (0, 0)
    filled = int(BAR * step / total) if total else 0
    if run.status in ("evaluating", "completed"):
        filled = BAR
    bar = "#" * filled + "." * (BAR - filled)
    parts = [f"{run.name:20.20s} [{bar}] {step:>5}/{total or '?':<5}", f"{run.status:12s}"]
    if t and t.loss is not None:
        parts.append(f"loss {t.loss:.4f}")
    if t and t.checkpoint:
        parts.append(f"ckpt {t.checkpoint.step}")
    if run.eval and run.eval.accuracy is not None:
        parts.append(f"acc {run.eval.accuracy:.3f}")
    if run.eval and run.eval.collapsed:
        parts.append("COLLAPSED (one class)")
    if run.error:
        parts.append(f"error: {run.error[:80]}")
    return "  ".join(parts)


def draw(progress: ExperimentProgress, previous_lines: int) -> int:
    lines = [format_run(r) for r in progress.runs]
    if sys.stderr.isatty() and previous_lines:
        sys.stderr.write(f"\x1b[{previous_lines}F")
    sys.stderr.write(
        "\n".join(f"{line}\x1b[K" if sys.stderr.isatty() else line for line in lines) + "\n"
    )
    sys.stderr.flush()
    return len(lines)


async def watch(client, experiment_id: str) -> None:
    """Redraw progress until the coordinator finishes (every second on a terminal, else 10 s)."""
    result_task = asyncio.ensure_future(experiment_result(client, experiment_id))
    interval = 1.0 if sys.stderr.isatty() else 10.0
    drawn, last = 0, 0.0
    while not result_task.done():
        if time.monotonic() - last >= interval:
            last = time.monotonic()
            try:
                drawn = draw(await experiment_progress(client, experiment_id), drawn)
            except Exception as err:  # the eval worker may be restarting; keep waiting
                print(f"(progress unavailable: {err})", file=sys.stderr)
        await asyncio.wait({result_task}, timeout=0.5)


async def cancel(args: argparse.Namespace) -> int:
    """Cancel an experiment, or one configuration of it; exit 1 when there is nothing to cancel."""
    exp_id = args.cancel
    client = await connect(settings())
    try:
        await experiment_handle(client, exp_id)
    except NotAnExperiment as err:
        print(f"--cancel: {err}", file=sys.stderr)
        return 1
    if args.run:
        try:
            names = [r.name for r in (await experiment_progress(client, exp_id)).runs]
        except RPCError:  # no eval worker to answer: the signal waits for one all the same
            names = [args.run]
        if args.run not in names:
            print(
                f"--run: {exp_id} has no configuration {args.run!r}; choose one of "
                f"{', '.join(names)}",
                file=sys.stderr,
            )
            return 2
        await cancel_run(client, exp_id, args.run)
    else:
        await cancel_experiment(client, exp_id)
    print(f"cancel requested for {exp_id}{f' / {args.run}' if args.run else ''}", file=sys.stderr)
    return 0


async def run(args: argparse.Namespace) -> int:
    if args.cancel and args.cancel.startswith("sweep-"):
        return await sweep_cli.cancel(args)
    if args.cancel:
        return await cancel(args)
    if args.run:
        print("--run: only with --cancel", file=sys.stderr)
        return 2
    if args.sweep or args.preset in SWEEP_PRESETS:
        return await sweep_cli.run_sweep(args)
    try:
        req = load_request(args)
    except (ValidationError, ValueError, OSError) as err:
        print(f"invalid experiment: {err}", file=sys.stderr)
        return 2
    cfg = settings()
    client = await connect(cfg)
    experiment_id = await start_experiment(client, req, cfg)
    print(f"started {experiment_id}", file=sys.stderr)
    ui = f"{cfg.temporal_ui_url}/namespaces/{cfg.temporal_namespace}/workflows/{experiment_id}"
    print(f"  Temporal UI: {ui}", file=sys.stderr)
    if not (args.wait or args.json):
        return 0
    await watch(client, experiment_id)
    result = await experiment_result(client, experiment_id)
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        for r in result.runs:
            print(f"{r.name}: {r.status} {verdict(r.eval)} {r.error or ''}".rstrip())
    return 0 if all(r.status == "completed" for r in result.runs) else 1


def main() -> None:
    notes = {**NOTES, **SWEEP_NOTES}
    presets = "\n".join(f"  {name}: {note}" for name, note in notes.items())
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=f"presets:\n{presets}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--preset", choices=sorted({**PRESETS, **SWEEP_PRESETS}), help="a ready-made one (below)"
    )
    source.add_argument("--sweep", help="JSON file holding a SweepRequest (docs/sweeps.md)")
    source.add_argument("--config", help="JSON file holding an ExperimentRequest")
    source.add_argument(
        "--cancel", metavar="ID", help="cancel a running experiment or sweep (sweep-...)"
    )
    parser.add_argument(
        "--run", metavar="NAME", help="with --cancel: only this configuration or trial"
    )
    parser.add_argument("--name", help="experiment name (overrides the preset's)")
    parser.add_argument("--wait", action="store_true", help="show progress until done")
    parser.add_argument("--json", action="store_true", help="print the result as JSON (waits)")
    code = asyncio.run(run(parser.parse_args()))
    # Exit without interpreter teardown: finalising the Temporal client's native runtime while
    # its threads wind down crashed the process now and then (SIGSEGV after the work was done).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()

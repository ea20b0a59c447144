"""Measure the memory of the `make demo` stack at idle: one row per process, and the total.

    .venv/bin/python scripts/idle_footprint.py            # a table on stdout
    .venv/bin/python scripts/idle_footprint.py --json F   # the rows as JSON too

Starts the stack the way `make demo` does, but in a temporary folder on free loopback ports:
the Temporal dev server and the MLflow server (orchestration.servers), the worker supervisor
`python -m orchestration.workers` (which starts the training and the eval worker, and the
training worker its warm run processes) and the app `python -m demo`. It waits until both
workers poll and the app's page answers, then until the stack's memory stops growing, and
reads every process of the stack.

RSS counts a page once per process that maps it, so the RSS total overstates what the stack
takes when processes share pages (MLflow's server and its forked workers); PSS splits each
shared page among its sharers, so the PSS total is what the machine gives the stack.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import servers
from harness.polling import poll
from harness.processes import WORKER_READY, AppProcess, ChildProcess, settings_env
from orchestration.settings import Settings

MB = 2**20


@dataclass(frozen=True)
class Row:
    part: str
    pid: int
    rss_mb: float
    pss_mb: float


def label(process: psutil.Process, parent_label: str) -> str:
    """What a process of the stack is, from its command line and its parent's label."""
    command = " ".join(process.cmdline())
    if "temporal" in command and "start-dev" in command:
        return "Temporal dev server"
    if "orchestration.workers" in command:
        if "--role training" in command:
            return "training worker"
        if "--role eval" in command:
            return "eval worker"
        return "worker supervisor"
    if parent_label == "training worker":
        return "warm run process"
    if " -m demo" in command or command.endswith("-m demo"):
        return "app"
    if parent_label.startswith("MLflow"):
        return "MLflow server's worker"
    if "mlflow" in command:
        return "MLflow server"
    return f"{parent_label}'s child" if parent_label else process.name()


def rows_of(root_pids: list[int]) -> list[Row]:
    """A row for each process of the trees rooted at `root_pids`, parents before children."""
    rows: list[Row] = []

    def visit(process: psutil.Process, parent_label: str) -> None:
        try:
            part = label(process, parent_label)
            info = process.memory_full_info()
            rows.append(Row(part, process.pid, info.rss / MB, info.pss / MB))
            children = process.children()
        except psutil.Error:
            return
        for child in children:
            visit(child, part)

    for pid in root_pids:
        visit(psutil.Process(pid), "")
    return rows


def settled(root_pids: list[int], timeout_s: float) -> list[Row]:
    """The rows once the stack's total RSS has changed by under 1 % over three readings, two
    seconds apart (the app's and the workers' background imports done)."""
    totals: list[float] = []
    latest: list[list[Row]] = []

    def steady() -> bool:
        rows = rows_of(root_pids)
        latest[:] = [rows]
        totals.append(sum(r.rss_mb for r in rows))
        last = totals[-3:]
        return len(last) == 3 and max(last) - min(last) < 0.01 * max(last)

    poll(steady, timeout_s, "the stack's memory to settle", interval_s=2.0)
    return latest[0]


def table(rows: list[Row]) -> str:
    lines = [f"{'process':28s} {'pid':>8s} {'RSS MB':>9s} {'PSS MB':>9s}"]
    lines += [f"{r.part:28s} {r.pid:8d} {r.rss_mb:9.0f} {r.pss_mb:9.0f}" for r in rows]
    by_part: dict[str, list[Row]] = {}
    for r in rows:
        by_part.setdefault(r.part, []).append(r)
    lines.append("")
    for part, group in by_part.items():
        lines.append(
            f"{part + (f' ×{len(group)}' if len(group) > 1 else ''):28s} {'':8s} "
            f"{sum(r.rss_mb for r in group):9.0f} {sum(r.pss_mb for r in group):9.0f}"
        )
    lines.append(
        f"{'total':28s} {len(rows):8d} {sum(r.rss_mb for r in rows):9.0f} "
        f"{sum(r.pss_mb for r in rows):9.0f}"
    )
    return "\n".join(lines)


def measure(root: Path, settle_s: float, warm: int | None) -> list[Row]:
    temporal = servers.temporal_server(root / "temporal")
    mlflow = servers.mlflow_server(root / "mlflow")
    cfg: Settings = servers.stack_settings(
        servers.make_data_dir(root / "data"), temporal, mlflow, queues="footprint"
    )
    if warm is not None:
        cfg = replace(cfg, warm_processes_env=warm)
    logs = root / "logs"
    logs.mkdir()
    workers_log = logs / "workers.log"
    with servers.running(temporal, mlflow):
        began = time.monotonic()
        supervisor = ChildProcess(
            [sys.executable, "-m", "orchestration.workers"],
            what="the worker supervisor and both workers",
            ready=lambda: workers_log.read_text(errors="replace").count(WORKER_READY) >= 2,
            log=workers_log,
            env=settings_env(cfg),
        )
        app = AppProcess(cfg, logs / "app.log")
        print(f"stack up in {time.monotonic() - began:.1f} s; waiting for idle", file=sys.stderr)
        try:
            pids = [p for p in (temporal.pid(), mlflow.pid()) if p is not None]
            return settled([*pids, supervisor.pid, app.pid], settle_s)
        finally:
            app.stop()
            supervisor.interrupt()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument("--settle-s", type=float, default=180.0, help="bound on the idle wait")
    parser.add_argument(
        "--warm", type=int, help="warm run processes (BERTFLEET_WARM_PROCESSES; default: per slot)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bertfleet-footprint-") as tmp:
        rows = measure(Path(tmp), args.settle_s, args.warm)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")


if __name__ == "__main__":
    main()

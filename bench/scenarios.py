"""What is measured, one function per question (recovery is in bench/recovery.py): overhead
against a plain Trainer script, checkpoint cost, submit-to-first-step, parallel configurations on
one worker, and inference latency.

Every figure comes from one of three clocks that agree on this machine: the bench's own
(time.time() around client calls), the probe's step events, and Temporal's workflow histories.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from temporalio.client import Client

from bench.history import recent, workflow_times
from bench.probe import Timeline, read_events
from bench.stack import PeakRss, Stack
from orchestration.client import experiment_result, predict, start_experiment
from orchestration.settings import REPO_ROOT
from orchestration.types import ExperimentRequest, InferenceRequest, RunConfig

SENTENCE = "A warm, funny and beautifully acted film that stays with you."


def segments(marks: list[tuple[str | None, float | None]]) -> list[dict]:
    """Consecutive (label, time) marks -> how long each labelled stretch took."""
    out, previous = [], None
    for label, t in marks:
        if t is None:
            continue
        if previous is not None:
            out.append({"phase": label, "s": round(t - previous, 3)})
        previous = t
    return out


def training_summary(timeline: Timeline, cfg: RunConfig, train_rows: int) -> dict:
    parts = {k: round(v, 3) for k, v in timeline.breakdown().items()}
    parts["samples_per_s"] = round(train_rows * cfg.epochs / parts["train_s"], 2)
    return parts


def run_plain(stack: Stack, cfg: RunConfig, snapshot_path: str, naive: bool = False) -> dict:
    """bench.plain in a fresh process, as one would run a script; timed from spawn to exit.
    `naive`: the fp32, pad-to-max_length script (the speed comparison's baseline)."""
    folder = Path(tempfile.mkdtemp(dir=stack.root, prefix="naive-" if naive else "plain-"))
    out, config, probe = folder / "out", folder / "config.json", folder / "steps.jsonl"
    config.write_text(cfg.model_dump_json())
    spawned = time.time()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.plain",
            "--snapshot",
            snapshot_path,
            "--config",
            str(config),
            "--out",
            str(out),
            "--probe",
            str(probe),
            *(["--naive"] if naive else []),
        ],
        cwd=REPO_ROOT,
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=3600,
    )
    exited = time.time()
    if done.returncode != 0:
        raise RuntimeError(f"bench.plain failed:\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    timeline = Timeline(read_events(str(probe))[str(out)])
    marks = report["marks"]
    return {
        "wall_s": round(exited - spawned, 3),
        "training": training_summary(timeline, cfg, report["train_samples"]),
        "phases": segments(
            [
                (None, spawned),
                ("start Python, imports", marks["imports"]),
                ("load model", marks["load"]),
                ("read snapshot, tokenize", marks["tokenize"]),
                ("Trainer set-up", timeline.require_first("train_begin")["t"]),
                ("training", timeline.require_last("train_end")["t"]),
                ("final evaluation", marks["evaluate"]),
                ("save final model", marks["save"]),
                ("process exit", exited),
            ]
        ),
        "eval_accuracy": report["eval_accuracy"],
        "train_samples": report["train_samples"],
        "eval_samples": report["eval_samples"],
        "precision": report["precision"],
        "steps": report["steps"],
    }


async def run_product(stack: Stack, client: Client, cfg: RunConfig, train_rows: int) -> dict:
    """One configuration through the whole product; also the source of the checkpoint cost
    and of submit-to-first-step latency."""
    cpu_before = stack.cpu_seconds()
    submitted = time.time()
    experiment_id = await start_experiment(
        client, ExperimentRequest(name="overhead", runs=[cfg]), stack.settings
    )
    result = await stack.guard(experiment_result(client, experiment_id))
    received = time.time()
    cpu_after = stack.cpu_seconds()
    run = result.runs[0]
    if run.status != "completed":
        raise RuntimeError(f"product run {run.status}: {run.error}")
    assert run.training_workflow_id and run.eval_workflow_id  # a completed run ran both
    coordinator = await workflow_times(client, experiment_id)
    training_wf = await workflow_times(client, run.training_workflow_id)
    eval_wf = await workflow_times(client, run.eval_workflow_id)
    timeline = Timeline(read_events(str(stack.probe_file))[stack.run_dir(experiment_id, cfg.name)])
    snapshot, train = training_wf.activity("snapshot"), training_wf.activity("train")
    evaluate, record = eval_wf.activity("evaluate_model"), eval_wf.activity("record_eval")
    first_step = timeline.require_first("step_end")["t"]
    return {
        "run": cfg.name,
        "experiment_id": experiment_id,
        "wall_s": round(received - submitted, 3),
        "training": training_summary(timeline, cfg, train_rows),
        "phases": segments(
            [
                (None, submitted),
                ("Temporal: start coordinator", coordinator.started),
                ("MLflow: open experiment and run", coordinator.activity("open_config_run").closed),
                ("Temporal: start training workflow", snapshot.started),
                ("snapshot (read source, hash rows)", snapshot.closed),
                ("Temporal: schedule train", train.started),
                (
                    "load model, read snapshot, tokenize, MLflow tracker",
                    timeline.require_first("init")["t"],
                ),
                ("Trainer set-up", timeline.require_first("train_begin")["t"]),
                ("training", timeline.require_last("train_end")["t"]),
                ("save final model, flush metrics", train.closed),
                ("Temporal: start eval workflow", evaluate.started),
                ("final evaluation", evaluate.closed),
                ("log and register the model in MLflow", record.closed),
                ("Temporal: finish, return result", received),
            ]
        ),
        "submit_to_first_step_s": round(first_step - submitted, 3),
        "checkpoints": [{"step": step, "s": round(s, 3)} for step, s in timeline.spans("save")],
        # What each part of the stack took from the CPUs from submit to result (the training
        # worker's figure includes its run process, i.e. the training itself).
        "cpu_s_submit_to_result": {
            part: round(cpu_after[part] - cpu_before.get(part, 0.0), 2) for part in cpu_after
        },
        "eval_accuracy": run.eval.accuracy if run.eval else None,
        "steps": run.final_step,
        "model_uri": run.model_uri,
    }


async def run_parallel(
    stack: Stack, client: Client, cfg: RunConfig, levels: list[int], fresh_worker: bool
) -> dict:
    """n identical configurations in one experiment on one training worker; with
    `fresh_worker`, a new worker for each n, so its memory starts from the same baseline.

    Every run trains in a process of its own: each level reports the worker's memory with its
    run processes (idle: with its warm ones) and the peak of each run's process. The levels are
    also the reproducibility check: every run of every level trains the same configuration, at
    1, 2 and 4 at once, so all must end with the same eval metrics, to the last bit."""
    rows, results = [], []
    for n in levels:
        if fresh_worker:
            stack.worker("training").stop()
            stack.start_worker("training")
        worker = stack.worker("training")
        await asyncio.to_thread(worker.settle)
        idle = worker.tree_rss()
        configs = [cfg.model_copy(update={"name": f"par{n}-{i}"}) for i in range(n)]
        with PeakRss(worker.pid) as peak:
            submitted = time.time()
            experiment_id = await start_experiment(
                client, ExperimentRequest(name=f"parallel-{n}", runs=configs), stack.settings
            )
            result = await stack.guard(experiment_result(client, experiment_id))
            wall = time.time() - submitted
        failed = [r for r in result.runs if r.status != "completed"]
        if failed:
            run = failed[0]
            raise RuntimeError(f"parallel run {run.name} {run.status}: {run.error}")
        results += [
            {"launch": n, "run": r.name, "eval_loss": r.eval.loss, "eval_accuracy": r.eval.accuracy}
            for r in result.runs
            if r.eval
        ]
        events = read_events(str(stack.probe_file))
        timelines = [Timeline(events[stack.run_dir(experiment_id, c.name)]) for c in configs]
        begin = min(t.require_first("train_begin")["t"] for t in timelines)
        end = max(t.require_last("train_end")["t"] for t in timelines)
        run_peaks = [peak.peaks.get(pid, 0) for t in timelines for pid in t.pids()]
        rows.append(
            {
                "configs": n,
                "wall_s": round(wall, 3),
                "training_span_s": round(end - begin, 3),
                "mean_train_s_per_run": round(
                    statistics.mean(t.train_seconds() for t in timelines), 3
                ),
                "worker_idle_rss_mb": round(idle / 2**20, 1),
                "worker_peak_rss_mb": round(peak.peak / 2**20, 1),
                "peak_rss_per_run_mb": round(max(run_peaks, default=0) / 2**20, 1),
            }
        )
    single = rows[0]["wall_s"] if rows and rows[0]["configs"] == 1 else None
    for row in rows:
        if single:
            row["sum_of_single_runs_s"] = round(single * row["configs"], 3)
            row["speedup_vs_sequential"] = round(single * row["configs"] / row["wall_s"], 2)
    distinct = {(r["eval_loss"], r["eval_accuracy"]) for r in results}
    return {
        "samples_per_config": cfg.max_train_samples,
        "fresh_worker_per_level": fresh_worker,
        "levels": rows,
        "reproducibility": {
            "launches": len(levels),
            "runs": len(results),
            "distinct_results": len(distinct),
            "results": results,
        },
    }


async def run_inference(stack: Stack, client: Client, model_uri: str, calls: int) -> dict:
    """Latency of one sentence: client.predict -> InferenceWorkflow -> `predict` local activity.
    The first call loads the model (cold); the next `calls` are warm."""
    req = InferenceRequest(model_uri=model_uri, texts=[SENTENCE])
    started = time.perf_counter()
    first = await stack.guard(predict(client, req, stack.settings))
    cold_ms = (time.perf_counter() - started) * 1000
    client_ms, model_ms = [], []
    for _ in range(calls):
        started = time.perf_counter()
        answer = await predict(client, req, stack.settings)
        client_ms.append((time.perf_counter() - started) * 1000)
        model_ms.append(answer.latency_ms)
    return {
        **await inference_phases(client, calls, percentile(client_ms, 50)),
        "model_uri": model_uri,
        "calls": calls,
        "cold_ms": round(cold_ms, 1),
        "p50_ms": round(percentile(client_ms, 50), 1),
        "p95_ms": round(percentile(client_ms, 95), 1),
        "mean_ms": round(statistics.mean(client_ms), 1),
        "model_p50_ms": round(percentile(model_ms, 50), 1),
        "label": first.predictions[0][0].label,
        "client_ms": [round(ms, 1) for ms in client_ms],
    }


async def inference_phases(client: Client, calls: int, client_p50_ms: float) -> dict:
    """Where a warm call's time goes, medians over the warm calls' workflow histories. A call
    is one workflow task that runs `predict` as a local activity, so the activity shows only
    inside that task, timed by the model's own latency_ms."""
    runs = await recent(client, "BertInferenceWorkflow", calls)
    tasks = [run.workflow_tasks[0].times() for run in runs]  # closed runs: tasks completed
    phases = {
        "dispatch the workflow task to the worker": [
            started - scheduled for scheduled, started, _ in tasks
        ],
        "workflow task, incl. the predict local activity": [
            completed - started for _, started, completed in tasks
        ],
        "record the result, close the workflow": [
            r.closed - completed for r, (_, _, completed) in zip(runs, tasks, strict=True)
        ],
    }
    medians = {name: statistics.median(values) * 1000 for name, values in phases.items()}
    server_ms = statistics.median([run.closed - run.started for run in runs]) * 1000
    medians["client: start workflow, receive result"] = client_p50_ms - server_ms
    return {"phases_p50_ms": {name: round(ms, 1) for name, ms in medians.items()}}


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), without numpy."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)

"""`make bench-quick` produces its outputs, and `--device cuda` fails clearly without CUDA.

Benchmarks are not timed tests: the figures depend on the machine and on whatever else runs on
it, so only what must hold on any machine is checked (the same work on both sides of the
comparison, a recovered run resuming from a checkpoint, well-formed outputs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from orchestration.settings import REPO_ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.bench
@pytest.mark.timeout(1800)
def test_quick_bench_writes_json_markdown_and_chart(tmp_path):
    out = tmp_path / "results"
    # Idle OpenMP threads sleep instead of spinning: on a CPU shared with other jobs, spinning
    # threads waiting for a descheduled peer make training several times slower.
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ}
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1700,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["profile"] == "quick"
    assert results["meta"]["config"]["model"] == "tiny-bert"

    overhead = results["overhead"]
    # Both sides trained the same rows for the same number of steps.
    assert overhead["plain"]["steps"] == overhead["product"]["steps"] == 100
    assert overhead["plain"]["training"]["samples_per_s"] > 0
    assert overhead["ratio_training"] > 0 and overhead["ratio_end_to_end"] > 0
    phases = [p["phase"] for p in overhead["product"]["phases"]]
    assert "training" in phases and all(p["s"] >= 0 for p in overhead["product"]["phases"])

    # The default path against the naive fp32 script: per data seed the same rows, each side's
    # own precision; the accuracy delta is the mean of the seeds' paired deltas.
    speed = results["speed"]
    assert speed["eval_rows"] == 200 and speed["plain_precision"] == "fp32"
    assert (
        [s["data_seed"] for s in speed["seeds"]]
        == [0, 1]
        == list(results["meta"]["profile_settings"]["speed_data_seeds"])
    )
    assert speed["steps"] == 20 and speed["train_samples"] == 320
    assert speed["accuracy_delta"] == pytest.approx(
        sum(s["accuracy_delta"] for s in speed["seeds"]) / 2, abs=1e-4
    )
    assert speed["accuracy_delta_standard_error"] is not None
    assert speed["product_precision"] in ("fp32", "bf16") and speed["product_precision_reason"]
    assert speed["ratio_default_vs_plain_fp32"] == pytest.approx(
        speed["product_samples_per_s"] / speed["plain_fp32_samples_per_s"], abs=1e-3
    )
    assert speed["accuracy_delta"] == pytest.approx(
        speed["product_accuracy"] - speed["plain_fp32_accuracy"], abs=1e-4
    )

    # The overhead run: 100 steps at the default interval of 50, two timed saves; the speed
    # runs (20 steps) end before their first interval, so only their last step is saved.
    saves = [(s["run"], s["step"]) for s in results["checkpoint"]["saves"]]
    assert saves == [("bench", 50), ("bench", 100), ("speed-0", 20), ("speed-1", 20)]
    assert 0 < results["checkpoint"]["share_percent"] < 100

    recovery = results["recovery"]
    assert recovery["status"] == "completed" and recovery["attempts"] == 2
    assert recovery["resumed_from_step"] > 0 and recovery["resumed_from_step"] % 50 == 0
    assert 0 <= recovery["steps_lost"] <= recovery["checkpoint_every_steps"]
    assert recovery["detection_s"] is not None and recovery["kill_to_first_new_step_s"] > 0

    interrupt = results["interrupt"]  # Ctrl-C: the run checkpoints where it is, loses nothing
    assert interrupt["status"] == "completed" and interrupt["attempts"] == 2
    assert interrupt["steps_lost"] == 0
    assert interrupt["resumed_from_step"] == interrupt["stopped_at_step"] > 0
    assert interrupt["signal_to_first_new_step_s"] > 0

    levels = results["parallel"]["levels"]
    assert [level["configs"] for level in levels] == [1, 2, 4]
    assert all(level["worker_peak_rss_mb"] >= level["worker_idle_rss_mb"] for level in levels)
    assert all(level["peak_rss_per_run_mb"] > 0 for level in levels)
    # Seven runs of one configuration, 1, 2 and 4 at once: one result, to the last bit.
    reproducibility = results["parallel"]["reproducibility"]
    assert reproducibility["runs"] == 7 and reproducibility["distinct_results"] == 1

    inference = results["latency"]["inference"]
    assert len(inference["client_ms"]) == inference["calls"] > 0
    assert 0 < inference["p50_ms"] <= inference["p95_ms"]
    assert inference["label"] in ("fresh", "rotten")
    assert results["latency"]["submit_to_first_step_s"] > 0

    # The sweep: 4 grid trials, ASHA trained fewer steps than all of them to the end, and every
    # trial it completed (rung after rung, from checkpoints) scored what its straight run did.
    sweep = results["sweep"]
    assert sweep["configs"] == 4 and sweep["asha"]["statuses"]["failed"] == 0
    assert sweep["asha"]["steps"] < sweep["full"]["steps"] and 0 < sweep["steps_share"] < 1
    assert sweep["completed"] >= 1 and sweep["completed_identical"] == sweep["completed"]
    assert sweep["accuracy_gap"] is not None

    metrics = {t["metric"] for t in results["targets"]}
    assert {
        "warm inference p50 (ms)",
        "speed: default path / plain fp32 script, samples/s",
        "sweep: ASHA's steps, share of training every trial to max",
    } <= metrics
    markdown = (out / "results.md").read_text()
    assert "## Targets" in markdown and "## 3. Recovery" in markdown
    assert "## 1b. Speed: the default path against a naive fp32 script" in markdown
    assert "## 3b. Recovery after Ctrl-C" in markdown and "## 4b. Reproducibility" in markdown
    assert "## Sweep: ASHA against every trial trained to the end" in markdown
    assert (out / "chart.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present here")
def test_cuda_mode_fails_clearly_without_cuda(tmp_path):
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--device", "cuda", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "--device cuda: CUDA is not available" in done.stderr, done.stderr
    assert "--device cpu" in done.stderr
    assert not out.exists()  # it stopped before starting anything

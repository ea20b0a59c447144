"""results.json, results.md (tables) and chart.png from one bench run's results."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from bench.sweep import markdown as sweep_markdown
from bench.sweep import targets as sweep_targets

# Parallel speed-ups over sequential measured before runs had processes of their own (2 cores):
# isolation must not cost them.
PARALLEL_BEFORE = {2: 1.14, 4: 1.12}


def targets(r: dict) -> list[dict]:
    """The performance targets (overhead, checkpoint share, recovery, latency) against what was
    measured."""
    o, c, rec, inf = r["overhead"], r["checkpoint"], r["recovery"], r["latency"]["inference"]
    stop, rep, speed = r["interrupt"], r["parallel"]["reproducibility"], r["speed"]
    hb, interval = rec["heartbeat_timeout_s"], rec["checkpoint_every_steps"]
    rows = [
        (
            "training phase, product / plain",
            "<= 1.05",
            o["ratio_training"],
            o["ratio_training"] <= 1.05,
        ),
        (
            "end to end, product / plain",
            "<= 1.05",
            o["ratio_end_to_end"],
            o["ratio_end_to_end"] <= 1.05,
        ),
        ("checkpoint saves, % of training", "<= 5 %", c["share_percent"], c["share_percent"] <= 5),
        (
            "speed: default path / plain fp32 script, samples/s",
            ">= 1.6",
            speed["ratio_default_vs_plain_fp32"],
            speed["ratio_default_vs_plain_fp32"] >= 1.6,
        ),
        (
            f"speed: accuracy, default path - plain fp32 (mean of {speed['data_seeds']} data "
            f"seeds, {speed['eval_rows']} eval rows)",
            "within +-0.01",
            speed["accuracy_delta"],
            abs(speed["accuracy_delta"]) <= 0.01,
        ),
        (
            "recovery: detection after kill (s)",
            f"<= {hb} (heartbeat timeout)",
            rec["detection_s"],
            rec["detection_s"] is not None and rec["detection_s"] <= hb,
        ),
        (
            "recovery: steps lost",
            f"<= {interval} (one checkpoint interval)",
            rec["steps_lost"],
            0 <= rec["steps_lost"] <= interval,
        ),
        ("warm inference p50 (ms)", "<= 100", inf["p50_ms"], inf["p50_ms"] <= 100),
        ("Ctrl-C: steps lost", "0", stop["steps_lost"], stop["steps_lost"] == 0),
        (
            f"reproducibility: distinct eval results of {rep['runs']} runs in {rep['launches']} "
            "launches",
            "1",
            rep["distinct_results"],
            rep["distinct_results"] == 1,
        ),
    ]
    for level in r["parallel"]["levels"]:
        before = PARALLEL_BEFORE.get(level["configs"])
        speedup = level.get("speedup_vs_sequential")
        if before and speedup is not None:
            rows.append(
                (
                    f"parallel: {level['configs']} configurations, speed-up over sequential",
                    f">= {before} (before isolation)",
                    speedup,
                    speedup >= before,
                )
            )
    if "sweep" in r:
        rows += sweep_targets(r["sweep"])
    return [{"metric": m, "target": t, "measured": v, "met": bool(ok)} for m, t, v, ok in rows]


def speed_section(r: dict) -> list[str]:
    """Markdown: the product's default path against the naive fp32 script, per data seed."""
    s, flags = r["speed"], r["meta"]["machine"]["simd_flags"]
    return [
        "## 1b. Speed: the default path against a naive fp32 script",
        "The product with its defaults (`precision: auto` resolved to "
        f"**{s['product_precision']}**: {s['product_precision_reason']}; length-grouped batches, "
        "dynamic padding) against the script most tutorials show: a plain `Trainer`, fp32, every "
        "row padded to `max_length`, batches at random. Same hyper-parameters; on each data seed "
        f"both sides train on the same {s['train_samples']} rows ({s['steps']} steps) and are "
        f"scored on the same {s['eval_rows']} eval rows. Samples/s: the training phase, fastest "
        "run of each side; accuracy: the mean over the seeds of the paired differences "
        f"(standard error {s['accuracy_delta_standard_error']}). CPU flags: "
        f"{', '.join(flags) or 'none'}.",
        _table(
            ["", "naive fp32 script", "product, defaults", "ratio / delta"],
            [
                [
                    "samples/s",
                    s["plain_fp32_samples_per_s"],
                    s["product_samples_per_s"],
                    s["ratio_default_vs_plain_fp32"],
                ],
                [
                    f"eval accuracy, mean of {s['data_seeds']} seeds",
                    s["plain_fp32_accuracy"],
                    s["product_accuracy"],
                    s["accuracy_delta"],
                ],
            ],
        ),
        _table(
            [
                "data seed",
                "naive samples/s",
                "product samples/s",
                "ratio",
                "naive accuracy",
                "product accuracy",
                "delta",
            ],
            [
                [
                    x["data_seed"],
                    x["plain_fp32_samples_per_s"],
                    x["product_samples_per_s"],
                    x["ratio"],
                    x["plain_fp32_accuracy"],
                    x["product_accuracy"],
                    x["accuracy_delta"],
                ]
                for x in s["seeds"]
            ],
        ),
    ]


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def _gflops(x: float | None) -> str:
    return f"{x / 1e9:.1f}" if x else "n/a"


def markdown(r: dict) -> str:
    m, cfg, o = r["meta"], r["meta"]["config"], r["overhead"]
    machine, load = m["machine"], m["load"]
    plain, product = o["plain"]["training"], o["product"]["training"]
    parts = [
        f"# Benchmark results ({m['profile']} profile)",
        f"Measured {m['started_at']} in {m['duration_s'] / 60:.1f} min on {machine['cpu_model']}, "
        f"{machine['cores']} cores, {machine['ram_gib']} GiB RAM, torch {machine['torch']}, "
        f"device {cfg['device']}, precision {cfg['precision']}.",
        f"Configuration: `{cfg['model']}` on `{cfg['dataset']}`, max_length {cfg['max_length']}, "
        f"batch {cfg['batch_size']}, {cfg['max_train_samples']} training samples x "
        f"{cfg['epochs']} epoch(s), {cfg['max_eval_samples']} eval samples, checkpoint every "
        f"{cfg['checkpoint_every_steps']} steps.",
        f"Thread environment: {m['env']}.",
        f"Load average before/after: {load['before']['loadavg_1_5_15']} / "
        f"{load['after']['loadavg_1_5_15']}; other busy processes at the start: "
        f"{len(load['before']['busy_processes'])}.",
        "## Targets",
        _table(
            ["metric", "target", "measured", "met"],
            [
                [t["metric"], t["target"], t["measured"], "yes" if t["met"] else "NO"]
                for t in r["targets"]
            ],
        ),
        "## 1. Overhead: plain Trainer script vs. the product",
        f"Plain and product runs alternated {len(o['repeats'])} time(s); the tables show the "
        "fastest run of each side (other processes only ever add time). Training-phase ratio "
        f"of each back-to-back pair: {o['ratio_training_per_repeat']}.",
        _table(
            [
                "repeat",
                "plain training s",
                "product training s",
                "plain end-to-end s",
                "product end-to-end s",
            ],
            [
                [
                    i + 1,
                    x["plain_train_s"],
                    x["product_train_s"],
                    x["plain_wall_s"],
                    x["product_wall_s"],
                ]
                for i, x in enumerate(o["repeats"])
            ],
        ),
        _table(
            ["training phase", "plain", "product"],
            [
                [k, plain[k], product[k]]
                for k in (
                    "train_s",
                    "samples_per_s",
                    "steps_s",
                    "checkpoint_saves_s",
                    "eval_during_training_s",
                    "other_s",
                    "steps",
                )
            ],
        ),
        f"End to end: plain {o['plain']['wall_s']} s (a fresh process), product "
        f"{o['product']['wall_s']} s (submit to result, workers already running; they took "
        f"{o['worker_start_s']} s to start, servers {o['server_start_s']} s).",
        "CPU seconds of each part of the stack from submit to result of that product run (the "
        f"training worker's include its run process): {o['product']['cpu_s_submit_to_result']}.",
        _table(["plain phase", "s"], [[p["phase"], p["s"]] for p in o["plain"]["phases"]]),
        _table(["product phase", "s"], [[p["phase"], p["s"]] for p in o["product"]["phases"]]),
        *speed_section(r),
        "## 2. Checkpoint cost",
        f"{len(r['checkpoint']['saves'])} saves in {r['checkpoint']['runs']} product run(s) "
        "(overhead and speed sections; the last step's save holds no optimizer state) at the "
        "default interval "
        f"({cfg['checkpoint_every_steps']} steps), {r['checkpoint']['saves_s']} s in all: "
        f"{r['checkpoint']['share_percent']} % of the training phase; "
        f"{r['checkpoint']['mean_save_s']} s per save against {r['checkpoint']['mean_step_s']} s "
        "per training step.",
        "## 3. Recovery after SIGKILL of the training worker",
        _table(["measure", "value"], [[k, v] for k, v in r["recovery"].items() if k != "phases"]),
        "## 3b. Recovery after Ctrl-C (SIGINT) of the training worker",
        _table(["measure", "value"], [[k, v] for k, v in r["interrupt"].items()]),
        "## 4. Parallel configurations on one worker",
        "Each run trains in a process of its own (`peak_rss_per_run_mb`: the largest of them); "
        "the worker figures include its run processes (idle: its warm ones).",
        _table(
            list(r["parallel"]["levels"][0]), [list(x.values()) for x in r["parallel"]["levels"]]
        ),
        "## 4b. Reproducibility",
        f"{r['parallel']['reproducibility']['runs']} runs of the same configuration in "
        f"{r['parallel']['reproducibility']['launches']} launches (1, 2 and 4 at once on one "
        f"worker): {r['parallel']['reproducibility']['distinct_results']} distinct "
        "(eval loss, eval accuracy).",
        _table(
            ["launch (configs at once)", "run", "eval loss", "eval accuracy"],
            [
                [x["launch"], x["run"], x["eval_loss"], x["eval_accuracy"]]
                for x in r["parallel"]["reproducibility"]["results"]
            ],
        ),
        "## 5. Latency",
        f"Submit to first training step: {r['latency']['submit_to_first_step_s']} s.",
        _table(
            ["inference (one sentence)", "value"],
            [
                [k, v]
                for k, v in r["latency"]["inference"].items()
                if k not in ("client_ms", "phases_p50_ms")
            ],
        ),
        _table(
            ["warm call, where the time goes (medians)", "ms"],
            [[k, v] for k, v in r["latency"]["inference"]["phases_p50_ms"].items()],
        ),
        "## 6. Compute efficiency",
        _table(
            ["", "plain", "product"],
            [
                [
                    "achieved GFLOP/s (training phase)",
                    _gflops(r["flops"]["plain_flops_per_s"]),
                    _gflops(r["flops"]["product_flops_per_s"]),
                ],
                [
                    "share of fp32 peak",
                    f"{r['flops']['plain_share_of_fp32_peak']:.1%}",
                    f"{r['flops']['product_share_of_fp32_peak']:.1%}",
                ],
            ],
        ),
        f"Peak estimate: fp32 {_gflops(machine['peak']['fp32_flops'])} GFLOP/s, bf16 "
        f"{_gflops(machine['peak']['bf16_flops'])} GFLOP/s ({machine['peak']['assumption']}). "
        f"Training FLOPs {r['flops']['train_flops']:.3g} over {r['flops']['tokens_padded']} "
        f"padded tokens ({r['flops']['tokens_real']} real).",
    ]
    if "sweep" in r:
        parts.append("\n".join(sweep_markdown(r["sweep"])))
    return "\n\n".join(parts) + "\n"


# First keyword found in a phase's name picks its colour (so "Temporal: start training
# workflow" is Temporal's, not training's).
_COLOURS = {
    "Temporal": "tab:purple",
    "detect": "tab:red",
    "pick-up": "tab:purple",
    "evaluation": "tab:green",
    "training": "tab:blue",
    "load": "tab:orange",
    "snapshot": "tab:pink",
    "Python": "tab:gray",
    "MLflow": "tab:brown",
    "save": "tab:olive",
    "set-up": "tab:cyan",
}
_END_TO_END = [
    "Python",
    "load",
    "snapshot",
    "set-up",
    "training",
    "evaluation",
    "save",
    "Temporal",
    "MLflow",
]


def _colour(phase: str) -> str:
    for word, colour in _COLOURS.items():
        if word.lower() in phase.lower():
            return colour
    return "lightgray"


def _stacked(ax, rows: list[tuple[str, list[dict]]], title: str, label: bool = False) -> None:
    """One horizontal bar per row, its phases stacked left to right; `label` writes seconds."""
    for y, (_name, phases) in enumerate(rows):
        left, total = 0.0, sum(p["s"] for p in phases)
        for p in phases:
            ax.barh(y, p["s"], left=left, color=_colour(p["phase"]), edgecolor="white")
            if label and p["s"] > 0.1 * total:  # a narrow segment has no room for its label
                ax.text(
                    left + p["s"] / 2, y, f"{p['s']:.1f} s", ha="center", va="center", fontsize=9
                )
            left += p["s"]
    ax.set_yticks(range(len(rows)), [name for name, _ in rows])
    ax.set_ylim(-0.6, len(rows) - 0.4 + 0.9)
    ax.set_xlabel("seconds")
    ax.set_title(title, fontsize=10)


def _legend(ax, names: list[str], columns: int = 3) -> None:
    handles = [plt.Rectangle((0, 0), 1, 1, color=_colour(n)) for n in names]
    ax.legend(handles, names, fontsize=7, ncol=columns, loc="upper center")


def chart(r: dict, path: Path) -> None:
    fig, axes = plt.subplots(2, 3, figsize=(17, 9))
    o = r["overhead"]
    _stacked(
        axes[0, 0],
        [("plain", o["plain"]["phases"]), ("product", o["product"]["phases"])],
        f"1. End to end: plain {o['plain']['wall_s']:.1f} s, product "
        f"{o['product']['wall_s']:.1f} s (x{o['ratio_end_to_end']})",
    )
    _legend(axes[0, 0], _END_TO_END)
    parts = {
        "steps_s": "training steps",
        "checkpoint_saves_s": "checkpoint save",
        "eval_during_training_s": "evaluation in training",
        "other_s": "other",
    }
    _stacked(
        axes[0, 1],
        [
            (
                name,
                [{"phase": label, "s": o[name]["training"][key]} for key, label in parts.items()],
            )
            for name in ("plain", "product")
        ],
        f"1. Training phase (x{o['ratio_training']}): samples/s plain "
        f"{o['plain']['training']['samples_per_s']}, product "
        f"{o['product']['training']['samples_per_s']}",
    )
    _legend(axes[0, 1], list(parts.values()))
    c = r["checkpoint"]
    axes[0, 2].bar(
        [f"{i + 1}: {s['run']} @{s['step']}" for i, s in enumerate(c["saves"])],
        [s["s"] for s in c["saves"]],
        color=_colour("save"),
    )
    axes[0, 2].tick_params(axis="x", labelrotation=90, labelsize=7)
    axes[0, 2].axhline(
        c["mean_step_s"], color=_colour("training"), ls="--", label="mean training step"
    )
    axes[0, 2].set(
        xlabel="save",
        ylabel="seconds",
        title=f"2. Checkpoint saves: {c['share_percent']} % of training",
    )
    axes[0, 2].legend(fontsize=8)
    rec = r["recovery"]
    _stacked(
        axes[1, 0],
        [("kill to\nfirst step", rec["phases"])],
        f"3. Recovery: {rec['kill_to_first_new_step_s']} s from SIGKILL to the first new "
        f"step,\n{rec['steps_lost']} steps lost (heartbeat timeout "
        f"{rec['heartbeat_timeout_s']} s)",
        label=True,
    )
    _legend(axes[1, 0], [p["phase"] for p in rec["phases"]], columns=1)
    levels = r["parallel"]["levels"]
    width = 0.4
    axes[1, 1].bar(
        [i - width / 2 for i in range(len(levels))],
        [x["wall_s"] for x in levels],
        width,
        label="together, one worker",
    )
    axes[1, 1].bar(
        [i + width / 2 for i in range(len(levels))],
        [x.get("sum_of_single_runs_s", 0) for x in levels],
        width,
        label="sum of single runs",
    )
    for i, x in enumerate(levels):
        axes[1, 1].annotate(
            f"{x['peak_rss_per_run_mb']:.0f} MB/run",
            (i - width / 2, x["wall_s"]),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    axes[1, 1].set_xticks(range(len(levels)), [str(x["configs"]) for x in levels])
    axes[1, 1].set(
        xlabel="configurations at once",
        ylabel="seconds, submit to result",
        title="4. Parallel configurations (label: peak RSS of a run's process)",
    )
    axes[1, 1].legend(fontsize=8)
    inf = r["latency"]["inference"]
    axes[1, 2].hist(inf["client_ms"], bins=20, color=_colour("evaluation"))
    for q, style in (("p50_ms", "-"), ("p95_ms", "--")):
        axes[1, 2].axvline(inf[q], color="black", ls=style, label=f"{q[:3]} {inf[q]} ms")
    axes[1, 2].set(
        xlabel="ms per call (one sentence)",
        ylabel="calls",
        title=f"5. Warm inference via Temporal (model alone: p50 "
        f"{inf['model_p50_ms']} ms)\nsubmit to first training step "
        f"{r['latency']['submit_to_first_step_s']} s",
    )
    axes[1, 2].legend(fontsize=8)
    meta = r["meta"]
    fig.suptitle(
        f"bertfleet bench ({meta['profile']}): {meta['config']['model']}, "
        f"{meta['machine']['cpu_model']} x{meta['machine']['cores']} cores, "
        f"load average {meta['load']['before']['loadavg_1_5_15'][0]} at the start",
        fontsize=12,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(results: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    results["targets"] = targets(results)
    paths = [out / "results.json", out / "results.md", out / "chart.png"]
    paths[0].write_text(json.dumps(results, indent=2) + "\n")
    paths[1].write_text(markdown(results))
    chart(results, paths[2])
    return paths

"""Runs tab: one experiment's configurations live, refreshed every two seconds.

Status, progress, loss, checkpoint, accuracy, elapsed and ETA per configuration, the loss curves
of all of them (optionally smoothed), and cancel buttons for one configuration or the whole
experiment. A sweep picked here shows its trials by rung instead (`demo.sweep_view`), and the
same buttons cancel one trial or the whole sweep. Any outage is shown in plain words in place of
the table's caption; the next refresh recovers by itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr
import pandas as pd

from demo import sweep_view
from demo.service import FINAL, Service, elapsed_and_eta
from orchestration.types import EvalMetrics, ExperimentProgress

REFRESH_S = 2.0
COLUMNS = [
    "configuration",
    "status",
    "progress",
    "epoch",
    "loss",
    "checkpoint",
    "accuracy",
    "elapsed",
    "ETA",
    "attempt",
    "setup",
    "error",
]
WIDTHS: list[str | int] = ["11%", "8%", "9%", "5%", "6%", "9%", "7%", "7%", "5%", "7%", "17%", "9%"]
CURVE_COLUMNS = ["step", "loss", "configuration"]
PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]


@dataclass
class RunsTab:
    experiment: gr.Dropdown
    populate: Callable  # (current experiment id) -> dropdown update with recent experiments


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def smoothed(points: list[tuple[int, float, str]], weight: float) -> list[tuple[int, float, str]]:
    """Each configuration's loss as an exponential moving average with `weight` given to the
    past (0: raw), bias-corrected so the curve starts at the first point, as TensorBoard does.
    Points are (step, loss, configuration), in step order per configuration."""
    if weight <= 0:
        return points
    average: dict[str, float] = {}
    seen: dict[str, int] = {}
    out = []
    for step, loss, name in points:
        average[name] = weight * average.get(name, 0.0) + (1 - weight) * loss
        seen[name] = seen.get(name, 0) + 1
        out.append((step, average[name] / (1 - weight ** seen[name]), name))
    return out


def curve_update(progress: ExperimentProgress, points: list[tuple[int, float, str]]) -> dict:
    """The loss chart's value and colours, with every configuration of the experiment in both
    from the first draw: one without points yet is a single row without a loss (at the first
    step drawn, so the steps stay whole numbers) that the chart lists in its legend but draws
    nothing for. The chart takes its colour domain from
    the data only when it builds its spec (on the first draw and when the colour map changes),
    and a rebuild that races a data update keeps the older domain; a domain that never changes
    leaves no configuration undrawn."""
    if not points:
        return gr.update(value=None, color_map={})
    drawn = {name for _, _, name in points}
    first = min(step for step, _, _ in points)
    waiting = [(first, None, r.name) for r in progress.runs if r.name not in drawn]
    frame = pd.DataFrame([*points, *waiting], columns=CURVE_COLUMNS)
    colors = {r.name: PALETTE[i % len(PALETTE)] for i, r in enumerate(progress.runs)}
    return gr.update(value=frame, color_map=colors)


def accuracy_cell(metrics: EvalMetrics | None) -> str:
    """Accuracy, and a warning when the model answers one class whatever the text."""
    if metrics is None or metrics.accuracy is None:
        return ""
    return f"{metrics.accuracy:.3f}" + (" ⚠ collapsed (one class)" if metrics.collapsed else "")


def table_rows(service: Service, progress: ExperimentProgress) -> list[list]:
    configs = service.configs(progress.experiment_id)
    rows = []
    for run in progress.runs:
        t = run.training
        elapsed, eta = elapsed_and_eta(run)
        cfg = configs.get(run.name)
        rows.append(
            [
                run.name,
                run.status,
                f"{t.step}/{t.total_steps} ({100 * t.step // t.total_steps}%)"
                if t and t.total_steps
                else "",
                f"{t.epoch:.2f}" if t else "",
                f"{t.loss:.4f}" if t and t.loss is not None else "",
                f"step {t.checkpoint.step}" if t and t.checkpoint else "",
                accuracy_cell(run.eval),
                duration(elapsed),
                duration(eta),
                (
                    f"{t.attempt}"
                    + (f" (resumed @{t.resumed_from_step})" if t.resumed_from_step else "")
                )
                if t
                else "",
                f"{cfg.model} · {cfg.dataset} · lr {cfg.learning_rate:g} · bs {cfg.batch_size}"
                if cfg
                else "",
                run.error or "",
            ]
        )
    return rows


def header_markdown(service: Service, progress: ExperimentProgress, note: str) -> str:
    links = [f"[Temporal workflow]({service.backend.workflow_url(progress.experiment_id)})"]
    if progress.mlflow_experiment_id:
        links.append(
            f"[MLflow experiment]("
            f"{service.backend.mlflow_experiment_url(progress.mlflow_experiment_id)})"
        )
    done = sum(r.status in FINAL for r in progress.runs)
    text = (
        f"**{progress.name}** (`{progress.experiment_id}`) — **{progress.status}**, "
        f"{done}/{len(progress.runs)} configurations ended · " + " · ".join(links)
    )
    return text + (f"\n\n⚠ {note}" if note else "")


def build(service: Service, launched: gr.State) -> RunsTab:
    with gr.Row():
        experiment = gr.Dropdown(
            label="Experiment",
            choices=[],
            allow_custom_value=True,
            scale=4,
            elem_id="runs-experiment",
        )
        reload_list = gr.Button("Refresh list", scale=0, elem_id="refresh-experiments")
    header = gr.Markdown(
        "Pick an experiment, or launch one on the Experiment tab.", elem_id="runs-header"
    )
    table = gr.Dataframe(
        headers=COLUMNS,
        value=[],
        interactive=False,
        wrap=True,
        column_widths=WIDTHS,
        label="Configurations",
        elem_id="runs-table",
    )
    # Starts as None, not an empty frame: Gradio's plot keeps an empty frame's (empty) colour
    # domain and would draw no lines for the data that follows.
    curve = gr.LinePlot(
        None,
        x="step",
        y="loss",
        color="configuration",
        title="Training loss",
        height=300,
        elem_id="loss-plot",
    )
    smoothing = gr.Slider(
        0,
        0.99,
        value=0.6,
        step=0.01,
        label="Loss smoothing (moving average weight; 0 shows the raw points)",
        elem_id="loss-smoothing",
    )
    with gr.Row():
        run_name = gr.Dropdown(label="Configuration", choices=[], scale=2, elem_id="cancel-name")
        cancel_one = gr.Button(
            "Cancel configuration", variant="stop", scale=1, elem_id="cancel-run"
        )
        cancel_all = gr.Button(
            "Cancel experiment", variant="stop", scale=1, elem_id="cancel-experiment"
        )
    cancel_note = gr.Markdown(elem_id="cancel-status")
    # A sweep's trials by rung take the configurations' place when a sweep is picked.
    sweep_table = gr.Dataframe(
        headers=sweep_view.RUNG_COLUMNS,
        value=[],
        interactive=False,
        wrap=True,
        visible=False,
        label="Trials by rung (promoted ones continue from their rung checkpoint)",
        elem_id="sweep-by-rung",
    )
    timer = gr.Timer(REFRESH_S)

    def choices(current: str | None):
        found = []
        for listing in (service.experiments, service.sweeps.list):
            try:
                found += [wid for wid, _ in listing()]
            except Exception:
                pass
        if current and current not in found:
            found.insert(0, current)
        return gr.update(choices=found, value=current or (found[0] if found else None))

    def refresh(experiment_id: str | None, weight: float = 0.0):
        if not experiment_id:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        try:
            if service.sweeps.is_sweep(experiment_id):
                return refresh_sweep(experiment_id)
            progress = service.progress(experiment_id)
        except Exception as err:
            return f"**{experiment_id}** — ⚠ {err}", *[gr.skip()] * 5
        points, note = service.loss_points(progress)
        running = [r.name for r in progress.runs if r.status not in FINAL]
        return (
            header_markdown(service, progress, note),
            gr.update(value=table_rows(service, progress), visible=True),
            {**curve_update(progress, smoothed(points, weight)), "visible": True},
            gr.update(choices=running),
            gr.update(visible=False),
            gr.update(visible=True),
        )

    def refresh_sweep(sweep_id: str):
        progress = service.sweeps.progress(sweep_id)
        return (
            sweep_view.runs_header(service.backend, sweep_id, progress),
            gr.update(visible=False),
            gr.update(visible=False),
            gr.update(choices=sweep_view.cancellable(progress)),
            gr.update(value=sweep_view.rung_rows(progress), visible=True),
            gr.update(visible=False),
        )

    def on_cancel_run(experiment_id, name):
        if not (experiment_id and name):
            return "Pick a running configuration first."
        try:
            if service.sweeps.is_sweep(experiment_id):
                service.sweeps.cancel_trial(experiment_id, name)
            else:
                service.cancel_run(experiment_id, name)
        except Exception as err:
            return f"⚠ {err}"
        return f"Cancel requested for **{name}**; its siblings carry on."

    def on_cancel_all(experiment_id):
        if not experiment_id:
            return "Pick an experiment first."
        try:
            if service.sweeps.is_sweep(experiment_id):
                service.sweeps.cancel(experiment_id)
            else:
                service.cancel_experiment(experiment_id)
        except Exception as err:
            return f"⚠ {err}"
        return f"Cancel requested for **{experiment_id}**."

    outputs = [header, table, curve, run_name, sweep_table, smoothing]
    reload_list.click(choices, experiment, experiment, api_visibility="private")
    launched.change(choices, launched, experiment, api_visibility="private")
    inputs = [experiment, smoothing]
    experiment.change(refresh, inputs, outputs, api_visibility="private")
    smoothing.release(refresh, inputs, outputs, api_visibility="private")
    timer.tick(refresh, inputs, outputs, show_progress="hidden", api_visibility="private")
    cancel_one.click(on_cancel_run, [experiment, run_name], cancel_note, api_visibility="private")
    cancel_all.click(on_cancel_all, experiment, cancel_note, api_visibility="private")
    return RunsTab(experiment, choices)

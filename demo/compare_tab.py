"""Compare tab: the experiment's finished configurations ranked by a metric, side by side.

The table puts each configuration's settings next to its eval metrics, the eval split's
majority-class share (the score of a model that learned nothing but the label balance), a
warning for a model that collapsed to one class, and marks the one the registry alias `champion`
points at (★); the chart shows the metrics per configuration with the majority baseline as a
line; the link opens MLflow's own compare view (parallel coordinates, parameter diffs) for the
same runs. Ranked by macro-F1 unless told otherwise: unlike accuracy, it does not reward
answering the commonest label. Once the experiment has ended, the alias can be moved to another
configuration. A sweep picked on the Runs tab shows its leaderboard instead (`demo.sweep_view`):
trials ranked on the validation metric, the best one marked, its model ready for Try inference.
"""

from __future__ import annotations

import gradio as gr
import matplotlib

matplotlib.use("Agg")  # rendered to an image on the server; no display here
import matplotlib.pyplot as plt
import numpy as np

from demo import sweep_view
from demo.service import Service
from orchestration.types import EvalMetrics
from tracking.registry import CHAMPION, version_of

METRICS = ["accuracy", "macro_f1", "precision", "recall", "loss"]
LOWER_IS_BETTER = {"loss"}
DEFAULT_METRIC = "macro_f1"
COLUMNS = [
    "rank",
    "configuration",
    "champion",
    *METRICS,
    "majority_baseline",
    "verdict",
    "model",
    "dataset",
    "learning_rate",
    "epochs",
    "batch_size",
    "max_length",
    "seed",
    "data_seed",
]


def comparison(service: Service, experiment_id: str, metric: str):
    """(sorted table rows, chart, markdown with the MLflow link, configurations that can be
    champion, the champion) for one experiment."""
    progress = service.progress(experiment_id)
    try:
        champion = service.models.champion(experiment_id)
    except Exception:  # MLflow down: the table still shows, without the mark
        champion = None
    configs = service.configs(experiment_id)
    scored = [r for r in progress.runs if r.eval is not None]
    missing = -np.inf if metric not in LOWER_IS_BETTER else np.inf

    def key(run):
        value = getattr(run.eval, metric)
        return missing if value is None else value

    scored.sort(key=key, reverse=metric not in LOWER_IS_BETTER)
    rows = []
    for rank, run in enumerate(scored, start=1):
        cfg = configs.get(run.name)
        settings = (
            [
                cfg.model,
                cfg.dataset,
                cfg.learning_rate,
                cfg.epochs,
                cfg.batch_size,
                cfg.max_length,
                cfg.seed,
                cfg.data_seed,
            ]
            if cfg
            else [""] * 8
        )
        values = [getattr(run.eval, m) for m in (*METRICS, "majority_baseline")]
        rows.append(
            [
                rank,
                run.name,
                "★" if run.name == champion else "",
                *["" if v is None else round(v, 4) for v in values],
                verdict(run.eval),
                *settings,
            ]
        )
    link = service.compare_link(progress)
    pending = len(progress.runs) - len(scored)
    text = (
        f"**{progress.name}**: {len(scored)} configuration(s) evaluated"
        + (f", {pending} not (yet)" if pending else "")
        + ". "
        + (
            f"[Open these runs in MLflow's compare view]({link})"
            if link
            else "MLflow has no runs for this experiment."
        )
        + (f" Champion: **{champion}** (`{alias_uri(progress, champion)}`)." if champion else "")
    )
    registered = [r.name for r in scored if (r.model_uri or "").startswith("models:/")]
    ended = progress.status != "running"
    return (
        rows,
        chart([r.name for r in scored], [r.eval for r in scored if r.eval is not None]),
        text,
        registered if ended else [],
        champion,
    )


def alias_uri(progress, champion: str) -> str:
    """`models:/<registered model>@champion`, named after the champion's registered version."""
    run = next(r for r in progress.runs if r.name == champion)
    found = version_of(run.model_uri)
    return f"models:/{found[0] if found else '…'}@{CHAMPION}"


def verdict(metrics: EvalMetrics | None) -> str:
    """Whether the model beat the majority baseline, or collapsed to one class."""
    if metrics is None:
        return ""
    if metrics.collapsed:
        return "⚠ collapsed: one class for every row"
    if metrics.accuracy is None or metrics.majority_baseline is None:
        return ""
    margin = metrics.accuracy - metrics.majority_baseline
    return f"{margin * 100:+.1f} points over majority"


def chart(names: list[str], evals: list[EvalMetrics]) -> plt.Figure | None:
    if not names:
        return None
    shown = [m for m in METRICS if m not in LOWER_IS_BETTER]
    fig, ax = plt.subplots(figsize=(8, 3.6), layout="constrained")
    width = 0.8 / len(shown)
    x = np.arange(len(names))
    for i, metric in enumerate(shown):
        values = [getattr(e, metric) or 0.0 for e in evals]
        bars = ax.bar(x + i * width - 0.4 + width / 2, values, width, label=metric)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    baselines = {e.majority_baseline for e in evals if e.majority_baseline is not None}
    for i, baseline in enumerate(sorted(baselines)):
        ax.axhline(
            baseline,
            color="black",
            linestyle="--",
            linewidth=1,
            label="majority baseline" if i == 0 else None,
        )
    ticks = [
        f"{name}\n(collapsed)" if e.collapsed else name
        for name, e in zip(names, evals, strict=True)
    ]
    ax.set_xticks(x, ticks)
    ax.set_ylim(0, 1.2)
    ax.set_ylabel("score on the eval split")
    ax.legend(loc="upper center", ncols=len(shown) + 1, fontsize=8)
    plt.close(fig)  # the component renders it; pyplot must not keep it alive
    return fig


def build(service: Service, experiment: gr.Dropdown, tab: gr.Tab) -> None:
    """The tab's components; they refresh whenever the tab is opened."""
    gr.Markdown("Finished configurations of the experiment chosen on the **Runs** tab.")
    with gr.Row():
        metric = gr.Dropdown(
            METRICS, value=DEFAULT_METRIC, label="Sort by", scale=1, elem_id="compare-metric"
        )
        refresh = gr.Button("Refresh", scale=0, elem_id="compare-refresh")
    note = gr.Markdown(elem_id="compare-note")
    table = gr.Dataframe(
        headers=COLUMNS, value=[], interactive=False, elem_id="compare-table", label="Results"
    )
    # An experiment's champion is moved by hand; a sweep's best trial is chosen by the sweep.
    with gr.Row(elem_id="champion-row") as champion_row:
        candidate = gr.Dropdown(
            label="Champion (registry alias of the experiment's model)",
            choices=[],
            scale=3,
            elem_id="champion-name",
        )
        promote = gr.Button("Make champion", scale=1, elem_id="champion-set")
    champion_note = gr.Markdown(elem_id="champion-note")
    plot = gr.Plot(label="Eval metrics per configuration", elem_id="compare-plot")
    # A sweep's trials ranked, in place of the configurations' table, when a sweep is picked.
    leaderboard = gr.Dataframe(
        headers=sweep_view.LEADERBOARD_COLUMNS,
        value=[],
        interactive=False,
        visible=False,
        label="Sweep leaderboard (★ the best trial)",
        elem_id="sweep-leaderboard",
    )

    def update(experiment_id, chosen_metric):
        if not experiment_id:
            return (
                "Pick an experiment on the Runs tab.",
                [],
                None,
                gr.update(choices=[]),
                [],
                gr.update(visible=True),
            )
        try:
            if service.sweeps.is_sweep(experiment_id):
                return sweep_update(experiment_id)
            rows, figure, text, registered, champion = comparison(
                service, experiment_id, chosen_metric
            )
        except Exception as err:
            return f"⚠ {err}", *[gr.skip()] * 5
        return (
            text,
            gr.update(value=rows, visible=True),
            figure,
            gr.update(choices=registered, value=champion),
            gr.update(visible=False),
            gr.update(visible=True),
        )

    def sweep_update(sweep_id):
        progress = service.sweeps.progress(sweep_id)
        evaluated = [t for t in progress.trials if t.eval is not None]
        return (
            sweep_view.compare_note(service.backend, progress),
            gr.update(visible=False),
            chart([t.name for t in evaluated], [t.eval for t in evaluated if t.eval]),
            gr.update(choices=[], value=None),
            gr.update(value=sweep_view.leaderboard_rows(progress), visible=True),
            gr.update(visible=False),
        )

    def on_promote(experiment_id, configuration, chosen_metric):
        if not (experiment_id and configuration):
            return "Pick an ended experiment and one of its configurations.", *update(
                experiment_id, chosen_metric
            )
        try:
            uri = service.models.set_champion(experiment_id, configuration)
        except Exception as err:
            return f"⚠ {err}", *[gr.skip()] * 6
        return f"`{uri}` now points at **{configuration}**.", *update(experiment_id, chosen_metric)

    outputs = [note, table, plot, candidate, leaderboard, champion_row]
    for trigger in (refresh.click, metric.change, experiment.change, tab.select):
        trigger(update, [experiment, metric], outputs, api_visibility="private")
    promote.click(
        on_promote,
        [experiment, candidate, metric],
        [champion_note, *outputs],
        api_visibility="private",
    )

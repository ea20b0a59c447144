"""Try inference tab: pick a registry alias (`models:/<experiment>@champion`) or any finished
run, type texts (one per line), see labels and scores.

Predictions run on the eval worker (which keeps recently used models loaded), through the same
client call the API's /predict uses; the page shows the round trip's latency and the worker's.
"""

from __future__ import annotations

import time

import gradio as gr

from demo.models import ModelOption
from demo.service import Service
from orchestration.types import RunConfig

EXAMPLES = {
    "movie-snippets": [
        "A warm, funny and beautifully acted film that earns every one of its tears.",
        "Two hours of my life I will never get back: dull, loud and painfully predictable.",
    ],
    "imdb-reviews": [
        "I loved every minute of this movie; the cast is superb and the story stays with you.",
        "The plot made no sense and the acting was wooden. Avoid it.",
    ],
    "bbc-articles": [
        "Shares in the carmaker fell sharply after it cut its profit forecast for the year.",
        "The striker scored twice as the home side came back to win the cup final.",
        "The government will publish its plans to reform the health service next week.",
    ],
}
DEFAULT_DATASET = RunConfig.model_fields["dataset"].default
RESULT_COLUMNS = ["text", "label", "probability", "all scores"]


def split_texts(text: str) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def prediction_rows(texts: list[str], predictions) -> list[list]:
    return [
        [
            text,
            scores[0].label,
            round(scores[0].score, 4),
            ", ".join(f"{s.label} {s.score:.3f}" for s in scores),
        ]
        for text, scores in zip(texts, predictions, strict=True)
    ]


def build(service: Service, experiment: gr.Dropdown, tab: gr.Tab) -> None:
    """The tab's components; the run list refreshes whenever the tab is opened."""
    options = gr.State([])
    with gr.Row():
        model = gr.Dropdown(
            label="Model: an experiment's champion (★) or a finished run",
            choices=[],
            scale=4,
            elem_id="inference-model",
        )
        refresh = gr.Button("Refresh runs", scale=0, elem_id="inference-refresh")
    note = gr.Markdown(elem_id="inference-note")
    texts = gr.Textbox(label="Texts to classify (one per line)", lines=4, elem_id="inference-texts")
    with gr.Row():
        example = gr.Button("Use example texts for this run's dataset", elem_id="inference-example")
        run = gr.Button("Predict", variant="primary", elem_id="predict")
    latency = gr.Markdown(elem_id="inference-latency")
    best = gr.Label(label="First text: label probabilities", elem_id="inference-label")
    table = gr.Dataframe(
        headers=RESULT_COLUMNS,
        value=[],
        interactive=False,
        wrap=True,
        label="Predictions",
        elem_id="inference-table",
    )

    def list_runs(experiment_id, current):
        found, problem = service.models.model_options(experiment_id)
        choices = [(o.label, o.model_uri) for o in found]
        uris = [uri for _, uri in choices]
        value = current if current in uris else (uris[0] if uris else None)
        text = (
            f"{len(found)} model(s): champions (★) first, then finished runs."
            if found
            else "No finished run with a model yet: launch one and wait for it to complete."
        )
        return (
            gr.update(choices=choices, value=value),
            found,
            text + (f"\n\n⚠ {problem}" if problem else ""),
        )

    def fill_example(model_uri, found: list[ModelOption]):
        chosen = next((o for o in found if o.model_uri == model_uri), None)
        dataset = chosen.dataset if chosen and chosen.dataset in EXAMPLES else DEFAULT_DATASET
        return "\n".join(EXAMPLES[dataset])

    def on_predict(model_uri, text):
        lines = split_texts(text)
        if not model_uri:
            raise gr.Error("Pick a model first.")
        if not lines:
            raise gr.Error("Enter at least one text (one per line).")
        started = time.perf_counter()
        try:
            result = service.models.predict(model_uri, lines)
        except Exception as err:
            raise gr.Error(str(err)) from None
        round_trip = (time.perf_counter() - started) * 1000
        first = {s.label: s.score for s in result.predictions[0]}
        return (
            f"Latency: **{round_trip:.0f} ms** round trip "
            f"({result.latency_ms:.0f} ms on the worker) for {len(lines)} text(s).",
            first,
            prediction_rows(lines, result.predictions),
        )

    for trigger in (refresh.click, tab.select):
        trigger(list_runs, [experiment, model], [model, options, note], api_visibility="private")
    example.click(fill_example, [model, options], texts, api_visibility="private")
    run.click(on_predict, [model, texts], [latency, best, table], api_visibility="private")

"""The Gradio app: four tabs over one Service, a health line, and named API endpoints.

    python -m demo        # http://127.0.0.1:7860 (GRADIO_SERVER_PORT to change)

The API endpoints take and return plain JSON so scripts can drive an experiment without the
page (see `demo/__main__.py` for an example with gradio_client). Every handler connects lazily,
so the app starts, and says what is missing, while Temporal or MLflow is down.
"""

from __future__ import annotations

import gradio as gr

from demo import compare_tab, experiment_tab, inference_tab, runs_tab, sweep_panel
from demo.backend import Backend, Unavailable
from demo.configs import LaunchRefused, parse_launch_input
from demo.service import Service
from orchestration.settings import Settings, settings

HEALTH_REFRESH_S = 5.0
CSS = "#health p {margin: 0}"
# Gradio announces every finished event in a screen-reader live region (`role="status"`, last
# in the page) with the text `common.complete`, a key its English locale lacks: readers, and
# any text view of the page, got the raw key at the bottom. The missing text, supplied.
I18N = gr.I18n(en={"common.complete": "Complete"})


def health_markdown(service: Service) -> str:
    """One line: can the app reach Temporal and MLflow, and are workers polling its queues?"""
    backend = service.backend
    parts = []
    if not backend.temporal_reachable():
        parts.append(f"✗ {backend.temporal_down}")
    else:
        parts.append(f"✓ Temporal {backend.cfg.temporal_address}")
        try:
            pollers = backend.pollers()
            idle = [queue for queue, count in pollers.items() if count == 0]
            parts.append(
                f"✗ no worker polls {', '.join(repr(q) for q in idle)} — start them with "
                "`make workers`"
                if idle
                else f"✓ workers on {', '.join(pollers)}"
            )
        except Unavailable as err:
            parts.append(f"✗ {err}")
    parts.append(
        f"✗ {backend.mlflow_down}"
        if not backend.mlflow_reachable()
        else f"✓ [MLflow]({backend.cfg.mlflow_ui_url})"
    )
    return " · ".join(parts)


def register_api(service: Service) -> None:
    """Endpoints for gradio_client: health, launch, watch, cancel, pick a model, predict, and
    read or move the champion alias; and the sweep's (demo/sweep_panel.py)."""

    def health() -> str:
        """Whether the app reaches Temporal and MLflow, and whether workers poll its queues."""
        return health_markdown(service)

    def launch(experiment: str) -> dict:
        """Start an experiment: a preset name (smoke, demo, lr-sweep) or an ExperimentRequest
        as JSON. Refused, with every problem listed, when any configuration is invalid."""
        try:
            req = parse_launch_input(experiment, service.backend.cfg)
        except LaunchRefused as err:
            raise gr.Error(str(err)) from None
        done = _plain(service.launch, req)
        return {
            "experiment_id": done.experiment_id,
            "temporal_url": done.temporal_url,
            "mlflow_url": done.mlflow_url,
        }

    def progress(experiment_id: str) -> dict:
        """Live progress of an experiment (ExperimentProgress as JSON)."""
        return _plain(service.progress, experiment_id).model_dump(mode="json")

    def result(experiment_id: str) -> dict | None:
        """The final ExperimentResult once the experiment has ended, else null."""
        found = _plain(service.result, experiment_id)
        return None if found is None else found.model_dump(mode="json")

    def experiments() -> list[dict]:
        """Recent experiments, newest first."""
        return [
            {"experiment_id": wid, "status": status} for wid, status in _plain(service.experiments)
        ]

    def models(experiment_id: str) -> list[dict]:
        """Finished runs with a model: the experiment's own, then every one in MLflow."""
        found, _ = service.models.model_options(experiment_id or None)
        return [{"label": o.label, "model_uri": o.model_uri, "dataset": o.dataset} for o in found]

    def predict(model_uri: str, texts: list[str]) -> dict:
        """Labels with probabilities for each text, from a finished run's model."""
        return _plain(service.models.predict, model_uri, texts).model_dump(mode="json")

    def champion(experiment_id: str) -> str | None:
        """The configuration `models:/<experiment>@champion` points at, if one of this
        experiment's; null otherwise (still running, or another launch's)."""
        return _plain(service.models.champion, experiment_id)

    def set_champion(experiment_id: str, configuration: str) -> str:
        """Move the alias `champion` to a configuration of an ended experiment; its model URI
        (`models:/<experiment>@champion`)."""
        return _plain(service.models.set_champion, experiment_id, configuration)

    def cancel_run(experiment_id: str, name: str) -> str:
        """Cancel one configuration; the others carry on."""
        _plain(service.cancel_run, experiment_id, name)
        return f"cancel requested for {name}"

    def cancel_experiment(experiment_id: str) -> str:
        """Cancel every configuration of an experiment."""
        _plain(service.cancel_experiment, experiment_id)
        return f"cancel requested for {experiment_id}"

    for fn in (
        health,
        launch,
        progress,
        result,
        experiments,
        models,
        predict,
        champion,
        set_champion,
        cancel_run,
        cancel_experiment,
    ):
        gr.api(fn, api_name=fn.__name__)
    sweep_panel.register_api(service, _plain)


def _plain(fn, *args):
    """Call fn; any failure becomes a gr.Error, whose message the client receives as is."""
    try:
        return fn(*args)
    except Exception as err:
        raise gr.Error(str(err)) from None


def build_app(cfg: Settings | None = None) -> gr.Blocks:
    service = Service(Backend(cfg or settings()))
    with gr.Blocks(title="bertfleet — parallel BERT fine-tuning") as app:
        gr.Markdown("## bertfleet — durable parallel BERT fine-tuning")
        health = gr.Markdown(elem_id="health")
        with gr.Tabs():
            with gr.Tab("Experiment", elem_id="tab-experiment"):
                exp = experiment_tab.build(service)
            with gr.Tab("Runs", elem_id="tab-runs"):
                runs = runs_tab.build(service, exp.launched)
            with gr.Tab("Compare", elem_id="tab-compare") as compare:
                compare_tab.build(service, runs.experiment, compare)
            with gr.Tab("Try inference", elem_id="tab-inference") as inference:
                inference_tab.build(service, runs.experiment, inference)
        check_health = lambda: health_markdown(service)  # noqa: E731
        app.load(check_health, None, health, api_visibility="private")
        gr.Timer(HEALTH_REFRESH_S).tick(
            check_health, None, health, show_progress="hidden", api_visibility="private"
        )
        app.load(runs.populate, runs.experiment, runs.experiment, api_visibility="private")
        register_api(service)
    # Every timer tick is an event; Gradio's default of one at a time per event would make
    # browser tabs wait on each other.
    app.queue(default_concurrency_limit=16)
    return app

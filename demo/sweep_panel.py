"""The Experiment tab's sweep mode: a search space around a base configuration, launched as one
SweepWorkflow.

Per searched field, a row of the space table: choices (comma-separated) or a range (low, high,
scale uniform | log | int); every other field comes from the base configuration (JSON). Then the
sampler (grid, random, TPE), the number of trials and how many train at once, ASHA's η and its
min/max steps, the metric it selects on (on validation rows carved from the training rows), and
optional budgets. Validate and Launch check with the engine's own SweepRequest and list every
problem by field; nothing starts while one is left.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import get_args

import gradio as gr

from demo.configs import LaunchRefused, problems_markdown
from demo.service import Service
from demo.sweep_form import (
    SCALES,
    SPACE_DATATYPES,
    SPACE_HEADERS,
    SweepForm,
    build_request,
    form_from_request,
    parse_sweep_input,
)
from orchestration.presets import SWEEP_NOTES, SWEEP_PRESETS, sweep_preset
from orchestration.sweep.space import SEARCHABLE
from orchestration.sweep.types import SamplerName, SweepMetric, SweepRequest

INTRO = (
    "Search a space around a base configuration: each row of the space table is a field to "
    "search, with **choices** (comma-separated) or a **range** (low, high and a scale: "
    f"{', '.join(SCALES)}). Searchable: {', '.join(f'`{f}`' for f in SEARCHABLE)}; every other "
    "field comes from the base. Trials are promoted or pruned at rungs of min_steps × ηᵏ steps "
    "(up to max_steps) on validation rows carved from the training rows; only the trials that "
    "reach max_steps are evaluated on the eval split."
)


def rungs_text(req: SweepRequest) -> str:
    full = req.n_trials * req.max_steps
    return (
        f"✓ {req.n_trials} trial(s) of `{req.name}` are ready to launch: {req.sampler} sampler, "
        f"{req.max_concurrent} at once, rungs at {', '.join(map(str, req.rungs()))} steps, "
        f"selected on validation {req.metric} ({req.goal}); at most {full} steps if every "
        "trial trained to the maximum."
    )


@dataclass
class SweepPanel:
    box: gr.Column


def build(service: Service, launched: gr.State) -> SweepPanel:
    first = form_from_request(sweep_preset("sweep-smoke"))
    with gr.Column(visible=False, elem_id="sweep-panel") as box:
        gr.Markdown(INTRO)
        with gr.Row():
            preset = gr.Dropdown(
                list(SWEEP_PRESETS),
                value="sweep-smoke",
                label="Sweep preset",
                scale=1,
                elem_id="sweep-preset",
            )
            load = gr.Button("Load sweep preset", scale=0, elem_id="sweep-load-preset")
            name = gr.Textbox(first.name, label="Sweep name", scale=2, elem_id="sweep-name")
        note = gr.Markdown(SWEEP_NOTES["sweep-smoke"], elem_id="sweep-preset-note")
        with gr.Row():
            space = gr.Dataframe(
                value=first.space,
                headers=SPACE_HEADERS,
                datatype=SPACE_DATATYPES,
                type="array",
                interactive=True,
                label="Search space (one row per field: choices, or low / high / scale)",
                elem_id="sweep-space",
                scale=3,
            )
            base = gr.Textbox(
                first.base,
                lines=10,
                max_lines=24,
                label="Base configuration (JSON: any configuration field)",
                elem_id="sweep-base",
                scale=2,
            )
        with gr.Row():
            sampler = gr.Radio(
                list(get_args(SamplerName)),
                value=first.sampler,
                label="Sampler",
                elem_id="sweep-sampler",
            )
            metric = gr.Dropdown(
                list(get_args(SweepMetric)),
                value=first.metric,
                label="Select on (validation)",
                elem_id="sweep-metric",
            )
            sampler_seed = gr.Number(
                first.sampler_seed, precision=0, label="Sampler seed", elem_id="sweep-seed"
            )
        with gr.Row():
            n_trials = gr.Number(
                first.n_trials, precision=0, label="Trials", elem_id="sweep-trials"
            )
            max_concurrent = gr.Number(
                first.max_concurrent, precision=0, label="At once", elem_id="sweep-concurrent"
            )
            eta = gr.Number(first.eta, precision=0, label="η (keep 1/η)", elem_id="sweep-eta")
            min_steps = gr.Number(
                first.min_steps, precision=0, label="Min steps", elem_id="sweep-min-steps"
            )
            max_steps = gr.Number(
                first.max_steps, precision=0, label="Max steps", elem_id="sweep-max-steps"
            )
            budget_steps = gr.Number(
                first.budget_steps,
                precision=0,
                label="Step budget (optional)",
                elem_id="sweep-budget-steps",
            )
            budget_seconds = gr.Number(
                first.budget_seconds,
                precision=0,
                label="Time budget, s (optional)",
                elem_id="sweep-budget-seconds",
            )
        with gr.Row():
            check = gr.Button("Validate sweep", elem_id="sweep-validate")
            launch = gr.Button("Launch sweep", variant="primary", elem_id="sweep-launch")
        status = gr.Markdown(elem_id="sweep-status")

    inputs = [
        name,
        base,
        space,
        sampler,
        n_trials,
        max_concurrent,
        eta,
        min_steps,
        max_steps,
        metric,
        sampler_seed,
        budget_steps,
        budget_seconds,
    ]

    def on_load(preset_name):
        form = form_from_request(sweep_preset(preset_name))
        return [getattr(form, f.name) for f in fields(SweepForm)]

    def on_validate(*values):
        try:
            return rungs_text(build_request(SweepForm(*values), service.backend.cfg))
        except LaunchRefused as err:
            return problems_markdown(err)

    def on_launch(current, *values):
        try:
            req = build_request(SweepForm(*values), service.backend.cfg)
        except LaunchRefused as err:
            return problems_markdown(err), current
        try:
            sweep_id = service.sweeps.launch(req)
        except Exception as err:
            return f"**Not launched:** {err}", current
        return (
            f"**Launched sweep `{sweep_id}`**: [Temporal workflow]"
            f"({service.backend.workflow_url(sweep_id)}). Watch its trials on the **Runs** tab.",
            sweep_id,
        )

    load.click(on_load, preset, inputs, api_visibility="private")
    preset.change(SWEEP_NOTES.get, preset, note, api_visibility="private")
    check.click(on_validate, inputs, status, api_visibility="private")
    launch.click(on_launch, [launched, *inputs], [status, launched], api_visibility="private")
    return SweepPanel(box)


def register_api(service: Service, plain) -> None:
    """Endpoints for gradio_client: launch a sweep, watch it, read its result, cancel a trial
    or the whole sweep. `plain` turns any failure into a gr.Error (the app's own helper)."""
    cfg = service.backend.cfg

    def sweep_launch(sweep: str) -> dict:
        """Start a sweep: a sweep preset name (sweep-smoke, sweep-demo) or a SweepRequest as
        JSON. Refused, with every problem listed by field, when anything is invalid."""
        try:
            req = parse_sweep_input(sweep, cfg)
        except LaunchRefused as err:
            raise gr.Error(str(err)) from None
        sweep_id = plain(service.sweeps.launch, req)
        return {"sweep_id": sweep_id, "temporal_url": service.backend.workflow_url(sweep_id)}

    def sweep_progress(sweep_id: str) -> dict:
        """Live progress of a sweep (SweepProgress as JSON): trials, rungs, best, steps."""
        return plain(service.sweeps.progress, sweep_id).model_dump(mode="json")

    def sweep_result(sweep_id: str) -> dict | None:
        """The SweepResult once the sweep has ended (the CLI's --json shape), else null."""
        found = plain(service.sweeps.result, sweep_id)
        return None if found is None else found.model_dump(mode="json")

    def sweeps() -> list[dict]:
        """Recent sweeps, newest first."""
        return [{"sweep_id": wid, "status": status} for wid, status in plain(service.sweeps.list)]

    def cancel_trial(sweep_id: str, name: str) -> str:
        """Cancel one trial of a sweep; the others carry on."""
        plain(service.sweeps.cancel_trial, sweep_id, name)
        return f"cancel requested for {name}"

    def cancel_sweep(sweep_id: str) -> str:
        """Cancel a whole sweep: running trials stop, no new one starts."""
        plain(service.sweeps.cancel, sweep_id)
        return f"cancel requested for {sweep_id}"

    for fn in (sweep_launch, sweep_progress, sweep_result, sweeps, cancel_trial, cancel_sweep):
        gr.api(fn, api_name=fn.__name__)

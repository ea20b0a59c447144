"""Experiment tab: lay out configurations side by side, check them, launch them as one experiment.

The table holds the fields people vary most; any other RunConfig field goes in its row's `more`
column as JSON (presets use it for `checkpoint_every_steps`), listed with defaults and help under
the table (the training recipe: warmup, schedule, accumulation, best-checkpoint selection...).
Launch validates first and starts nothing while any row is wrong; the problems are listed right
under the table, each naming its row and field. The dataset card (source, provenance, rows after
cleaning, label balance, split) of any dataset is one click away below. Catalog pickers beside
the table and the upload box come from `demo.upload_panel`. A switch above turns the tab to sweep
mode (`demo.sweep_panel`): a search space around a base configuration, launched as one sweep.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from demo import sweep_panel
from demo.catalog import dataset_choices
from demo.configs import (
    DATATYPES,
    HEADERS,
    LaunchRefused,
    blank_row,
    more_fields_help,
    preset_rows,
    problems_markdown,
    validate,
)
from demo.service import Launched, Service
from demo.upload_panel import build_pickers, build_upload, wire_pickers, wire_use
from orchestration.presets import NOTES, PRESETS
from orchestration.types import RunConfig

# Lay out configurations by hand, or search a space (demo/sweep_panel.py).
MODES = ["Fixed configurations", "Sweep"]


@dataclass
class ExperimentTab:
    name: gr.Textbox
    table: gr.Dataframe
    launched: gr.State  # the id of the experiment this session launched last


def launched_markdown(launched: Launched) -> str:
    mlflow = (
        f"[MLflow experiment]({launched.mlflow_url})"
        if launched.mlflow_url
        else "MLflow experiment: linked on the Runs tab once the coordinator opens it"
    )
    return (
        f"**Launched `{launched.experiment_id}`**: [Temporal workflow]({launched.temporal_url})"
        f" · {mlflow}. Watch it on the **Runs** tab."
    )


def build(service: Service) -> ExperimentTab:
    cfg = service.backend.cfg
    first_name, first_rows = preset_rows("smoke")
    mode = gr.Radio(
        MODES, value=MODES[0], show_label=False, container=False, elem_id="experiment-mode"
    )
    with gr.Column() as fixed_box:
        with gr.Row():
            preset = gr.Dropdown(
                list(PRESETS), value="smoke", label="Preset", scale=1, elem_id="preset"
            )
            load = gr.Button("Load preset", scale=0, elem_id="load-preset")
            name = gr.Textbox(
                first_name, label="Experiment name", scale=2, elem_id="experiment-name"
            )
        # What the chosen preset is for: smoke is a plumbing check, not a model to try.
        preset_note = gr.Markdown(NOTES["smoke"], elem_id="preset-note")
        table = gr.Dataframe(
            value=first_rows,
            headers=HEADERS,
            datatype=DATATYPES,
            type="array",
            interactive=True,
            label="Configurations (one row each)",
            elem_id="config-table",
            wrap=True,
            column_widths=["12%", "10%", "12%", "9%", "6%", "7%", "7%", "5%", "8%", "8%", "16%"],
        )
        pickers = build_pickers(cfg)
        with gr.Accordion("Upload your data", open=False, elem_id="upload-box"):
            upload = build_upload(cfg)
        with gr.Accordion("More fields: the training recipe and the rest", open=False):
            gr.Markdown(more_fields_help(), elem_id="more-fields")
        selected = gr.State(None)
        with gr.Row():
            add = gr.Button("Add row", elem_id="add-row")
            duplicate = gr.Button("Duplicate selected row", elem_id="duplicate-row")
            remove = gr.Button("Remove selected row", elem_id="remove-row")
            selected_note = gr.Markdown("Click a cell to select its row.", elem_id="selected-row")
        with gr.Row():
            check = gr.Button("Validate", elem_id="validate")
            launch = gr.Button("Launch", variant="primary", elem_id="launch")
        status = gr.Markdown(elem_id="launch-status")
    launched = gr.State(None)
    sweep = sweep_panel.build(service, launched)
    with gr.Accordion("Dataset card", open=False, elem_id="dataset-card-box") as card_box:
        card_dataset = gr.Dropdown(
            dataset_choices(cfg.local_roots),
            value=RunConfig.model_fields["dataset"].default,
            allow_custom_value=True,
            label="Dataset (a built-in, or any dataset name of the table)",
            elem_id="dataset-card-name",
        )
        card = gr.Markdown(elem_id="dataset-card")

    def on_card(dataset, known):
        if not dataset:
            return "Pick a dataset."
        try:
            name = dataset.strip()
            return service.dataset_card(name, (known or {}).get(name)).markdown()
        except Exception as err:
            return f"⚠ {err}"

    def on_select(rows, evt: gr.SelectData):
        row = evt.index[0]
        label = rows[row][0] if row < len(rows) else ""
        return row, f"Selected row {row + 1} ({label})."

    def on_add(rows):
        return [*rows, blank_row(rows)]

    def on_duplicate(rows, row):
        if row is None or row >= len(rows):
            raise gr.Error("Click a cell of the row to duplicate first.")
        copy = list(rows[row])
        taken = {str(r[0]) for r in rows}
        copy[0] = next(
            f"{copy[0]}-{i}" for i in range(2, len(rows) + 3) if f"{copy[0]}-{i}" not in taken
        )
        return [*rows[: row + 1], copy, *rows[row + 1 :]]

    def on_remove(rows, row):
        if row is None or row >= len(rows):
            raise gr.Error("Click a cell of the row to remove first.")
        return [r for i, r in enumerate(rows) if i != row], None, "Row removed."

    def on_validate(experiment_name, rows):
        try:
            req = validate(experiment_name, rows, cfg)
        except LaunchRefused as err:
            return problems_markdown(err)
        return f"✓ {len(req.runs)} configuration(s) are ready to launch."

    def on_launch(experiment_name, rows, current):
        try:
            req = validate(experiment_name, rows, cfg)
        except LaunchRefused as err:
            return problems_markdown(err), current
        try:
            done = service.launch(req)
        except Exception as err:
            return f"**Not launched:** {err}", current
        return launched_markdown(done), done.experiment_id

    def on_mode(chosen):
        return gr.update(visible=chosen == MODES[0]), gr.update(visible=chosen == MODES[1])

    mode.change(on_mode, mode, [fixed_box, sweep.box], api_visibility="private")
    load.click(preset_rows, preset, [name, table], api_visibility="private")
    preset.change(NOTES.get, preset, preset_note, api_visibility="private")
    for trigger in (card_dataset.change, card_box.expand):
        trigger(on_card, [card_dataset, upload.fields], card, api_visibility="private")
    wire_pickers(pickers, table, selected, upload.fields)
    wire_use(upload, table, pickers, card_dataset, cfg)
    table.select(on_select, table, [selected, selected_note], api_visibility="private")
    add.click(on_add, table, table, api_visibility="private")
    duplicate.click(on_duplicate, [table, selected], table, api_visibility="private")
    remove.click(
        on_remove, [table, selected], [table, selected, selected_note], api_visibility="private"
    )
    check.click(on_validate, [name, table], status, api_visibility="private")
    launch.click(on_launch, [name, table, launched], [status, launched], api_visibility="private")
    return ExperimentTab(name, table, launched)

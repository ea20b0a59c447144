"""The Experiment tab's data and model pickers: upload a file and check its schema, and put catalog
names (built-ins, uploads, local data and models) into the configuration table's rows.

Gradio's Dataframe has no dropdown cells, so the catalog sits beside the table as two dropdowns
that fill the selected row, or every row; typing a name into a cell keeps working. An upload
shows what schema inference decided, with overrides; "Use in every row" writes the dataset and
the decided fields (text_field, label_field, ...) into the rows, so a launch trains on exactly
what the preview showed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from demo.catalog import dataset_choices, model_choices
from demo.configs import COLUMNS
from demo.upload import (
    UPLOAD_SUFFIXES,
    Overrides,
    Preview,
    UploadRefused,
    limits_text,
    preview,
    store_upload,
)
from orchestration.ml.errors import ConfigError
from orchestration.settings import Settings

TASK_TYPES = ["auto", "classification", "regression"]
SCHEMA_FIELDS = ("text_field", "text_pair_field", "label_field", "task_type")
_DATASET, _MODEL = COLUMNS.index("dataset"), COLUMNS.index("model")


@dataclass
class Pickers:
    model: gr.Dropdown
    dataset: gr.Dropdown
    set_row: gr.Button
    set_all: gr.Button


@dataclass
class UploadPanel:
    file: gr.File
    preview: gr.Markdown
    use: gr.Button
    fields: gr.State  # dataset name -> the RunConfig fields its preview decided
    dataset: gr.State  # the dataset the preview shows


def with_dataset(row: list, dataset: str, fields: dict) -> list:
    """`row` training on `dataset` with `fields` (earlier schema fields in `more` replaced)."""
    row = list(row) + [""] * (len(COLUMNS) + 1 - len(row))
    row[_DATASET] = dataset
    try:
        more = json.loads(row[len(COLUMNS)]) if str(row[len(COLUMNS)] or "").strip() else {}
    except json.JSONDecodeError:
        more = {}  # the table's own check names a broken cell; a pick replaces it
    if not isinstance(more, dict):
        more = {}
    more = {k: v for k, v in more.items() if k not in SCHEMA_FIELDS} | fields
    row[len(COLUMNS)] = json.dumps(more) if more else ""
    return row


def build_pickers(cfg: Settings) -> Pickers:
    with gr.Row():
        model = gr.Dropdown(
            model_choices(cfg.local_roots),
            value=None,
            allow_custom_value=True,
            label="Model (catalog, or type a name)",
            elem_id="catalog-model",
        )
        dataset = gr.Dropdown(
            dataset_choices(cfg.local_roots),
            value=None,
            allow_custom_value=True,
            label="Dataset (built-ins, uploads, local files)",
            elem_id="catalog-dataset",
        )
        set_row = gr.Button("Set in selected row", elem_id="catalog-set-row", scale=0)
        set_all = gr.Button("Set in every row", elem_id="catalog-set-all", scale=0)
    return Pickers(model, dataset, set_row, set_all)


def set_in_rows(
    rows: list[list], model: str | None, dataset: str | None, known: dict, only: int | None
) -> list[list]:
    """`rows` with `model` and/or `dataset` set in row `only` (0-based), or in every row when
    None; a dataset brings the schema fields its upload preview decided (`known`)."""
    if not model and not dataset:
        raise gr.Error("Pick a model or a dataset first.")
    if only is not None and not 0 <= only < len(rows):
        raise gr.Error("Click a cell of the row to set first.")
    out = []
    for i, row in enumerate(rows):
        if only is None or i == only:
            row = list(row)
            if model:
                row[_MODEL] = model
            if dataset:
                row = with_dataset(row, dataset, (known or {}).get(dataset, {}))
        out.append(row)
    return out


def wire_pickers(pickers: Pickers, table: gr.Dataframe, selected: gr.State, fields: gr.State):
    def on_row(rows, model, dataset, known, row):
        if row is None:
            raise gr.Error("Click a cell of the row to set first.")
        return set_in_rows(rows, model, dataset, known, row)

    def on_all(rows, model, dataset, known):
        return set_in_rows(rows, model, dataset, known, None)

    inputs = [table, pickers.model, pickers.dataset, fields]
    pickers.set_row.click(on_row, [*inputs, selected], table, api_visibility="private")
    pickers.set_all.click(on_all, inputs, table, api_visibility="private")


def build_upload(cfg: Settings) -> UploadPanel:
    """The upload box: file, status, overrides, schema preview, first rows, "Use in every row"."""
    gr.Markdown(f"Limits: {limits_text()}", elem_id="upload-limits")
    file = gr.File(
        label="Your data",
        file_types=list(UPLOAD_SUFFIXES),
        type="filepath",
        elem_id="upload-file",
    )
    status = gr.Markdown(elem_id="upload-status")
    with gr.Row():
        text = gr.Dropdown([], label="text_field", elem_id="upload-text-field")
        pair = gr.Dropdown([], label="text_pair_field (optional)", elem_id="upload-pair-field")
        label = gr.Dropdown([], label="label_field", elem_id="upload-label-field")
        task = gr.Dropdown(TASK_TYPES, value="auto", label="task_type", elem_id="upload-task")
    shown = gr.Markdown(elem_id="upload-schema")
    samples = gr.Dataframe(label="First rows", elem_id="upload-samples", interactive=False)
    use = gr.Button("Use in every row", elem_id="use-upload", interactive=False)
    fields = gr.State({})
    dataset = gr.State(None)
    overrides = [text, pair, label, task]

    def show(found: Preview, known: dict):
        known = {**(known or {}), found.dataset: found.run_fields}
        choices = ["", *found.columns]
        s = found.schema
        return (
            found.markdown(),
            gr.update(choices=choices, value=s.text_field),
            gr.update(choices=choices, value=s.text_pair_field or ""),
            gr.update(choices=choices, value=s.label_field),
            gr.update(value=s.task_type),
            pd.DataFrame(found.samples),
            gr.update(interactive=True),
            known,
        )

    def refused(message: str, known: dict):
        keep = (gr.update(),) * 5  # the overrides and the samples stay as they were
        return (f"⚠ {message}", *keep, gr.update(interactive=False), known)

    def on_upload(path, known):
        if not path:
            return ("", *(gr.update(),) * 5, gr.update(interactive=False), known, None, "")
        try:
            stored = store_upload(Path(path), Path(path).name, cfg.local_roots)
        except UploadRefused as err:
            return (*refused(str(err), known), None, f"⚠ Not stored: {err}")
        note = (
            f"✓ Stored as **`{stored.name}`** ({stored.rows:,} rows). This name works in the "
            "table's dataset column like a built-in."
        )
        try:
            found = preview(stored.name, Overrides(), cfg.data_dir, cfg.local_roots)
        except ConfigError as err:
            blank = gr.update(choices=["", *stored.columns], value="")
            return (
                f"⚠ {err}",
                blank,
                blank,
                blank,
                gr.update(value="auto"),
                gr.update(),
                gr.update(interactive=False),
                known,
                stored.name,
                note,
            )
        return (*show(found, known), stored.name, note)

    def on_override(name, text_field, pair_field, label_field, task_type, known):
        if not name:
            raise gr.Error("Upload a file first.")
        chosen = Overrides(text_field or None, pair_field or None, label_field or None, task_type)
        try:
            return show(preview(name, chosen, cfg.data_dir, cfg.local_roots), known)
        except ConfigError as err:
            return refused(str(err), known)

    outputs = [shown, *overrides, samples, use, fields]
    file.upload(on_upload, [file, fields], [*outputs, dataset, status], api_visibility="private")
    for box in overrides:
        box.input(on_override, [dataset, *overrides, fields], outputs, api_visibility="private")
    return UploadPanel(file, shown, use, fields, dataset)


def wire_use(panel: UploadPanel, table: gr.Dataframe, pickers: Pickers, card: gr.Dropdown, cfg):
    """ "Use in every row": the upload goes into every row, the catalog and the card's picker."""

    def on_use(rows, name, known):
        if not name or name not in (known or {}):
            raise gr.Error("Upload a file whose schema checks out first.")
        new_rows = [with_dataset(r, name, known[name]) for r in rows]
        choices = dataset_choices(cfg.local_roots)
        return (
            new_rows,
            gr.update(choices=choices, value=name),
            gr.update(choices=choices, value=name),
        )

    panel.use.click(
        on_use,
        [table, panel.dataset, panel.fields],
        [table, pickers.dataset, card],
        api_visibility="private",
    )

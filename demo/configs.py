"""The experiment table: rows <-> RunConfig, and every check a launch must pass first.

A launch is refused before anything starts when a row is wrong, with the row, its name and the
field in the message ("row 2 (name 'x'), learning_rate: must be > 0"): pydantic's checks of the
contract, then the data and model catalogs' cheap checks (built-in names, files under the
allowed local roots, hub names only when the hub is reachable). Nothing here loads data or
weights: a check takes milliseconds.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from orchestration.environment import hub_offline_variable, is_hub_id
from orchestration.ml.builtin_data import BUILTINS, builtin_path, renamed_builtin_error
from orchestration.ml.errors import ConfigError
from orchestration.ml.local_files import resolve_local, roots_text
from orchestration.ml.model_catalog import check_max_length, describe_model
from orchestration.presets import preset
from orchestration.settings import Settings
from orchestration.types import ExperimentRequest, RunConfig

# The table's columns, in order; every other RunConfig field lives in the JSON column "more".
COLUMNS = [
    "name",
    "model",
    "dataset",
    "learning_rate",
    "epochs",
    "batch_size",
    "max_length",
    "seed",
    "max_train_samples",
    "max_eval_samples",
]
MORE = "more"
HEADERS = [*COLUMNS, MORE]
# Gradio's cell types for those columns (its Dataframe accepts only its own literals).
DATATYPES: list[Literal["str", "number"]] = [
    "str",
    "str",
    "str",
    "number",
    "number",
    "number",
    "number",
    "number",
    "number",
    "number",
    "str",
]
_LIMITS = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "missing": "is required",
    "finite_number": "must be a finite number (not NaN or infinity)",
    "too_short": "needs at least {min_length} item(s)",
    "too_long": "allows at most {max_length} items",
}


class LaunchRefused(ValueError):
    """One or more problems; str() lists them one per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def problems_markdown(err: LaunchRefused) -> str:
    """The page's answer to a refused launch: every problem on its own line."""
    lines = "\n".join(f"- {p}" for p in err.problems)
    return f"**Not launched — fix these first:**\n\n{lines}"


@dataclass(frozen=True)
class Row:
    """A table row as the user typed it, and where it sits (1-based) for messages."""

    number: int
    values: dict

    @property
    def label(self) -> str:
        name = self.values.get("name")
        return f"row {self.number}" + (f" (name {name!r})" if name else "")


def rows_from_request(req: ExperimentRequest) -> list[list]:
    """Table rows for a request: the main columns, other non-default fields as JSON."""
    rows = []
    for run in req.runs:
        data = run.model_dump(exclude_defaults=True)
        more = {k: v for k, v in data.items() if k not in COLUMNS}
        rows.append([getattr(run, c) for c in COLUMNS] + [json.dumps(more) if more else ""])
    return rows


def more_fields_help() -> str:
    """Markdown reference of the fields the `more` column takes: default and help text of each,
    straight from RunConfig, so the app never lists a field the contract does not have."""
    example = '{"select_best_by": "macro_f1", "early_stopping_patience": 3}'
    lines = [
        f"Any of these go in a row's **{MORE}** cell as JSON, e.g. `{example}`; a field left "
        "out keeps its default.",
        "",
        "| field | default | what it does |",
        "|---|---|---|",
    ]
    for name, field in RunConfig.model_fields.items():
        if name not in COLUMNS:
            default = json.dumps(field.get_default(call_default_factory=True))
            lines.append(f"| `{name}` | `{default}` | {field.description or ''} |")
    return "\n".join(lines)


def preset_rows(name: str) -> tuple[str, list[list]]:
    req = preset(name)
    return req.name, rows_from_request(req)


def blank_row(rows: list[list]) -> list:
    """A new row: tiny-bert on the default dataset with defaults and a fresh name."""
    taken = {str(r[0]) for r in rows}
    name = next(f"run-{i}" for i in range(1, len(rows) + 2) if f"run-{i}" not in taken)
    run = RunConfig(name=name)
    return [getattr(run, c) for c in COLUMNS] + [""]


def _empty(value) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def _number(value):
    """Whole floats become ints (the table's numbers are floats), so `16.0` fits `batch_size`."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def parse_rows(table: list[list]) -> tuple[list[Row], list[str]]:
    """Rows to dicts (blank cells mean the default), with problems in the JSON column."""
    rows, problems = [], []
    for i, cells in enumerate(table, start=1):
        cells = list(cells) + [""] * (len(HEADERS) - len(cells))
        if all(_empty(c) for c in cells):
            continue  # an empty row left at the end of the table
        values = {
            k: (_number(v) if DATATYPES[j] == "number" else str(v).strip())
            for j, (k, v) in enumerate(zip(COLUMNS, cells[: len(COLUMNS)], strict=True))
            if not _empty(v)
        }
        row = Row(i, values)
        more = cells[len(COLUMNS)]
        if not _empty(more):
            try:
                extra = json.loads(more)
            except json.JSONDecodeError as err:
                extra = None
                problems.append(f"{row.label}, {MORE}: not valid JSON ({err.msg})")
            if extra is not None and not isinstance(extra, dict):
                problems.append(f'{row.label}, {MORE}: must be a JSON object like {{"seed": 1}}')
            elif extra:
                values.update(extra)
        rows.append(row)
    return rows, problems


def _pydantic_problems(err: ValidationError, where) -> list[str]:
    found = []
    for e in err.errors():
        ctx = {k: f"{v:g}" if isinstance(v, float) else v for k, v in e.get("ctx", {}).items()}
        template = _LIMITS.get(e["type"])
        message = template.format(**ctx) if template else e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            message = "is not a configuration field"
        found.append(where(e["loc"], message))
    return found


def check_dataset(name: str, cfg: Settings) -> None:
    """Raise ConfigError unless `name` is a fetched built-in, a local path, or a hub id."""
    if name in BUILTINS:
        builtin_path(name, cfg.data_dir)
        return
    if resolve_local(name, cfg.local_roots) is not None:
        return
    offline = hub_offline_variable()
    renamed = renamed_builtin_error(name, offline)
    if renamed is not None:
        raise renamed
    known = (
        f"dataset: {name!r} is not a built-in ({', '.join(BUILTINS)}) nor a file under "
        f"{roots_text(cfg.local_roots)}"
    )
    if offline:
        raise ConfigError(
            f"{known}, and the Hugging Face Hub is offline ({offline}=1); pick "
            "a built-in or put the file under one of those folders"
        )
    if not is_hub_id(name):
        raise ConfigError(f"{known}, nor a valid Hugging Face Hub id (owner/name)")


def check_model(name: str, max_length, roots: list[Path]) -> None:
    """Raise ConfigError unless `name` resolves and `max_length` fits it (a config.json read at
    most: the catalog imports neither torch nor transformers)."""
    limit = describe_model(name, roots).max_length
    if isinstance(max_length, int):
        check_max_length(max_length, limit)


def _catalog_problems(row: Row, cfg: Settings) -> list[str]:
    """Dataset and model checks on the raw values, so they show even when other fields fail."""
    defaults = RunConfig.model_fields
    values = {k: row.values.get(k, defaults[k].default) for k in ("dataset", "model", "max_length")}
    checks = []
    if isinstance(values["dataset"], str) and values["dataset"]:
        checks.append(lambda: check_dataset(values["dataset"], cfg))
    if isinstance(values["model"], str) and values["model"]:
        checks.append(lambda: check_model(values["model"], values["max_length"], cfg.local_roots))
    found = []
    for check in checks:
        try:
            check()
        except ConfigError as err:
            found.append(f"{row.label}, {err}")
    return found


def validate(name: str, table: list[list], cfg: Settings) -> ExperimentRequest:
    """The request the table describes, or LaunchRefused listing every problem."""
    rows, problems = parse_rows(table)
    runs: list[RunConfig] = []
    for row in rows:
        try:
            runs.append(RunConfig(**row.values))
        except ValidationError as err:
            problems += _pydantic_problems(
                err, lambda loc, msg, row=row: f"{row.label}, {'.'.join(map(str, loc))}: {msg}"
            )
        problems += _catalog_problems(row, cfg)
    name = (name or "").strip()
    if len(runs) < len(rows):  # the rows' own problems come first; still check the name
        runs = [RunConfig(name="probe")]
    try:
        req = ExperimentRequest(name=name, runs=runs)
    except ValidationError as err:

        def where(loc, msg):
            dup = re.match(r"runs\[(\d+)\]\.name: (.*)", msg)
            if dup:
                return f"{rows[int(dup.group(1))].label}, name: {dup.group(2)}"
            return f"experiment {'.'.join(map(str, loc)) or 'runs'}: {msg}"

        problems += _pydantic_problems(err, where)
    if problems:
        raise LaunchRefused(problems)
    return req


def parse_launch_input(text: str, cfg: Settings) -> ExperimentRequest:
    """The API's input: a preset name, or an ExperimentRequest as JSON; checked like the table."""
    text = (text or "").strip()
    if not text.startswith("{"):
        try:
            req = preset(text)
        except ValueError as err:
            raise LaunchRefused([str(err)]) from None
        validate(req.name, rows_from_request(req), cfg)  # the catalog checks
        return req
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise LaunchRefused([f"experiment: not valid JSON ({err.msg})"]) from None
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise LaunchRefused(['experiment: expected {"name": ..., "runs": [{...}, ...]}'])
    unknown = set(data) - set(ExperimentRequest.model_fields)
    if unknown:
        raise LaunchRefused([f"experiment: unknown field(s) {', '.join(sorted(unknown))}"])
    bad = [i for i, r in enumerate(data["runs"], start=1) if not isinstance(r, dict)]
    if bad:
        raise LaunchRefused([f"row {i}: each run must be a JSON object" for i in bad])
    # JSON's NaN/Infinity would read as a blank table cell (the default): refuse them here.
    not_finite = [
        f"{where}, {key}: {_LIMITS['finite_number']}"
        for where, values in [("experiment", data)]
        + [(f"row {i}", r) for i, r in enumerate(data["runs"], start=1)]
        for key, value in values.items()
        if isinstance(value, float) and not math.isfinite(value)
    ]
    if not_finite:
        raise LaunchRefused(not_finite)
    table = [
        [r.get(c) for c in COLUMNS] + [json.dumps({k: v for k, v in r.items() if k not in COLUMNS})]
        for r in data["runs"]
    ]
    req = validate(data.get("name", ""), table, cfg)
    settings_fields = {k: v for k, v in data.items() if k not in ("name", "runs")}
    try:
        return ExperimentRequest(**{**req.model_dump(), **settings_fields})
    except ValidationError as err:
        raise LaunchRefused(
            _pydantic_problems(err, lambda loc, msg: f"experiment {'.'.join(map(str, loc))}: {msg}")
        ) from None

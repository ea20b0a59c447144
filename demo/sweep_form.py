"""The sweep form: its inputs <-> SweepRequest, and the problems a launch must not pass.

The page holds a sweep as a base configuration (JSON, any RunConfig field), a search-space table
(one row per searched field: either choices, comma-separated, or a range low/high with a scale),
and the search settings (sampler, trials, concurrency, η, min/max steps, metric, budgets). The
engine's SweepRequest does the checking; this module only turns the page's cells into its input
and its errors into lines that name the field ("space, learning_rate: low must be > 0"), so the
page never launches what the CLI would refuse. Nothing here loads data or weights.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from pydantic import ValidationError

from demo.configs import LaunchRefused, _catalog_problems, _pydantic_problems
from demo.configs import Row as TableRow
from orchestration.presets import sweep_preset
from orchestration.settings import Settings
from orchestration.sweep.types import Choice, Range, SweepRequest

SPACE_HEADERS = ["field", "choices", "low", "high", "scale"]
SPACE_DATATYPES: list = ["str", "str", "number", "number", "str"]
SCALES = ("uniform", "log", "int")


@dataclass(frozen=True)
class SweepForm:
    """What the page's sweep panel holds, cell by cell (numbers as Gradio gives them)."""

    name: str
    base: str  # a RunConfig as JSON; `name` may be left out
    space: list[list]  # rows of SPACE_HEADERS
    sampler: str = "tpe"
    n_trials: float | None = None
    max_concurrent: float | None = None
    eta: float | None = None
    min_steps: float | None = None
    max_steps: float | None = None
    metric: str | None = None
    sampler_seed: float | None = None
    budget_steps: float | None = None
    budget_seconds: float | None = None


def _blank(value) -> bool:
    return (
        value is None
        or (isinstance(value, str) and not value.strip())
        or (isinstance(value, float) and math.isnan(value))
    )


def _scalar(token: str) -> int | float | str:
    """A choice as typed: `16` an int, `1e-4` a float, anything else a string."""
    for kind in (int, float):
        try:
            return kind(token)
        except ValueError:
            pass
    return token


def _whole(value):
    """Gradio numbers arrive as floats; `8.0` is the int 8, blank is None (the default)."""
    if _blank(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def space_rows(space: dict) -> list[list]:
    """The table's rows for a search space (a preset's, or the last one launched)."""
    rows = []
    for field, domain in space.items():
        if isinstance(domain, Choice):
            rows.append([field, ", ".join(str(v) for v in domain.values), None, None, ""])
        else:
            rows.append([field, "", domain.low, domain.high, domain.scale])
    return rows


def parse_space(rows: list[list]) -> tuple[dict, list[str]]:
    """The table as SweepRequest's `space` input, and the problems of rows it cannot read."""
    space: dict = {}
    problems = []
    for i, cells in enumerate(rows or [], start=1):
        cells = list(cells) + [None] * (len(SPACE_HEADERS) - len(cells))
        field, choices, low, high, scale = cells[: len(SPACE_HEADERS)]
        if all(_blank(c) for c in (field, choices, low, high)):
            continue  # an empty row left at the end of the table
        field = "" if _blank(field) else str(field).strip()
        where = f"space row {i}" + (f" ({field})" if field else "")
        if not field:
            problems.append(f"{where}, field: name a configuration field, e.g. learning_rate")
            continue
        if field in space:
            problems.append(f"{where}, field: {field} is searched twice; keep one row for it")
            continue
        has_choices = not _blank(choices)
        has_range = not (_blank(low) and _blank(high))
        if has_choices == has_range:
            problems.append(
                f"{where}: give either choices (comma-separated) or a range (low and high), "
                "not " + ("both" if has_choices else "neither")
            )
            continue
        try:
            if has_choices:
                tokens = [t.strip() for t in str(choices).split(",") if t.strip()]
                space[field] = Choice(values=[_scalar(t) for t in tokens])
            else:
                space[field] = Range(
                    low=_whole(low),
                    high=_whole(high),
                    scale="uniform" if _blank(scale) else str(scale).strip(),
                )
        except ValidationError as err:
            problems += _pydantic_problems(err, lambda loc, msg, w=where: _in_row(w, loc, msg))
    return space, problems


def _in_row(where: str, loc: tuple, message: str) -> str:
    return f"{where}, {'.'.join(map(str, loc))}: {message}" if loc else f"{where}: {message}"


def parse_base(text: str) -> tuple[dict, list[str]]:
    """The base configuration's JSON as a dict (named `base` when it has no name: trials get
    their own names)."""
    text = (text or "").strip() or "{}"
    try:
        base = json.loads(text)
    except json.JSONDecodeError as err:
        return {}, [f"base: not valid JSON ({err.msg})"]
    if not isinstance(base, dict):
        return {}, ['base: must be a JSON object of configuration fields, e.g. {"model": ...}']
    base.setdefault("name", "base")
    return base, []


def base_problems(base: dict, cfg: Settings) -> list[str]:
    """The catalog's checks of the base (dataset and model exist, max_length fits the model),
    as the experiment table makes them for a row."""
    row = TableRow(0, base)
    return ["base, " + p.removeprefix(f"{row.label}, ") for p in _catalog_problems(row, cfg)]


def build_request(form: SweepForm, cfg: Settings) -> SweepRequest:
    """The SweepRequest the form describes, or LaunchRefused listing every problem, each naming
    its field: the page's own (unreadable JSON, a space row with both choices and a range),
    the catalog's (an unknown dataset or model in the base) and the engine's."""
    name = (form.name or "").strip()
    base, problems = parse_base(form.base)
    space, space_problems = parse_space(form.space)
    problems += space_problems
    if base:
        problems += base_problems(base, cfg)
    settings = {
        "sampler": form.sampler,
        "n_trials": _whole(form.n_trials),
        "max_concurrent": _whole(form.max_concurrent),
        "eta": _whole(form.eta),
        "min_steps": _whole(form.min_steps),
        "max_steps": _whole(form.max_steps),
        "metric": None if _blank(form.metric) else form.metric,
        "sampler_seed": _whole(form.sampler_seed),
        "budget_steps": _whole(form.budget_steps),
        "budget_seconds": _whole(form.budget_seconds),
    }
    given = {k: v for k, v in settings.items() if v is not None}
    try:
        req = SweepRequest(name=name, base=base, space=space, **given)
    except ValidationError as err:
        # Where the page has named the problem already, the engine would only say the field is
        # missing or short: keep the page's words.
        named = [f for f, bad in (("base", not base), ("space:", space_problems)) if bad]
        found = [p for p in _pydantic_problems(err, _where) if not p.startswith(tuple(named))]
        raise LaunchRefused(problems + found) from None
    if problems:
        raise LaunchRefused(problems)
    return req


def _where(loc: tuple, message: str) -> str:
    """`base, learning_rate: ...` from pydantic's location ('base', 'learning_rate')."""
    parts = [str(p) for p in loc]
    if not parts:  # a check of the whole request; its message names the field
        return message
    head, rest = parts[0], parts[1:]
    if head in ("space", "base") and rest:
        return f"{head}, {' '.join(rest)}: {message}"
    return f"{'.'.join(parts)}: {message}"


def form_from_request(req: SweepRequest) -> SweepForm:
    """The form's cells for a request (a preset's): base without defaults, the space as rows."""
    # What it trains and on what always shows; other fields only where they leave the default.
    base = {
        "model": req.base.model,
        "dataset": req.base.dataset,
        **req.base.model_dump(exclude_defaults=True),
    }
    return SweepForm(
        name=req.name,
        base=json.dumps(base, indent=1),
        space=space_rows(req.space),
        sampler=req.sampler,
        n_trials=req.n_trials,
        max_concurrent=req.max_concurrent,
        eta=req.eta,
        min_steps=req.min_steps,
        max_steps=req.max_steps,
        metric=req.metric,
        sampler_seed=req.sampler_seed,
        budget_steps=req.budget_steps,
        budget_seconds=req.budget_seconds,
    )


def parse_sweep_input(text: str, cfg: Settings) -> SweepRequest:
    """The API's input: a sweep preset's name, or a SweepRequest as JSON; checked like the
    form (the engine's checks, then the catalog's on the base)."""
    text = (text or "").strip()
    if not text.startswith("{"):
        try:
            req = sweep_preset(text)
        except ValueError as err:
            raise LaunchRefused([f"sweep: {err}, or give a sweep request as JSON"]) from None
    else:
        try:
            req = SweepRequest.model_validate_json(text)
        except ValidationError as err:
            raise LaunchRefused(_pydantic_problems(err, _where)) from None
    problems = base_problems(req.base.model_dump(), cfg)
    if problems:
        raise LaunchRefused(problems)
    return req

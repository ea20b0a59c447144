"""Registry aliases: an experiment's best configuration is `models:/<experiment>@champion`.

All configurations of an experiment register versions of one model named after it
(tracking.models.registered_model_name); when a launch ends, the coordinator's `set_champion`
activity points the alias `champion` at the version of its best configuration by the
experiment's selection metric. The app's Compare tab can point it at another configuration.
Setting an alias is idempotent, so a retried activity does no harm. Serving and inference take
`models:/<experiment>@champion` like any model URI and follow the alias when it moves.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from orchestration.types import RunResult, SelectionMetric
from tracking.client import TrackingError, client, filter_value
from tracking.models import TAG_CONFIG

CHAMPION = "champion"
LOWER_IS_BETTER = frozenset({"loss", "mse"})


@dataclass(frozen=True)
class AliasChoice:
    """A registered model's alias, as the try-inference picker lists it."""

    model_uri: str  # models:/<name>@<alias>
    name: str
    alias: str
    version: str
    config: str | None
    tags: dict[str, str]


def resolve_metric(metric: SelectionMetric, runs: Sequence[RunResult]) -> str:
    """`auto`: macro-F1 for classification, mse for regression (judged by which the runs'
    evaluations report); any other value as it is."""
    if metric != "auto":
        return metric
    evals = [r.eval for r in runs if r.eval is not None]
    regression = evals and all(e.mse is not None and e.macro_f1 is None for e in evals)
    return "mse" if regression else "macro_f1"


def best_run(runs: Sequence[RunResult], metric: SelectionMetric = "auto") -> RunResult | None:
    """The completed configuration with a registered version and the best value of `metric`
    (highest, or lowest for loss and mse); the first of equals, in the experiment's order."""
    key = resolve_metric(metric, runs)
    scored = [
        (getattr(r.eval, key), i, r)
        for i, r in enumerate(runs)
        if r.status == "completed"
        and r.eval is not None
        and getattr(r.eval, key) is not None
        and version_of(r.model_uri) is not None
    ]
    if not scored:
        return None
    sign = 1 if key in LOWER_IS_BETTER else -1
    return min(scored, key=lambda s: (sign * s[0], s[1]))[2]


def set_champion(
    tracking_uri: str, runs: Sequence[RunResult], metric: SelectionMetric = "auto"
) -> str | None:
    """Point `champion` at the best of `runs` (see best_run); its configuration's name, or
    None when no configuration has a registered version to point at."""
    best = best_run(runs, metric)
    if best is None or best.model_uri is None:
        return None
    set_alias(tracking_uri, best.model_uri, CHAMPION)
    return best.name


def version_of(model_uri: str | None) -> tuple[str, str] | None:
    """(name, version) of "models:/<name>/<version>"; None for any other URI."""
    match = re.fullmatch(r"models:/([^/@]+)/(\d+)", model_uri or "")
    return (match[1], match[2]) if match else None


def set_alias(tracking_uri: str, model_uri: str, alias: str = CHAMPION) -> str:
    """Point `alias` of the model of `model_uri` ("models:/<name>/<version>") at that version;
    returns "models:/<name>@<alias>". Idempotent."""
    found = version_of(model_uri)
    if found is None:
        raise TrackingError(
            f"model_uri: {model_uri!r} is not a registered version (models:/<name>/<version>)"
        )
    name, version = found
    client(tracking_uri).set_registered_model_alias(name, alias, version)
    return f"models:/{name}@{alias}"


def alias_version(tracking_uri: str, name: str, alias: str = CHAMPION) -> str | None:
    """The version `alias` of model `name` points at, or None (no such model or alias)."""
    model = _registered(tracking_uri, name)
    return None if model is None else model.aliases.get(alias)


def list_aliases(tracking_uri: str, max_models: int = 200) -> list[AliasChoice]:
    """Every alias of every registered model, most recently updated model first."""
    c = client(tracking_uri)
    models = c.search_registered_models(
        max_results=max_models, order_by=["last_updated_timestamp DESC"]
    )
    choices = []
    for model in models:
        for alias, version in sorted(model.aliases.items()):
            tags = dict(c.get_model_version(model.name, str(version)).tags)
            choices.append(
                AliasChoice(
                    model_uri=f"models:/{model.name}@{alias}",
                    name=model.name,
                    alias=alias,
                    version=str(version),
                    config=tags.get(TAG_CONFIG),
                    tags=tags,
                )
            )
    return choices


def _registered(tracking_uri: str, name: str):
    query = f"name = '{filter_value(name)}'"
    found = client(tracking_uri).search_registered_models(query, max_results=1)
    return found[0] if found else None

"""The process environment's private, offline defaults and the Hugging Face Hub rules, defined once.

Every entry point (workers, CLI, servers, app, bench, scripts, tests) gets these through
`apply_defaults()`, which the `orchestration` package runs when it is imported; a value the
user already set always wins. Nothing leaves the machine unless the user allows the Hub
(`HF_HUB_OFFLINE=0`) and then names a hub model or dataset.
"""

from __future__ import annotations

import os
import re

# Variables read by the libraries themselves (Hugging Face, MLflow, Gradio, Temporal's CLI).
DEFAULTS: dict[str, str] = {
    # Offline unless the user opts in: a hub name then fails fast with a clear message.
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # tqdm bars from loading/saving flood worker logs
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "TEMPORAL_VERSION_CHECK_DISABLED": "1",
    # Idle OpenMP threads sleep instead of spinning: with several runs (or other processes) on
    # few cores, spinning threads slowed training several-fold in bench/ (docs/performance.md).
    "OMP_WAIT_POLICY": "PASSIVE",
}
# The Hub's own datasets switch follows the Hub switch unless set on its own.
_FOLLOWS = {"HF_DATASETS_OFFLINE": "HF_HUB_OFFLINE"}
# huggingface_hub reads these variables as true when set to one of these (case-insensitive).
_TRUE = {"1", "true", "yes", "on"}
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")

# A Hugging Face Hub id: `name` or `owner/name`.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def apply_defaults() -> None:
    """Set every default the user has not set; idempotent."""
    for name, value in DEFAULTS.items():
        os.environ.setdefault(name, value)
    for name, source in _FOLLOWS.items():
        os.environ.setdefault(name, os.environ[source])


def hub_offline_variable(names: tuple[str, ...] = OFFLINE_VARIABLES) -> str | None:
    """The first of `names` that switches the Hub off, or None when the Hub is allowed."""
    return next((n for n in names if os.environ.get(n, "").strip().lower() in _TRUE), None)


def is_hub_id(name: str) -> bool:
    return HUB_ID.fullmatch(name) is not None

"""Durable parallel BERT fine-tuning on Temporal: types, workflows, activities, workers, CLI."""

import os

# Nothing leaves the machine unless the user asks for a hub model or dataset.
for _name, _value in {
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # tqdm bars from loading/saving flood worker logs
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "TEMPORAL_VERSION_CHECK_DISABLED": "1",
    # Idle OpenMP threads sleep instead of spinning: with several runs (or other processes) on
    # few cores, spinning threads slowed training several-fold in bench/ (docs/performance.md).
    "OMP_WAIT_POLICY": "PASSIVE",
}.items():
    os.environ.setdefault(_name, _value)

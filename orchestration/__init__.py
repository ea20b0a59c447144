"""Durable parallel BERT fine-tuning on Temporal: types, workflows, activities, workers, CLI."""

from orchestration.environment import apply_defaults

apply_defaults()

"""The ML core: data, models, training, evaluation and inference as plain functions.

Nothing here imports Temporal or MLflow, so every piece runs and is tested on its own; the
activities wrap these functions and wire their hooks to heartbeats and tracking.
"""

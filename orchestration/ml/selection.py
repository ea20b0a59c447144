"""Best-checkpoint selection and early stopping, on a validation split carved from training rows.

With `select_best_by` set, a run holds out `validation_fraction` of its training rows (the same
rows for every seed and configuration on one snapshot), evaluates on them every
`eval_every_steps`, saves a checkpoint whenever the score improves, stops after
`early_stopping_patience` evaluations without improvement, and publishes the best checkpoint's
weights. The snapshot's eval split is never looked at before the end: it stays the honest verdict.

Resuming must end exactly where an uninterrupted run ends, so the selection keeps no state of its
own: it is replayed from the Trainer's log history, which every checkpoint carries up to its own
step (evaluations are logged before the checkpoint of the same step is saved). Every decision is
therefore a function of the evaluations up to a step, whichever attempt made them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from transformers import TrainerCallback

from orchestration.ml.batching import RunTrainer
from orchestration.ml.errors import ConfigError
from orchestration.types import RunConfig

if TYPE_CHECKING:
    from orchestration.ml.remote_store import AnyStore

# Metric names of the in-training evaluations on the validation rows (validation_loss, ...):
# apart from eval_*, which MLflow keeps for the final verdict on the eval split.
VALIDATION_PREFIX = "validation"
# The carve's own seed: the same rows are held out whatever the run's seed, so configurations
# trained on one snapshot are selected on the same rows.
_CARVE_SEED = 20_240_601


def carve_validation(
    rows: dict[str, list], fraction: float
) -> tuple[dict[str, list], dict[str, list]]:
    """(training rows, validation rows): a seeded `fraction` of `rows` held out, order kept."""
    n = len(rows["label"])
    held = round(n * fraction)
    if held < 1 or held >= n:
        raise ConfigError(
            f"validation_fraction: {fraction:g} of {n} training rows leaves "
            f"{held} for validation and {n - held} for training; both need at least one row: "
            "use more training rows (max_train_samples) or another validation_fraction"
        )
    order = np.random.default_rng(_CARVE_SEED).permutation(n)
    is_held = np.zeros(n, dtype=bool)
    is_held[order[:held]] = True
    train = {k: [v for v, h in zip(col, is_held, strict=True) if not h] for k, col in rows.items()}
    held_out = {k: [v for v, h in zip(col, is_held, strict=True) if h] for k, col in rows.items()}
    return train, held_out


@dataclass
class Selection:
    """The best validation score so far, where it was, and how many evaluations since."""

    metric: str  # accuracy, macro_f1 or loss
    patience: int | None = None
    best_step: int | None = None
    best_value: float | None = None
    since_best: int = 0

    @property
    def key(self) -> str:
        return f"{VALIDATION_PREFIX}_{self.metric}"

    def record(self, step: int, value: float) -> bool:
        """Take the evaluation at `step`; True when it is the best so far (ties keep the older)."""
        lower_is_better = self.metric == "loss"
        if self.best_value is None or (
            value < self.best_value if lower_is_better else value > self.best_value
        ):
            self.best_step, self.best_value, self.since_best = step, value, 0
            return True
        self.since_best += 1
        return False

    @property
    def patience_ran_out(self) -> bool:
        return self.patience is not None and self.since_best >= self.patience

    def replay(self, history: Sequence[dict]) -> None:
        """Start over from the evaluations in a Trainer's log history (a resumed run's)."""
        self.best_step, self.best_value, self.since_best = None, None, 0
        for entry in history:
            if self.key in entry:
                self.record(int(entry["step"]), float(entry[self.key]))


class SelectionCallback(TrainerCallback):
    """Feeds each validation evaluation to a Selection: saves a checkpoint at a new best (the
    weights to publish), stops training once patience runs out."""

    def __init__(self, selection: Selection):
        self.selection = selection
        self.stopped_early = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.selection.replay(state.log_history)  # empty unless resumed

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not metrics or self.selection.key not in metrics:
            return
        if self.selection.record(state.global_step, float(metrics[self.selection.key])):
            control.should_save = True  # the Trainer saves right after evaluating
        if self.selection.patience_ran_out and state.global_step < state.max_steps:
            self.stopped_early = True
            control.should_training_stop = True


def selection_for(cfg: RunConfig, regression: bool) -> Selection | None:
    """The run's Selection, or None without select_best_by; ConfigError for a metric the task
    does not have (task_type "auto" is only known once the snapshot is read)."""
    if cfg.select_best_by is None:
        return None
    if regression and cfg.select_best_by != "loss":
        raise ConfigError(
            f"select_best_by: {cfg.select_best_by} needs a classification task, and this "
            "dataset's labels are numbers (regression); use loss"
        )
    return Selection(cfg.select_best_by, cfg.early_stopping_patience)


class ValidatingTrainer(RunTrainer):
    """A Trainer whose in-training evaluations score the validation rows, and say so in their
    metric names (validation_loss, ...): eval_* is the final verdict on the eval split."""

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix=VALIDATION_PREFIX):
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)


def best_checkpoint(store: AnyStore, run_key: str, step: int) -> str:
    """A local folder of the run's checkpoint at `step`: written here, or (a run resumed on
    another host) downloaded from the store. Rotation keeps it (`prune(protect=...)`)."""
    local = store.checkpoint_dir(run_key, step)
    if store.is_complete(str(local)):
        return str(local)
    for info in store.checkpoints(run_key):
        if info.step == step:
            return store.local_copy(info.uri)
    raise ConfigError(  # only if someone removed it by hand: no retry brings it back
        f"select_best_by: the best checkpoint (step {step}) of {run_key} is gone from the "
        "checkpoint store; launch the configuration again"
    )


def classification_metrics(prediction) -> dict[str, float]:
    """The Trainer's compute_metrics for in-training evaluations of a classifier. Macro-F1 as
    the final evaluation computes it (sklearn, every class, 0 for a class never seen nor
    predicted), in numpy: importing sklearn would cost every run process seconds at start."""
    labels, predicted = prediction.label_ids, np.argmax(prediction.predictions, axis=-1)
    f1 = []
    for c in range(prediction.predictions.shape[-1]):
        hits = np.sum((predicted == c) & (labels == c))
        misses = np.sum(predicted == c) + np.sum(labels == c) - 2 * hits
        f1.append(2 * hits / (2 * hits + misses) if hits + misses else 0.0)
    return {"accuracy": float(np.mean(predicted == labels)), "macro_f1": float(np.mean(f1))}


def regression_metrics(prediction) -> dict[str, float]:
    """The Trainer's compute_metrics for in-training evaluations of a regression."""
    errors = np.squeeze(prediction.predictions, axis=-1) - prediction.label_ids
    return {"mse": float(np.mean(errors**2))}

"""Fine-tune one configuration on one snapshot with the Hugging Face Trainer, resumably.

`train()` is a plain blocking function. The training worker runs each attempt in a process of
its own (`orchestration.ml.runner`), which wires `TrainingHooks` to events the worker relays as
heartbeats (progress, checkpoints), MLflow points (logs) and stop requests (`should_stop`: stop
at the next step end; `should_save_and_stop`: write a checkpoint at the current step first).
Resuming from a checkpoint gives the same weights as an uninterrupted run: the Trainer restores
optimizer, scheduler, RNG states and the data order, and every random draw we make ourselves
(model initialisation) comes from the run's seed. The recipe (schedule, warmup, weight decay,
gradient accumulation, max_steps) is the Trainer's own; best-checkpoint selection and early
stopping (`select_best_by`) live in `orchestration.ml.selection`, resumable the same way.

One process per run is what makes a run bit-for-bit reproducible: dropout draws from torch's
global RNG, which runs sharing a process would share. `train()` still works with several runs
in threads of one process (tests and scripts do that): accelerate keeps its state in
process-wide singletons that each Trainer resets on start-up, so `_isolate_accelerate_state`
gives each thread its own copy (accelerate's own mechanism for multithreaded TPU); such runs are
correct but their dropout draws interleave.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate.state import AcceleratorState, GradientState, PartialState, ThreadLocalSharedDict
from transformers import (
    DataCollatorWithPadding,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PrinterCallback,
    TrainerCallback,
    TrainingArguments,
)

from orchestration.ml.batching import RunTrainer
from orchestration.ml.errors import ConfigError
from orchestration.ml.models import load_for_training, resolve_device
from orchestration.ml.precision import PrecisionChoice, resolve_precision
from orchestration.ml.selection import (
    VALIDATION_PREFIX,
    Selection,
    SelectionCallback,
    ValidatingTrainer,
    best_checkpoint,
    carve_validation,
    classification_metrics,
    regression_metrics,
    selection_for,
)
from orchestration.ml.snapshot import load_snapshot
from orchestration.types import (
    CheckpointInfo,
    RunConfig,
    Snapshot,
    TrainingProgress,
    TrainingResult,
)

if TYPE_CHECKING:  # for annotations only: training itself never needs fsspec
    from orchestration.ml.remote_store import AnyStore

# Evaluation at the end of each epoch but the last is a progress signal, not the verdict
# (evaluate() in EvalWorkflow is): cap it so it never costs more than a few seconds of a CPU run.
EVAL_DURING_TRAINING_CAP = 1000
# Rows per evaluation batch (no gradients, rows sorted by length: bigger batches cost little).
EVAL_BATCH_SIZE = 64

log = logging.getLogger(__name__)


def _isolate_accelerate_state() -> None:
    for cls in (PartialState, AcceleratorState, GradientState):
        if not isinstance(cls.__dict__["_shared_state"], ThreadLocalSharedDict):
            cls._shared_state = ThreadLocalSharedDict()


_isolate_accelerate_state()


class TrainingStopped(Exception):
    """should_stop() asked training to stop; no final model was written."""

    def __init__(self, step: int, checkpoint: CheckpointInfo | None):
        super().__init__(f"training stopped on request at step {step}")
        self.step = step
        self.checkpoint = checkpoint


@dataclass
class TrainingHooks:
    """Optional callbacks, all called from the training thread; keep them cheap.

    Both stop checks are asked after every optimizer step. `should_stop`: stop there, keeping
    only the checkpoints already written (a cancel). `should_save_and_stop`: write a checkpoint
    at that step first, so a later attempt resumes with nothing lost (a worker shutting down).
    Either way train() raises TrainingStopped."""

    on_progress: Callable[[TrainingProgress], None] | None = None
    on_checkpoint: Callable[[CheckpointInfo], None] | None = None
    on_log: Callable[[int, dict[str, float]], None] | None = None
    should_stop: Callable[[], bool] | None = None
    should_save_and_stop: Callable[[], bool] | None = None


def read_snapshot(snapshot_path: str) -> tuple[Snapshot, dict[str, list], dict[str, list]]:
    """The snapshot's metadata and its train and eval rows as columns of plain lists."""
    snapshot, train_ds, eval_ds = load_snapshot(snapshot_path)
    return snapshot, train_ds.to_dict(), eval_ds.to_dict()


def encode(
    tokenizer: PreTrainedTokenizerBase, rows: dict[str, list], max_length: int, regression: bool
) -> list[dict]:
    """Tokenize rows into Trainer examples; padding is left to the collator (per batch)."""
    pairs = rows.get("text_pair")
    features = tokenizer(
        list(rows["text"]), list(pairs) if pairs else None, truncation=True, max_length=max_length
    )
    cast = float if regression else int
    return [
        {**{key: values[i] for key, values in features.items()}, "labels": cast(label)}
        for i, label in enumerate(rows["label"])
    ]


@dataclass
class _RunArguments(TrainingArguments):
    """TrainingArguments pinned to this run's device.

    The stock device setup takes cuda:0 and, with several GPUs, wraps the model in DataParallel
    over all of them. A run owns one GPU: select it for this thread only (the CUDA current
    device is per thread), so concurrent runs on other GPUs and the environment are untouched.
    """

    run_device: str = "cpu"

    @cached_property
    def _setup_devices(self) -> torch.device:
        device = super()._setup_devices
        pinned = torch.device(self.run_device)
        if pinned.type != "cuda":
            return device
        torch.cuda.set_device(pinned)
        self._n_gpu = 1
        return pinned


def _resume_point(store: AnyStore, path: str) -> CheckpointInfo:
    """The checkpoint to resume from; ConfigError unless it is complete."""
    info = store.info(path)
    if info is None:
        raise ConfigError(
            f"resume_from: {path!r} is not a complete checkpoint (no COMPLETE marker); "
            "resume from CheckpointStore.latest() instead"
        )
    return info


def _torch_rng(device: torch.device) -> tuple:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_torch_rng(device: torch.device, state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


class _HookCallback(TrainerCallback):
    """Marks and rotates checkpoints, and turns Trainer events into TrainingHooks calls."""

    def __init__(
        self,
        hooks: TrainingHooks,
        store: AnyStore,
        run_key: str,
        cfg: RunConfig,
        resumed: CheckpointInfo | None,
        precision: PrecisionChoice,
        selection: Selection | None = None,
        stop_at_step: int | None = None,
    ):
        self.hooks, self.store, self.run_key, self.cfg = hooks, store, run_key, cfg
        self.precision = precision
        self.selection = selection  # its best checkpoint survives rotation
        self.stop_at_step = stop_at_step
        self.stopped = False
        self.paused = False  # stopped at stop_at_step, checkpointed there
        self.checkpoint = resumed
        self.loss = resumed.loss if resumed else None  # the last logged training loss
        self._mark = (time.monotonic(), 0)
        self._rng_before_eval: tuple | None = None

    def _progress(self, state, samples_per_second: float | None = None) -> None:
        if self.hooks.on_progress:
            self.hooks.on_progress(
                TrainingProgress(
                    phase="training",
                    step=state.global_step,
                    total_steps=state.max_steps,
                    epoch=state.epoch or 0.0,
                    loss=self.loss,
                    samples_per_second=samples_per_second,
                    checkpoint=self.checkpoint,
                    precision=self.precision.precision,
                    precision_reason=self.precision.reason,
                )
            )

    def on_train_begin(self, args, state, control, **kwargs):
        self._mark = (time.monotonic(), state.global_step)
        self._progress(state)

    def on_step_end(self, args, state, control, **kwargs):
        if self.hooks.should_stop and self.hooks.should_stop():
            self.stopped = True
            control.should_training_stop = True
            control.should_evaluate = False  # nothing is saved after it: nobody would see it
        elif (
            state.global_step < state.max_steps  # the last step: the run ends normally anyway
            and self.hooks.should_save_and_stop
            and self.hooks.should_save_and_stop()
        ):
            self.stopped = True
            control.should_training_stop = True
            control.should_save = True  # the Trainer saves right after this, then leaves
            # A validation evaluation due at this step still runs, before the save: the
            # checkpoint must hold it, as the uninterrupted run's does.
        elif self.stop_at_step is not None and state.global_step == self.stop_at_step:
            # The same stop as a worker shutting down (bit-exact to continue from), asked for
            # in advance: a sweep's rung. The last step is no stop: the run ends normally.
            self.paused = state.global_step < state.max_steps
            control.should_training_stop |= self.paused
            control.should_save |= self.paused
        self._keep_rng_if_evaluating(args, control)

    def on_epoch_end(self, args, state, control, **kwargs):
        # Nobody looks at an evaluation of a cancelled run, and the last epoch's would only be
        # repeated on every eval row by EvalWorkflow right after: skip both.
        if self.stopped or state.global_step >= state.max_steps:
            control.should_evaluate = False
        self._keep_rng_if_evaluating(args, control)

    def _keep_rng_if_evaluating(self, args, control) -> None:
        if control.should_evaluate:
            self._rng_before_eval = _torch_rng(args.device)

    def on_evaluate(self, args, state, control, **kwargs):
        # Evaluating draws from the global RNG (each DataLoader iterator takes a seed). A run
        # resumed from the checkpoint saved just before this evaluation never replays it, so
        # undo the draws: evaluation must leave no trace in training, or resuming would diverge.
        if self._rng_before_eval is not None:
            _set_torch_rng(args.device, self._rng_before_eval)
            self._rng_before_eval = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        numbers = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float))}
        if self.hooks.on_log:
            self.hooks.on_log(state.global_step, numbers)
        if "loss" in numbers:
            self.loss = numbers["loss"]
            now, step = time.monotonic(), state.global_step
            then, last_step = self._mark
            rows = (step - last_step) * args.per_device_train_batch_size
            rate = rows * args.gradient_accumulation_steps / max(now - then, 1e-9)
            self._mark = (now, step)
            self._progress(state, rate if step > last_step else None)

    def on_save(self, args, state, control, **kwargs):
        self.checkpoint = self.store.mark_complete(
            self.run_key, state.global_step, state.epoch or 0.0, self.loss
        )
        best = self.selection.best_step if self.selection else None
        self.store.prune(self.run_key, self.cfg.keep_checkpoints, protect=best)
        if self.hooks.on_checkpoint:
            self.hooks.on_checkpoint(self.checkpoint)


def train(
    cfg: RunConfig,
    snapshot_path: str,
    store: AnyStore,
    run_key: str,
    hooks: TrainingHooks | None = None,
    resume_from: str | None = None,
    local_roots: Sequence[Path] = (),
    stop_at_step: int | None = None,
) -> TrainingResult:
    """Train `cfg` on the snapshot, checkpointing into `store`; resume from `resume_from` if set.

    Returns the published final model folder, or with `stop_at_step` before the schedule's end
    the checkpoint written there (stop_reason "rung"; a run resumed at that step returns it
    untrained). Raises TrainingStopped when hooks.should_stop() said so, ConfigError for
    configurations no retry can fix, and StorageError when the checkpoint store cannot take
    this run's checkpoints.
    """
    hooks = hooks or TrainingHooks()
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    log.info("run %s trains in %s (%s)", run_key, precision.precision, precision.reason)
    resumed = _resume_point(store, resume_from) if resume_from else None
    snapshot, train_rows, eval_rows = read_snapshot(snapshot_path)
    if stop_at_step is not None and resumed is not None and resumed.step >= stop_at_step:
        # Stopped there already (a retry after the rung's checkpoint was written).
        return _stopped_at(resumed, resume_from or "", stop_at_step, snapshot, precision)
    schema = snapshot.schema_
    model, tokenizer, _source = load_for_training(cfg, schema, local_roots)
    # Saved with the model (tokenizer_config.json): evaluation, inference and any Hugging Face or
    # MLflow loader then truncate where training did.
    tokenizer.model_max_length = cfg.max_length
    # A checkpoint holds the weights and AdamW's two moments: about three times the weights.
    store.ensure_writable(
        run_key, 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    )
    regression = schema.task_type == "regression"
    selection = selection_for(cfg, regression)
    if selection:  # select on rows carved from training, never on the eval split
        train_rows, eval_rows = carve_validation(train_rows, cfg.validation_fraction)
    else:  # epoch-end evaluations on the eval split: a progress signal, capped
        eval_rows = {column: rows[:EVAL_DURING_TRAINING_CAP] for column, rows in eval_rows.items()}
    train_set = encode(tokenizer, train_rows, cfg.max_length, regression)
    # Sorted by length (the Trainer evaluates in order): batches with little padding.
    eval_set = sorted(
        encode(tokenizer, eval_rows, cfg.max_length, regression),
        key=lambda row: len(row["input_ids"]),
    )
    if not train_set:
        raise ConfigError(f"dataset: snapshot {snapshot.snapshot_id} has no training rows")

    store.discard_after(run_key, resumed.step if resumed else 0)
    args = _RunArguments(
        output_dir=str(store.run_dir(run_key)),
        run_device=str(device),
        use_cpu=device.type == "cpu",
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=max(cfg.batch_size, EVAL_BATCH_SIZE),
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        warmup_steps=cfg.warmup_ratio,  # a value below 1 is a ratio of the total steps
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
        data_seed=cfg.data_seed,
        save_strategy="steps",
        save_steps=cfg.checkpoint_every_steps,
        save_total_limit=None,  # rotation happens after marking, in the store
        eval_strategy="steps" if selection else "epoch" if eval_set else "no",
        eval_steps=(cfg.eval_every_steps or cfg.checkpoint_every_steps) if selection else None,
        # About a hundred points per loss curve, and at most 50 steps between two of them.
        logging_steps=max(1, min(50, planned_steps(cfg, len(train_set)) // 100)),
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        bf16=precision.precision == "bf16",
        fp16=precision.precision == "fp16",
    )
    callback = _HookCallback(
        hooks, store, run_key, cfg, resumed, precision, selection, stop_at_step
    )
    selecting = SelectionCallback(selection) if selection else None
    trainer = (ValidatingTrainer if selection else RunTrainer)(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set or None,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=regression_metrics if regression else classification_metrics,
        callbacks=[callback, *([selecting] if selecting else [])],
    )
    trainer.remove_callback(PrinterCallback)  # logs go to the hooks, not to stdout
    started = time.monotonic()
    trainer.train(resume_from_checkpoint=resume_from)
    if callback.stopped:
        raise TrainingStopped(trainer.state.global_step, callback.checkpoint)
    if callback.paused:
        assert callback.checkpoint is not None  # saved at this very step
        return TrainingResult(
            model_uri=callback.checkpoint.uri,
            snapshot=snapshot,
            final_step=trainer.state.global_step,
            train_loss=callback.loss,
            train_seconds=time.monotonic() - started,
            stop_reason="rung",
            selected_step=selection.best_step if selection else None,
            selected_value=selection.best_value if selection else None,
            validation=validation_at(trainer.state.log_history, trainer.state.global_step),
            precision=precision.precision,
            precision_reason=precision.reason,
        )
    if selection and selection.best_step not in (None, trainer.state.global_step):
        trainer._load_from_checkpoint(best_checkpoint(store, run_key, selection.best_step))

    trained = trainer.model
    # The model built above, trained in place (no FSDP or DeepSpeed wrapping here).
    assert isinstance(trained, PreTrainedModel)

    def write_final(folder: Path) -> None:
        trained.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    final = store.publish_final(run_key, write_final)
    return TrainingResult(
        model_uri=str(final),
        snapshot=snapshot,
        final_step=trainer.state.global_step,
        train_loss=callback.loss,  # the same whether or not the run was resumed on the way
        train_seconds=time.monotonic() - started,
        stop_reason="early_stopping" if selecting and selecting.stopped_early else "done",
        selected_step=selection.best_step if selection else None,
        selected_value=selection.best_value if selection else None,
        validation=validation_at(trainer.state.log_history, trainer.state.global_step),
        precision=precision.precision,
        precision_reason=precision.reason,
    )


def validation_at(history: Sequence[dict], step: int) -> dict[str, float]:
    """The validation metrics logged at `step` (accuracy, macro_f1, loss...), by bare name;
    not the evaluation's timings, which no two runs share."""
    prefix = f"{VALIDATION_PREFIX}_"
    timings = ("runtime", "samples_per_second", "steps_per_second")
    return {
        key.removeprefix(prefix): float(value)
        for entry in history
        if entry.get("step") == step
        for key, value in entry.items()
        if key.startswith(prefix)
        and key.removeprefix(prefix) not in timings
        and isinstance(value, (int, float))
    }


def _stopped_at(
    resumed: CheckpointInfo,
    folder: str,
    stop_at_step: int,
    snapshot: Snapshot,
    precision: PrecisionChoice,
) -> TrainingResult:
    """The result of a run already stopped at `stop_at_step`, read from its checkpoint there."""
    if resumed.step != stop_at_step:
        raise ConfigError(
            f"stop_at_step: {stop_at_step} is before this run's newest checkpoint "
            f"(step {resumed.step}); a run only stops ahead of where it is"
        )
    history = json.loads((Path(folder) / "trainer_state.json").read_text())["log_history"]
    return TrainingResult(
        model_uri=resumed.uri,
        snapshot=snapshot,
        final_step=resumed.step,
        train_loss=resumed.loss,
        stop_reason="rung",
        validation=validation_at(history, resumed.step),
        precision=precision.precision,
        precision_reason=precision.reason,
    )


def planned_steps(cfg: RunConfig, train_rows: int) -> int:
    """Optimizer steps the run will take, as the Trainer counts them (early stopping aside)."""
    if cfg.max_steps:
        return cfg.max_steps
    batches = math.ceil(train_rows / cfg.batch_size)
    return math.ceil(math.ceil(batches / cfg.gradient_accumulation_steps) * cfg.epochs)

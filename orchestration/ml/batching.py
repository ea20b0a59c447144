"""Batches of rows of similar length, so little of each batch is padding.

Rows are padded per batch (dynamic padding), so a batch costs as much as its longest row times
its size. Short and long rows mixed at random waste most of that on padding; grouped by length,
training does the same work on far fewer tokens, and evaluation (whose order does not matter)
sorts its rows outright.

Training keeps some randomness and stays reproducible and resumable: `LengthGroupedSampler`
shuffles the rows with a generator seeded by (seed, epoch), then sorts each window of about 50
batches by length. The order depends on nothing but the seed and the epoch (not on torch's
global RNG, which dropout also draws from), so a run resumed mid-epoch replays exactly the batches
the uninterrupted run trained on.

`RunTrainer`, the Trainer every run trains with, also writes cheaper checkpoints than the stock
one (see its `_save_optimizer_and_scheduler`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils import serialization
from transformers import Trainer
from transformers.trainer_pt_utils import get_length_grouped_indices


class LengthGroupedSampler(torch.utils.data.Sampler[int]):
    """Row indices in length-grouped batches, shuffled per epoch from (seed, epoch) alone.

    The Trainer (through accelerate's data loader) calls `set_epoch` before each epoch, also on
    the epoch a resumed run starts in."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class RunTrainer(Trainer):
    """The Trainer every run trains with: batches grouped by length (`LengthGroupedSampler`,
    seeded with the run's data seed), and cheaper checkpoints (`_save_optimizer_and_scheduler`).
    """

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        """The optimizer state (AdamW's two moments: twice the weights, two thirds of a save),
        written without zip CRC32 checksums, and not at all at the run's last step.

        The checksums cost ~0.1 s of CPU per 180 MB (a fifth of a MiniLM save) and protect
        nothing here: `torch.load` does not verify them, and a checkpoint counts as written only
        once its `COMPLETE` marker is (checkpoints.py). No step follows the last one, so
        resuming from it (a worker lost before the result was recorded) needs the weights
        alone; the Trainer resumes without optimizer and scheduler states when their files are
        absent."""
        if self.state.global_step >= self.state.max_steps:
            return
        # config is a torch config module, typed as a plain module (no `patch` for mypy).
        with serialization.config.patch({"save.compute_crc32": False}):  # type: ignore[attr-defined]
            super()._save_optimizer_and_scheduler(output_dir)

    def _get_train_sampler(self, train_dataset=None) -> torch.utils.data.Sampler | None:
        rows = train_dataset if train_dataset is not None else self.train_dataset
        if rows is None:
            return None
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        lengths = [len(rows[i]["input_ids"]) for i in range(len(rows))]  # type: ignore[arg-type]
        # One optimizer step's rows are grouped together, as in Hugging Face's own sampler.
        per_step = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return LengthGroupedSampler(lengths, per_step, seed)


def by_length(lengths: Sequence[int]) -> np.ndarray:
    """Row indices shortest first (ties in their original order): the order to evaluate in."""
    return np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")

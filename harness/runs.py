"""Configurations shared by the system tests and the scripts: tiny-bert on real data, fast
enough for a loaded 2-core machine, and the bounds that go with them."""

from __future__ import annotations

from typing import Any

# tiny-bert on movie-snippets: a RunConfig's fields but name, epochs, samples and seed.
TINY: dict[str, Any] = dict(
    model="tiny-bert",
    dataset="movie-snippets",
    max_length=32,
    batch_size=16,
    max_eval_samples=64,
    checkpoint_every_steps=5,
    learning_rate=1e-3,
)

# A whole configuration but its name: 480 rows / 16 = 30 steps an epoch, 60 in all, a
# checkpoint every 10 steps; about 3 s of training.
SHORT: dict[str, Any] = {
    **TINY,
    "epochs": 2,
    "max_train_samples": 480,
    "checkpoint_every_steps": 10,
    "seed": 3,
}

# The heartbeat timeout of experiments whose workers get killed: a dead worker is noticed
# within 4 s.
HEARTBEAT_S = 4

# How long the smoke preset (two tiny-bert configurations of ~40 steps) may take end to end.
SMOKE_TIMEOUT_S = 400

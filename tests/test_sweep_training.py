"""Training to a rung and continuing: a run stopped at `stop_at_step` writes a checkpoint there,
reports its validation metrics at that step, and a run continued from it ends bit-identical to
the same configuration trained straight through (tiny-bert, the synthetic task, in process)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from harness.synthetic import config, write_snapshot
from orchestration.ml.checkpoints import CheckpointStore
from orchestration.ml.training import train

# 40 steps, a validation evaluation every 10 (the sweep's gcd of its rungs), fixed precision.
RUNG_CONFIG = dict(
    seed=4,
    precision="fp32",
    max_steps=40,
    select_best_by="accuracy",
    eval_every_steps=10,
    checkpoint_every_steps=20,
    keep_checkpoints=1,
)


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> str:
    return write_snapshot(tmp_path_factory.mktemp("snap") / "synthetic")


def _same_weights(a: str, b: str) -> bool:
    wa, wb = load_file(f"{a}/model.safetensors"), load_file(f"{b}/model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_stopping_at_rungs_and_continuing_is_the_straight_run(snapshot, tmp_path):
    store = CheckpointStore(tmp_path / "ckpt")
    cfg = config(**RUNG_CONFIG)
    straight = train(cfg, snapshot, store, "exp/straight")
    assert straight.stop_reason == "done" and straight.final_step == 40
    assert set(straight.validation) >= {"accuracy", "macro_f1", "loss"}

    key = "exp/rungs"
    first = train(cfg, snapshot, store, key, stop_at_step=10)
    assert (first.stop_reason, first.final_step) == ("rung", 10)
    latest = store.latest(key)
    assert latest is not None and latest.step == 10 and first.model_uri == latest.uri
    # Asked again (a retry after the checkpoint was written): the same answer, nothing trained.
    again = train(cfg, snapshot, store, key, resume_from=latest.uri, stop_at_step=10)
    assert (again.final_step, again.validation) == (10, first.validation)
    second = train(cfg, snapshot, store, key, resume_from=latest.uri, stop_at_step=30)
    assert (second.stop_reason, second.final_step) == ("rung", 30)
    resume = store.latest(key)
    assert resume is not None and resume.step == 30
    last = train(cfg, snapshot, store, key, resume_from=resume.uri, stop_at_step=40)
    assert (last.stop_reason, last.final_step) == ("done", 40)
    assert last.validation == straight.validation
    assert (last.selected_step, last.selected_value) == (
        straight.selected_step,
        straight.selected_value,
    )
    assert _same_weights(last.model_uri, straight.model_uri)

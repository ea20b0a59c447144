"""Security checks that belong with hostile input (docs/reliability.md, Security): no remote
code and no unsafe unpickling anywhere in the source or on the resume path, and every server
listening on loopback only."""

from __future__ import annotations

import re
from pathlib import Path

import psutil
import pytest
import torch

from harness.processes import AppProcess
from harness.runs import SHORT
from orchestration.ml.checkpoints import CheckpointStore
from orchestration.ml.snapshot import make_snapshot
from orchestration.ml.training import TrainingHooks, TrainingStopped, train
from orchestration.settings import REPO_ROOT
from orchestration.types import RunConfig

SOURCE_DIRS = ("orchestration", "tracking", "demo", "bench", "scripts")


def _sources() -> list[tuple[Path, str]]:
    return [(p, p.read_text()) for d in SOURCE_DIRS for p in sorted((REPO_ROOT / d).rglob("*.py"))]


def test_no_remote_code_and_no_unsafe_unpickling_in_the_source():
    found = _sources()
    assert len(found) > 20
    for path, text in found:
        assert not re.search(r"trust_remote_code\s*=\s*True", text), path
        assert not re.search(r"weights_only\s*=\s*False", text), path
        assert not re.search(r"\bpickle\.loads?\(", text), path
        for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in call.group(1), (path, call.group(0))


def test_resume_reads_checkpoints_safely(settings, tmp_path, monkeypatch):
    """Checkpoints and the final model hold safetensors weights, and resuming (the Trainer's
    optimizer, scheduler and RNG state) unpickles with weights_only=True only."""
    cfg = RunConfig(name="safe", **SHORT)
    snapshot = make_snapshot(cfg, settings.snapshot_dir, settings.data_dir, settings.local_roots)
    store = CheckpointStore(tmp_path)
    with pytest.raises(TrainingStopped) as stopped:
        train(
            cfg,
            snapshot.path,
            store,
            "exp/safe",
            TrainingHooks(should_stop=lambda: store.latest("exp/safe") is not None),
        )
    assert stopped.value.checkpoint is not None
    checkpoint = Path(stopped.value.checkpoint.uri)
    assert (checkpoint / "model.safetensors").is_file()
    assert not (checkpoint / "pytorch_model.bin").exists()
    loads = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        loads.append((str(args[0]), kwargs.get("weights_only")))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    result = train(cfg, snapshot.path, store, "exp/safe", resume_from=str(checkpoint))
    names = {Path(path).name for path, _ in loads}
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth"} <= names, loads
    assert all(safe is True for _, safe in loads), loads
    assert (Path(result.model_uri) / "model.safetensors").is_file()
    assert not list(Path(result.model_uri).glob("*.bin"))


def _listening(pid: int) -> set[str]:
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return {
        c.laddr.ip
        for p in procs
        for c in p.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }


def test_servers_listen_on_loopback_only(temporal_server, mlflow_server, settings, tmp_path):
    """Temporal, MLflow and the app (`python -m demo`, default address) accept connections
    from this machine only."""
    app = AppProcess(settings, tmp_path / "app.log")
    try:
        found = {
            "app": _listening(app.proc.pid),
            **{s.name: _listening(s.pid()) for s in (temporal_server, mlflow_server)},
        }
    finally:
        app.stop()
    for name, addresses in found.items():
        assert addresses and addresses <= {"127.0.0.1", "::1"}, (name, addresses)

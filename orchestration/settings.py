"""Configuration by environment, so the same code runs on a laptop and against a real cluster.

Every knob has a loopback/local default; `README.md` lists them. Read once per process through
`settings()`; tests build their own `Settings` to point at temporary folders.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(
        default_factory=lambda: Path(_env("BERTFLEET_DATA_DIR", str(REPO_ROOT / ".data")))
    )
    temporal_address: str = field(
        default_factory=lambda: _env("TEMPORAL_ADDRESS", "127.0.0.1:7233")
    )
    temporal_namespace: str = field(default_factory=lambda: _env("TEMPORAL_NAMESPACE", "default"))
    temporal_tls_cert: str = field(default_factory=lambda: _env("TEMPORAL_TLS_CERT", ""))
    temporal_tls_key: str = field(default_factory=lambda: _env("TEMPORAL_TLS_KEY", ""))
    temporal_tls_ca: str = field(default_factory=lambda: _env("TEMPORAL_TLS_CA", ""))
    temporal_api_key: str = field(default_factory=lambda: _env("TEMPORAL_API_KEY", ""))
    temporal_ui_url: str = field(
        default_factory=lambda: _env("TEMPORAL_UI_URL", "http://127.0.0.1:8233")
    )
    training_queue: str = field(
        default_factory=lambda: _env("BERTFLEET_TRAINING_QUEUE", "bert-training-task-queue")
    )
    eval_queue: str = field(
        default_factory=lambda: _env("BERTFLEET_EVAL_QUEUE", "bert-eval-task-queue")
    )
    max_concurrent_training: int = field(
        default_factory=lambda: int(_env("BERTFLEET_MAX_CONCURRENT_TRAINING", "2"))
    )
    checkpoint_store: str = field(default_factory=lambda: _env("BERTFLEET_CHECKPOINT_STORE", ""))
    # For an S3-compatible store other than AWS (MinIO, Ceph...); other fsspec backends take
    # their options from FSSPEC_<PROTOCOL>_<OPTION> variables (docs/deploy.md).
    s3_endpoint_url: str = field(default_factory=lambda: _env("BERTFLEET_S3_ENDPOINT_URL", ""))
    # Comma-separated devices, one training run per entry ("cuda:0,cuda:1"; repeat one to share
    # it). Empty: max_concurrent_training runs, each on its configuration's device.
    devices_env: str = field(default_factory=lambda: _env("BERTFLEET_DEVICES", ""))
    # Shown in training progress and as the Temporal worker identity.
    worker_name: str = field(
        default_factory=lambda: _env(
            "BERTFLEET_WORKER_NAME", f"{socket.gethostname()}:{os.getpid()}"
        )
    )
    mlflow_tracking_uri: str = field(
        default_factory=lambda: _env("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    )
    # Where a browser reaches MLflow, for links in the app; defaults to the tracking URI, which
    # in a container network (http://mlflow:5000) is not reachable from a browser.
    mlflow_ui_url_env: str = field(default_factory=lambda: _env("MLFLOW_UI_URL", ""))
    # Local datasets and models are read only from under these folders (os.pathsep-separated),
    # so a configuration cannot make a worker read arbitrary files.
    local_roots_env: str = field(default_factory=lambda: _env("BERTFLEET_LOCAL_ROOTS", ""))

    def as_env(self) -> dict[str, str]:
        """The environment that gives another process (a worker, the CLI) these settings."""
        env = {
            "BERTFLEET_DATA_DIR": str(self.data_dir),
            "TEMPORAL_ADDRESS": self.temporal_address,
            "TEMPORAL_NAMESPACE": self.temporal_namespace,
            "TEMPORAL_UI_URL": self.temporal_ui_url,
            "BERTFLEET_TRAINING_QUEUE": self.training_queue,
            "BERTFLEET_EVAL_QUEUE": self.eval_queue,
            "MLFLOW_TRACKING_URI": self.mlflow_tracking_uri,
            "MLFLOW_UI_URL": self.mlflow_ui_url_env,
            "BERTFLEET_MAX_CONCURRENT_TRAINING": str(self.max_concurrent_training),
            "BERTFLEET_LOCAL_ROOTS": self.local_roots_env,
            "BERTFLEET_CHECKPOINT_STORE": self.checkpoint_store,
            "BERTFLEET_S3_ENDPOINT_URL": self.s3_endpoint_url,
            "BERTFLEET_DEVICES": self.devices_env,
        }
        return {key: value for key, value in env.items() if value}

    @property
    def mlflow_ui_url(self) -> str:
        return (self.mlflow_ui_url_env or self.mlflow_tracking_uri).rstrip("/")

    @property
    def checkpoint_root(self) -> str:
        """Where checkpoints and final models live: a local path or an fsspec URI."""
        return self.checkpoint_store or str(self.data_dir / "checkpoints")

    @property
    def checkpoint_work_dir(self) -> Path:
        """Where runs train and downloads land when the checkpoint store is an object store."""
        return self.data_dir / "checkpoint-work"

    @property
    def checkpoint_store_options(self) -> dict:
        """fsspec options of the checkpoint store."""
        if self.s3_endpoint_url and self.checkpoint_root.startswith(("s3://", "s3a://")):
            return {"endpoint_url": self.s3_endpoint_url}
        return {}

    @property
    def device_slots(self) -> list[str]:
        """One entry per training run this worker takes at once: a device, or "auto" (the
        configuration's own device)."""
        if not self.devices_env:
            return ["auto"] * self.max_concurrent_training
        slots = [d.strip() for d in self.devices_env.split(",") if d.strip()]
        bad = [d for d in slots if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", d)]
        if bad or not slots:
            raise ValueError(
                f"BERTFLEET_DEVICES / --devices: {', '.join(bad) or 'no device'} is not a device; "
                "give a comma-separated list of cpu, mps, cuda or cuda:N (e.g. cuda:0,cuda:1)"
            )
        return slots

    @property
    def local_roots(self) -> list[Path]:
        if self.local_roots_env:
            return [
                Path(p).expanduser().resolve() for p in self.local_roots_env.split(os.pathsep) if p
            ]
        return [(self.data_dir / "local").resolve()]

    @property
    def snapshot_dir(self) -> Path:
        return self.data_dir / "snapshots"


_cached: Settings | None = None


def settings() -> Settings:
    global _cached
    if _cached is None:
        _cached = Settings()
    return _cached

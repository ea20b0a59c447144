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

from orchestration.timeouts import GRACEFUL_SHUTDOWN
from orchestration.versioning import build_id

# BERTFLEET_PROMOTE: when a worker's version becomes its deployment's current version.
PROMOTE_CHOICES = ("on-start", "manual")

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
    # Request-serving processes of the embedded MLflow server (`make up`): one answers a
    # machine's workers and app on loopback, and each more costs ~250 MB at idle.
    mlflow_server_workers: int = field(
        default_factory=lambda: int(_env("BERTFLEET_MLFLOW_WORKERS", "1"))
    )
    # Where a browser reaches MLflow, for links in the app; defaults to the tracking URI, which
    # in a container network (http://mlflow:5000) is not reachable from a browser.
    mlflow_ui_url_env: str = field(default_factory=lambda: _env("MLFLOW_UI_URL", ""))
    # Local datasets and models are read only from under these folders (os.pathsep-separated),
    # so a configuration cannot make a worker read arbitrary files.
    local_roots_env: str = field(default_factory=lambda: _env("BERTFLEET_LOCAL_ROOTS", ""))
    # CPU threads of each training run (torch intra-op, OpenMP, MKL). 0: the CPUs this worker
    # may use, whatever its concurrency: the thread count changes results in the last bits, so
    # it must not depend on how many runs share the worker (docs/reliability.md).
    threads_per_run_env: int = field(
        default_factory=lambda: int(_env("BERTFLEET_THREADS_PER_RUN", "0"))
    )
    # Resident memory one training run (its process) may use, e.g. "4G" or "1500M"; a run over
    # it is stopped with an out-of-memory error. Empty: no limit but the machine's.
    run_memory_limit_env: str = field(
        default_factory=lambda: _env("BERTFLEET_RUN_MEMORY_LIMIT", "")
    )
    # "1": deterministic GPU kernels (torch.use_deterministic_algorithms, a fixed cuBLAS
    # workspace); slower, and only needed on GPUs: CPU runs are bit-identical without it.
    deterministic: bool = field(
        default_factory=lambda: _env("BERTFLEET_DETERMINISTIC", "0") in ("1", "true", "yes")
    )
    # On Ctrl-C/SIGTERM, how long a worker waits for its running activities (training: finish
    # the step, write and upload a checkpoint) before cancelling them. Kubernetes'
    # terminationGracePeriodSeconds and systemd's TimeoutStopSec must exceed it (docs/deploy.md).
    graceful_shutdown_s: float = field(
        default_factory=lambda: float(
            _env("BERTFLEET_GRACEFUL_SHUTDOWN_S", str(GRACEFUL_SHUTDOWN.total_seconds()))
        )
    )
    # Run processes kept started and imported, ready for the next run: one per free slot by
    # default (-1); 0 starts each run's process when the run starts (seconds of imports).
    warm_processes_env: int = field(
        default_factory=lambda: int(_env("BERTFLEET_WARM_PROCESSES", "-1"))
    )

    # The Temporal worker deployment the workers belong to; "none": unversioned workers (a
    # server without worker versioning). docs/deploy.md, "Rolling upgrades".
    deployment_name: str = field(default_factory=lambda: _env("BERTFLEET_DEPLOYMENT", "bertfleet"))
    # This code's version in that deployment (BERTFLEET_BUILD_ID, or version + source hash).
    build_id: str = field(default_factory=build_id)
    # "on-start": a worker makes its version current as it starts (one machine: new experiments
    # go to the newest workers). "manual": only a deployment's first version becomes current by
    # itself; later ones with `python -m orchestration.deployment set-current` (fleets).
    promote: str = field(default_factory=lambda: _env("BERTFLEET_PROMOTE", "on-start"))

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
            "BERTFLEET_THREADS_PER_RUN": str(self.threads_per_run_env or ""),
            "BERTFLEET_RUN_MEMORY_LIMIT": self.run_memory_limit_env,
            "BERTFLEET_DETERMINISTIC": "1" if self.deterministic else "",
            "BERTFLEET_GRACEFUL_SHUTDOWN_S": (
                f"{self.graceful_shutdown_s:g}"
                if self.graceful_shutdown_s != GRACEFUL_SHUTDOWN.total_seconds()
                else ""
            ),
            "BERTFLEET_DEPLOYMENT": self.deployment_name,
            "BERTFLEET_BUILD_ID": self.build_id,
            "BERTFLEET_PROMOTE": self.promote,
            "BERTFLEET_WARM_PROCESSES": (
                str(self.warm_processes_env) if self.warm_processes_env >= 0 else ""
            ),
        }
        return {key: value for key, value in env.items() if value}

    @property
    def versioned(self) -> bool:
        """Whether the workers run as versions of a Temporal worker deployment."""
        if self.promote not in PROMOTE_CHOICES:
            raise ValueError(
                f"BERTFLEET_PROMOTE: {self.promote!r} is not a choice; give "
                + " or ".join(PROMOTE_CHOICES)
            )
        return self.deployment_name.lower() != "none"

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
    def threads_per_run(self) -> int:
        """CPU threads of each training run: BERTFLEET_THREADS_PER_RUN, or every CPU this
        process may run on (the same number whatever the worker's concurrency)."""
        if self.threads_per_run_env < 0:
            raise ValueError(
                f"BERTFLEET_THREADS_PER_RUN: {self.threads_per_run_env} is negative; give a "
                "number of threads, or 0 for every CPU of the worker"
            )
        return self.threads_per_run_env or available_cpus()

    @property
    def run_memory_limit(self) -> int | None:
        """BERTFLEET_RUN_MEMORY_LIMIT in bytes; None when unset."""
        return parse_bytes(self.run_memory_limit_env) if self.run_memory_limit_env else None

    @property
    def warm_processes(self) -> int:
        """Idle, imported run processes kept ready (at most one per free device slot)."""
        slots = len(self.device_slots)
        return slots if self.warm_processes_env < 0 else min(self.warm_processes_env, slots)

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


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_bytes(text: str) -> int:
    """ "4G", "1500M", "512MiB", "2.5GB" or a plain number of bytes -> bytes (binary units)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(
            f"BERTFLEET_RUN_MEMORY_LIMIT: {text!r} is not an amount of memory; give e.g. 4G, "
            "1500M or a number of bytes"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_cached: Settings | None = None


def settings() -> Settings:
    global _cached
    if _cached is None:
        _cached = Settings()
    return _cached

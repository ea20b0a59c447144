"""The deployment of deploy/compose.yaml, shaped on one machine: MLflow on PostgreSQL with its
artifacts in an S3-compatible store (moto standing in for MinIO), the same bucket as the
checkpoint store, Temporal, two training workers that share nothing but the servers (a data
dir each, like two hosts), the eval worker and the app.

Every process runs with its compose service's own command and environment (harness.compose),
the service names pointed at loopback ports. Two parts differ from the file, by necessity:
Temporal is the dev server (SQLite) rather than the server on PostgreSQL, and the buckets are
made through the S3 API rather than by MinIO's `mc`. `start_servers()` and `start_processes()`
record how long each part took to come up (`figures`), for docs/deploy.md.
"""

from __future__ import annotations

import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3

from harness.compose import Loopback, read_env_file, services
from harness.postgres import PostgresServer
from harness.processes import AppProcess, ChildProcess, WorkerProcess, serving
from harness.servers import make_data_dir, s3_server, temporal_server
from orchestration.servers import TemporalServer, free_port
from orchestration.settings import Settings

VENV_BIN = Path(sys.executable).parent
TRAINING_HOSTS = ("host-a", "host-b")


@contextmanager
def _environ(env: dict[str, str]) -> Any:
    """os.environ with `env` on top for the block (Settings reads it when built)."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _end(process: ChildProcess) -> None:
    """Stop a process and whatever it started (MLflow's uvicorn workers)."""
    tree = process.tree()
    process.stop()
    for leftover in tree[1:]:
        if leftover.is_running():
            leftover.kill()


class ProductionStack:
    """The whole stack in `folder`: `start_servers()` brings up the servers,
    `start_processes()` the workers and the app; `stop()` takes it all down."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.variables = read_env_file()
        self.postgres = PostgresServer(password=self.variables["MLFLOW_DB_PASSWORD"])
        self.temporal: TemporalServer = temporal_server(folder / "temporal")
        self.s3_port, self.mlflow_port = free_port(), free_port()
        self.loopback = Loopback(
            temporal=self.temporal.address,
            mlflow=f"http://127.0.0.1:{self.mlflow_port}",
            s3=f"http://127.0.0.1:{self.s3_port}",
            postgres=f"127.0.0.1:{self.postgres.port}",
        )
        # What an operator writes into deploy/.env: the browser-facing links of this machine.
        self.variables |= {
            "TEMPORAL_UI_URL": self.temporal.ui_url,
            "MLFLOW_UI_URL": self.loopback.mlflow,
        }
        self.services = services(self.variables)
        self.figures: dict[str, float] = {}
        self.processes: list[ChildProcess] = []
        self.training: dict[str, WorkerProcess] = {}
        self.app: AppProcess | None = None

    # --- what the tests read -----------------------------------------------------------------
    def env(self, service: str) -> dict[str, str]:
        """The environment of a compose service, pointed at this machine's stand-ins."""
        return self.loopback.environment(self.services[service])

    def settings(self, name: str = "client") -> Settings:
        """Settings as a process with the app's environment reads them, data dir of its own."""
        with _environ(self.env("app")):
            return Settings(data_dir=self.folder / name)

    @property
    def buckets(self) -> list[str]:
        """The buckets the compose file's `buckets` service makes (`mc mb store/NAME`)."""
        return re.findall(r"store/(\S+)", " ".join(self.services["buckets"]["command"]))

    @property
    def artifact_bucket(self) -> str:
        """The bucket of MLflow's `--artifacts-destination`."""
        flag = "--artifacts-destination="
        (destination,) = (a for a in self.services["mlflow"]["command"] if a.startswith(flag))
        return destination.removeprefix(flag).removeprefix("s3://").split("/")[0]

    @property
    def checkpoint_bucket(self) -> str:
        """The bucket of the workers' BERTFLEET_CHECKPOINT_STORE."""
        store = self.env("training-worker-cpu")["BERTFLEET_CHECKPOINT_STORE"]
        return store.removeprefix("s3://").split("/")[0]

    def s3(self) -> Any:
        """A boto3 S3 client of the object store, with the stack's credentials."""
        env = self.env("mlflow")
        return boto3.client(
            "s3",
            endpoint_url=self.loopback.s3,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_DEFAULT_REGION"],
        )

    @property
    def app_auth(self) -> tuple[str, str]:
        user, password = self.env("app")["BERTFLEET_APP_AUTH"].split(",")[0].split(":", 1)
        return user, password

    # --- lifecycle ---------------------------------------------------------------------------
    def _timed(self, name: str, start: Any) -> Any:
        began = time.monotonic()
        result = start()
        self.figures[name] = time.monotonic() - began
        return result

    def start_servers(self) -> None:
        """PostgreSQL, the S3 server, Temporal, the buckets and MLflow."""
        began = time.monotonic()
        with ThreadPoolExecutor(3) as pool:  # no dependencies between these three
            started = [
                pool.submit(self._timed, "postgres", self.postgres.start),
                pool.submit(self._timed, "s3", self._start_s3),
                pool.submit(self._timed, "temporal", lambda: self.temporal.start(wait_s=90)),
            ]
            for future in started:
                future.result()
        self._timed("buckets", self._make_buckets)
        self._timed("mlflow", self._start_mlflow)
        self.figures["servers"] = time.monotonic() - began

    def start_processes(self) -> None:
        """The two training workers and the eval worker side by side, then the app (four
        Python processes importing at once on two cores starve the app's bounded start)."""
        began = time.monotonic()
        with ThreadPoolExecutor(3) as pool:  # the workers only need the servers
            parts = [
                *(
                    pool.submit(self._timed, host, lambda h=host: self.start_training(h))
                    for host in TRAINING_HOSTS
                ),
                pool.submit(self._timed, "eval", self._start_eval),
            ]
            for future in parts:
                future.result()
        self._timed("app", self._start_app)
        self.figures["processes"] = time.monotonic() - began

    def _start_s3(self) -> None:
        self.processes.append(s3_server(self.s3_port, self.folder / "s3.log"))

    def _make_buckets(self) -> None:
        client = self.s3()
        for bucket in self.buckets:
            client.create_bucket(Bucket=bucket)

    def _start_mlflow(self) -> None:
        """The compose file's `mlflow server` command, on a loopback port."""
        command = [self.loopback.rewrite(arg) for arg in self.services["mlflow"]["command"]]
        command[0] = str(VENV_BIN / command[0])
        for i, arg in enumerate(command):
            if arg.startswith(("--port=", "--allowed-hosts=")):
                command[i] = arg.replace("5000", str(self.mlflow_port))
        self.processes.append(
            ChildProcess(
                command,
                what="the MLflow server",
                ready=lambda: serving(f"{self.loopback.mlflow}/health"),
                log=self.folder / "mlflow.log",
                env={**os.environ, **self.env("mlflow")},
                timeout_s=120,
            )
        )

    def _host(self, name: str) -> Settings:
        data = make_data_dir(self.folder / name)
        return Settings(data_dir=data, local_roots_env=str(data / "local"))

    def start_training(self, host: str) -> WorkerProcess:
        """A CPU training worker (the `training-worker-cpu` service) on a host of its own."""
        env = {**self.env("training-worker-cpu"), "BERTFLEET_WORKER_NAME": host}
        worker = WorkerProcess(self._host(host), "training", self.folder / f"{host}.log", env=env)
        self.training[host] = worker
        self.processes.append(worker)
        return worker

    def _start_eval(self) -> None:
        env = {**self.env("eval-worker"), "BERTFLEET_WORKER_NAME": "eval-host"}
        self.processes.append(
            WorkerProcess(self._host("eval-host"), "eval", self.folder / "eval.log", env=env)
        )

    def _start_app(self) -> None:
        env = self.env("app")
        auth = env.pop("BERTFLEET_APP_AUTH")
        self.app = AppProcess(self._host("app-host"), self.folder / "app.log", auth, env=env)
        self.processes.append(self.app)

    def stop(self) -> None:
        """Everything down, the last started first; the PostgreSQL folder removed."""
        for process in reversed(self.processes):
            _end(process)
        self.temporal.stop()
        self.postgres.stop()

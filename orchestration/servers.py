"""The embedded servers: a Temporal dev server and an MLflow tracking server, loopback only.

`make up` / `make down` call the CLI below; tests, benchmarks and scripts start their own
instances on free ports in temporary folders through the same classes (harness.servers), so
what they exercise is what users run.
State lives in SQLite files under the data dir, so both survive a restart.

    python -m orchestration.servers up|down|status
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from orchestration.search import registration_args
from orchestration.settings import REPO_ROOT, settings

VENV_BIN = Path(sys.executable).parent
# On top of the private defaults every process gets (orchestration.environment).
SERVER_ENV = {
    # MLflow's job runner spawns extra processes; we have no use for it and it costs memory.
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


@dataclass(kw_only=True)
class _Server:
    """A background process with a pid file, a log file and a health check."""

    name: str
    data_dir: Path
    port: int

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "run" / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "logs" / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def healthy(self) -> bool:
        raise NotImplementedError

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def start(self, wait_s: float = 90.0) -> None:
        """Start in its own process group (so `down` stops its children) and wait until healthy."""
        if self.healthy():
            return
        if port_open(self.port):
            raise RuntimeError(f"{self.name}: port {self.port} is taken by another process")
        for folder in (self.pid_file.parent, self.log_file.parent):
            folder.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **SERVER_ENV},
                cwd=REPO_ROOT,  # where `python -m orchestration...` finds the package
                start_new_session=True,
            )
        self.pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {proc.returncode}; see {self.log_file}"
                )
            if self.healthy():
                return
            time.sleep(0.3)
        raise TimeoutError(f"{self.name} not healthy after {wait_s:.0f}s; see {self.log_file}")

    def stop(self, wait_s: float = 20.0) -> None:
        pid = self.pid()
        if pid is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and self.pid() is not None:
                time.sleep(0.2)
                _reap(pid)
            if self.pid() is None:
                break
        self.pid_file.unlink(missing_ok=True)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# The history service hands new workflow tasks to matching by reading its transfer queue, at
# most this many reads a second (Temporal's default is 20). At the default, back-to-back
# predictions queue behind that limit: ~50 ms per workflow task instead of ~1 ms
# (docs/performance.md, "Warm inference"). Reads are cheap on the dev server's SQLite.
DYNAMIC_CONFIG = {"history.transferProcessorMaxPollRPS": 1000}


@dataclass(kw_only=True)
class TemporalServer(_Server):
    name: str = "temporal"
    ui_port: int = 8233

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    def command(self) -> list[str]:
        return [
            str(VENV_BIN / "temporal"),
            "server",
            "start-dev",
            "--ip",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--ui-port",
            str(self.ui_port),
            "--db-filename",
            str(self.data_dir / "temporal.db"),
            "--ui-disable-news-fetch",
            "--log-level",
            "warn",
            # The custom search attributes the workflows set (a no-op once registered).
            *registration_args(),
            *(
                arg
                for key, value in DYNAMIC_CONFIG.items()
                for arg in ("--dynamic-config-value", f"{key}={value}")
            ),
        ]

    def healthy(self) -> bool:
        if not port_open(self.port):
            return False
        check = subprocess.run(
            [
                str(VENV_BIN / "temporal"),
                "operator",
                "cluster",
                "health",
                "--address",
                self.address,
            ],
            capture_output=True,
            text=True,
            env={**os.environ, **SERVER_ENV},
            timeout=20,
        )
        return check.returncode == 0 and "SERVING" in check.stdout


@dataclass(kw_only=True)
class MlflowServer(_Server):
    name: str = "mlflow"
    workers: int = 1  # uvicorn processes serving requests (BERTFLEET_MLFLOW_WORKERS)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable,  # `mlflow server` in one process (orchestration.mlflow_server)
            "-m",
            "orchestration.mlflow_server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--backend-store-uri",
            f"sqlite:///{self.data_dir / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.data_dir / "mlartifacts"),
            "--workers",
            str(self.workers),
        ]

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False


def default_servers() -> list[_Server]:
    data_dir = settings().data_dir
    temporal_port = int(settings().temporal_address.rsplit(":", 1)[-1])
    mlflow_port = int(settings().mlflow_tracking_uri.rstrip("/").rsplit(":", 1)[-1])
    return [
        TemporalServer(data_dir=data_dir, port=temporal_port),
        MlflowServer(data_dir=data_dir, port=mlflow_port, workers=settings().mlflow_server_workers),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down", "status"])
    args = parser.parse_args()
    for server in default_servers():
        if args.action == "up":
            server.start()
        elif args.action == "down":
            server.stop()
        where = getattr(server, "ui_url", None) or getattr(server, "url", "")
        state = "healthy" if server.healthy() else "stopped"
        print(f"{server.name:9s} {state:8s} port {server.port}  {where}  (log: {server.log_file})")


if __name__ == "__main__":
    main()

"""Child processes: a worker of one role, the app, or any command that says when it is ready,
started in the repo root with a Settings' environment and its output in a log file.

Start-up is awaited on the event itself (the worker's "polling" line, the app's page, a port)
with a bound; a process that exits or times out first fails with the tail of its log. `kill()`
is a machine dying (SIGKILL, no clean-up); `stop()` a graceful stop (SIGTERM, SIGKILL after a
bound). `died` tells a process that exited unasked from one that was killed or stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import psutil

from harness.polling import poll
from orchestration.servers import free_port
from orchestration.settings import REPO_ROOT, Settings

T = TypeVar("T")

WORKER_MODULE = "orchestration.workers"
# What orchestration.workers prints once the worker polls its task queue.
WORKER_READY = "polling"


def settings_env(cfg: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes a subprocess (worker, app, CLI) use the settings `cfg`."""
    return {**os.environ, **cfg.as_env(), "PYTHONUNBUFFERED": "1", **extra}


class ChildProcess:
    """`command`, started and awaited until `ready()` (at most `timeout_s`)."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        what: str,
        ready: Callable[[], bool],
        log: Path | None = None,
        env: dict[str, str] | None = None,
        timeout_s: float = 180,
    ) -> None:
        self.what, self.log = what, log
        self.stopped = False  # set by kill() and stop(): the process ended on purpose
        began = time.monotonic()
        with open(log or os.devnull, "ab") as out:
            self.proc = subprocess.Popen(
                list(command), cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            poll(
                lambda: self.proc.poll() is not None or ready(),
                timeout_s,
                f"{what} to start",
                interval_s=0.1,  # start_s is a figure the bench reports
            )
        except TimeoutError as err:
            self.kill()
            raise TimeoutError(f"{err}; its log:\n{self.log_tail()}") from None
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"{what} exited with {self.proc.returncode} while starting; its log:\n"
                + self.log_tail()
            )
        self.start_s = time.monotonic() - began  # from spawn until ready

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def died(self) -> bool:
        """True when the process has exited without being killed or stopped."""
        return not self.stopped and self.proc.poll() is not None

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log else "(not logged)"

    def kill(self) -> None:
        """SIGKILL to the process and its descendants (a worker's run processes) at once, like
        a machine dying: no signal handler, no clean-up."""
        self.stopped = True
        for p in self.tree():
            try:
                p.kill()
            except psutil.Error:
                continue
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self, wait_s: float = 30) -> None:
        """SIGTERM, and SIGKILL if the process has not exited within `wait_s`."""
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=wait_s)

    def interrupt(self, wait_s: float = 60) -> None:
        """Ctrl-C: SIGINT, and wait for the process to exit on its own."""
        self.stopped = True
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=wait_s)

    def tree(self) -> list[psutil.Process]:
        """The process and its descendants (a worker's run processes), those still alive."""
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def tree_rss(self) -> int:
        """Resident bytes of the process and its descendants."""
        total = 0
        for p in self.tree():
            try:
                total += p.memory_info().rss
            except psutil.Error:
                continue
        return total

    def settle(self, timeout_s: float = 120.0) -> None:
        """Wait until the process tree's memory stops growing (a worker's warm run processes
        done importing), so an idle figure is idle: two readings a second apart within 1 %."""
        previous = [-1]

        def steady() -> bool:
            now, before = self.tree_rss(), previous[0]
            previous[0] = now
            return abs(now - before) < 0.01 * now

        poll(steady, timeout_s, f"{self.what}'s memory to settle", interval_s=1.0)

    def frozen(self) -> bool:
        """True once every thread of the process, or of one of its descendants (a worker's
        run process), is stopped (SIGSTOP)."""
        return any(_stopped(p.pid) for p in self.tree())


def _stopped(pid: int) -> bool:
    try:
        stats = [p.read_text() for p in Path(f"/proc/{pid}/task").glob("*/stat")]
    except OSError:
        return False
    return bool(stats) and all(s.rsplit(")", 1)[1].split()[0] in "Tt" for s in stats)


class WorkerProcess(ChildProcess):
    """`python -m orchestration.workers --role ROLE ARGS` with `cfg`'s settings (and `env` on
    top), ready once it polls its task queue. `module` runs a wrapper of the worker instead
    (bench.worker, harness.fault_worker), which takes the same flags. The start-up bound only
    catches a hang (an exit is noticed at once), so it is generous: six workers starting side by
    side took over 3 minutes on two cores at a load of 20."""

    def __init__(
        self,
        cfg: Settings,
        role: str,
        log: Path,
        *,
        module: str = WORKER_MODULE,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        timeout_s: float = 300,
    ) -> None:
        self.role = role
        super().__init__(
            [sys.executable, "-m", module, "--role", role, *args],
            what=f"the {role} worker",
            ready=lambda: WORKER_READY in log.read_text(errors="replace"),
            log=log,
            env=settings_env(cfg, **(env or {})),
            timeout_s=timeout_s,
        )


def serving(url: str) -> bool:
    """True once `url` answers 200 (a server that is up and healthy)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


class AppProcess(ChildProcess):
    """The Gradio app (`python -m demo`) on a free port with `cfg`'s settings (and `env` on
    top), behind a login when `auth` is "user:password"; ready once its page answers."""

    def __init__(
        self, cfg: Settings, log: Path, auth: str = "", env: dict[str, str] | None = None
    ) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/"
        super().__init__(
            [sys.executable, "-m", "demo"],
            what="the app",
            ready=lambda: serving(self.url),
            log=log,
            env=settings_env(
                cfg, **{**(env or {}), "GRADIO_SERVER_PORT": str(port), "BERTFLEET_APP_AUTH": auth}
            ),
            timeout_s=180,
        )


class ModelServer(ChildProcess):
    """`mlflow models serve` of `model_uri` with `--env-manager local` (this interpreter's
    packages, nothing installed) on a free loopback port; ready once `/ping` answers. The
    interpreter's bin folder goes first on PATH: MLflow starts `uvicorn` from there."""

    def __init__(self, tracking_uri: str, model_uri: str, log: Path) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        mlflow = Path(sys.executable).with_name("mlflow")
        super().__init__(
            [str(mlflow), "models", "serve", "-m", model_uri, "--env-manager", "local"]
            + ["-h", "127.0.0.1", "-p", str(port), "-w", "1"],
            what=f"mlflow models serve {model_uri}",
            ready=lambda: serving(f"{self.url}/ping"),
            log=log,
            env={
                **os.environ,
                "PATH": f"{mlflow.parent}{os.pathsep}{os.environ.get('PATH', '')}",
                "MLFLOW_TRACKING_URI": tracking_uri,
                "PYTHONUNBUFFERED": "1",
            },
            timeout_s=120,
        )


def starter(cfg: Settings, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m orchestration.starter ARGS` with `cfg`'s settings, run to its end."""
    return subprocess.run(
        [sys.executable, "-m", "orchestration.starter", *args],
        cwd=REPO_ROOT,
        env=settings_env(cfg),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def start_together(*starts: Callable[[], T]) -> list[T]:
    """Calls each start-up in `starts` (each returns once its process is ready) side by side and
    returns what they returned, in order: a test's workers and app are up in about the time of
    the slowest rather than the sum. Every start-up runs to its end before the first failure,
    if any, is raised, so nothing is left starting unowned."""
    with ThreadPoolExecutor(len(starts)) as pool:
        futures = [pool.submit(start) for start in starts]
    return [future.result() for future in futures]

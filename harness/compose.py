"""deploy/compose.yaml read the way `docker compose` reads it, so the production-shaped test
stack (harness.stack) runs each service with the file's own command and environment rather
than a copy that could drift from it.

`services(variables)` interpolates `${NAME}`, `${NAME:-default}`, `${NAME-default}`,
`${NAME:?message}` and `${NAME?message}` (Compose's syntax) from `variables` (by default
deploy/.env.example) and resolves the file's YAML anchors and merge keys. `Loopback` then
swaps the service names the containers use (temporal:7233, http://mlflow:5000,
http://minio:9000, mlflow-db:5432, 0.0.0.0) for the loopback addresses of this machine's
stand-ins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from orchestration.settings import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "deploy" / "compose.yaml"
ENV_EXAMPLE = REPO_ROOT / "deploy" / ".env.example"

_VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def read_env_file(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    """KEY=VALUE lines of a Compose env file; comments and blank lines skipped."""
    pairs = (
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    )
    return {key.strip(): value.strip() for key, value in pairs}


def interpolate(text: str, variables: dict[str, str]) -> str:
    """`text` with Compose's variable references replaced; a required variable that is unset
    raises KeyError with the file's own message."""

    def value(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2), match.group(3) or ""
        found = variables.get(name)
        missing = found is None or (operator is not None and operator.startswith(":") and not found)
        if not missing:
            return found or ""
        if operator and operator.endswith("?"):
            raise KeyError(f"{name}: {argument or 'required'}")
        return argument if operator else ""

    return _VARIABLE.sub(value, text.replace("$$", "\0")).replace("\0", "$")


def _interpolated(node: Any, variables: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, list):
        return [_interpolated(item, variables) for item in node]
    if isinstance(node, dict):
        return {key: _interpolated(value, variables) for key, value in node.items()}
    return node


def services(variables: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """The compose file's services, interpolated (anchors and merge keys resolved by YAML)."""
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    return _interpolated(document["services"], read_env_file() if variables is None else variables)


@dataclass(frozen=True)
class Loopback:
    """Where this machine's stand-ins for the compose services listen."""

    temporal: str  # host:port of the Temporal frontend
    mlflow: str  # http://127.0.0.1:PORT
    s3: str  # http://127.0.0.1:PORT
    postgres: str  # 127.0.0.1:PORT of MLflow's database

    def rewrite(self, value: str) -> str:
        """`value` with every compose service address replaced by its stand-in's."""
        for service, here in (
            ("temporal:7233", self.temporal),
            ("http://mlflow:5000", self.mlflow),
            ("http://minio:9000", self.s3),
            ("mlflow-db:5432", self.postgres),
            ("0.0.0.0", "127.0.0.1"),
        ):
            value = value.replace(service, here)
        return value

    def environment(self, service: dict[str, Any]) -> dict[str, str]:
        """A service's environment, its values pointed at the stand-ins."""
        return {key: self.rewrite(str(value)) for key, value in service["environment"].items()}

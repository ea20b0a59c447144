"""Which code a process runs, as Temporal and other processes see it.

SCHEMA_VERSION   the version of what a client sends the workers (ExperimentRequest,
                 InferenceRequest and everything in them). Every JSON payload carries it
                 (orchestration.converter), so a worker that cannot decode a newer client's input
                 says so at once instead of failing the same task until the workflow times out.
                 Bump it, and record the new CONTRACT_FINGERPRINT, whenever those types change;
                 tests/test_rolling_upgrade.py fails until both are done.
build_id()       the worker's build id in its Temporal worker deployment: BERTFLEET_BUILD_ID, or
                 the package version and a hash of the Python sources of the workers, the same
                 for both roles on every host that runs the same code.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path

SCHEMA_VERSION = 1
# sha256 of the JSON schemas of the client-sent types at SCHEMA_VERSION (contract_fingerprint).
CONTRACT_FINGERPRINT = "c22aa17cd6ad4562"

# The metadata key of a payload that holds its sender's SCHEMA_VERSION.
SCHEMA_METADATA_KEY = "bertfleet-schema"

_ROOT = Path(__file__).resolve().parent.parent
# The code a worker runs: what goes into a build id.
_SOURCE_PACKAGES = ("orchestration", "tracking")


def contract_fingerprint() -> str:
    """A short hash of the JSON schemas of what clients send; changes with any field."""
    from orchestration.types import ExperimentRequest, InferenceRequest

    schemas = {t.__name__: t.model_json_schema() for t in (ExperimentRequest, InferenceRequest)}
    return hashlib.sha256(json.dumps(schemas, sort_keys=True).encode()).hexdigest()[:16]


def package_version() -> str:
    """The installed package's version, else pyproject.toml's (a checkout run in place)."""
    try:
        return metadata.version("bertfleet")
    except metadata.PackageNotFoundError:
        with open(_ROOT / "pyproject.toml", "rb") as f:
            return str(tomllib.load(f)["project"]["version"])


@cache
def source_hash() -> str:
    """12 hex digits over the path and content of every Python source of the workers."""
    digest = hashlib.sha256()
    for package in _SOURCE_PACKAGES:
        for path in sorted((_ROOT / package).rglob("*.py")):
            digest.update(str(path.relative_to(_ROOT)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def build_id() -> str:
    """BERTFLEET_BUILD_ID, or `<package version>-<source hash>` (e.g. `0.1.0-3f2a9c01b7de`)."""
    return os.environ.get("BERTFLEET_BUILD_ID", "").strip() or (
        f"{package_version()}-{source_hash()}"
    )

"""Rolling upgrades and searchable workflows on a real Temporal dev server (docs/deploy.md).

One scenario, shared by the first tests: version v1's workers (one process per role) run an
experiment; v2's workers run beside them, not current; as soon as the experiment's coordinator
is pinned to v1 (its first task done, long before its training ends), v2 is made current; a
second experiment starts and runs on v2, while the first keeps v1 to its end (its evaluation,
started after the switch, included); v1's workers stop once nothing is pinned to v1 any more.
v2's workers start before the first experiment, so their start-up cannot race the experiment.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.workflowservice.v1 import DescribeWorkerDeploymentRequest
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import VersioningBehavior
from temporalio.exceptions import ApplicationError

from harness import servers
from harness.polling import apoll
from harness.processes import WorkerProcess, settings_env
from harness.runs import SHORT, TINY
from harness.temporal import workers
from orchestration import search
from orchestration.client import (
    connect,
    experiment_result,
    start_experiment,
)
from orchestration.converter import VERSION_MISMATCH_TYPE, converter_for_schema, data_converter
from orchestration.deployment import current_build_id, pinned_workflows, set_current
from orchestration.servers import MlflowServer, TemporalServer
from orchestration.settings import REPO_ROOT, Settings
from orchestration.types import ExperimentRequest, ExperimentResult, RunConfig
from orchestration.versioning import CONTRACT_FINGERPRINT, SCHEMA_VERSION, contract_fingerprint

TEMPORAL = str(Path(sys.executable).with_name("temporal"))
OLD_RUN = SHORT
# Two steps: only has to show where it ran.
NEW_RUN = {**TINY, "epochs": 1, "max_train_samples": 32, "seed": 1}


@dataclass
class Upgrade:
    cfg: Settings
    old: ExperimentResult  # started on v1
    new: ExperimentResult  # started once v2 was current
    current_before: str | None  # the current version with v2's workers polling, before the switch
    promoted_at: datetime  # when v2 became current (server time)
    old_running_at_promotion: bool
    described: str  # `python -m orchestration.deployment describe` at the end
    versions: dict[str, tuple[str, VersioningBehavior]]  # workflow id -> (build id, behavior)
    started: dict[str, datetime]  # workflow id -> start time


def _workflow_ids(result: ExperimentResult) -> list[str]:
    ids = [result.experiment_id]
    for run in result.runs:
        ids += [i for i in (run.training_workflow_id, run.eval_workflow_id) if i]
    return ids


async def _start_workers(cfg: Settings, log_dir: Path) -> list[WorkerProcess]:
    return [
        await asyncio.to_thread(WorkerProcess, cfg, role, log_dir / f"{cfg.build_id}-{role}.log")
        for role in ("training", "eval")
    ]


def _stop(processes: list[WorkerProcess]) -> None:
    for process in processes:
        process.stop()


async def _current_since(client: Client, deployment: str) -> datetime:
    """When the deployment's current version became current (the server's clock)."""
    described = await client.workflow_service.describe_worker_deployment(
        DescribeWorkerDeploymentRequest(namespace=client.namespace, deployment_name=deployment)
    )
    return described.worker_deployment_info.routing_config.current_version_changed_time.ToDatetime(
        tzinfo=UTC
    )


def _describe(cfg: Settings) -> subprocess.CompletedProcess[str]:
    """The documented command: `python -m orchestration.deployment describe`."""
    return subprocess.run(
        [sys.executable, "-m", "orchestration.deployment", "describe"],
        cwd=REPO_ROOT,
        env=settings_env(cfg),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _request(name: str, run: dict[str, Any]) -> ExperimentRequest:
    return ExperimentRequest(
        name=f"{name}-{uuid.uuid4().hex[:6]}", runs=[RunConfig(name=name, **run)]
    )


async def _version(client: Client, workflow_id: str) -> tuple[str, VersioningBehavior]:
    """The build id a workflow is pinned to (empty before its first task) and its behavior."""
    info = (await client.get_workflow_handle(workflow_id).describe()).raw_description
    versioning = info.workflow_execution_info.versioning_info
    return versioning.deployment_version.build_id, VersioningBehavior(versioning.behavior)


async def _scenario(v1: Settings, v2: Settings, log_dir: Path) -> Upgrade:
    processes: list[WorkerProcess] = []
    try:
        processes += (old_workers := await _start_workers(v1, log_dir))
        processes += await _start_workers(v2, log_dir)
        client = await connect(v1)
        current_before = await current_build_id(client, v1.deployment_name)
        old_id = await start_experiment(client, _request("old", OLD_RUN), v1)

        async def pinned() -> bool:  # its first workflow task is done, on v1
            return (await _version(client, old_id))[0] == "v1"

        await apoll(pinned, 120, "the v1 experiment to start")
        # What `python -m orchestration.deployment set-current --build-id v2` does.
        await set_current(client, v1.deployment_name, "v2")
        old_running = (await client.get_workflow_handle(old_id).describe()).close_time is None
        new_id = await start_experiment(client, _request("new", NEW_RUN), v2)
        old = await asyncio.wait_for(experiment_result(client, old_id), 300)

        async def drained() -> bool:
            return not await pinned_workflows(client, v1.deployment_name, v1.build_id)

        await apoll(drained, 60, "nothing pinned to v1 any more")
        _stop(old_workers)
        new = await asyncio.wait_for(experiment_result(client, new_id), 300)
        described = await asyncio.to_thread(_describe, v1)
        assert described.returncode == 0, described.stderr
        versions, started = {}, {}
        for wid in _workflow_ids(old) + _workflow_ids(new):
            versions[wid] = await _version(client, wid)
            info = (await client.get_workflow_handle(wid).describe()).raw_description
            started[wid] = info.workflow_execution_info.start_time.ToDatetime(tzinfo=UTC)
        return Upgrade(
            cfg=v1,
            old=old,
            new=new,
            current_before=current_before,
            promoted_at=await _current_since(client, v1.deployment_name),
            old_running_at_promotion=old_running,
            described=described.stdout,
            versions=versions,
            started=started,
        )
    finally:
        _stop(processes)


@pytest.fixture(scope="module")
def upgrade(
    data_dir: Path,
    temporal_server: TemporalServer,
    mlflow_server: MlflowServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Upgrade:
    """The scenario above, in a deployment and on task queues of its own; v1 becomes current
    by itself (the deployment's first version), v2 only by the command (BERTFLEET_PROMOTE=
    manual)."""
    queues = f"upgrade-{uuid.uuid4().hex[:6]}"
    base = servers.stack_settings(
        data_dir, temporal_server, mlflow_server, queues=queues, max_concurrent_training=1
    )
    v1 = replace(base, deployment_name=queues, build_id="v1", promote="manual")
    v2 = replace(v1, build_id="v2")
    return asyncio.run(_scenario(v1, v2, tmp_path_factory.mktemp("upgrade-logs")))


def test_running_experiment_keeps_its_version_through_the_upgrade(upgrade: Upgrade) -> None:
    assert upgrade.current_before == "v1"  # v2 polling did not make it current
    lines = upgrade.described.splitlines()
    assert any(line.split()[:2] == ["v2", "current"] for line in lines), upgrade.described
    assert any(line.split()[0] == "v1" and "0 running pinned" in line for line in lines[1:])
    assert upgrade.old_running_at_promotion, "the switch must happen while v1 runs it"
    assert [r.status for r in upgrade.old.runs] == ["completed"], upgrade.old
    run = upgrade.old.runs[0]
    for wid in _workflow_ids(upgrade.old):
        assert upgrade.versions[wid] == ("v1", VersioningBehavior.PINNED), wid
    # Its evaluation started after v2 became current, and still ran on v1.
    assert run.eval_workflow_id is not None
    assert upgrade.started[run.eval_workflow_id] > upgrade.promoted_at


def test_new_experiment_runs_on_the_new_version(upgrade: Upgrade) -> None:
    assert [r.status for r in upgrade.new.runs] == ["completed"], upgrade.new
    for wid in _workflow_ids(upgrade.new):
        assert upgrade.versions[wid] == ("v2", VersioningBehavior.PINNED), wid
        assert upgrade.started[wid] > upgrade.promoted_at


def _list(cfg: Settings, query: str) -> set[str]:
    """Workflow ids `temporal workflow list --query QUERY` prints (JSON lines)."""
    listed = subprocess.run(
        [TEMPORAL, "workflow", "list", "--address", cfg.temporal_address, "--query", query]
        + ["--output", "jsonl"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    return {json.loads(line)["execution"]["workflowId"] for line in listed.stdout.splitlines()}


def test_workflows_are_filterable_by_search_attributes(upgrade: Upgrade) -> None:
    old, new, cfg = upgrade.old, upgrade.new, upgrade.cfg
    run = old.runs[0]
    children = {run.training_workflow_id, run.eval_workflow_id}
    assert _list(cfg, f'BertExperiment="{old.name}"') == {old.experiment_id, *children}
    assert _list(cfg, f'BertExperiment="{old.name}" AND BertConfig="old"') == children
    assert _list(cfg, f'BertExperiment="{new.name}" AND BertStatus="completed"') == {
        new.experiment_id
    }
    model = 'BertModel="tiny-bert" AND BertDataset="movie-snippets"'
    both = _list(cfg, f"{model} AND BertExperiment IN ('{old.name}', '{new.name}')")
    assert both == children | {new.runs[0].training_workflow_id, new.runs[0].eval_workflow_id}


def test_contract_fingerprint_matches_its_schema_version() -> None:
    assert contract_fingerprint() == CONTRACT_FINGERPRINT, (
        "what clients send (ExperimentRequest, InferenceRequest) changed: bump SCHEMA_VERSION "
        f"in orchestration/versioning.py and set CONTRACT_FINGERPRINT = {contract_fingerprint()!r}"
    )


def _newer_request(name: str) -> dict[str, Any]:
    """An ExperimentRequest as a client one schema ahead sends it: a field these workers lack."""
    body = _request(name, NEW_RUN).model_dump(mode="json")
    body["runs"][0]["warmup_schedule"] = "cosine"
    return body


async def _start_raw(cfg: Settings, body: dict[str, Any], schema: int) -> tuple[str, float]:
    """Start the coordinator with `body` from a client of schema `schema`; its failure message
    and the seconds from start to close (the server's clock)."""
    client = await Client.connect(
        cfg.temporal_address,
        namespace=cfg.temporal_namespace,
        data_converter=converter_for_schema(schema),
    )
    handle = await client.start_workflow(
        "CoordinatorWorkflow",
        body,
        id=f"experiment-{body['name']}",
        task_queue=cfg.eval_queue,
        memo={"training_queue": cfg.training_queue},
    )
    with pytest.raises(WorkflowFailureError) as failed:
        await asyncio.wait_for(handle.result(), 60)
    described = await handle.describe()
    assert described.close_time is not None
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError), cause
    return f"{cause.type}: {cause.message}", (
        described.close_time - described.start_time
    ).total_seconds()


def test_newer_client_fails_fast_naming_the_mismatch(settings: Settings) -> None:
    async def scenario() -> tuple[tuple[str, float], tuple[str, float]]:
        async with workers(settings, roles=("eval",)):
            newer = await _start_raw(settings, _newer_request("newer"), SCHEMA_VERSION + 1)
            same = await _start_raw(settings, _newer_request("same"), SCHEMA_VERSION)
            return newer, same

    (newer, newer_s), (same, same_s) = asyncio.run(scenario())
    assert newer.startswith(
        f"{VERSION_MISMATCH_TYPE}: client schema v{SCHEMA_VERSION + 1} is newer than this "
        f"worker's v{SCHEMA_VERSION}: upgrade the workers"
    ), newer
    assert "runs.0.warmup_schedule" in newer
    # The same unknown field from a client of this schema is bad input, not a newer client.
    assert same.startswith("ConfigError: invalid ExperimentRequest: runs.0.warmup_schedule"), same
    assert newer_s < 10 and same_s < 10, (newer_s, same_s)


def test_payloads_carry_the_schema_and_newer_ones_that_fit_decode() -> None:
    newer = converter_for_schema(SCHEMA_VERSION + 1).payload_converter
    request = _request("fits", NEW_RUN)
    [payload] = newer.to_payloads([request])
    assert payload.metadata["bertfleet-schema"] == str(SCHEMA_VERSION + 1).encode()
    # A newer client whose input this worker can decode is served as usual.
    [decoded] = data_converter.payload_converter.from_payloads(
        [payload], type_hints=[ExperimentRequest]
    )
    assert decoded == request


def test_experiment_runs_where_the_attributes_are_not_registered(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A namespace without the custom attributes (a cluster nobody registered them on): the
    experiment runs, without them, and a warning says what to do."""
    namespace = f"bare-{uuid.uuid4().hex[:6]}"
    created = subprocess.run(
        [TEMPORAL, "operator", "namespace", "create", "--address", settings.temporal_address]
        + ["--namespace", namespace],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr
    cfg = replace(settings, temporal_namespace=namespace)

    async def scenario() -> tuple[ExperimentResult, Any]:
        client = await apoll(lambda: connect(cfg), 60, f"namespace {namespace}")
        async with workers(cfg):
            exp_id = await start_experiment(client, _request("bare", NEW_RUN), cfg)
            result = await asyncio.wait_for(experiment_result(client, exp_id), 300)
            described = await client.get_workflow_handle(exp_id).describe()
            return result, described.typed_search_attributes

    result, attributes = asyncio.run(scenario())
    assert [r.status for r in result.runs] == ["completed"], result
    assert attributes.get(search.EXPERIMENT) is None
    assert "starts without search attributes" in caplog.text
    assert "docs/deploy.md" in caplog.text

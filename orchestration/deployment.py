"""Rolling upgrades with Temporal worker versioning (docs/deploy.md, "Rolling upgrades").

Every worker runs as one version (`<deployment>:<build id>`) of a worker deployment; both roles
of the same code share the version. New workflows go to the deployment's current version.
Workflows are pinned to the version they started on (an experiment keeps the code it started
with, its training and evaluation included) unless their definition is marked AUTO_UPGRADE.

    python -m orchestration.deployment describe                 # versions, current, pinned work
    python -m orchestration.deployment set-current [--build-id ID]   # default: this code's
    python -m orchestration.deployment pinned --build-id ID     # running workflows on a version

`--deployment` (default BERTFLEET_DEPLOYMENT) names another deployment.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from temporalio.api.enums.v1 import WorkerDeploymentVersionStatus
from temporalio.api.workflowservice.v1 import (
    DescribeWorkerDeploymentRequest,
    SetWorkerDeploymentCurrentVersionRequest,
)
from temporalio.client import Client
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import WorkerDeploymentConfig

from orchestration.client import connect
from orchestration.settings import Settings, settings
from orchestration.timeouts import SET_CURRENT_TIMEOUT

T = TypeVar("T")


def deployment_config(cfg: Settings) -> WorkerDeploymentConfig | None:
    """This worker's version; workflows whose definition says nothing are pinned to it."""
    if not cfg.versioned:
        return None
    return WorkerDeploymentConfig(
        version=WorkerDeploymentVersion(cfg.deployment_name, cfg.build_id),
        use_worker_versioning=True,
        default_versioning_behavior=VersioningBehavior.PINNED,
    )


# The server rate-limits calls per deployment ("too many requests issued to Worker Deployment"):
# workers starting or restarting together may hit it. Such calls are retried for a while.
BUSY_RETRY_S = 60.0


async def _patiently(call: Callable[[], Awaitable[T]]) -> T:
    deadline, delay = time.monotonic() + BUSY_RETRY_S, 0.2
    while True:
        try:
            return await call()
        except RPCError as err:
            if err.status != RPCStatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


async def current_build_id(client: Client, deployment: str) -> str | None:
    """The build id of the deployment's current version; None when it has none (or does not
    exist yet: no worker of it has polled)."""
    try:
        described = await _patiently(
            lambda: client.workflow_service.describe_worker_deployment(
                DescribeWorkerDeploymentRequest(
                    namespace=client.namespace, deployment_name=deployment
                )
            )
        )
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    routing = described.worker_deployment_info.routing_config
    return routing.current_deployment_version.build_id or None


async def set_current(
    client: Client, deployment: str, build_id: str, *, timeout_s: float | None = None
) -> None:
    """Make `build_id` the current version: new workflows (and AUTO_UPGRADE ones) go to its
    workers from now on; pinned workflows stay where they are. The version must have polled
    (its workers started); waits up to `timeout_s` for that. A version that has not polled
    every task queue of the current one yet (one role started before the other) is accepted:
    its tasks wait on that queue until the other role starts."""
    timeout = SET_CURRENT_TIMEOUT.total_seconds() if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout
    while True:
        try:
            await _patiently(
                lambda: client.workflow_service.set_worker_deployment_current_version(
                    SetWorkerDeploymentCurrentVersionRequest(
                        namespace=client.namespace,
                        deployment_name=deployment,
                        build_id=build_id,
                        ignore_missing_task_queues=True,
                        identity=f"bertfleet set-current {build_id}",
                    )
                )
            )
            return
        except RPCError as err:
            unknown = err.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION)
            if not unknown or time.monotonic() > deadline:
                raise RuntimeError(
                    f"--build-id: cannot make {deployment}:{build_id} current: {err.message}. "
                    "Start its workers first (with BERTFLEET_DEPLOYMENT and BERTFLEET_BUILD_ID "
                    "as given here); `python -m orchestration.deployment describe` lists versions"
                ) from None
            await asyncio.sleep(0.5)  # the version registers with its workers' first poll


async def promote_on_start(client: Client, cfg: Settings) -> bool:
    """What a starting worker does about its version: with BERTFLEET_PROMOTE=on-start it
    becomes current; with `manual` only when the deployment has no current version yet (its
    first version, so a fresh cluster runs without a manual step). True if it became current."""
    if not cfg.versioned:
        return False
    current = await current_build_id(client, cfg.deployment_name)
    if current == cfg.build_id:
        return False
    if cfg.promote == "manual" and current is not None:
        return False
    await set_current(client, cfg.deployment_name, cfg.build_id)
    return True


async def pinned_workflows(client: Client, deployment: str, build_id: str) -> list[str]:
    """Ids of running workflows pinned to a version: its workers may stop once this is empty
    (AUTO_UPGRADE workflows move to the current version by themselves)."""
    query = (
        f"TemporalWorkerDeploymentVersion = '{deployment}:{build_id}' "
        "AND ExecutionStatus = 'Running'"
    )
    return [wf.id async for wf in client.list_workflows(query)]


async def describe(client: Client, deployment: str) -> str:
    """One line per version: build id, status (current, draining...), running pinned work."""
    try:
        described = await client.workflow_service.describe_worker_deployment(
            DescribeWorkerDeploymentRequest(namespace=client.namespace, deployment_name=deployment)
        )
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return f"no deployment {deployment!r}: no worker of it has started yet"
        raise
    lines = [f"deployment {deployment}"]
    for version in described.worker_deployment_info.version_summaries:
        build = version.deployment_version.build_id
        pinned = await pinned_workflows(client, deployment, build)
        lines.append(f"  {build:32s} {_status(version.status)}  {len(pinned)} running pinned")
    return "\n".join(lines)


def _status(status: WorkerDeploymentVersionStatus.ValueType) -> str:
    name = WorkerDeploymentVersionStatus.Name(status)
    return name.removeprefix("WORKER_DEPLOYMENT_VERSION_STATUS_").lower()


async def _main(args: argparse.Namespace) -> int:
    cfg = settings()
    deployment = args.deployment or cfg.deployment_name
    client = await connect(cfg)
    if args.action == "set-current":
        build = args.build_id or cfg.build_id
        await set_current(client, deployment, build, timeout_s=args.wait)
        print(f"{deployment}:{build} is current; new experiments run on it")
    elif args.action == "pinned":
        build = args.build_id or cfg.build_id
        for workflow_id in await pinned_workflows(client, deployment, build):
            print(workflow_id)
    else:
        print(await describe(client, deployment))
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["describe", "set-current", "pinned"])
    parser.add_argument("--deployment", help="worker deployment (default BERTFLEET_DEPLOYMENT)")
    parser.add_argument("--build-id", help="a version's build id (default: this code's)")
    parser.add_argument(
        "--wait", type=float, default=0, help="seconds to wait for the version's workers"
    )
    args = parser.parse_args()
    try:
        code = asyncio.run(_main(args))
    except RuntimeError as err:
        print(err, file=sys.stderr)
        code = 1
    # Without interpreter teardown, as the starter: finalising the Temporal client's native
    # runtime while its threads wind down can crash the process after the work is done.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()

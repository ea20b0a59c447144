"""The app's one door to Temporal and MLflow: lazy connections, short deadlines, plain words.

The page must load, and stay usable, while either server is down, and recover by itself when
it returns. So nothing connects at import; every Temporal call runs on a private event loop in a
background thread (Gradio's handlers are plain threads) under a hard deadline, a lost connection
is dropped and made again on the next call, and every failure becomes an `Unavailable` whose
message says what is wrong and how to fix it. MLflow calls are skipped while a 1-second health
probe fails, because a down server would otherwise cost seconds per call at every refresh.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from orchestration.client import connect
from orchestration.settings import Settings
from tracking.client import workflow_ui_link

T = TypeVar("T")
CONNECT_TIMEOUT_S = 5.0
# How long an MLflow health answer is trusted: the page refreshes every ~2 s.
HEALTH_TTL_S = 3.0


class Unavailable(RuntimeError):
    """A server is down or did not answer in time; the message is meant for the page."""


class Backend:
    def __init__(self, cfg: Settings) -> None:
        self.cfg = cfg
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="temporal-client", daemon=True).start()
        self._client: Client | None = None
        self._mlflow_checked = (0.0, False)

    # ---- Temporal ----------------------------------------------------------------------------

    @property
    def temporal_down(self) -> str:
        return f"Temporal is not reachable at {self.cfg.temporal_address} — start it with `make up`"

    def temporal_reachable(self) -> bool:
        host, _, port = self.cfg.temporal_address.rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=0.5):
                return True
        except (OSError, ValueError):
            return False

    def call(self, fn: Callable[..., Awaitable[T]], *args, timeout: float = 10.0) -> T:
        """`await fn(client, *args)` on the client's loop; raise Unavailable on any outage."""
        future = asyncio.run_coroutine_threadsafe(self._with_client(fn, args), self._loop)
        try:
            return future.result(timeout + CONNECT_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise self._outage(f"Temporal did not answer within {timeout:.0f} s") from None
        except RPCError as err:
            if err.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
                raise self._outage(f"Temporal did not answer in time ({err.message})") from None
            raise

    async def _with_client(self, fn, args):
        if self._client is None:
            try:
                self._client = await asyncio.wait_for(connect(self.cfg), CONNECT_TIMEOUT_S)
            except (TimeoutError, RuntimeError, OSError, RPCError):
                raise Unavailable(self.temporal_down) from None
        return await fn(self._client, *args)

    def _outage(self, what: str) -> Unavailable:
        if not self.temporal_reachable():
            self._client = None  # connect afresh once the server is back
            return Unavailable(self.temporal_down)
        return Unavailable(f"{what}; is a worker running? Start them with `make workers`")

    def pollers(self) -> dict[str, int]:
        """Workers polling each task queue: {queue name: count}, as Temporal last saw them."""

        async def count(client: Client) -> dict[str, int]:
            found = {}
            for queue in (self.cfg.training_queue, self.cfg.eval_queue):
                resp = await client.workflow_service.describe_task_queue(
                    DescribeTaskQueueRequest(
                        namespace=client.namespace,
                        task_queue=TaskQueue(name=queue),
                        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
                    ),
                    timeout=timedelta(seconds=3),
                )
                found[queue] = len(resp.pollers)
            return found

        return self.call(count, timeout=5)

    def workflow_url(self, workflow_id: str) -> str:
        return workflow_ui_link(self.cfg.temporal_ui_url, workflow_id, self.cfg.temporal_namespace)

    # ---- MLflow ------------------------------------------------------------------------------

    @property
    def mlflow_uri(self) -> str:
        return self.cfg.mlflow_tracking_uri.rstrip("/")

    @property
    def mlflow_down(self) -> str:
        return f"MLflow is not reachable at {self.mlflow_uri} — start it with `make up`"

    def mlflow_reachable(self) -> bool:
        checked_at, healthy = self._mlflow_checked
        if time.monotonic() - checked_at < HEALTH_TTL_S:
            return healthy
        try:
            # A stopped server refuses at once; a busy one (a loaded host) may take seconds.
            with urllib.request.urlopen(f"{self.mlflow_uri}/health", timeout=5) as resp:
                healthy = resp.status == 200
        except OSError:
            healthy = False
        self._mlflow_checked = (time.monotonic(), healthy)
        return healthy

    def mlflow(self, fn: Callable[..., T], *args) -> T:
        """`fn(tracking_uri, *args)` from tracking.reader, or Unavailable when MLflow is down."""
        if not self.mlflow_reachable():
            raise Unavailable(self.mlflow_down)
        try:
            return fn(self.cfg.mlflow_tracking_uri, *args)
        except Exception as err:
            self._mlflow_checked = (0.0, False)
            raise Unavailable(f"MLflow at {self.mlflow_uri} failed: {err}") from None

    def mlflow_experiment_url(self, mlflow_experiment_id: str) -> str:
        return f"{self.cfg.mlflow_ui_url}/#/experiments/{mlflow_experiment_id}"

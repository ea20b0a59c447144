"""Run blocking ML work in a thread while the activity heartbeats and honours cancellation.

The event loop stays free, so heartbeats go out on time even while a training step holds the
GIL-released torch kernels; cancellation (from the server, or the worker shutting down) sets a
stop flag the work checks between steps, and we wait for the thread to finish cleanly.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from orchestration.ml.errors import ConfigError
from orchestration.timeouts import HEARTBEAT_TIMEOUT_S, THREAD_STOP_GRACE_S

T = TypeVar("T")


def heartbeat_interval() -> float:
    """A few heartbeats per timeout window, so one late beat never kills a healthy attempt."""
    timeout = activity.info().heartbeat_timeout
    seconds = timeout.total_seconds() if timeout else float(HEARTBEAT_TIMEOUT_S)
    return max(0.5, min(5.0, seconds / 4))


def non_retryable(err: ConfigError) -> ApplicationError:
    return ApplicationError(str(err), type="ConfigError", non_retryable=True)


def in_executor(executor: Executor | None, fn: Callable[[], T]) -> Awaitable[T]:
    """`fn` in `executor` (None: asyncio's default pool), with the caller's context, like
    asyncio.to_thread. Workers give each kind of work a pool of its own, so one kind piling
    up (long evaluations) never holds the threads another needs (predictions)."""
    call = functools.partial(contextvars.copy_context().run, fn)
    return asyncio.get_running_loop().run_in_executor(executor, call)


async def run_in_thread(
    fn: Callable[[], T],
    stop: threading.Event,
    tick: Callable[[], Awaitable[None]] | None = None,
    executor: Executor | None = None,
) -> T:
    """Run `fn` in a thread of `executor`; call `tick` (heartbeat/report) at the heartbeat
    interval."""
    task = asyncio.ensure_future(in_executor(executor, fn))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=heartbeat_interval())
            if done:
                return task.result()
            if tick is not None:
                await tick()
            else:
                activity.heartbeat()
    except ConfigError as err:
        raise non_retryable(err) from None
    except asyncio.CancelledError:
        stop.set()
        await asyncio.wait({task}, timeout=THREAD_STOP_GRACE_S)
        if task.done() and not task.cancelled():
            task.exception()  # the expected TrainingStopped: retrieved, so asyncio does not log it
        raise

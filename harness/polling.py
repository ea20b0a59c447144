"""Bounded waits: call a check until it holds, or fail saying what was awaited.

The tests, the benchmarks and the scripts wait through here: on the event itself (a log line, a
port, a step in the progress, a file), with a bound, never by sleeping for a guessed time.

`apoll` is for checks that ask a server (a Temporal query, an MLflow call): one that raises,
because a worker is busy or restarting, counts as not yet by default. `poll` reads local state
and lets errors through at once. Either way a timeout names the last error it absorbed.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")
Errors = tuple[type[Exception], ...]


def _timed_out(timeout_s: float, what: str, error: Exception | None) -> TimeoutError:
    message = f"timed out after {timeout_s:.0f}s waiting for {what}"
    return TimeoutError(message + (f" (last error: {error!r})" if error else ""))


def poll(
    check: Callable[[], T | None],
    timeout_s: float,
    what: str,
    *,
    interval_s: float = 0.2,
    retry_on: Errors = (),
) -> T:
    """Call `check` until it returns something truthy, and return that. Raise TimeoutError
    after `timeout_s`; an exception of a type in `retry_on` counts as not yet."""
    deadline = time.monotonic() + timeout_s
    error: Exception | None = None
    while True:
        try:
            value = check()
        except retry_on as err:
            value, error = None, err
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(timeout_s, what, error)
        time.sleep(interval_s)


@overload
async def apoll(
    check: Callable[[], Awaitable[T | None]],
    timeout_s: float,
    what: str,
    *,
    interval_s: float = ...,
    retry_on: Errors = ...,
) -> T: ...


@overload
async def apoll(
    check: Callable[[], T | None],
    timeout_s: float,
    what: str,
    *,
    interval_s: float = ...,
    retry_on: Errors = ...,
) -> T: ...


async def apoll(
    check: Callable[[], object],
    timeout_s: float,
    what: str,
    *,
    interval_s: float = 0.3,
    retry_on: Errors = (Exception,),
) -> object:
    """`poll` for a running event loop: `check` may be a coroutine function or a plain one, and
    by default any exception it raises counts as not yet (see the module's docstring)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    error: Exception | None = None
    while True:
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
        except retry_on as err:
            value, error = None, err
        if value:
            return value
        if loop.time() > deadline:
            raise _timed_out(timeout_s, what, error)
        await asyncio.sleep(interval_s)

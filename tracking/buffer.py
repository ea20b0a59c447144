"""Per-step training metrics that never hold training hostage, and never go missing.

`log()` only appends to an in-memory buffer; a background thread ships batches to MLflow every
couple of seconds. While the server is away the buffer keeps growing (bounded) and the thread
retries with capped exponential backoff; when the server is back, everything catches up in
order. Each point keeps the timestamp it was logged with, so re-sending a batch whose answer was
lost is a no-op on the server (it drops exact duplicates).

Steps are kept strictly increasing per key. A resumed attempt replays the steps between its
checkpoint and the crash; before the first send of each key the thread reads that key's history
on the server and drops points at or below its last step, so the run's curves have no overlap.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from itertools import islice

from mlflow.entities import Metric, RunTag

from orchestration.types import CheckpointInfo
from tracking.client import TAG_CHECKPOINT, TrackingError, TrackingUnavailable, client, is_permanent

log = logging.getLogger(__name__)

BATCH_LIMIT = 1000  # MLflow's cap on metrics + tags in one log_batch


class MetricsLogger:
    """A buffered, thread-safe metrics sink for one run. Call `close()` when training ends."""

    def __init__(
        self,
        tracking_uri: str,
        run_id: str,
        *,
        flush_interval_s: float = 2.0,
        max_backoff_s: float = 10.0,
        max_points: int = 100_000,
    ) -> None:
        self.run_id = run_id
        self._client = client(tracking_uri)
        self._interval = flush_interval_s
        self._max_backoff = max_backoff_s
        self._max_points = max_points
        self._lock = threading.Lock()
        self._buffer: deque[Metric] = deque()
        self._tags: dict[str, str] = {}  # latest value per tag key, sent with the next batch
        self._last_step: dict[str, int] = {}  # per key: highest step accepted by log()
        self._synced: set[str] = set()  # keys whose server-side history has been read
        self._server_last: dict[str, int] = {}
        self._overflow = 0
        self._rejected = 0
        self._rejection: str | None = None
        self._delivered = 0
        self._closing = False
        self._wake = threading.Event()
        self._abandoned = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"mlflow-metrics-{run_id[:8]}", daemon=True
        )
        self._thread.start()

    # -- called by training -------------------------------------------------------------------

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Queue `metrics` at `step`; returns at once and never raises."""
        try:
            now = int(time.time() * 1000)
            with self._lock:
                if self._closing:
                    log.warning("run %s: metrics logged after close() ignored", self.run_id)
                    return
                for key, value in metrics.items():
                    try:
                        number = float(value)
                    except (TypeError, ValueError):
                        log.warning("run %s: metric %s=%r is not a number", self.run_id, key, value)
                        continue
                    if step <= self._last_step.get(key, -math.inf):
                        continue  # same key at the same or an earlier step: a replay
                    self._last_step[key] = step
                    if len(self._buffer) >= self._max_points:
                        self._overflow += 1  # oldest points are kept; newer ones counted here
                        continue
                    self._buffer.append(Metric(key, number, now, int(step)))
        except Exception as err:  # whatever goes wrong here must not stop training
            log.warning("metrics for run %s at step %s not queued: %s", self.run_id, step, err)

    def log_checkpoint(self, info: CheckpointInfo) -> None:
        """Record a checkpoint: metric `checkpoint_step` and tag `checkpoint.latest` = its uri."""
        self.log(info.step, {"checkpoint_step": float(info.step)})
        with self._lock:
            if not self._closing:
                self._tags[TAG_CHECKPOINT] = info.uri

    def set_tags(self, tags: dict[str, str]) -> None:
        """Set run tags with the next batch (the latest value per key wins); never raises."""
        with self._lock:
            if not self._closing:
                self._tags.update(tags)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._buffer) + len(self._tags)

    @property
    def delivered(self) -> int:
        with self._lock:
            return self._delivered

    def close(self, timeout_s: float = 30.0) -> None:
        """Deliver everything queued, within `timeout_s`, or raise saying what was not delivered.

        Raises TrackingUnavailable when the server stayed unreachable, TrackingError when MLflow
        rejected points or the buffer overflowed (nothing is dropped silently).
        """
        with self._lock:
            self._closing = True
        self._wake.set()
        self._thread.join(timeout_s)
        problems = []
        pending = self.pending
        if self._thread.is_alive():
            self._abandoned.set()  # the thread stops after its current attempt
            problems.append(
                f"MLflow unreachable: {pending} metric points/tags were not "
                f"delivered within {timeout_s:.0f}s"
            )
        if self._overflow:
            problems.append(
                f"{self._overflow} points dropped because the buffer was full "
                f"({self._max_points} points)"
            )
        if self._rejected:
            problems.append(f"{self._rejected} points rejected by MLflow ({self._rejection})")
        message = f"run {self.run_id}: " + "; ".join(problems)
        if self._thread.is_alive():
            raise TrackingUnavailable(message, pending=pending)
        if problems:
            raise TrackingError(message)

    # -- the background thread ----------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.0
        while True:
            self._wake.wait(backoff or self._interval)
            self._wake.clear()
            if self._abandoned.is_set():
                return
            with self._lock:
                closing = self._closing
            try:
                while self._send_one_batch():
                    pass
                backoff = 0.0
            except Exception as err:
                backoff = min(self._max_backoff, max(1.0, backoff * 2))
                log.warning(
                    "MLflow unreachable for run %s (%d pending), retrying in %.0fs: %s",
                    self.run_id,
                    self.pending,
                    backoff,
                    err,
                )
                continue
            if closing:
                return

    def _send_one_batch(self) -> bool:
        """Ship the oldest points; True if there may be more. Raises when the server is away."""
        with self._lock:
            tags = dict(self._tags)
            batch = list(islice(self._buffer, BATCH_LIMIT - len(tags)))
        if not batch and not tags:
            return False
        try:
            self._sync_history({m.key for m in batch} - self._synced)
            fresh = [m for m in batch if m.step > self._server_last.get(m.key, -math.inf)]
            self._client.log_batch(
                self.run_id, metrics=fresh, tags=[RunTag(k, v) for k, v in tags.items()]
            )
        except Exception as err:
            if not is_permanent(err):
                raise
            fresh = []
            with self._lock:
                self._rejected += len(batch)
                self._rejection = str(err)[:300]
            log.error("MLflow rejected %d points of run %s: %s", len(batch), self.run_id, err)
        with self._lock:
            for _ in batch:
                self._buffer.popleft()
            for key, value in tags.items():
                if self._tags.get(key) == value:
                    del self._tags[key]
            self._delivered += len(fresh)
            return bool(self._buffer)

    def _sync_history(self, keys: set[str]) -> None:
        """Learn the last step the server holds for each new key (non-empty after a resume)."""
        for key in sorted(keys):
            history = self._client.get_metric_history(self.run_id, key)
            if history:
                self._server_last[key] = max(m.step for m in history)
            self._synced.add(key)

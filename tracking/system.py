"""CPU, memory, disk, network (and GPU, where there is one) curves next to the training curves.

MLflow's SystemMetricsMonitor is used directly with an explicit run id and tracking URI (its
fluent `log_system_metrics` switch would bind it to the process-global active run). The monitor
quits for good at the first failed request, so a small supervisor starts a fresh one after an
outage, resuming its step count from the server; it ends when the run stops RUNNING.

A caller may add metrics of its own to every sample (`extra`): the training worker adds its run
process's memory (`system/run_memory_rss_megabytes` and the like), which the machine-wide
figures cannot tell apart when several runs share a worker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psutil
from mlflow.system_metrics.metrics.base_metrics_monitor import BaseMetricsMonitor
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from tracking.client import client

log = logging.getLogger(__name__)


class _ExtraMonitor(BaseMetricsMonitor):
    """Samples `read()` with the monitor's other metrics; a sample's peak values ("peak" in
    the name) are the highest seen in the interval, the others the mean."""

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        super().__init__()
        self._read = read

    def collect_metrics(self) -> None:
        try:
            values = self._read()
        except Exception:  # a metric of ours never stops the machine's
            return
        for name, value in values.items():
            self._metrics[name].append(value)

    def aggregate_metrics(self) -> dict[str, float]:
        return {
            name: round(max(values) if "peak" in name else sum(values) / len(values), 1)
            for name, values in self._metrics.items()
            if values
        }


class SystemMetrics:
    """Handle returned by `start_system_metrics`; `stop()` ends sampling within seconds."""

    def __init__(
        self,
        tracking_uri: str,
        run_id: str,
        sampling_interval_s: float,
        extra: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        self._uri = tracking_uri
        self._run_id = run_id
        self._interval = sampling_interval_s
        self._extra = extra
        self._stop = threading.Event()
        self._monitor: SystemMetricsMonitor | None = None
        # psutil measures CPU use since its previous call and answers 0.0 to the first one,
        # which the monitor would publish as the run's first CPU point.
        psutil.cpu_percent()
        self._thread = threading.Thread(
            target=self._supervise, daemon=True, name=f"mlflow-system-{run_id[:8]}"
        )
        self._thread.start()

    def stop(self, timeout_s: float = 15.0) -> None:
        self._stop.set()
        monitor = self._monitor
        if monitor is not None:
            monitor._shutdown_event.set()  # its loop waits on this event between samples
        self._thread.join(timeout_s)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _supervise(self) -> None:
        while not self._stop.is_set():
            status = self._run_status()
            if status is not None and status != "RUNNING":
                return
            if status == "RUNNING":  # only then: a monitor built offline would restart at step 0
                try:
                    monitor = SystemMetricsMonitor(
                        self._run_id,
                        sampling_interval=self._interval,
                        resume_logging=True,
                        tracking_uri=self._uri,
                    )
                    if self._extra is not None:
                        monitor.monitors.append(_ExtraMonitor(self._extra))
                    self._monitor = monitor
                    if self._stop.is_set():
                        return
                    monitor.monitor()  # returns on stop, when the run ends, or on a failed request
                    if self._stop.is_set():
                        _final_sample(monitor)
                    monitor.mlflow_logger.flush()
                except Exception as err:  # system metrics are nice to have; training goes on
                    log.warning("system metrics for run %s paused: %s", self._run_id, err)
            self._stop.wait(self._interval)

    def _run_status(self) -> str | None:
        """The run's status, or None while the server cannot be reached."""
        try:
            return client(self._uri).get_run(self._run_id).info.status
        except Exception:
            return None


def _final_sample(monitor: SystemMetricsMonitor) -> None:
    """Publish what the interval that stop() cut short measured.

    The monitor publishes only at the end of each full interval, so without this a run shorter
    than the sampling interval (a smoke run, a short attempt) would have no system metrics at
    all, and every run would lose its last seconds.
    """
    monitor.collect_metrics()
    monitor.publish_metrics(monitor.aggregate_metrics())


def start_system_metrics(
    tracking_uri: str,
    run_id: str,
    sampling_interval_s: float = 10.0,
    extra: Callable[[], dict[str, float]] | None = None,
) -> SystemMetrics:
    """Sample system metrics into the run every `sampling_interval_s` until `stop()`; with
    `extra`, its metrics too (logged as `system/<name>`)."""
    return SystemMetrics(tracking_uri, run_id, sampling_interval_s, extra)

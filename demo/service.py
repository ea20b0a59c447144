"""What the page and the API do: launch, watch, cancel and compare here; the models a finished
experiment offers (the inference picker, the champion alias, predictions) in demo.models.

Progress comes from the coordinator's query; this module adds what the page needs on top and
keeps it in memory shared by every browser session: each experiment's request (read once from
its history, for the configuration columns), finished runs' training state (a finished
TrainingWorkflow still answers its query), loss points seen while polling (the curve when MLflow
has none), and everything about an experiment once it has ended, since it no longer changes.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime

from temporalio.client import Client

from demo.backend import Backend, Unavailable
from demo.models import Models
from demo.sweep_service import Sweeps
from orchestration.client import (
    cancel_experiment,
    cancel_run,
    experiment_progress,
    experiment_result,
    list_experiments,
    start_experiment,
    training_progress,
)
from orchestration.timeouts import QUERY_TIMEOUT
from orchestration.types import (
    DatasetCard,
    ExperimentProgress,
    ExperimentRequest,
    ExperimentResult,
    RunConfig,
    TrainingProgress,
)
from tracking.reader import compare_url, metric_history

FINAL = ("completed", "failed", "cancelled")


@dataclass(frozen=True)
class Launched:
    experiment_id: str
    temporal_url: str
    mlflow_url: str | None


def parse_time(iso: str | None) -> datetime | None:
    return datetime.fromisoformat(iso) if iso else None


class Service:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.sweeps = Sweeps(backend)  # launch, watch and cancel sweeps
        self.models = Models(self)  # the inference picker, the champion alias, predictions
        self._lock = threading.Lock()
        self._final: dict[str, ExperimentProgress] = {}
        self._requests: dict[str, ExperimentRequest] = {}
        self._results: dict[str, ExperimentResult] = {}
        self._finished_training: dict[str, TrainingProgress] = {}  # by training workflow id
        # experiment id -> configuration -> step -> loss, as seen in progress polls
        self._points: dict[str, dict[str, dict[int, float]]] = defaultdict(
            lambda: defaultdict(dict)
        )
        self._curves: dict[str, list[tuple[int, float]]] = {}  # finished MLflow runs' losses
        self._cards: dict[str, DatasetCard] = {}  # dataset name -> its card

    # ---- datasets ----------------------------------------------------------------------------

    def dataset_card(self, dataset: str, fields: dict | None = None) -> DatasetCard:
        """The card of a dataset as a configuration with the default split would see it
        (computed from its rows once, then kept: the data under a name does not change).
        `fields` are the schema fields an upload's preview decided (text_field, label_field...)."""
        fields = fields or {}
        key = f"{dataset}\0{sorted(fields.items())}"
        if key not in self._cards:
            # Imported here: reading datasets pulls in pandas and datasets, which the page
            # does not need until someone opens a card.
            from orchestration.ml.snapshot import dataset_card

            cfg = self.backend.cfg
            card = dataset_card(
                RunConfig(name="card", dataset=dataset, **fields), cfg.data_dir, cfg.local_roots
            )
            with self._lock:
                self._cards[key] = card
        return self._cards[key]

    # ---- launching and cancelling ------------------------------------------------------------

    def launch(self, req: ExperimentRequest) -> Launched:
        experiment_id = self.backend.call(start_experiment, req, self.backend.cfg)
        self._requests[experiment_id] = req
        # The coordinator opens the MLflow experiment within a second or two when workers run;
        # wait that long for its id (to link it), no longer.
        mlflow_id, deadline = None, time.monotonic() + 4
        while mlflow_id is None and time.monotonic() < deadline:
            try:
                mlflow_id = self.progress(experiment_id).mlflow_experiment_id
            except Exception:
                time.sleep(0.5)
        return Launched(
            experiment_id,
            self.backend.workflow_url(experiment_id),
            self.backend.mlflow_experiment_url(mlflow_id) if mlflow_id else None,
        )

    def cancel_experiment(self, experiment_id: str) -> None:
        self.backend.call(cancel_experiment, experiment_id)

    def cancel_run(self, experiment_id: str, name: str) -> None:
        self.backend.call(cancel_run, experiment_id, name)

    def experiments(self, limit: int = 30) -> list[tuple[str, str]]:
        """Recent experiments, newest first, as (workflow id, status)."""
        return self.backend.call(list_experiments, limit)

    # ---- watching ----------------------------------------------------------------------------

    def progress(self, experiment_id: str) -> ExperimentProgress:
        """Live progress; finished runs keep their last training state (step, loss, checkpoint)."""
        if experiment_id in self._final:
            return self._final[experiment_id]
        progress = self.backend.call(self._fetch_progress, experiment_id, timeout=10)
        with self._lock:
            for run in progress.runs:
                t = run.training
                if t is not None and t.loss is not None:
                    self._points[experiment_id][run.name][t.step] = t.loss
            if progress.status != "running":
                self._final[experiment_id] = progress
        return progress

    async def _fetch_progress(self, client: Client, experiment_id: str) -> ExperimentProgress:
        # Raises RuntimeError ("has not started yet") until the coordinator's first step.
        progress = await experiment_progress(client, experiment_id)
        for run in progress.runs:
            wid = run.training_workflow_id
            if run.training is not None or run.status not in FINAL or not wid:
                continue
            if wid not in self._finished_training:
                found = await training_progress(client, wid)
                if found is not None:
                    self._finished_training[wid] = found
            run.training = self._finished_training.get(wid)
        return progress

    def request(self, experiment_id: str) -> ExperimentRequest | None:
        """The configurations an experiment was launched with (from its first history event)."""
        if experiment_id not in self._requests:

            async def first_input(client: Client) -> ExperimentRequest:
                handle = client.get_workflow_handle(experiment_id)
                async for event in handle.fetch_history_events(
                    page_size=1, rpc_timeout=QUERY_TIMEOUT
                ):
                    payloads = event.workflow_execution_started_event_attributes.input.payloads
                    return (await client.data_converter.decode(payloads, [ExperimentRequest]))[0]
                raise Unavailable(f"{experiment_id} has no history")

            self._requests[experiment_id] = self.backend.call(first_input)
        return self._requests[experiment_id]

    def configs(self, experiment_id: str) -> dict[str, RunConfig]:
        try:
            req = self.request(experiment_id)
        except Exception:
            return {}
        return {run.name: run for run in req.runs} if req else {}

    def result(self, experiment_id: str) -> ExperimentResult | None:
        """The final result once the experiment has ended; None while it runs."""
        if experiment_id not in self._results:
            if self.progress(experiment_id).status == "running":
                return None
            self._results[experiment_id] = self.backend.call(experiment_result, experiment_id)
        return self._results[experiment_id]

    def loss_points(self, progress: ExperimentProgress) -> tuple[list[tuple[int, float, str]], str]:
        """(step, loss, configuration) of every run, from MLflow where it has them, else from
        the polls this app saw; and a note when MLflow could not be asked."""
        points, note = [], ""
        for run in progress.runs:
            seen = dict(self._points[progress.experiment_id][run.name])
            if run.mlflow_run_id:
                try:
                    seen.update(self._mlflow_losses(run.mlflow_run_id, run.status in FINAL))
                except Unavailable as err:
                    note = str(err)
            points += [(step, loss, run.name) for step, loss in sorted(seen.items())]
        return points, note

    def _mlflow_losses(self, run_id: str, finished: bool) -> list[tuple[int, float]]:
        if run_id in self._curves:
            return self._curves[run_id]
        found = self.backend.mlflow(metric_history, run_id, "loss")
        if finished and found:
            self._curves[run_id] = found
        return found

    def compare_link(self, progress: ExperimentProgress) -> str | None:
        run_ids = [r.mlflow_run_id for r in progress.runs if r.mlflow_run_id]
        if not (progress.mlflow_experiment_id and run_ids):
            return None
        return compare_url(self.backend.cfg.mlflow_ui_url, progress.mlflow_experiment_id, run_ids)


def elapsed_and_eta(run, now: datetime | None = None) -> tuple[float | None, float | None]:
    """Seconds since the configuration started (to its end, once ended), and the seconds left
    at its average step rate so far (training only)."""
    started = parse_time(run.started_at)
    if started is None:
        return None, None
    now = now or datetime.now(UTC)
    end = parse_time(run.finished_at) if run.status in FINAL else None
    elapsed = max(((end or now) - started).total_seconds(), 0.0)
    t = run.training
    if run.status != "training" or t is None or t.step <= 0 or t.total_steps <= t.step:
        return elapsed, None
    return elapsed, (t.total_steps - t.step) * elapsed / t.step

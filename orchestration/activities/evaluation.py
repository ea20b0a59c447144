"""Eval-queue activities: evaluate a finished model, record it in MLflow, and serve predictions
from cached models.

The model and the snapshot may live on another host: both are read through the checkpoint store
(`open_store`), which downloads them from an object store when they are not on this one.

Evaluation and inference need torch and transformers (~300 MB, seconds to import): they are
imported with the first evaluation or prediction, not when the worker starts, so an idle eval
worker holds only the Temporal and MLflow clients.
"""

from __future__ import annotations

import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from mlflow.exceptions import RestException
from temporalio import activity

import tracking
from orchestration.activities._threads import in_executor, non_retryable, run_in_thread
from orchestration.activities.tracking import record_eval
from orchestration.input_checks import model_uri_scheme
from orchestration.ml.errors import ConfigError, StorageError
from orchestration.ml.remote_store import open_store
from orchestration.settings import Settings
from orchestration.timeouts import EVAL_WORKER_SLOTS, PREDICT_THREADS
from orchestration.types import (
    EvalInput,
    EvalMetrics,
    InferenceRequest,
    InferenceResult,
    RecordEvalInput,
)
from tracking.client import is_permanent

if TYPE_CHECKING:
    from orchestration.ml.inference import Predictor


class EvalActivities:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._store = open_store(
            settings.checkpoint_root,
            settings.checkpoint_work_dir,
            **settings.checkpoint_store_options,
        )
        # Loaded models stay in memory between predictions: loading costs far more than a call.
        # A model_uri comes from a web form: serve only finished runs' folders (checkpoint
        # store or its local copies, MLflow download cache) and the allowed local model
        # folders, nothing else.
        # Separate threads for predictions and for evaluations/recordings: however many
        # evaluations run (each holds a thread for minutes), a prediction finds a free thread
        # and answers in seconds. Tracking activities keep asyncio's default pool.
        self._work_pool = ThreadPoolExecutor(EVAL_WORKER_SLOTS, thread_name_prefix="eval-work")
        self._predict_pool = ThreadPoolExecutor(PREDICT_THREADS, thread_name_prefix="predict")
        self._predictor_roots = [
            self._store.root,
            settings.data_dir / "model-cache",
            *settings.local_roots,
        ]
        self._predictor_lock = threading.Lock()
        self._loaded_predictor: Predictor | None = None

    def _predictor(self) -> Predictor:
        """The one Predictor (and its model cache), created by the first prediction."""
        with self._predictor_lock:
            if self._loaded_predictor is None:
                from orchestration.ml.inference import Predictor  # torch: see module docstring

                self._loaded_predictor = Predictor(roots=self._predictor_roots)
            return self._loaded_predictor

    def _local(self, inp: EvalInput, to_evaluate: bool) -> EvalInput:
        """`inp` with the model as a folder on this host, plus what the activity reads: the
        snapshot to evaluate, or the metrics backlog (if any) to record."""
        training = inp.training
        update: dict[str, object] = {"model_uri": self._store.local_copy(training.model_uri)}
        if to_evaluate:
            path = self._store.local_snapshot(training.snapshot, self._settings.snapshot_dir)
            update["snapshot"] = training.snapshot.model_copy(update={"path": path})
        elif training.metrics_backlog:
            backlog = training.metrics_backlog
            update["metrics_backlog"] = backlog.model_copy(
                update={"uri": self._store.local_copy(backlog.uri)}
            )
        return inp.model_copy(update={"training": training.model_copy(update=update)})

    @activity.defn(name="evaluate_model")
    async def evaluate_model(self, inp: EvalInput) -> EvalMetrics:
        local = await run_in_thread(
            functools.partial(self._local, inp, True), threading.Event(), executor=self._work_pool
        )
        # Truncated at the length the model was trained with (recorded in its folder).
        work = functools.partial(
            _evaluate,
            local.training.model_uri,
            local.training.snapshot.path,
            device=inp.config.device,
        )
        return await run_in_thread(work, threading.Event(), executor=self._work_pool)

    @activity.defn(name="record_eval")
    async def record_eval(self, inp: RecordEvalInput) -> str:
        """Metrics and model into the MLflow run; the registered model's URI."""
        local = await run_in_thread(
            functools.partial(self._local, inp.eval, False),
            threading.Event(),
            executor=self._work_pool,
        )
        # Uploading the model takes a while: heartbeat through it like through evaluation.
        stop = threading.Event()  # set if the run is cancelled meanwhile: see record_eval
        record = functools.partial(record_eval, self._settings, local, inp.metrics, stop)
        return await run_in_thread(record, stop, executor=self._work_pool)

    @activity.defn(name="predict")
    async def predict(self, req: InferenceRequest) -> InferenceResult:
        try:
            return await in_executor(self._predict_pool, functools.partial(self._predict, req))
        except ConfigError as err:
            raise non_retryable(err) from None

    def _predict(self, req: InferenceRequest) -> InferenceResult:
        """Registered models (`models:/...`, `runs:/...`) are fetched from MLflow once."""
        # InferenceRequest refused every other scheme (no host may be named) when it was decoded.
        if model_uri_scheme(req.model_uri) in ("models", "runs"):
            try:
                folder = tracking.download_model(
                    self._settings.mlflow_tracking_uri,
                    req.model_uri,
                    str(self._settings.data_dir / "model-cache"),
                )
            except tracking.TrackingUnavailable:
                raise  # MLflow is down: worth retrying
            except tracking.TrackingError as err:
                raise ConfigError(f"model_uri: {err}") from err
            except RestException as err:  # MLflow answered: no such model, version or run
                if not is_permanent(err):
                    raise
                raise ConfigError(
                    f"model_uri: {req.model_uri!r} is not in MLflow "
                    f"({err.message}); pick a finished run's model"
                ) from err
        else:  # a finished run's model in the checkpoint store, fetched once if it is remote
            try:
                folder = self._store.local_copy(req.model_uri)
            except StorageError as err:
                raise ConfigError(f"model_uri: {err}") from err
        local = req.model_copy(update={"model_uri": folder})
        return self._predictor().predict(local).model_copy(update={"model_uri": req.model_uri})


def _evaluate(model_dir: str, snapshot_path: str, device: str) -> EvalMetrics:
    """orchestration.ml.evaluation.evaluate, imported in the calling thread (a pool's, never the
    event loop's: importing torch there would stall every other activity for seconds)."""
    from orchestration.ml.evaluation import evaluate

    return evaluate(model_dir, snapshot_path, device=device)

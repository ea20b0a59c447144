"""Eval-queue activities: evaluate a finished model, and serve predictions from cached models."""

from __future__ import annotations

import asyncio
import functools
import threading

from temporalio import activity

import tracking
from orchestration.activities._threads import non_retryable, run_in_thread
from orchestration.activities.tracking import record_eval
from orchestration.ml.errors import ConfigError
from orchestration.ml.evaluation import evaluate
from orchestration.ml.inference import Predictor
from orchestration.settings import Settings
from orchestration.types import EvalInput, EvalResult, InferenceRequest, InferenceResult


class EvalActivities:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        # Loaded models stay in memory between predictions: loading costs far more than a call.
        self._predictor = Predictor()

    @activity.defn(name="evaluate")
    async def evaluate(self, inp: EvalInput) -> EvalResult:
        cfg = inp.config
        work = functools.partial(
            evaluate, inp.training.model_uri, inp.training.snapshot.path, cfg.max_length,
            device=cfg.device,
        )
        metrics = await run_in_thread(work, threading.Event())
        model_uri = inp.training.model_uri
        if inp.mlflow_run_id:
            model_uri = await asyncio.to_thread(record_eval, self._settings, inp, metrics)
        return EvalResult(metrics=metrics, model_uri=model_uri)

    @activity.defn(name="predict")
    async def predict(self, req: InferenceRequest) -> InferenceResult:
        try:
            return await asyncio.to_thread(self._predict, req)
        except ConfigError as err:
            raise non_retryable(err) from None

    def _predict(self, req: InferenceRequest) -> InferenceResult:
        """Registered models (`models:/...`, `runs:/...`) are fetched from MLflow once."""
        if req.model_uri.split(":", 1)[0] in ("models", "runs", "mlflow-artifacts"):
            try:
                folder = tracking.download_model(
                    self._settings.mlflow_tracking_uri, req.model_uri,
                    str(self._settings.data_dir / "model-cache"),
                )
            except tracking.TrackingUnavailable:
                raise  # MLflow is down: worth retrying
            except tracking.TrackingError as err:
                raise ConfigError(f"model_uri: {err}") from err
            local = req.model_copy(update={"model_uri": folder})
            return self._predictor.predict(local).model_copy(update={"model_uri": req.model_uri})
        return self._predictor.predict(req)

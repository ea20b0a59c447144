"""Eval-queue activities: evaluate a finished model, and serve predictions from cached models."""

from __future__ import annotations

import asyncio
import functools
import threading

from temporalio import activity

from orchestration.activities._threads import non_retryable, run_in_thread
from orchestration.ml.errors import ConfigError
from orchestration.ml.evaluation import evaluate
from orchestration.ml.inference import Predictor
from orchestration.settings import Settings
from orchestration.types import EvalInput, EvalResult, InferenceRequest, InferenceResult


class EvalActivities:
    def __init__(self, settings: Settings, model_registry=None) -> None:
        self._settings = settings
        # Loaded models stay in memory between predictions: loading costs far more than a call.
        self._predictor = Predictor()
        # Records eval metrics and the final model in MLflow, returning a model URI, or None.
        self._model_registry = model_registry

    @activity.defn(name="evaluate")
    async def evaluate(self, inp: EvalInput) -> EvalResult:
        cfg = inp.config
        work = functools.partial(
            evaluate, inp.training.model_uri, inp.training.snapshot.path, cfg.max_length,
            device=cfg.device,
        )
        metrics = await run_in_thread(work, threading.Event())
        model_uri = inp.training.model_uri
        if self._model_registry and inp.mlflow_run_id:
            model_uri = await asyncio.to_thread(self._model_registry, inp, metrics)
        return EvalResult(metrics=metrics, model_uri=model_uri)

    @activity.defn(name="predict")
    async def predict(self, req: InferenceRequest) -> InferenceResult:
        try:
            return await asyncio.to_thread(self._predictor.predict, req)
        except ConfigError as err:
            raise non_retryable(err) from None

"""Serve predictions from finished runs, loading each model folder once.

The "try inference" tab sends a few texts at a time to any finished run; loading a model costs
far more than predicting, so loaded models stay in a small thread-safe LRU cache.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from pathlib import Path

import torch

from orchestration.ml.errors import ConfigError
from orchestration.ml.evaluation import predict_logits
from orchestration.ml.models import load_trained, resolve_device
from orchestration.ml.paths import links_outside, under_roots
from orchestration.ml.training import EVAL_BATCH_SIZE
from orchestration.types import InferenceRequest, InferenceResult, LabelScore


class Predictor:
    """Predicts with cached models. Safe to share between threads."""

    def __init__(self, max_models: int = 4, device: str = "auto", roots: list[Path] | None = None):
        """`roots`, when given, are the only folders a model_uri may point into."""
        self.max_models = max_models
        self.device = resolve_device(device)
        self.roots = roots
        self._cache: OrderedDict[str, tuple] = OrderedDict()
        self._lock = threading.Lock()

    def load(self, model_dir: str) -> tuple:
        """The (model, tokenizer) of `model_dir`, from the cache when it was loaded before."""
        folder = Path(model_dir)
        if self.roots is not None and (
            not under_roots(folder, self.roots)
            or (folder.is_dir() and links_outside(folder, self.roots))
        ):
            raise ConfigError(
                f"model_uri: {model_dir!r} is outside the model folders this worker serves; "
                "pick a finished run's model"
            )
        key = str(folder.resolve())
        # One lock for lookups and loads: loads are rare, and two requests for a new model must
        # not load it twice.
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            loaded = load_trained(key, self.device)
            self._cache[key] = loaded
            while len(self._cache) > self.max_models:
                self._cache.popitem(last=False)
            return loaded

    def predict(self, req: InferenceRequest) -> InferenceResult:
        """Label scores per text, best first (softmax probabilities; a regression's raw value)."""
        started = time.perf_counter()
        if req.text_pairs is not None and len(req.text_pairs) != len(req.texts):
            raise ConfigError(
                f"text_pairs: {len(req.text_pairs)} pairs for {len(req.texts)} texts; "
                "give one pair per text or none"
            )
        model, tokenizer = self.load(req.model_uri)
        logits = predict_logits(
            model, tokenizer, req.texts, req.text_pairs, req.max_length, batch_size=EVAL_BATCH_SIZE
        )
        if model.config.problem_type == "regression":
            predictions = [[LabelScore(label="value", score=float(row[0]))] for row in logits]
        else:
            names = model.config.id2label
            predictions = [
                sorted(
                    (LabelScore(label=names[i], score=float(p)) for i, p in enumerate(row)),
                    key=lambda score: score.score,
                    reverse=True,
                )
                for row in torch.from_numpy(logits).softmax(dim=-1)
            ]
        return InferenceResult(
            predictions=predictions,
            latency_ms=(time.perf_counter() - started) * 1000,
            model_uri=req.model_uri,
        )

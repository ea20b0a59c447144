"""Models the page can use: the inference picker's choices, the `champion` alias, predictions.

The picker lists registry aliases first (`models:/<experiment>@champion`), then the chosen
experiment's or sweep's finished runs (from Temporal), then every run MLflow holds a model for;
a source that cannot be read adds a note instead of hiding the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from demo.backend import Unavailable
from demo.sweep_view import params_text
from orchestration.client import predict
from orchestration.ml.builtin_data import BUILTINS
from orchestration.timeouts import INFERENCE_CALLER_MARGIN_S, INFERENCE_TIMEOUT
from orchestration.types import InferenceRequest, InferenceResult
from tracking.reader import finished_runs_with_models, summarize
from tracking.registry import CHAMPION, alias_version, list_aliases, set_alias, version_of

if TYPE_CHECKING:
    from demo.service import Service

# The first prediction of a model loads it on the worker; the workflow's own timeout comes first.
PREDICT_TIMEOUT_S = INFERENCE_TIMEOUT.total_seconds() + INFERENCE_CALLER_MARGIN_S


@dataclass(frozen=True)
class ModelOption:
    """A finished run that can serve predictions, as the inference picker lists it."""

    label: str
    model_uri: str
    dataset: str | None


def option_label(
    title: str, accuracy: float | None, summary: str, model_uri: str, star: str = ""
) -> str:
    """One format for every entry of the inference picker:
    "<title> — accuracy 0.812 · <configuration summary> · <model URI>"."""
    parts = [f"{star}{title}" + ("" if accuracy is None else f" — accuracy {accuracy:.3f}")]
    return " · ".join([*parts, *([summary] if summary else []), model_uri])


def _float(value: str | None) -> float | None:
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


class Models:
    def __init__(self, experiments: Service) -> None:
        self.experiments = experiments  # results and configurations, kept once ended
        self.backend = experiments.backend

    def model_options(self, experiment_id: str | None) -> tuple[list[ModelOption], str]:
        """What the inference picker offers: registry aliases (`models:/<experiment>@champion`)
        first, then the chosen experiment's finished runs (from Temporal), then every
        registered one in MLflow; and a note on whichever source could not be read."""
        options: dict[str, ModelOption] = {}
        notes = []
        try:
            for a in self.backend.mlflow(list_aliases):
                title = f"{a.name}@{a.alias} = {a.config or '?'} (version {a.version})"
                label = option_label(
                    title, _float(a.tags.get("eval_accuracy")), "", a.model_uri, star="★ "
                )
                options[a.model_uri] = ModelOption(label, a.model_uri, a.tags.get("dataset"))
        except Unavailable as err:
            notes.append(str(err))
        if experiment_id:
            try:
                if self.experiments.sweeps.is_sweep(experiment_id):
                    self._add_sweep_options(experiment_id, options)
                else:
                    self._add_result_options(experiment_id, options)
            except Exception as err:
                notes.append(str(err))
        try:
            for m in self.backend.mlflow(finished_runs_with_models):
                dataset = next((w for w in m.summary.split() if w in BUILTINS), None)
                title = f"{m.experiment_name} / {m.run_name}"
                label = option_label(title, m.eval_accuracy, m.summary, m.model_uri)
                options.setdefault(m.model_uri, ModelOption(label, m.model_uri, dataset))
        except Unavailable as err:
            notes.append(str(err))
        return list(options.values()), " ".join(dict.fromkeys(notes))

    def _add_result_options(self, experiment_id: str, options: dict[str, ModelOption]) -> None:
        result = self.experiments.result(experiment_id)
        if result is None:
            return
        configs = self.experiments.configs(experiment_id)
        for run in result.runs:
            if run.status != "completed" or not run.model_uri:
                continue
            cfg = configs.get(run.name)
            params = {k: str(v) for k, v in cfg.model_dump().items()} if cfg else {}
            options[run.model_uri] = ModelOption(
                option_label(
                    f"{result.name} / {run.name}",
                    run.eval.accuracy if run.eval else None,
                    summarize(params),
                    run.model_uri,
                ),
                run.model_uri,
                cfg.dataset if cfg else None,
            )

    def _add_sweep_options(self, sweep_id: str, options: dict[str, ModelOption]) -> None:
        """A sweep's trials that trained to the end with a model, the best one first (★)."""
        progress = self.experiments.sweeps.progress(sweep_id)
        trials = sorted(
            (t for t in progress.trials if t.model_uri), key=lambda t: t.name != progress.best
        )
        for trial in trials:
            assert trial.model_uri is not None
            best = trial.name == progress.best
            options[trial.model_uri] = ModelOption(
                option_label(
                    f"{progress.name} / {trial.name}" + (" (best trial)" if best else ""),
                    trial.eval.accuracy if trial.eval else None,
                    params_text(trial.params),
                    trial.model_uri,
                    star="★ " if best else "",
                ),
                trial.model_uri,
                None,
            )

    def champion(self, experiment_id: str) -> str | None:
        """The configuration of this experiment that `models:/<experiment>@champion` points at
        now; None while it runs, or when the alias points at another launch's version."""
        result = self.experiments.result(experiment_id)
        registered = [
            (found, r.name)
            for r in (result.runs if result else [])
            if (found := version_of(r.model_uri))
        ]
        if not registered:
            return None
        model = registered[0][0][0]  # one registered model per experiment
        current = self.backend.mlflow(alias_version, model, CHAMPION)
        return next((name for (_, version), name in registered if version == current), None)

    def set_champion(self, experiment_id: str, configuration: str) -> str:
        """Point `champion` at `configuration` of this (ended) experiment; the alias's URI."""
        result = self.experiments.result(experiment_id)
        if result is None:
            raise ValueError(f"experiment_id: {experiment_id} is still running; wait for it to end")
        run = next((r for r in result.runs if r.name == configuration), None)
        if run is None or run.status != "completed" or version_of(run.model_uri) is None:
            names = [r.name for r in result.runs if version_of(r.model_uri)]
            raise ValueError(
                f"configuration: {configuration!r} has no registered model in {experiment_id}; "
                f"pick one of {names}"
            )
        assert run.model_uri is not None
        return self.backend.mlflow(set_alias, run.model_uri, CHAMPION)

    def predict(self, model_uri: str, texts: list[str]) -> InferenceResult:
        req = InferenceRequest(model_uri=model_uri, texts=texts)
        return self.backend.call(predict, req, self.backend.cfg, timeout=PREDICT_TIMEOUT_S)

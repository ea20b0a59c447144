"""Step-level timing inside the product's own training code, without changing that code.

The product's `train()` builds its Trainer through the module-level name
`orchestration.ml.training.RunTrainer`; `install()` points that name at a subclass of it with
`Probed` mixed in, which adds one callback and times evaluations and checkpoint saves (the plain
scripts use `ProbedTrainer`, the same over the stock Trainer). Each event is one JSON line
appended to a file, so the bench process follows steps live across worker processes, including
one it SIGKILLs. The cost is one short write per step: microseconds against a training step of
tens to hundreds of milliseconds.

Events per run (the Trainer's output_dir names the run): init (Trainer built: model loaded, rows
tokenized), train_begin, step_begin/step_end, eval_begin/eval_end, save_begin/save_end (the
Trainer's save plus every on_save callback, so the product's marker and rotation are included),
train_end.

The product trains in run processes of its own (orchestration.ml.runner): `bench.worker` names
`install_from_env` in BERTFLEET_RUN_INIT, so each run process installs the probe before it
trains. Every event carries its process's pid and its parent's (`ppid`: the worker, for a run
process), so `Timeline.of_pid(worker_pid)` selects what a worker's runs did.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from unittest import mock

from transformers import Trainer, TrainerCallback


class ProbeLog:
    """Append-only JSON lines; one `os.write` per event on an O_APPEND descriptor, so lines from
    several threads and processes never interleave."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()

    def write(self, run: str, event: str, step: int) -> None:
        line = json.dumps(
            {
                "run": run,
                "ev": event,
                "step": step,
                "t": time.time(),
                "pid": os.getpid(),
                "ppid": os.getppid(),
            }
        )
        with self._lock:
            os.write(self._fd, (line + "\n").encode())


class _StepCallback(TrainerCallback):
    def __init__(self, probe: ProbeLog, run: str) -> None:
        self.probe, self.run = probe, run

    def on_train_begin(self, args, state, control, **kwargs):
        self.probe.write(self.run, "train_begin", state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        self.probe.write(self.run, "step_begin", state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.probe.write(self.run, "step_end", state.global_step)

    def on_save(self, args, state, control, **kwargs):
        self.probe.write(self.run, "save_end", state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.probe.write(self.run, "train_end", state.global_step)


class Probed(Trainer):
    """Mixed into a Trainer class: reports its steps, evaluations and saves to `Probed.probe`."""

    probe: ProbeLog | None = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        assert self.probe is not None, "call bench.probe.enable() first"
        self._log: ProbeLog = self.probe
        self._run = str(self.args.output_dir)
        # Added last, so its on_save runs after the product's (marker + rotation).
        self.add_callback(_StepCallback(self._log, self._run))
        self._log.write(self._run, "init", 0)

    def evaluate(self, *args, **kwargs):
        self._log.write(self._run, "eval_begin", self.state.global_step)
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self._log.write(self._run, "eval_end", self.state.global_step)

    def _save_checkpoint(self, model, trial):
        self._log.write(self._run, "save_begin", self.state.global_step)
        super()._save_checkpoint(model, trial)


class ProbedTrainer(Probed, Trainer):
    """The stock Trainer, probed: what the plain scripts train with."""


def enable(path: str) -> None:
    Probed.probe = ProbeLog(path)


def install(path: str) -> None:
    """Make the product's train() use its own Trainer, probed, in this process."""
    from orchestration.ml import training

    enable(path)
    probed = type("ProbedRunTrainer", (Probed, training.RunTrainer), {})
    # For the rest of this process: the patch is never stopped.
    mock.patch.object(training, "RunTrainer", probed).start()


def install_from_env() -> None:
    """`install(BENCH_PROBE_FILE)`: what a run process calls (BERTFLEET_RUN_INIT)."""
    install(os.environ["BENCH_PROBE_FILE"])


def read_events(path: str) -> dict[str, list[dict]]:
    """Events per run, in time order. A line cut short by a SIGKILL is skipped."""
    runs: dict[str, list[dict]] = defaultdict(list)
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            runs[event["run"]].append(event)
    return {run: sorted(events, key=lambda e: e["t"]) for run, events in runs.items()}


@dataclass
class Timeline:
    """One run's events (optionally one process's), summarised."""

    events: list[dict]

    def of_pid(self, pid: int) -> Timeline:
        """The events of process `pid`, and of its run processes."""
        return Timeline([e for e in self.events if pid in (e["pid"], e.get("ppid"))])

    def pids(self) -> set[int]:
        """The processes that wrote these events (run processes, for the product)."""
        return {e["pid"] for e in self.events}

    def first(self, event: str) -> dict | None:
        return next((e for e in self.events if e["ev"] == event), None)

    def last(self, event: str) -> dict | None:
        return next((e for e in reversed(self.events) if e["ev"] == event), None)

    def require_first(self, event: str) -> dict:
        """The first `event`, which a finished run must have logged."""
        return self._required(self.first(event), event)

    def require_last(self, event: str) -> dict:
        """The last `event`, which a finished run must have logged."""
        return self._required(self.last(event), event)

    @staticmethod
    def _required(found: dict | None, event: str) -> dict:
        if found is None:
            raise RuntimeError(f"bench: the probe log has no {event!r} event for this run")
        return found

    def spans(self, name: str) -> list[tuple[int, float]]:
        """(step, seconds) for each `<name>_begin` .. `<name>_end` pair."""
        out, begun = [], None
        for e in self.events:
            if e["ev"] == f"{name}_begin":
                begun = e
            elif e["ev"] == f"{name}_end" and begun is not None:
                out.append((e["step"], e["t"] - begun["t"]))
                begun = None
        return out

    def seconds(self, name: str) -> float:
        """Total time in `name` spans between train_begin and train_end (the plain script's
        final evaluation comes after training and is not counted)."""
        begin, end = self.first("train_begin"), self.last("train_end")
        lo = begin["t"] if begin else float("-inf")
        hi = end["t"] if end else float("inf")
        inside = Timeline([e for e in self.events if lo <= e["t"] <= hi])
        return sum(s for _, s in inside.spans(name))

    def train_seconds(self) -> float:
        begin, end = self.first("train_begin"), self.last("train_end")
        return end["t"] - begin["t"] if begin and end else float("nan")

    def steps_done(self) -> int:
        ends = [e["step"] for e in self.events if e["ev"] == "step_end"]
        return max(ends, default=0)

    def breakdown(self) -> dict[str, float]:
        """Where the training phase went: steps, saves, in-training evaluation, the rest."""
        total = self.train_seconds()
        parts = {
            "steps_s": self.seconds("step"),
            "checkpoint_saves_s": self.seconds("save"),
            "eval_during_training_s": self.seconds("eval"),
        }
        parts["other_s"] = total - sum(parts.values())
        return {"train_s": total, **parts, "steps": self.steps_done()}

"""SweepWorkflow: an adaptive search over checkpointed trials, every decision in its state.

The loop: while a training slot is free (max_concurrent), continue a promoted trial to its next
rung, else sample a new trial (the `sweep_suggest` activity, from the recorded trials) and train
it to the first rung. Each rung is a TrainingWorkflow child stopped at the rung's step with a
checkpoint (`stop_at_step`), so a promoted trial continues from it as if never stopped; a trial
that reaches max_steps is evaluated on the held-out eval split (EvalWorkflow, which also
registers its model). ASHA (asha.py) decides promotions and pruning from the validation metric,
in an order fixed by trial numbers, so the sweep decides the same however its trials were timed,
interrupted or resumed.

Trial n is sampled once trials 0..n - max_concurrent have their first-rung result (or ended),
and the sampler sees exactly those results (later trials as running): the suggestions too are a
function of the results alone. Budgets (steps, seconds of training measured by the activities)
stop sampling once reached; where they cut a sweep short depends on timing.

The history stays bounded: after `continue_after_events` rung results the workflow stops
launching, lets the running rungs end and continues as new with its state (trials, ASHA's
bookkeeping, the promotion queue). Cancel one trial with the `cancel_trial` signal, the whole
sweep by cancelling the workflow: running trials stop, and the result still names the best.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ChildWorkflowError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from orchestration import search
    from orchestration.sweep.asha import Asha, Decision
    from orchestration.sweep.outcome import best_trial, result, verdict
    from orchestration.sweep.records import SweepRecords
    from orchestration.sweep.space import trial_config
    from orchestration.sweep.suggest import PastTrial, SuggestInput
    from orchestration.sweep.types import (
        ENDED,
        SweepCarry,
        SweepInput,
        SweepProgress,
        SweepRequest,
        SweepResult,
        TrialState,
    )
    from orchestration.types import (
        EvalInput,
        EvalResult,
        TrainingResult,
        TrainingWorkflowInput,
    )
    from orchestration.workflows import (
        NON_RETRYABLE,
        EvalWorkflow,
        TrainingWorkflow,
        root_message,
        summarised_metrics,
    )

SUGGEST_TIMEOUT = timedelta(minutes=2)
SUGGEST_RETRY = RetryPolicy(maximum_attempts=5, non_retryable_error_types=NON_RETRYABLE)


def trial_name(number: int) -> str:
    return f"trial-{number:03d}"


@workflow.defn(name="SweepWorkflow")
class SweepWorkflow(SweepRecords):
    @workflow.init
    def __init__(self, inp: SweepInput) -> None:
        req = inp.request
        carry = inp.carry or SweepCarry(
            progress=SweepProgress(
                sweep_id=workflow.info().workflow_id,
                name=req.name,
                metric=req.metric,
                direction=req.goal,
                rungs=req.rungs(),
            ),
            asha=Asha(rungs=req.rungs(), eta=req.eta, direction=req.goal),
        )
        self._req = req
        self._carry = carry
        self._progress, self._asha = carry.progress, carry.asha
        self._running: dict[str, asyncio.Task[None]] = {}
        # Trials whose cancel came while they trained: cancelling the task asks the child
        # workflow to cancel, but a child that completes anyway (its last step was done) returns
        # its result as if nothing was asked, so the rung checks this set after each child.
        self._cancel_requested: set[str] = set()
        self._side: list[asyncio.Task[None]] = []  # MLflow records, awaited before the end
        self._events = 0  # rung results in this run (continue-as-new after enough)
        self._wake = False

    # ---- the loop ----------------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: SweepInput) -> SweepResult:
        req = inp.request
        queue = workflow.memo_value("training_queue", "bert-training-task-queue", type_hint=str)
        cancelled = False
        try:
            if inp.carry is None:
                await self._open_tracking(req)
            while True:
                self._wake = False  # set by every rung's end, decision and signal
                draining = self._events >= req.continue_after_events or (
                    workflow.info().is_continue_as_new_suggested()
                )
                if not draining:
                    self._continue_promoted(req, queue)
                    if self._may_sample(req):
                        await self._sample(req, queue)
                        continue
                if not self._running:
                    if self._asha.done:
                        break
                    if draining:
                        if self._side:
                            await workflow.wait(self._side)
                        workflow.continue_as_new(SweepInput(request=req, carry=self._carry))
                await workflow.wait_condition(lambda: self._wake)
        except asyncio.CancelledError:
            cancelled = True
            self._cancel_requested.update(self._running)
            for task in self._running.values():
                task.cancel()
            if self._running:
                await workflow.wait(list(self._running.values()))
            for trial in self._progress.trials:
                if trial.status not in ENDED:
                    self._end(trial, "cancelled", None)
        return await self._finish(cancelled)

    def _sampling_done(self, req: SweepRequest) -> bool:
        return self._carry.sampling_stopped or len(self._progress.trials) >= req.n_trials

    def _may_sample(self, req: SweepRequest) -> bool:
        """A new trial now? Slots free, trials left, budget left, earlier results in."""
        if self._sampling_done(req) or len(self._running) >= req.max_concurrent:
            return False
        p = self._progress
        if (req.budget_steps and p.steps_trained_total >= req.budget_steps) or (
            req.budget_seconds and sum(t.train_seconds for t in p.trials) >= req.budget_seconds
        ):
            self._carry.sampling_stopped = True
            self._decide(self._asha.advance(sampling_done=True))
            return False
        first = p.rungs[0]
        number = len(p.trials)
        return all(
            first in t.rung_metrics or t.status in ("failed", "cancelled")
            for t in p.trials[: max(0, number - req.max_concurrent + 1)]
        )

    async def _sample(self, req: SweepRequest, queue: str) -> None:
        trials = self._progress.trials
        number = len(trials)
        known = number - req.max_concurrent + 1  # trials whose first-rung result counts
        first = self._progress.rungs[0]
        history = [
            PastTrial(params=t.params, value=t.rung_metrics.get(first), state="complete")
            if t.number < known and t.rung_metrics.get(first) is not None
            else PastTrial(params=t.params, state="fail" if t.number < known else "running")
            for t in trials
        ]
        params: dict = await workflow.execute_activity(
            "sweep_suggest",
            SuggestInput(request=req, number=number, history=history),
            result_type=dict,
            start_to_close_timeout=SUGGEST_TIMEOUT,
            retry_policy=SUGGEST_RETRY,
        )
        trial = TrialState(name=trial_name(number), number=number, params=params)
        trials.append(trial)
        self._progress.steps_full_budget = len(trials) * req.max_steps
        self._asha.add_trial(trial.name)
        self._start(req, queue, trial)

    def _continue_promoted(self, req: SweepRequest, queue: str) -> None:
        while self._carry.promoted_queue and len(self._running) < req.max_concurrent:
            trial = self._trial(self._carry.promoted_queue.pop(0))
            if trial.status == "promoted":
                self._start(req, queue, trial)

    def _start(self, req: SweepRequest, queue: str, trial: TrialState) -> None:
        trial.status = "running"
        self._running[trial.name] = asyncio.create_task(self._rung(req, queue, trial))

    # ---- one rung of one trial ---------------------------------------------------------------

    async def _rung(self, req: SweepRequest, queue: str, trial: TrialState) -> None:
        sweep_id, k = self._progress.sweep_id, trial.rung
        step = self._progress.rungs[k]
        cfg = trial_config(req, trial.name, trial.params)
        try:
            if trial.mlflow_run_id is None and self._progress.mlflow_parent_run_id:
                trial.mlflow_run_id = await self._open_run(cfg, trial)
            result: TrainingResult = await workflow.execute_child_workflow(
                TrainingWorkflow.run,
                TrainingWorkflowInput(
                    experiment_id=sweep_id,
                    experiment_name=req.name,
                    config=cfg,
                    heartbeat_timeout_s=req.heartbeat_timeout_s,
                    max_attempts=req.max_attempts,
                    mlflow_run_id=trial.mlflow_run_id,
                    stop_at_step=step,
                ),
                id=f"{sweep_id}--{trial.name}--r{k}",
                task_queue=queue,
                search_attributes=search.run_attributes(req.name, cfg),
            )
            self._progress.steps_trained_total += result.final_step - trial.steps_trained
            trial.steps_trained = result.final_step
            trial.train_seconds += result.train_seconds
            trial.model_uri = result.model_uri
            if trial.name in self._cancel_requested:
                raise asyncio.CancelledError()
            if k == len(self._progress.rungs) - 1:  # completed: the held-out verdict
                outcome: EvalResult = await workflow.execute_child_workflow(
                    EvalWorkflow.run,
                    EvalInput(
                        config=cfg,
                        training=result,
                        experiment_name=req.name,
                        experiment_id=sweep_id,
                        mlflow_run_id=trial.mlflow_run_id,
                        heartbeat_timeout_s=req.heartbeat_timeout_s,
                    ),
                    id=f"{sweep_id}--{trial.name}--eval",
                    search_attributes=search.run_attributes(req.name, cfg),
                )
                trial.eval, trial.model_uri = summarised_metrics(outcome.metrics), outcome.model_uri
                if trial.name in self._cancel_requested:
                    raise asyncio.CancelledError()
            trial.rung_metrics[step] = result.validation.get(req.metric)
            trial.status = "paused"
            self._asha.report(trial.name, k, trial.rung_metrics[step])
            self._events += 1
        except (asyncio.CancelledError, ChildWorkflowError, ActivityError) as err:
            if is_cancelled_exception(err):
                self._end(trial, "cancelled", None)
            else:
                self._end(trial, "failed", root_message(err))
        # Not in a `finally`: a worker evicting this workflow tears the coroutine down outside
        # the workflow's event loop.
        del self._running[trial.name]
        self._decide(self._asha.advance(self._sampling_done(req)))

    def _end(self, trial: TrialState, status: str, error: str | None) -> None:
        """A trial failed or was cancelled: it takes part in no further rung."""
        trial.status = "failed" if status == "failed" else "cancelled"
        trial.error = error
        self._asha.end(trial.name)
        self._record(trial, "FAILED" if status == "failed" else "KILLED")

    def _decide(self, decisions: list[Decision]) -> None:
        for d in decisions:
            trial = self._trial(d.trial)
            if trial.status in ("failed", "cancelled"):
                continue  # cancelled while waiting at its rung: no promotion, no pruning
            if d.kind == "promote":
                trial.status, trial.rung = "promoted", d.rung + 1
                self._carry.promoted_queue.append(trial.name)
            elif d.kind == "prune":
                trial.status = "pruned"
                self._record(trial, "FINISHED")
            else:
                trial.status = "completed"
                self._record(trial, None)  # record_eval ended its run FINISHED
        best = best_trial(self._progress)
        self._progress.best = best.name if best else None
        self._wake = True

    def _trial(self, name: str) -> TrialState:
        return next(t for t in self._progress.trials if t.name == name)

    async def _finish(self, cancelled: bool) -> SweepResult:
        """The parent run's verdict (leaderboard, best trial, champion), then the result."""
        p = self._progress
        best = best_trial(p)
        p.best = best.name if best else None
        parent = verdict(p, cancelled)
        if parent is not None:
            self._side.append(asyncio.create_task(self._track("sweep_record_verdict", parent)))
        if self._side:
            await workflow.wait(self._side)
        p.status = "cancelled" if cancelled else "completed"
        # Sweeps begun by workers without this update replay without it.
        if search.searchable() and workflow.patched("sweep-search-attributes"):
            workflow.upsert_search_attributes([search.STATUS.value_set(p.status)])
        return result(p)

    # ---- handlers ------------------------------------------------------------------------------

    @workflow.signal
    def cancel_trial(self, name: str) -> None:
        """Stop one trial; the search goes on without it. Unknown names are logged, repeats
        and ended trials ignored."""
        trial = next((t for t in self._progress.trials if t.name == name), None)
        if trial is None:
            workflow.logger.warning("cancel_trial: no trial %r in this sweep", name)
            return
        if trial.status in ENDED:
            return
        if name in self._running:
            self._cancel_requested.add(name)
            self._running[name].cancel()  # the rung ends it cancelled
            return
        self._end(trial, "cancelled", None)
        self._decide(self._asha.advance(self._sampling_done(self._req)))

    @workflow.query
    def progress(self) -> SweepProgress:
        return self._progress

"""Asynchronous successive halving (ASHA, Li et al. 2020), made reproducible.

Rungs are step counts: min_steps * eta**k below max_steps, then max_steps. Every trial trains
to the first rung; at each rung below the top ASHA's rule applies: of the n trials that have
reached rung k, the best floor(n / eta) are promoted to rung k + 1 (promotions are final: a
trial once promoted stays promoted, even if later arrivals outrank it). A trial that is not
(yet) among them waits at its rung ("paused"): more arrivals raise floor(n / eta) and may
promote it later. Once no trial can reach rung k any more (rung k - 1 is closed, or for the
first rung no trial is left to sample, and every trial sent to rung k has arrived or ended),
the rung closes: its waiting trials are pruned. If it closes without having promoted anyone
(fewer than eta arrivals), its best trial is promoted, so every sweep trains at least one
trial to max_steps. A trial that reaches the top rung is completed.

What makes it reproducible: the paper's "n trials that have reached rung k" depends on which
trial finishes first, which depends on the machine's timing. Here arrivals at a rung are taken
in a fixed order instead: at the first rung by trial number, at rung k + 1 in the order the
promotions from rung k were made. A result that arrives early waits until every trial before it
in that order has arrived (or ended) before it counts. So the promotions are a function of the
trials' metrics alone, however the trials were scheduled, interrupted or resumed; the price is
that a fast trial may wait for a slow one before its promotion is decided.

Ranking: better metric first (per the direction), a missing value (NaN, diverged) last, ties
by arrival order.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Direction = Literal["maximize", "minimize"]


class Decision(BaseModel):
    """What advance() decided for one trial at one rung (rung is an index into the rungs)."""

    kind: Literal["promote", "prune", "complete"]
    trial: str
    rung: int


class Asha(BaseModel):
    """The rung bookkeeping of one sweep: plain data, so it travels through continue-as-new."""

    model_config = ConfigDict(extra="forbid")

    rungs: list[int]
    eta: int
    direction: Direction
    # Per rung: trials in the order their results count (first rung: trial number; then the
    # order of promotion), how far that order has been taken in, who arrived, who was promoted.
    order: list[list[str]] = Field(default_factory=list)
    taken: list[int] = Field(default_factory=list)
    arrived: list[list[str]] = Field(default_factory=list)
    promoted: list[list[str]] = Field(default_factory=list)
    closed: list[bool] = Field(default_factory=list)
    values: dict[str, dict[int, float | None]] = Field(default_factory=dict)
    ended: list[str] = Field(default_factory=list, description="failed or cancelled trials")

    def model_post_init(self, _context: object) -> None:
        n = len(self.rungs)
        for name in ("order", "arrived", "promoted"):
            if not getattr(self, name):
                setattr(self, name, [[] for _ in range(n)])
        if not self.taken:
            self.taken = [0] * n
        if not self.closed:
            self.closed = [False] * n

    @property
    def top(self) -> int:
        return len(self.rungs) - 1

    def add_trial(self, trial: str) -> None:
        """A new trial, in trial-number order: it trains towards the first rung."""
        self.order[0].append(trial)
        self.values[trial] = {}

    def report(self, trial: str, rung: int, value: float | None) -> None:
        """The trial's validation metric at rung index `rung`."""
        self.values[trial][rung] = value

    def end(self, trial: str) -> None:
        """The trial failed or was cancelled: it counts at no rung it has not reached."""
        if trial not in self.ended:
            self.ended.append(trial)

    def _key(self, rung: int, trial: str) -> tuple[int, float, int]:
        value = self.values[trial].get(rung)
        position = self.arrived[rung].index(trial)
        if value is None:
            return (1, 0.0, position)
        return (0, -value if self.direction == "maximize" else value, position)

    def _ranked(self, rung: int) -> list[str]:
        return sorted(self.arrived[rung], key=lambda t: self._key(rung, t))

    def _promote(self, rung: int, trial: str, out: list[Decision]) -> None:
        self.promoted[rung].append(trial)
        self.order[rung + 1].append(trial)
        out.append(Decision(kind="promote", trial=trial, rung=rung))

    def advance(self, sampling_done: bool) -> list[Decision]:
        """Take in every result that now counts, and decide what follows; the decisions in the
        order they were made. `sampling_done`: no new trial will be added."""
        out: list[Decision] = []
        changed = True
        while changed:
            changed = False
            for k in range(len(self.rungs)):
                changed |= self._take(k, out)
                changed |= self._close(k, sampling_done, out)
        return out

    def _take(self, k: int, out: list[Decision]) -> bool:
        """Take in rung k's results that count now, deciding after each one (so how many
        arrived between two calls never matters)."""
        changed = False
        while self.taken[k] < len(self.order[k]):
            trial = self.order[k][self.taken[k]]
            if k in self.values[trial]:
                self.arrived[k].append(trial)
                if k == self.top:
                    out.append(Decision(kind="complete", trial=trial, rung=k))
                else:
                    quota = len(self.arrived[k]) // self.eta
                    for best in self._ranked(k)[:quota]:
                        if best not in self.promoted[k]:
                            self._promote(k, best, out)
            elif trial not in self.ended:
                break
            self.taken[k] += 1
            changed = True
        return changed

    def _close(self, k: int, sampling_done: bool, out: list[Decision]) -> bool:
        feeds_closed = sampling_done if k == 0 else self.closed[k - 1]
        if self.closed[k] or not feeds_closed or self.taken[k] < len(self.order[k]):
            return False
        self.closed[k] = True
        if k < self.top:
            if self.arrived[k] and not self.promoted[k]:
                self._promote(k, self._ranked(k)[0], out)
            for trial in self._ranked(k):
                if trial not in self.promoted[k]:
                    out.append(Decision(kind="prune", trial=trial, rung=k))
        return True

    @property
    def done(self) -> bool:
        return all(self.closed)

    def waiting(self, trial: str) -> bool:
        """Arrived at a rung, neither promoted nor pruned yet."""
        return any(
            trial in self.arrived[k] and trial not in self.promoted[k] and not self.closed[k]
            for k in range(self.top)
        )

    def best(self) -> str | None:
        """The best trial at the highest rung anyone has reached (the sweep's winner once
        every rung is closed)."""
        for k in range(self.top, -1, -1):
            if self.arrived[k]:
                return self._ranked(k)[0]
        return None

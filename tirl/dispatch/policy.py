"""Dispatch policies as pure functions: which engine gets the next trajectory, or none yet.

The real :class:`~tirl.dispatch.dispatcher.Dispatcher` and the simulator
(:mod:`tirl.dispatch.sim`) both call :func:`choose_engine` with a snapshot of per-engine
load, so the policy that is measured is the policy that runs.

Policies:

* ``static`` — the paper's baseline: a group (GRPO problem) is given to engine
  ``group_index % K`` in order of first appearance; no admission control (the engine's
  own scheduler queues and preempts).
* ``round_robin`` — trajectory ``n`` goes to engine ``n % K``; no admission control.
* ``least_requests`` — the engine with the fewest trajectories in flight (what most
  routers do); waits only when every engine is at ``max_active``.
* ``kv`` — the paper's scheduler: a trajectory books KV tokens (prompt + maximum response
  under the paper's rule; less under a forecast, see :mod:`tirl.dispatch.forecast`); it
  goes to the engine with the most free (unbooked) KV tokens that can hold it, and waits
  when none can. Live metrics lower an engine's free estimate when the engine is fuller
  than its bookings say (other clients, a wrong capacity), and an engine that reports
  queued requests gets nothing new.

Which waiting trajectory goes next is :class:`LongestFirstOrder` (or arrival order); under
``kv`` an engine holding fewer trajectories of the same group goes first when the caller
passes ``siblings``; and an engine can be bounded by its trajectories' summed usage curve
(:meth:`EngineLoad.set_future`) instead of the sum of their peaks.

Bookings that are expectations (``peak`` booking) carry a variance: an engine keeps
``safety_sd`` standard deviations of its summed bookings free (trajectories are
independent, so the variances add). Bookings are made at turn boundaries; when the caller
also tracks the context its trajectories had at those boundaries (``context_tokens``),
what they have grown since — live usage minus that context — is added to the bookings, so
a trajectory deep into a long turn counts at its real size.

Unknown capacity (``kv``): until the config or the engine's metrics give an engine's KV
capacity, it is assumed to hold :data:`UNKNOWN_CAPACITY_TOKENS` — a conservative guess (one
long trajectory; a real GPU engine holds several times more), so an engine nobody has
measured neither gets every lease first nor overflows while its metrics are pending. An idle
engine of unknown capacity still takes one lease of any size, so nothing waits forever on
the guess. Set ``dispatch.kv_capacity_tokens`` or serve ``/metrics`` to use the real number.

What this module does not do: waiting or I/O; callers own the state (LongestFirstOrder is
the waiting line as plain data, fed by the caller).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

UNKNOWN_CAPACITY_TOKENS = 32768  # KV tokens assumed for an engine whose capacity is not known yet


@dataclass
class EngineLoad:
    """What a policy may know about one engine at the moment of a decision."""

    capacity_tokens: int | None = None  # KV tokens; None = unknown (UNKNOWN_CAPACITY_TOKENS assumed)
    reserved_tokens: int = 0  # sum of reservations of trajectories in flight here
    active: int = 0  # trajectories in flight here
    max_active: int | None = None  # cap on active, None = no cap
    healthy: bool = True
    live_used_tokens: int | None = None  # from metrics: KV tokens in use right now
    live_waiting: int | None = None  # from metrics: requests queued inside the engine
    reserved_var: float = 0.0  # summed variance of the bookings (tokens²); 0 = bookings are sure
    headroom: float = 0.0  # fraction of the capacity kept unbooked
    safety_sd: float = 0.0  # standard deviations of the summed bookings kept free
    # context of the trajectories in flight at their last turn boundary (when their bookings
    # were made); None = not tracked, live usage then only caps the free estimate
    context_tokens: int | None = None
    # time-aligned bound (set_future): expected KV held j·r tokens from now by the trajectories
    # here, and its variance (numpy arrays); None = the bookings' sum bounds it
    future_mean: Any = None
    future_var: Any = None
    future_used: float | None = None  # max over j of mean + safety_sd·sd (cached by set_future)

    def set_future(self, mean, var) -> None:
        """Bound this engine by the trajectories' expected usage curve (its maximum over the future)."""
        self.future_mean, self.future_var = mean, var
        self.future_used = float((mean + self.safety_sd * np.sqrt(np.maximum(var, 0.0))).max()) if len(mean) else 0.0

    def add_future(self, mean, var) -> None:
        """A trajectory joins: add its curve to the engine's."""
        self.set_future(self.future_mean + mean, self.future_var + var)

    def fits_future(self, mean, var) -> bool:
        """Whether a trajectory with this curve keeps the engine's maximum within capacity."""
        cap = UNKNOWN_CAPACITY_TOKENS if self.capacity_tokens is None else self.capacity_tokens
        total = self.future_mean + mean + self.safety_sd * np.sqrt(np.maximum(self.future_var + var, 0.0))
        return float(total.max()) <= cap * (1 - self.headroom)

    def free_tokens(self) -> float:
        """Unbooked KV tokens (of :data:`UNKNOWN_CAPACITY_TOKENS` while the capacity is unknown).

        Free = capacity · (1 − ``headroom``) − used, where used = bookings + ``safety_sd`` ·
        sd(bookings); with live usage, also what the trajectories grew since their bookings
        (live − ``context_tokens``) or, untracked, at least the live usage.
        """
        cap = UNKNOWN_CAPACITY_TOKENS if self.capacity_tokens is None else self.capacity_tokens
        if self.future_used is not None:
            used = self.future_used
            if self.live_used_tokens is not None:
                used = max(used, self.live_used_tokens)
            return cap * (1 - self.headroom) - used
        used = self.reserved_tokens + self.safety_sd * math.sqrt(max(self.reserved_var, 0.0))
        if self.live_used_tokens is not None:
            if self.context_tokens is None:
                used = max(used, self.live_used_tokens)
            else:
                used += max(0, self.live_used_tokens - self.context_tokens)
        return cap * (1 - self.headroom) - used

    def has_slot(self) -> bool:
        return self.max_active is None or self.active < self.max_active


def static_engine(group_index: int, n_engines: int) -> int:
    """The fixed engine of the ``group_index``-th group (the paper's N-per-GPU baseline)."""
    return group_index % n_engines


def choose_engine(
    policy: str,
    loads: list[EngineLoad],
    reserve_tokens: int,
    *,
    ordinal: int = 0,
    group_index: int = 0,
    preferred: int | None = None,
    reserve_future: tuple | None = None,
    siblings: Sequence[int] | None = None,
) -> int | None:
    """The engine index for a new trajectory, or None when it must wait.

    ``ordinal`` is the trajectory's arrival number (round_robin), ``group_index`` the
    arrival number of its group (static), ``preferred`` an engine to use if it qualifies
    (group affinity). ``kv``: ``siblings[i]`` (optional) counts the trajectories of the same
    group in flight on engine ``i``; the engine with the fewest wins before the one with
    the most free tokens — a group's lengths are correlated, so spreading it keeps each
    engine's sum closer to its forecast. ``reserve_future`` (optional, with
    :meth:`EngineLoad.set_future`): the trajectory's usage curve, tested against each
    engine's (:meth:`EngineLoad.fits_future`). Unhealthy engines are never chosen;
    ``static`` and ``round_robin`` skip to the next healthy engine.
    """
    k = len(loads)
    if k == 0:
        raise ValueError("choose_engine needs at least one engine; got an empty list")
    if policy in ("static", "round_robin"):
        start = static_engine(group_index, k) if policy == "static" else ordinal % k
        for off in range(k):
            i = (start + off) % k
            if loads[i].healthy and loads[i].has_slot():
                return i
        return None
    if policy == "least_requests":
        best = None
        for i, ld in enumerate(loads):
            if ld.healthy and ld.has_slot() and (best is None or ld.active < loads[best].active):
                best = i
        return best
    if policy == "kv":
        if siblings is not None and len(siblings) != k:
            raise ValueError(f"siblings has {len(siblings)} entries for {k} engines")
        if reserve_future is not None:
            return _kv_by_future(loads, reserve_tokens, reserve_future, preferred, siblings)
        if preferred is not None and 0 <= preferred < k and _kv_fits(loads[preferred], reserve_tokens):
            return preferred
        best, best_key = None, None
        for i, ld in enumerate(loads):
            if _kv_fits(ld, reserve_tokens):
                key = (siblings[i] if siblings is not None else 0, -ld.free_tokens(), ld.active)
                if best is None or key < best_key:
                    best, best_key = i, key
        return best
    raise ValueError(
        f"unknown dispatch policy {policy!r}; use one of static, round_robin, least_requests, kv"
    )


def _kv_by_future(
    loads: list[EngineLoad], reserve_tokens: int, future: tuple, preferred: int | None, siblings: Sequence[int] | None
) -> int | None:
    """kv with time-aligned bounds: the engine (fewest siblings, then most free tokens) where
    the newcomer's curve keeps the maximum within capacity (engines without a curve: the
    scalar test)."""

    def fits(ld: EngineLoad) -> bool:
        if ld.future_mean is None or _idle(ld):
            return _kv_fits(ld, reserve_tokens)
        if not (ld.healthy and ld.has_slot()) or ld.live_waiting:
            return False
        return ld.fits_future(*future)

    if preferred is not None and 0 <= preferred < len(loads) and fits(loads[preferred]):
        return preferred
    order = sorted(
        range(len(loads)),
        key=lambda i: (siblings[i] if siblings is not None else 0, -loads[i].free_tokens(), loads[i].active),
    )
    for i in order:
        if fits(loads[i]):
            return i
    return None


def _idle(ld: EngineLoad) -> bool:
    """Nothing of ours runs or is booked there."""
    return ld.active == 0 and ld.reserved_tokens <= 0


def _kv_fits(ld: EngineLoad, reserve_tokens: int) -> bool:
    if not (ld.healthy and ld.has_slot()):
        return False
    if ld.live_waiting and ld.active > 0:  # queueing already: more would only queue
        return False
    if ld.capacity_tokens is None and ld.active == 0:  # never stuck behind the assumed capacity
        return True
    if _idle(ld) and reserve_tokens <= ld.capacity_tokens:
        # an engine running nothing takes any lease it can hold: the margins guard what runs
        # together, and a lease that needs more than capacity · (1 − headroom) would wait forever
        return True
    return ld.free_tokens() >= reserve_tokens


class LongestFirstOrder:
    """The order in which waiting trajectories are admitted: problems shown to be long first.

    The rollouts of one problem have correlated lengths (a hard problem makes a long
    group). Each trajectory in flight or finished contributes evidence about its problem
    (:meth:`LengthForecast.log_evidence`: how much longer than typical, in log length); a
    problem's score is the evidence summed over its started rollouts, shrunk toward 0 (the
    global distribution) as if ``prior_weight`` typical rollouts had been seen too::

        score(g) = Σ evidence / (started(g) + prior_weight)

    The waiting trajectory of the highest-scoring problem goes next (a long rollout that
    starts late is the tail of the step; a short one fits in anywhere); among equal
    scores, the problem with the fewest started rollouts (so, before any evidence, the
    first wave spreads over every problem and what waits is a few of each), then the
    problem seen first, then arrival order.

    Pure bookkeeping (a heap with lazy deletion): no waiting, no I/O. Items are any
    hashable keys, groups any hashable problem ids.
    """

    def __init__(self, prior_weight: float = 2.0):
        if prior_weight <= 0:
            raise ValueError(f"prior_weight must be > 0, got {prior_weight}")
        self.prior_weight = float(prior_weight)
        self._evidence: dict = {}  # group -> summed evidence of its started rollouts
        self._started: dict = {}  # group -> rollouts started
        self._rank: dict = {}  # group -> order of first appearance
        self._waiting: dict = {}  # group -> deque of waiting items (arrival order)
        self._group_of: dict = {}  # waiting item -> group
        self._version: dict = {}  # group -> version of its newest heap entry
        self._heap: list = []

    def __len__(self) -> int:
        return len(self._group_of)

    def score(self, group) -> float:
        return self._evidence.get(group, 0.0) / (self._started.get(group, 0) + self.prior_weight)

    def _push(self, group) -> None:
        v = self._version.get(group, 0) + 1
        self._version[group] = v
        if self._waiting.get(group):
            heapq.heappush(
                self._heap, (-round(self.score(group), 9), self._started.get(group, 0), self._rank[group], v, group)
            )

    def add(self, item, group) -> None:
        """``item`` of problem ``group`` starts waiting (after those already waiting)."""
        if group not in self._rank:
            self._rank[group] = len(self._rank)
        was_empty = not self._waiting.get(group)
        self._waiting.setdefault(group, deque()).append(item)
        self._group_of[item] = group
        if was_empty:
            self._push(group)

    def waiting(self, item) -> bool:
        return item in self._group_of

    def remove(self, item) -> None:
        """``item`` stops waiting without starting (cancelled)."""
        group = self._group_of.pop(item)
        was_head = self._waiting[group][0] == item
        self._waiting[group].remove(item)
        if was_head:  # the group's place in line may change (or it no longer waits)
            self._push(group)

    def head(self):
        """The waiting item to admit next, or None when nothing waits."""
        heap = self._heap
        while heap:
            _, _, _, v, group = heap[0]
            if v == self._version.get(group) and self._waiting.get(group):
                return self._waiting[group][0]
            heapq.heappop(heap)
        return None

    def start(self, item, evidence: float = 0.0) -> None:
        """``item`` (a waiting one) is admitted, with the evidence it gives so far."""
        group = self._group_of.pop(item)
        waiting = self._waiting[group]
        if waiting[0] == item:
            waiting.popleft()
        else:
            waiting.remove(item)
        self._started[group] = self._started.get(group, 0) + 1
        self._evidence[group] = self._evidence.get(group, 0.0) + evidence
        self._push(group)

    def update(self, group, old_evidence: float, new_evidence: float) -> None:
        """A started rollout of ``group`` grew or finished: its evidence changed."""
        if new_evidence == old_evidence:
            return
        self._evidence[group] = self._evidence.get(group, 0.0) + new_evidence - old_evidence
        self._push(group)

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

What this module does not do: waiting, I/O or bookkeeping — callers own the state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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

    def free_tokens(self) -> float:
        """Unbooked KV tokens (of :data:`UNKNOWN_CAPACITY_TOKENS` while the capacity is unknown).

        Free = capacity · (1 − ``headroom``) − used, where used = bookings + ``safety_sd`` ·
        sd(bookings); with live usage, also what the trajectories grew since their bookings
        (live − ``context_tokens``) or, untracked, at least the live usage.
        """
        cap = UNKNOWN_CAPACITY_TOKENS if self.capacity_tokens is None else self.capacity_tokens
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
) -> int | None:
    """The engine index for a new trajectory, or None when it must wait.

    ``ordinal`` is the trajectory's arrival number (round_robin), ``group_index`` the
    arrival number of its group (static), ``preferred`` an engine to use if it qualifies
    (group affinity). Unhealthy engines are never chosen; ``static`` and ``round_robin``
    skip to the next healthy engine.
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
        if preferred is not None and 0 <= preferred < k and _kv_fits(loads[preferred], reserve_tokens):
            return preferred
        best, best_free = None, -1.0
        for i, ld in enumerate(loads):
            if _kv_fits(ld, reserve_tokens):
                free = ld.free_tokens()
                if best is None or free > best_free or (free == best_free and ld.active < loads[best].active):
                    best, best_free = i, free
        return best
    raise ValueError(
        f"unknown dispatch policy {policy!r}; use one of static, round_robin, least_requests, kv"
    )


def _kv_fits(ld: EngineLoad, reserve_tokens: int) -> bool:
    if not (ld.healthy and ld.has_slot()):
        return False
    if ld.live_waiting and ld.active > 0:  # queueing already: more would only queue
        return False
    if ld.capacity_tokens is None and ld.active == 0:  # never stuck behind the assumed capacity
        return True
    return ld.free_tokens() >= reserve_tokens

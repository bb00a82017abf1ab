"""The rollout dispatcher: assigns trajectories to engines, one sticky lease per trajectory.

``Dispatcher(engines, policy="kv")`` fronts several engines (anything with
``async generate(...)``, see :mod:`tirl.engines.base`). The agent loop takes one lease per
trajectory::

    async with dispatcher.lease(key, reserve_tokens=len(prompt) + max_tokens, group=pid) as eng:
        c = await eng.generate(prompt_ids, max_new_tokens, temperature, stop)  # every turn

* Admission follows a policy from :mod:`tirl.dispatch.policy`. Under ``kv`` the lease books
  ``reserve_tokens`` of the engine's KV capacity until it ends; when no engine has room the
  caller waits in FIFO order, never polling (an engine of unknown capacity is booked
  against :data:`~tirl.dispatch.policy.UNKNOWN_CAPACITY_TOKENS` until its metrics report
  one): the head of the queue sleeps on an :class:`asyncio.Event` that every release,
  drain and metrics reading sets, and wakes the next one when it is placed (O(1) per event
  however many wait).
* Booking (``kv``): ``booking="max"`` books the whole ``reserve_tokens`` (the paper's rule:
  an engine never overflows). ``booking="forecast"`` books the context so far plus the
  expected remaining length, learnt from the final lengths of earlier leases
  (:mod:`tirl.dispatch.forecast`); ``booking="peak"`` books the most the lease is expected
  to hold at any future point, with its variance, keeps ``safety_sd`` standard deviations
  and a ``margin`` fraction of each engine free, and (with metrics) counts what leases grew
  since their last booking. Both re-book after every turn, start as "max" until lengths
  have been seen, never book more than ``reserve_tokens``, and let engines run larger
  batches (see docs/dispatch.md for the measured trade-off).
* Order (``order="longest_first"``, forecast/peak booking): waiting leases are admitted
  by :class:`~tirl.dispatch.policy.LongestFirstOrder` — the problem (``group``) whose
  started leases show it to be longest first, the first wave spread over all problems —
  and, under peak booking, booked from their problem's lengths. A lease moved off a dead
  engine still goes first. ``spread_groups`` sends a lease to the engine with the fewest
  of its group in flight before the one with the most room. ``bound="curve"`` (peak
  booking) bounds an engine by its leases' summed expected usage curve instead of the sum
  of their peaks; a lease inside a call is estimated from the engine's measured decode rate
  (docs/dispatch.md).
* Stickiness: every turn of a lease runs on the same engine (its prefix cache holds the
  conversation). With ``group_affinity`` a GRPO group's trajectories go to the engine of
  the first one when it has room (the shared prompt is then prefilled once).
* Reservations are released on every exit path: normal end, exception, cancellation
  (also while still waiting for admission).
* Live correction: with metric URLs (by default the ``base_url`` of engines that have
  one) a background task reads each engine's load every ``metrics_interval_s``
  (:mod:`tirl.dispatch.metrics`): it discovers an unconfigured capacity, lowers the free
  estimate when the engine is fuller than our bookings, and holds back an engine that
  queues requests.
* Failure: a generate call that fails with a connection error or timeout (or any error
  after which the engine's server no longer answers ``/metrics``) drains its engine (no new leases) and moves the lease to another engine, where the same call is
  retried (up to ``max_retries`` times; the prompt carries the whole conversation, only
  the prefix cache is lost). An engine whose metrics stop answering ``fail_after`` times in
  a row is drained too, and comes back when they answer again.

What it does not do: split one trajectory across engines, preempt running leases, or
retry errors that are not the engine's (a bad request raises to the caller).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any, AsyncIterator, Sequence

from tirl.dispatch.config import POLICIES, DispatchConfig
from tirl.dispatch.forecast import LengthForecast
from tirl.dispatch.metrics import EngineMetrics, fetch_engine_metrics
from tirl.dispatch.policy import LongestFirstOrder, UNKNOWN_CAPACITY_TOKENS, EngineLoad, choose_engine
from tirl.engines.base import Completion

log = logging.getLogger(__name__)

_FORECAST_MAX_TOKENS = 1 << 17  # longest context the length forecast tabulates
CURVE_REFRESH_S = 0.25  # curve bound: an engine's usage curve is recomputed at least this often


class NoEngineAvailable(RuntimeError):
    """Every engine is drained (and none can come back), so nothing can be admitted."""


class EngineStartError(RuntimeError):
    """Engines the dispatcher owns failed their start-up check; the message names each one."""


class EngineUnavailable(ConnectionError):
    """Raise this from an engine's ``generate`` to say the engine itself failed (drain + retry)."""


def is_engine_failure(exc: BaseException) -> bool:
    """True for errors that mean the engine stopped answering, not that the request was bad."""
    if isinstance(exc, (ConnectionError, TimeoutError, EngineUnavailable)):
        return True
    try:
        import aiohttp
    except ImportError:  # pragma: no cover
        return False
    if isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ServerTimeoutError)):
        return True
    return isinstance(exc, aiohttp.ClientResponseError) and exc.status in (502, 503, 504)


@dataclass
class EngineStatus:
    """A snapshot of one engine as the dispatcher sees it."""

    index: int
    name: str
    healthy: bool
    active: int
    reserved_tokens: int
    capacity_tokens: int | None
    live_used_tokens: int | None
    live_waiting: int | None
    leases_total: int
    failures: int


@dataclass
class DispatchStats:
    leases: int = 0
    waited: int = 0  # leases that had to wait for admission
    wait_s: float = 0.0  # total time spent waiting for admission
    retries: int = 0  # generate calls retried on another engine
    drained: int = 0  # times an engine was drained
    retired: int = 0  # engines taken out of rotation for good (retire())


class _Lease:
    __slots__ = (
        "key", "reserve", "group", "engine", "closed", "booked", "ctx", "var", "booked_ctx", "evidence",
        "call_since", "call_ctx", "call_max", "future",
    )

    def __init__(self, key: str, reserve: int, group: Any):
        self.key, self.reserve, self.group = key, reserve, group
        self.engine = -1
        self.closed = False
        self.booked = reserve  # KV tokens booked on the engine now (≤ reserve)
        self.ctx = 0  # context tokens after the last generate call
        self.var = 0.0  # variance of the booking (peak)
        self.booked_ctx = 0  # context when the booking was made (peak)
        self.evidence = 0.0  # what it says of its problem's lengths (longest_first)
        self.call_since: float | None = None  # monotonic start of the generate call in flight
        self.call_ctx = 0  # its prompt (the whole context when the call started)
        self.call_max = 0  # its max_new_tokens
        self.future: Any = None  # (mean, var) usage curve it was admitted with (curve bound)

    @property
    def problem(self) -> Any:
        return self.group if self.group is not None else self.key


class LeasedEngine:
    """The engine a lease is bound to; ``generate`` retries elsewhere if that engine dies."""

    def __init__(self, dispatcher: Dispatcher, lease: _Lease):
        self._d = dispatcher
        self._lease = lease

    @property
    def engine_index(self) -> int:
        return self._lease.engine

    @property
    def engine(self) -> Any:
        return self._d.engines[self._lease.engine]

    async def generate(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        temperature: float = 1.0,
        stop: Sequence[str | int] | None = None,
        *,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
    ) -> Completion:
        if self._lease.closed:
            raise RuntimeError(f"lease {self._lease.key!r} has ended; take a new lease to generate")
        attempt = 0
        while True:
            k = self._lease.engine
            try:
                extra = {"seed": seed} if seed is not None else {}  # engines without seeds keep working
                lease = self._lease
                lease.call_since, lease.call_ctx, lease.call_max = time.monotonic(), len(prompt_ids), max_new_tokens
                try:
                    c = await self._d.engines[k].generate(
                        prompt_ids, max_new_tokens, temperature, stop, top_p=top_p, top_k=top_k, **extra
                    )
                finally:
                    started, lease.call_since = lease.call_since, None
                self._d._note_rate(k, len(c.token_ids), time.monotonic() - started)
                self._d._progress(self._lease, len(prompt_ids) + len(c.token_ids))
                return c
            except Exception as exc:
                if attempt >= self._d.max_retries:
                    raise
                # a client may wrap a dead connection in its own error type: ask the server
                if not (is_engine_failure(exc) or await self._d._unreachable(k)):
                    raise
                attempt += 1
                self._d._drain(k, f"generate failed: {exc!r}")
                self._d.stats.retries += 1
                await self._d._move(self._lease)


class Dispatcher:
    """Assign trajectories to engines by a policy; see the module docstring."""

    def __init__(
        self,
        engines: Sequence[Any],
        policy: str = "kv",
        *,
        capacity_tokens: int | Sequence[int | None] | None = None,
        group_affinity: bool = False,
        metrics_urls: Sequence[str | None] | None = None,
        metrics_interval_s: float = 1.0,
        max_active_per_engine: int = 0,
        max_retries: int = 2,
        fail_after: int = 3,
        reserve_fraction: float = 1.0,
        booking: str = "max",
        safety_sd: float = 2.5,
        margin: float = 0.05,
        forecast_window: int = 8192,
        order: str = "fifo",
        order_prior: float = 2.0,
        bound: str = "sum",
        spread_groups: bool = False,
        names: Sequence[str] | None = None,
        own_engines: bool = False,
    ):
        if not engines:
            raise ValueError("Dispatcher needs at least one engine; got none")
        if policy not in POLICIES:
            raise ValueError(f"unknown dispatch policy {policy!r}; use one of {', '.join(POLICIES)}")
        self.engines = list(engines)
        self.own_engines = own_engines
        k = len(self.engines)
        self.policy = policy
        self.group_affinity = group_affinity
        if not 0 < reserve_fraction <= 1:
            raise ValueError(f"reserve_fraction must be in (0, 1], got {reserve_fraction}")
        self.reserve_fraction = reserve_fraction
        if booking not in ("max", "forecast", "peak"):
            raise ValueError(f"booking must be 'max', 'forecast' or 'peak', got {booking!r}")
        self.booking = booking
        if bound not in ("sum", "curve"):
            raise ValueError(f"bound must be 'sum' or 'curve', got {bound!r}")
        # curve: an engine is bounded by its leases' summed usage curve (peak booking only)
        self._curve = bound == "curve" and policy == "kv" and booking == "peak"
        if order not in ("fifo", "longest_first"):
            raise ValueError(f"order must be 'fifo' or 'longest_first', got {order!r}")
        # longest_first: leases wait in LongestFirstOrder (a lease moved off a dead engine still
        # goes first, through _waiters); it needs lengths, so only under forecast/peak booking
        self._order = (
            LongestFirstOrder(order_prior) if order == "longest_first" and policy == "kv" and booking != "max" else None
        )
        self.forecast = LengthForecast(_FORECAST_MAX_TOKENS, window=forecast_window)
        self.max_retries = max_retries
        self.fail_after = fail_after
        self.metrics_interval_s = metrics_interval_s
        if capacity_tokens is None or isinstance(capacity_tokens, int):
            caps: list[int | None] = [capacity_tokens or None] * k
        else:
            caps = [c or None for c in capacity_tokens]
            if len(caps) != k:
                raise ValueError(f"capacity_tokens has {len(caps)} entries for {k} engines")
        self._configured_caps = caps
        if metrics_urls is None:
            metrics_urls = [getattr(e, "base_url", None) for e in self.engines]
        elif len(metrics_urls) != k:
            raise ValueError(f"metrics_urls has {len(metrics_urls)} entries for {k} engines")
        self.metrics_urls = list(metrics_urls)
        self.names = list(names) if names else [
            str(getattr(e, "base_url", None) or f"engine{i}") for i, e in enumerate(self.engines)
        ]
        max_act = max_active_per_engine or None
        self.loads = [EngineLoad(capacity_tokens=c, max_active=max_act) for c in caps]
        if policy == "kv" and booking != "max":
            for ld in self.loads:
                ld.headroom = margin
                if booking == "peak":
                    ld.safety_sd, ld.context_tokens = safety_sd, 0
        self.metrics: list[EngineMetrics | None] = [None] * k
        self._metric_failures = [0] * k
        self._drained_by_metrics = [False] * k
        self._retired: set[int] = set()
        self._failures = [0] * k
        self._leases_total = [0] * k
        self._waiters: deque[asyncio.Event] = deque()
        self._on_engine: list[set[_Lease]] = [set() for _ in range(k)]
        self.spread_groups = spread_groups and policy == "kv"
        self._siblings: dict[tuple[Any, int], int] = {}  # (group, engine) -> leases in flight
        self._rate = [0.0] * k  # tokens per second of one sequence (moving average of calls)
        self._future_at = [-math.inf] * k  # when each engine's usage curve was last computed
        self._ordinal = itertools.count()
        self._next_ordinal = 0
        self._group_index: dict[Any, int] = {}
        self._group_engine: dict[Any, int] = {}
        self._poller: asyncio.Task | None = None
        self._session: Any = None
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        self._start_error: EngineStartError | None = None
        self.stats = DispatchStats()

    @classmethod
    def from_config(cls, cfg: DispatchConfig, engines: Sequence[Any], **kw: Any) -> Dispatcher:
        """A dispatcher over ``engines`` with the settings of a ``[dispatch]`` section."""
        return cls(
            engines,
            cfg.policy,
            capacity_tokens=cfg.kv_capacity_tokens or None,
            group_affinity=cfg.group_affinity,
            metrics_interval_s=cfg.metrics_interval_s,
            max_active_per_engine=cfg.max_active_per_engine,
            max_retries=cfg.max_retries,
            fail_after=cfg.fail_after,
            reserve_fraction=cfg.kv_reserve_fraction,
            booking=cfg.kv_booking,
            safety_sd=cfg.kv_peak_z,
            margin=cfg.kv_margin,
            order=cfg.kv_order,
            order_prior=cfg.kv_order_prior,
            bound=cfg.kv_bound,
            spread_groups=cfg.kv_spread_groups,
            **kw,
        )

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        """Start the engines it owns (``own_engines``: each server is checked, all at once;
        any that fails raises :class:`EngineStartError` naming every failed one), read metrics
        once (capacities) and start the background reader, if any URL is set."""
        if self._started:
            return
        self._start_error = None
        if self.own_engines:
            results = await asyncio.gather(*(e.start() for e in self.engines), return_exceptions=True)
            failed = [(self.names[i], r) for i, r in enumerate(results) if isinstance(r, BaseException)]
            for _, r in failed:
                if not isinstance(r, Exception):  # cancellation and the like: not a start failure
                    raise r
            if failed:
                await self._close_engines()
                self._start_error = EngineStartError(
                    f"{len(failed)} of {len(self.engines)} engines failed their start-up check: "
                    + "; ".join(f"{name}: {err}" for name, err in failed)
                    + ". Start those servers or remove them from dispatch.engines"
                )
                raise self._start_error
        self._started = True
        if any(self.metrics_urls):
            import aiohttp

            self._session = aiohttp.ClientSession()
            await self.refresh_metrics()
            self._poller = asyncio.create_task(self._poll_metrics(), name="tirl-dispatch-metrics")
        unknown = [self.names[i] for i, ld in enumerate(self.loads) if ld.capacity_tokens is None]
        if self.policy == "kv" and unknown:
            log.warning("dispatch: KV capacity of %s is unknown; assuming %d tokens until metrics "
                        "report it (set dispatch.kv_capacity_tokens to give it)",
                        ", ".join(unknown), UNKNOWN_CAPACITY_TOKENS)

    async def _ensure_started(self) -> None:
        """Start on first use; after a failed start, every later lease fails at once with
        the same error (an explicit :meth:`start` tries again)."""
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._start_error is not None:
                raise self._start_error
            await self.start()

    async def aclose(self) -> None:
        """Stop the metrics reader, close its HTTP session and (``own_engines``) the engines."""
        if self._poller is not None:
            self._poller.cancel()
            try:
                await self._poller
            except (asyncio.CancelledError, Exception):
                pass
            self._poller = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.own_engines:
            await self._close_engines()
        self._started = False

    async def _close_engines(self) -> None:
        for e in self.engines:
            await e.aclose()

    async def health(self) -> dict[str, Any]:
        """The dispatcher's view of every engine (:meth:`snapshot`) and its counters."""
        return {
            "policy": self.policy,
            "engines": [asdict(s) for s in self.snapshot()],
            "stats": asdict(self.stats),
        }

    async def __aenter__(self) -> Dispatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- public API -----------------------------------------------------------------
    @asynccontextmanager
    async def lease(self, key: str, reserve_tokens: int, group: Any = None) -> AsyncIterator[LeasedEngine]:
        """Hold one engine for a trajectory; its KV booking is released however the block exits."""
        if reserve_tokens < 0:
            raise ValueError(f"reserve_tokens must be ≥ 0, got {reserve_tokens}")
        await self._ensure_started()
        lease = _Lease(key, math.ceil(reserve_tokens * self.reserve_fraction), group)
        if self.booking == "forecast" and self.forecast.n_observed:
            lease.booked = min(lease.reserve, self.forecast.booking(0, 0))
        elif self.booking == "peak" and self.forecast.n_observed:
            mean, lease.var = self.forecast.peak(0, 0)
            lease.booked = min(lease.reserve, math.ceil(mean))
        await self._admit(lease)
        try:
            yield LeasedEngine(self, lease)
            if self.booking != "max" and lease.ctx:
                if self._order is not None:
                    self._note_evidence(lease, self.forecast.log_evidence(lease.ctx, True))
                self.forecast.observe(lease.ctx)  # a finished trajectory's final context
        finally:
            self._release(lease)
            lease.closed = True

    async def generate(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        temperature: float = 1.0,
        stop: Sequence[str | int] | None = None,
        *,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        key: str | None = None,
        group: Any = None,
    ) -> Completion:
        """One call on a one-shot lease of ``len(prompt_ids) + max_new_tokens`` tokens."""
        key = key or f"oneshot-{next(self._ordinal)}"
        async with self.lease(key, len(prompt_ids) + max_new_tokens, group=group) as eng:
            return await eng.generate(
                prompt_ids, max_new_tokens, temperature, stop, top_p=top_p, top_k=top_k, seed=seed
            )

    def snapshot(self) -> list[EngineStatus]:
        return [
            EngineStatus(
                index=i,
                name=self.names[i],
                healthy=ld.healthy,
                active=ld.active,
                reserved_tokens=ld.reserved_tokens,
                capacity_tokens=ld.capacity_tokens,
                live_used_tokens=ld.live_used_tokens,
                live_waiting=ld.live_waiting,
                leases_total=self._leases_total[i],
                failures=self._failures[i],
            )
            for i, ld in enumerate(self.loads)
        ]

    # -- admission ------------------------------------------------------------------
    def _head(self) -> asyncio.Event | None:
        """The waiter to admit next: a moved lease first, then by the order (FIFO or longest first)."""
        if self._waiters:
            return self._waiters[0]
        return self._order.head() if self._order is not None else None

    def _wake(self) -> None:
        """Something changed: let the head of the queue look again (only it can be admitted)."""
        head = self._head()
        if head is not None:
            head.set()

    def _problem_scale(self, lease: _Lease) -> float:
        """longest_first + peak: how much longer than typical the lease's problem has shown to be."""
        return math.exp(self._order.score(lease.problem)) if self._order is not None else 1.0

    def _note_evidence(self, lease: _Lease, new: float) -> None:
        self._order.update(lease.problem, lease.evidence, new)
        lease.evidence = new

    def _pick(self, lease: _Lease) -> int | None:
        g = lease.group if lease.group is not None else lease.key
        if g not in self._group_index:
            self._group_index[g] = len(self._group_index)
        preferred = self._group_engine.get(lease.group) if self.group_affinity and lease.group is not None else None
        lease.future = None
        if self._curve and self.forecast.n_observed:
            now = time.monotonic()
            for k in range(len(self.loads)):
                if now - self._future_at[k] > CURVE_REFRESH_S:
                    self._refresh_future(k, now)
            lease.future = self.forecast.future([lease.ctx], [lease.ctx], [self._problem_scale(lease)])
        return choose_engine(
            self.policy,
            self.loads,
            lease.booked,
            ordinal=self._next_ordinal,
            group_index=self._group_index[g],
            preferred=preferred,
            reserve_future=lease.future,
            siblings=[self._siblings.get((lease.group, k), 0) for k in range(len(self.loads))]
            if self.spread_groups and lease.group is not None
            else None,
        )

    def _note_rate(self, k: int, tokens: int, seconds: float) -> None:
        """A call on engine ``k`` produced ``tokens`` in ``seconds``: update its per-sequence rate."""
        if tokens > 0 and seconds > 0:
            r = tokens / seconds
            self._rate[k] = r if self._rate[k] == 0 else 0.8 * self._rate[k] + 0.2 * r

    def _lease_context_now(self, lease: _Lease, k: int, now: float) -> int:
        """A lease's context now (and ``CURVE_REFRESH_S`` ahead): its context after its last call,
        or, inside a call, that call's prompt + what the engine's rate says it has generated
        (its whole ``max_new_tokens`` while the rate is unknown)."""
        if lease.call_since is None:
            return lease.ctx
        grown = lease.call_max
        if self._rate[k] > 0:
            grown = min(grown, math.ceil(self._rate[k] * (now - lease.call_since + CURVE_REFRESH_S)))
        return lease.call_ctx + grown

    def _refresh_future(self, k: int, now: float) -> None:
        """Engine ``k``'s usage curve from its leases' contexts now (curve bound).

        When the engine's metrics report more KV in use than the estimated contexts add up
        to (its rate was measured low), the difference goes to the leases inside a call, in
        proportion to how long each has been generating.
        """
        leases = list(self._on_engine[k])
        ctx = [self._lease_context_now(x, k, now) for x in leases]
        live = self.loads[k].live_used_tokens
        if live is not None and live > sum(ctx):
            ages = [now - x.call_since if x.call_since is not None else 0.0 for x in leases]
            total = sum(ages)
            if total > 0:
                extra = live - sum(ctx)
                ctx = [c + math.ceil(extra * a / total) for c, a in zip(ctx, ages)]
        scales = [self._problem_scale(x) for x in leases]
        self.loads[k].set_future(*self.forecast.future(ctx, ctx, scales))
        self._future_at[k] = now

    def _check_possible(self, lease: _Lease) -> None:
        healthy = [ld for ld in self.loads if ld.healthy]
        if not healthy and self._poller is None:
            raise NoEngineAvailable(
                f"all {len(self.loads)} engines are drained after failures "
                f"({', '.join(self.names)}); check that the servers are up"
            )
        if self.policy == "kv" and healthy and all(ld.capacity_tokens is not None for ld in healthy):
            biggest = max(ld.capacity_tokens for ld in healthy)  # type: ignore[type-var]
            if lease.reserve > biggest:
                raise ValueError(
                    f"lease {lease.key!r} asks for {lease.reserve} KV tokens but the largest "
                    f"engine holds {biggest}; lower the token budget (agent.max_tokens) or "
                    "raise dispatch.kv_capacity_tokens"
                )

    async def _admit(self, lease: _Lease, *, front: bool = False) -> None:
        """Wait (FIFO; ``front`` = ahead of everyone) until the policy places the lease."""
        me = asyncio.Event()
        if front:
            self._waiters.appendleft(me)
        elif self._order is not None:
            self._order.add(me, lease.problem)
        else:
            self._waiters.append(me)
        t0 = time.monotonic()
        waited = False
        try:
            while True:
                if self._head() is me:
                    self._check_possible(lease)
                    self._next_ordinal = self.stats.leases
                    ordered = not (self._waiters and self._waiters[0] is me)
                    if ordered and self.booking == "peak" and self.forecast.n_observed:
                        mean, lease.var = self.forecast.peak(lease.ctx, lease.ctx, self._problem_scale(lease))
                        lease.booked = min(lease.reserve, max(lease.ctx, math.ceil(mean)))
                    k = self._pick(lease)
                    if k is not None:
                        if ordered:
                            lease.evidence = self.forecast.log_evidence(lease.ctx, False)
                            self._order.start(me, lease.evidence)
                        else:
                            self._waiters.popleft()
                        self._book(lease, k)
                        self._wake()  # the next in line may fit too
                        if waited:
                            self.stats.waited += 1
                            self.stats.wait_s += time.monotonic() - t0
                        return
                elif me.is_set():  # woken, but the line's order changed meanwhile: pass it on
                    self._wake()
                waited = True
                me.clear()
                await me.wait()  # set when this waiter is at the head and something changed
        except BaseException:
            head = self._head() is me
            if me in self._waiters:
                self._waiters.remove(me)
            elif self._order is not None and self._order.waiting(me):
                self._order.remove(me)
            if head:
                self._wake()
            raise

    def _book(self, lease: _Lease, k: int) -> None:
        ld = self.loads[k]
        if self.spread_groups and lease.group is not None:
            self._siblings[(lease.group, k)] = self._siblings.get((lease.group, k), 0) + 1
        if self._curve:
            self._on_engine[k].add(lease)
            if lease.future is not None and ld.future_mean is not None and self._future_at[k] > -math.inf:
                ld.add_future(*lease.future)
            else:
                self._future_at[k] = -math.inf  # recompute at the next decision
        ld.active += 1
        ld.reserved_tokens += lease.booked
        ld.reserved_var += lease.var
        if ld.context_tokens is not None:
            ld.context_tokens += lease.booked_ctx
        lease.engine = k
        self.stats.leases += 1
        self._leases_total[k] += 1
        if self.group_affinity and lease.group is not None:
            self._group_engine.setdefault(lease.group, k)

    def _release(self, lease: _Lease) -> None:
        if lease.engine < 0:
            return
        ld = self.loads[lease.engine]
        if self.spread_groups and lease.group is not None:
            key = (lease.group, lease.engine)
            self._siblings[key] -= 1
            if not self._siblings[key]:
                del self._siblings[key]
        if self._curve:
            self._on_engine[lease.engine].discard(lease)
            self._future_at[lease.engine] = -math.inf
        ld.active -= 1
        ld.reserved_tokens -= lease.booked
        ld.reserved_var = max(0.0, ld.reserved_var - lease.var)
        if ld.context_tokens is not None:
            ld.context_tokens -= lease.booked_ctx
        lease.engine = -1
        self._wake()

    def _progress(self, lease: _Lease, ctx: int) -> None:
        """After a turn: remember the context; under forecast booking, re-book from it."""
        lease.ctx = ctx
        if self.booking == "max" or lease.engine < 0 or not self.forecast.n_observed:
            return
        ld = self.loads[lease.engine]
        if self._curve:
            self._future_at[lease.engine] = -math.inf
        if self._order is not None:
            self._note_evidence(lease, self.forecast.log_evidence(ctx, False))
        if self.booking == "peak":
            mean, var = self.forecast.peak(ctx, ctx, self._problem_scale(lease))
            new = min(lease.reserve, max(ctx, math.ceil(mean)))
            ld.reserved_var += var - lease.var
            if ld.context_tokens is not None:
                ld.context_tokens += ctx - lease.booked_ctx
            lease.var, lease.booked_ctx = var, ctx
        else:
            new = min(lease.reserve, max(ctx, self.forecast.booking(0, ctx)))
        old, lease.booked = lease.booked, new
        ld.reserved_tokens += new - old
        if new < old:  # room freed: waiters may fit now
            self._wake()

    async def _move(self, lease: _Lease) -> None:
        """Re-admit a lease whose engine was drained (it waits like a new one)."""
        self._release(lease)
        if self.group_affinity and lease.group is not None:
            self._group_engine.pop(lease.group, None)
        await self._admit(lease, front=True)  # it has work in progress: first in line

    # -- health and metrics ---------------------------------------------------------
    async def _unreachable(self, k: int) -> bool:
        """True when engine ``k``'s server does not answer at all (connection refused, timeout)."""
        url = self.metrics_urls[k]
        if not url or self._session is None:
            return False
        try:
            await fetch_engine_metrics(self._session, url, timeout_s=2.0)
        except ConnectionError:
            return True
        except Exception:  # it answered, just not with metrics we read
            return False
        return False

    def _drain(self, k: int, why: str) -> None:
        self._failures[k] += 1
        if self.loads[k].healthy:
            self.loads[k].healthy = False
            self.stats.drained += 1
            log.warning("dispatch: draining engine %s: %s", self.names[k], why)
            for g, e in list(self._group_engine.items()):
                if e == k:
                    del self._group_engine[g]
        self._wake()

    def retire(self, k: int, why: str) -> None:
        """Take engine ``k`` out of rotation for good (e.g. it failed to load new weights and
        would serve stale ones): drained like a failed engine, and never re-admitted when its
        metrics answer again. Its running calls are retried elsewhere as they fail or end."""
        self._retired.add(k)
        self.stats.retired += 1
        log.error("dispatch: engine %s taken out of rotation: %s", self.names[k], why)
        self._drain(k, why)

    def _undrain(self, k: int) -> None:
        if k in self._retired:
            return
        if not self.loads[k].healthy:
            self.loads[k].healthy = True
            log.warning("dispatch: engine %s answers again; admitting to it", self.names[k])

    def apply_metrics(self, k: int, m: EngineMetrics) -> None:
        """Fold one metrics reading of engine ``k`` into its load (also used by tests)."""
        self.metrics[k] = m
        ld = self.loads[k]
        if self._configured_caps[k] is None and m.kv_capacity_tokens:
            ld.capacity_tokens = m.kv_capacity_tokens
        ld.live_used_tokens = m.used_tokens(ld.capacity_tokens)
        ld.live_waiting = m.waiting
        self._wake()

    async def refresh_metrics(self) -> None:
        """Read every engine's metrics once, concurrently."""
        idx = [i for i, u in enumerate(self.metrics_urls) if u]
        results = await asyncio.gather(
            *(fetch_engine_metrics(self._session, self.metrics_urls[i]) for i in idx),
            return_exceptions=True,
        )
        for i, r in zip(idx, results):
            if isinstance(r, BaseException):
                if isinstance(r, asyncio.CancelledError):
                    raise r
                self._metric_failures[i] += 1
                if self._metric_failures[i] >= self.fail_after and self.loads[i].healthy:
                    self._drained_by_metrics[i] = True
                    self._drain(i, f"metrics failed {self._metric_failures[i]} times: {r!r}")
                continue
            self._metric_failures[i] = 0
            if not self.loads[i].healthy:
                self._undrain(i)
            self.apply_metrics(i, r)

    async def _poll_metrics(self) -> None:
        while True:
            await asyncio.sleep(self.metrics_interval_s)
            try:
                await self.refresh_metrics()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # never let the reader die silently
                log.warning("dispatch: metrics refresh failed: %r", err)


def dispatcher_for(cfg: DispatchConfig, engines: Sequence[Any] | None = None, *, model: str | None = None,
                   **kw: Any) -> Dispatcher:
    """The dispatcher of a ``[dispatch]`` section.

    Over ``engines`` when given, else over one OpenAI-compatible client per URL in
    ``cfg.engines`` (``tirl.engines.openai.OpenAIEngine(url, model)``), whose ``/metrics``
    are then read for live correction; the dispatcher then owns those clients: ``start()``
    checks every server (failing at once, naming each one that is down) and ``aclose()``
    closes them.
    """
    if engines is None:
        if not cfg.engines:
            raise ValueError("dispatch.engines is empty: give engine URLs or pass engines=")
        try:
            from tirl.engines.openai import OpenAIEngine  # type: ignore[import-not-found]
        except ImportError as err:  # pragma: no cover - depends on the engines part
            raise RuntimeError(f"tirl.engines.openai is not available ({err}); pass engines=") from err
        # fail fast (one retry): the dispatcher retries a dead engine's call on another one
        engines = [OpenAIEngine(url, model, retries=1) for url in cfg.engines]
        kw.setdefault("metrics_urls", list(cfg.engines))
        kw.setdefault("own_engines", True)
    return Dispatcher.from_config(cfg, engines, **kw)

"""A discrete-event simulator of rollout dispatch across K inference engines.

Each engine is modelled like a vLLM-style continuous-batching server:

* a KV cache of ``kv_capacity_tokens``; a running sequence holds its whole context there
  and grows by one token per decode step;
* a FCFS waiting queue; a request is admitted when a batch slot is free and its context
  fits (leaving room for one more step of the batch plus a 1 % watermark);
* a decode step takes ``step_base_s + step_per_seq_s·batch + step_per_kv_token_s·kv``
  seconds and yields one token per running sequence; prefill runs at
  ``prefill_tokens_per_s`` before the steps that follow it;
* on KV overflow the newest running sequence is preempted (evicted and later recomputed
  from scratch, vLLM's recompute mode);
* between turns (while a tool runs) a trajectory's KV stays cached but evictable (prefix
  caching); when it returns, only the tool-response tokens are prefilled, unless the
  cache was evicted meanwhile, in which case the whole context is recomputed.

A dispatcher in front of the engines applies one policy from :mod:`tirl.dispatch.policy`
(the same function the real :class:`~tirl.dispatch.Dispatcher` uses). ``static`` and
``round_robin`` hand every rollout to its engine at t = 0; ``least_requests`` and ``kv``
keep a global FIFO queue and hand out rollouts as engines have room. Under ``kv`` the
booking is ``max`` (prompt + max response: the paper's rule), ``forecast`` (context so far
+ expected remaining length from the previous step's lengths) or ``peak`` (the most a
trajectory is expected to hold at any future point, with its variance; an engine keeps
``kv_peak_z`` standard deviations free and counts what its trajectories grew since their
last booking from its live usage); forecast and peak bookings are re-made at every turn
boundary, as the real dispatcher does. Under ``kv`` with forecast/peak booking the waiting
rollouts are admitted in ``kv_order`` (``longest_first``: the problem its started rollouts
show to be longest, see :class:`~tirl.dispatch.policy.LongestFirstOrder`), a problem's
rollouts are spread over engines (``kv_spread_groups``), and ``kv_bound = "curve"`` bounds
an engine by its rollouts' summed usage curve, recomputed from their exact contexts at most
every ``chunk_steps`` steps (advanced to that horizon). Tool calls are asynchronous: a
trajectory waiting on its tool leaves the batch to the others.

Speed: the run between two events of an engine (a turn ends, a tool result arrives, the
KV fills up) has a constant batch, so it is simulated as one chunk of up to
``chunk_steps`` steps; per-sequence progress is kept as "turn ends at engine step s", so
a chunk costs O(log n). The paper-scale scenario (64 engines, 16,384 rollouts) runs in
seconds per policy.

What it does not model: tensor/pipeline parallelism, chunked-prefill interleaving,
speculative decoding, CPU swap, or the sandbox's own queueing (latencies are drawn, not
simulated). Numbers are for comparing policies on the same workload, not predictions of
wall time on particular hardware.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import asdict, dataclass, field

import numpy as np

from tirl.dispatch.forecast import LengthForecast
from tirl.dispatch.config import POLICIES, SimConfig, SimEngineConfig, WorkloadConfig
from tirl.dispatch.policy import EngineLoad, LongestFirstOrder, choose_engine, static_engine
from tirl.dispatch.workload import Workload, sample_workload

_CHUNK_END = 0
_TOOL_DONE = 1


@dataclass
class SimResult:
    """Outcome of one policy on one workload."""

    policy: str
    n_engines: int
    n_rollouts: int
    makespan_s: float  # step start → last rollout done
    busy_fraction: float  # mean over engines of (time with a non-empty batch) / makespan
    busy_fraction_min: float
    kv_usage_mean: float  # time-averaged KV occupancy (running sequences) over the makespan
    kv_peak_fraction: float  # most KV (running + cached) any engine ever held / capacity
    mean_batch: float  # decoded tokens / decode steps, over busy time
    generated_tokens: int  # tokens the rollouts needed
    decoded_tokens: int  # tokens actually decoded (more than generated if work was lost)
    preemptions: int
    preempted_tokens: int  # context tokens of running sequences evicted on KV overflow
    evicted_cache_tokens: int  # cached (between-turn) context evicted to make room
    recomputed_tokens: int  # tokens prefilled again that had been computed before
    prefill_tokens: int
    latency_p50_s: float  # dispatch → done, per rollout
    latency_p99_s: float
    completion_p50_s: float  # step start → done, per rollout
    completion_p99_s: float
    engine_busy_s: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("engine_busy_s")
        return d


class _Engine:
    __slots__ = (
        "cap", "max_seqs", "watermark", "steps", "kv_running", "kv_parked", "running", "heap",
        "order", "parked", "waiting", "busy", "arrivals", "chunk", "busy_time", "kv_time",
        "decoded", "n_steps", "idx", "queued_tokens", "kv_peak", "fut_until",
    )

    def __init__(self, spec: SimEngineConfig, idx: int):
        self.idx = idx
        self.cap = spec.kv_capacity_tokens
        self.max_seqs = spec.max_num_seqs
        self.watermark = int(0.01 * self.cap)
        self.steps = 0  # decode steps executed so far
        self.kv_running = 0  # KV tokens of running sequences
        self.kv_parked = 0  # KV tokens cached for trajectories waiting on a tool
        self.running: dict[int, int] = {}  # rollout -> admission number
        self.heap: list[tuple[int, int, int]] = []  # (step its turn ends, rollout, admission)
        self.order: list[tuple[int, int]] = []  # (rollout, admission) in admission order
        self.parked: dict[int, int] = {}  # rollout -> cached tokens, insertion order = LRU
        self.waiting: deque[int] = deque()
        self.busy = False
        self.arrivals: list[float] = []  # known times of tool results coming back here
        self.chunk = (0, 0, 0.0)  # (steps, batch, duration) of the chunk in flight
        self.busy_time = 0.0
        self.kv_time = 0.0
        self.decoded = 0
        self.n_steps = 0
        self.queued_tokens = 0  # KV the waiting queue will need beyond what is cached
        self.kv_peak = 0  # most KV tokens (running + cached) ever resident
        self.fut_until = -1  # kv curve bound: the step its usage curve was last computed for


class _Sim:
    def __init__(self, cfg: SimConfig, wl: Workload):
        self.cfg = cfg
        self.wl = wl
        e = cfg.engine
        self.a, self.s, self.c = e.step_base_s, e.step_per_seq_s, e.step_per_kv_token_s
        self.prefill_rate = e.prefill_tokens_per_s
        self.engines = [_Engine(e, k) for k in range(cfg.n_engines)]
        n = wl.n
        self.seg_start = wl.seg_start.tolist()
        self.gen = wl.gen.tolist()
        self.tool = wl.tool.tolist()
        self.lat = wl.latency.tolist()
        prompt = wl.prompt.tolist()
        self.seg = list(self.seg_start[:-1])
        self.ctx = prompt[:]  # context of the request now queued / running
        self.remaining = [self.gen[j] for j in self.seg]  # tokens left in the current turn
        self.computed = [0] * n  # context tokens computed at least once
        self.join_step = [0] * n
        self.join_ctx = [0] * n
        self.admit_no = [0] * n
        self.qtok = [0] * n
        self.engine_of = [-1] * n
        self.t_dispatch = [0.0] * n
        self.t_done = [math.nan] * n
        self.events: list[tuple[float, int, int, int]] = []
        self.ev_seq = 0
        self.stats = dict(preemptions=0, preempted=0, evicted=0, recomputed=0, prefill=0)
        # dispatcher
        self.policy = cfg.policy
        max_act = None
        if cfg.policy == "least_requests":
            max_act = cfg.max_active_per_engine or e.max_num_seqs
        cap = e.kv_capacity_tokens if cfg.policy == "kv" else None
        self.forecast: LengthForecast | None = None
        self.peak = cfg.policy == "kv" and cfg.kv_booking == "peak"
        if cfg.policy == "kv" and cfg.kv_booking in ("forecast", "peak"):
            # what the previous RL step looked like: same distributions, another draw
            prev = sample_workload(cfg.workload, cfg.seed + 1_000_003).response_tokens().tolist()
            self.forecast = LengthForecast(wl.max_response_tokens, prev)
        self.live = cfg.policy == "kv" and cfg.kv_live_usage
        self.loads = [EngineLoad(capacity_tokens=cap, max_active=max_act) for _ in self.engines]
        if self.forecast is not None:
            for ld in self.loads:
                ld.headroom = cfg.kv_margin
        if self.peak:
            for ld in self.loads:
                ld.safety_sd = cfg.kv_peak_z
                ld.context_tokens = 0 if self.live else None
        frac = cfg.kv_reserve_fraction
        self.prompt = prompt
        self.var = [0.0] * n  # variance of each rollout's booking (peak)
        self.booked_ctx = [0] * n  # its context when it was last booked (peak)
        if self.peak:
            self.reserve = []
            for j, p in enumerate(prompt):
                mean, self.var[j] = self.forecast.peak(p, 0)
                self.reserve.append(math.ceil(mean))
        elif self.forecast is not None:
            first = self.forecast.booking(0, 0)
            self.reserve = [p + first for p in prompt]
        else:
            self.reserve = [math.ceil((p + wl.max_response_tokens) * frac) for p in prompt]
        self.booked = [0] * n
        self.group = wl.group.tolist()
        self.group_engine: dict[int, int] = {}
        self.queue: deque[int] = deque(range(n))
        self.waiting_order: LongestFirstOrder | None = None
        self.evidence = [0.0] * n  # what each started rollout says of its problem (longest_first)
        if self.forecast is not None and cfg.kv_order == "longest_first":
            self.waiting_order = LongestFirstOrder(cfg.kv_order_prior)
            for i, g in enumerate(self.group):
                self.waiting_order.add(i, g)
            self.queue = deque()
        self.group_scale = self.peak and self.waiting_order is not None
        self.curve = self.peak and cfg.kv_bound == "curve"
        self.spread = cfg.policy == "kv" and cfg.kv_spread_groups
        self.siblings: dict[tuple[int, int], int] = {}  # (group, engine) -> rollouts in flight
        self.on_engine: list[set[int]] = [set() for _ in self.engines]
        if self.curve:
            for ld in self.loads:
                ld.set_future(*self.forecast.future([], []))

    # -- events ---------------------------------------------------------------------
    def push(self, t: float, kind: int, a: int) -> None:
        self.ev_seq += 1
        heapq.heappush(self.events, (t, self.ev_seq, kind, a))

    def run(self) -> None:
        self.pump(0.0)
        for e in self.engines:
            if not e.busy:
                self.start_chunk(e, 0.0)
        ev = self.events
        while ev:
            t, _, kind, a = heapq.heappop(ev)
            if kind == _CHUNK_END:
                self.end_chunk(self.engines[a], a, t)
            else:  # tool result back: the next turn queues on the same engine
                e = self.engines[self.engine_of[a]]
                heapq.heappop(e.arrivals)
                self.enqueue(e, a)
                if not e.busy:
                    self.start_chunk(e, t)

    # -- dispatcher -----------------------------------------------------------------
    def pump(self, t: float) -> None:
        q, loads, order = self.queue, self.loads, self.waiting_order
        affinity = self.cfg.group_affinity
        spread = self.spread
        live = self.live
        while q or order:
            i = order.head() if order is not None else q[0]
            if live:  # what a metrics reading would say right now (the real one lags a bit)
                for ld, e in zip(loads, self.engines):
                    ld.live_used_tokens = e.kv_running + e.kv_parked + e.queued_tokens
            g = self.group[i]
            if self.group_scale:
                mean, self.var[i] = self.forecast.peak(self.ctx[i], self.ctx[i] - self.prompt[i], self.scale_of(g))
                self.reserve[i] = math.ceil(mean)
            r = self.reserve[i]
            fut = None
            if self.curve:
                sc = [self.scale_of(g)] if self.group_scale else None
                fut = self.forecast.future([self.ctx[i]], [self.ctx[i] - self.prompt[i]], sc)
            sib = None
            if spread:
                sib = [self.siblings.get((g, k), 0) for k in range(len(loads))]
            k = choose_engine(
                self.policy, loads, r, ordinal=i, group_index=g,
                preferred=self.group_engine.get(g) if affinity else None, reserve_future=fut, siblings=sib,
            )
            if k is None:
                return
            if order is not None:
                self.evidence[i] = self.forecast.log_evidence(self.ctx[i] - self.prompt[i], False)
                order.start(i, self.evidence[i])
            else:
                q.popleft()
            ld = loads[k]
            if spread:
                self.siblings[(g, k)] = self.siblings.get((g, k), 0) + 1
            if fut is not None:
                ld.add_future(*fut)
                self.on_engine[k].add(i)
            ld.active += 1
            ld.reserved_tokens += r
            self.booked[i] = r
            if self.peak:
                ld.reserved_var += self.var[i]
                self.booked_ctx[i] = self.ctx[i]
                if ld.context_tokens is not None:
                    ld.context_tokens += self.ctx[i]
            if affinity:
                self.group_engine.setdefault(g, k)
            self.engine_of[i] = k
            self.t_dispatch[i] = t
            e = self.engines[k]
            self.enqueue(e, i)
            if t > 0 and not e.busy:
                self.start_chunk(e, t)

    def release(self, i: int, t: float) -> None:
        ld = self.loads[self.engine_of[i]]
        if self.spread:
            self.siblings[(self.group[i], self.engine_of[i])] -= 1
        if self.curve:
            self.on_engine[self.engine_of[i]].discard(i)
        ld.active -= 1
        ld.reserved_tokens -= self.booked[i]
        if self.peak:
            ld.reserved_var = max(0.0, ld.reserved_var - self.var[i])
            if ld.context_tokens is not None:
                ld.context_tokens -= self.booked_ctx[i]
        if self.queue or self.waiting_order:
            self.pump(t)

    def refresh_future(self, e: _Engine, n: int) -> None:
        """Recompute engine ``e``'s usage curve from its trajectories' states ``n`` steps ahead."""
        ids = self.on_engine[e.idx]
        running, join_ctx, join_step, ctx_of, prompt = e.running, self.join_ctx, self.join_step, self.ctx, self.prompt
        at = e.steps + n
        ctx = [join_ctx[i] + at - join_step[i] if i in running else ctx_of[i] for i in ids]
        resp = [c - prompt[i] for c, i in zip(ctx, ids)]
        sc = [self.scale_of(self.group[i]) for i in ids] if self.group_scale else None
        self.loads[e.idx].set_future(*self.forecast.future(ctx, resp, sc))

    def scale_of(self, g: int) -> float:
        return math.exp(self.waiting_order.score(g))

    def note_evidence(self, i: int, new: float) -> None:
        self.waiting_order.update(self.group[i], self.evidence[i], new)
        self.evidence[i] = new

    # -- engine ---------------------------------------------------------------------
    def enqueue(self, e: _Engine, i: int) -> None:
        q = self.ctx[i] - e.parked.get(i, 0)
        self.qtok[i] = q
        e.queued_tokens += q
        e.waiting.append(i)

    def evict_parked(self, e: _Engine, need_free: int) -> None:
        """Drop cached between-turn KV, least recently parked first, until need_free fits."""
        while e.parked and e.kv_running + e.kv_parked + need_free > e.cap:
            j = next(iter(e.parked))
            tok = e.parked.pop(j)
            e.kv_parked -= tok
            self.stats["evicted"] += tok

    def preempt_newest(self, e: _Engine) -> None:
        while True:
            i, a = e.order.pop()
            if e.running.get(i) == a:
                break
        del e.running[i]
        done = e.steps - self.join_step[i]
        c = self.join_ctx[i] + done
        e.kv_running -= c
        self.ctx[i] = c
        self.remaining[i] -= done
        self.computed[i] = max(self.computed[i], c)
        self.stats["preemptions"] += 1
        self.stats["preempted"] += c
        e.waiting.appendleft(i)
        self.qtok[i] = c
        e.queued_tokens += c

    def start_chunk(self, e: _Engine, t: float) -> None:
        st = self.stats
        # 1. admit from the waiting queue (FCFS), keeping room for one step of the batch
        prefill = 0
        while e.waiting and len(e.running) < e.max_seqs:
            i = e.waiting[0]
            c = self.ctx[i]
            cached = e.parked.pop(i, 0)
            e.kv_parked -= cached
            room = c + len(e.running) + 1 + e.watermark
            if e.kv_running + room > e.cap:
                if cached:  # keep its cache: it will be admitted later
                    e.parked[i] = cached
                    e.kv_parked += cached
                break
            self.evict_parked(e, room)
            e.waiting.popleft()
            e.queued_tokens -= self.qtok[i]
            new = c - cached
            prefill += new
            recomputed = min(self.computed[i], c) - cached
            if recomputed > 0:
                st["recomputed"] += recomputed
            self.computed[i] = max(self.computed[i], c)
            e.kv_running += c
            self.admit_no[i] += 1
            a = self.admit_no[i]
            e.running[i] = a
            e.order.append((i, a))
            self.join_step[i] = e.steps
            self.join_ctx[i] = c
            heapq.heappush(e.heap, (e.steps + self.remaining[i], i, a))
        st["prefill"] += prefill
        if not e.running:
            e.busy = False
            return
        # 2. how many steps until something happens
        heap = e.heap
        while heap and e.running.get(heap[0][1]) != heap[0][2]:
            heapq.heappop(heap)
        n = min(heap[0][0] - e.steps, self.cfg.chunk_steps)
        b = len(e.running)
        self.evict_parked(e, b * n)
        n_fit = (e.cap - e.kv_running - e.kv_parked) // b
        while n_fit < 1:
            self.preempt_newest(e)
            b = len(e.running)
            if b == 0:
                e.busy = False
                if e.waiting:  # the head alone does not fit even in an empty engine
                    raise RuntimeError(
                        f"a request of {self.ctx[e.waiting[0]]} tokens cannot fit in a KV cache of "
                        f"{e.cap} tokens; raise engine.kv_capacity_tokens or lower the lengths"
                    )
                return
            n_fit = (e.cap - e.kv_running - e.kv_parked) // b
        n = min(n, n_fit)
        if self.curve and e.steps + n > e.fut_until and (self.queue or self.waiting_order):
            e.fut_until = e.steps + max(n, self.cfg.chunk_steps)
            self.refresh_future(e, e.fut_until - e.steps)
        step = self.a + self.s * b + self.c * (e.kv_running + b * n / 2)
        pre_t = prefill / self.prefill_rate
        if e.arrivals:  # end the chunk when the next tool result comes back
            wait = e.arrivals[0] - t - pre_t
            if wait > 0:
                n = max(1, min(n, math.ceil(wait / step)))
            else:
                n = 1
        dur = pre_t + n * step
        e.chunk = (n, b, dur)
        e.busy = True
        self.push(t + dur, _CHUNK_END, e.idx)

    def end_chunk(self, e: _Engine, k: int, t: float) -> None:
        n, b, dur = e.chunk
        e.busy_time += dur
        e.kv_time += dur * (e.kv_running + b * n / 2)
        e.steps += n
        e.n_steps += n
        e.kv_running += b * n
        e.decoded += b * n
        if e.kv_running + e.kv_parked > e.kv_peak:
            e.kv_peak = e.kv_running + e.kv_parked
        heap = e.heap
        while heap and heap[0][0] <= e.steps:
            _, i, a = heapq.heappop(heap)
            if e.running.get(i) != a:
                continue
            del e.running[i]
            c = self.join_ctx[i] + (e.steps - self.join_step[i])
            e.kv_running -= c
            self.computed[i] = max(self.computed[i], c)
            j = self.seg[i]
            if j + 1 < self.seg_start[i + 1]:  # a tool call: park the KV, wait for the result
                e.parked[i] = c
                e.kv_parked += c
                self.seg[i] = j + 1
                self.ctx[i] = c + self.tool[j]
                self.remaining[i] = self.gen[j + 1]
                if self.forecast is not None:  # re-book from what it has used so far
                    ld = self.loads[k]
                    resp = self.ctx[i] - self.prompt[i]
                    if self.peak:
                        mean, v = self.forecast.peak(
                            self.ctx[i], resp, self.scale_of(self.group[i]) if self.group_scale else 1.0
                        )
                        b = math.ceil(mean)
                        ld.reserved_var += v - self.var[i]
                        self.var[i] = v
                        if ld.context_tokens is not None:
                            ld.context_tokens += self.ctx[i] - self.booked_ctx[i]
                        self.booked_ctx[i] = self.ctx[i]
                    else:
                        b = self.forecast.booking(self.prompt[i], resp)
                    ld.reserved_tokens += b - self.booked[i]
                    self.booked[i] = b
                    if self.waiting_order is not None:
                        self.note_evidence(i, self.forecast.log_evidence(resp, False))
                t_back = t + self.lat[j]
                heapq.heappush(e.arrivals, t_back)
                self.push(t_back, _TOOL_DONE, i)
            else:
                self.t_done[i] = t
                if self.waiting_order is not None:
                    self.note_evidence(i, self.forecast.log_evidence(c - self.prompt[i], True))
                self.release(i, t)
        self.start_chunk(e, t)


def simulate(cfg: SimConfig, workload: Workload | None = None) -> SimResult:
    """Run one policy on a workload (drawn from ``cfg.workload`` with ``cfg.seed`` if None)."""
    if cfg.policy not in POLICIES:
        raise ValueError(f"unknown policy {cfg.policy!r}; use one of {', '.join(POLICIES)}")
    wl = workload if workload is not None else sample_workload(cfg.workload, cfg.seed)
    biggest = int(wl.prompt.max()) + wl.max_response_tokens
    if biggest > cfg.engine.kv_capacity_tokens:
        raise ValueError(
            f"a rollout may need {biggest} KV tokens (prompt + max_response_tokens) but an engine "
            f"holds {cfg.engine.kv_capacity_tokens}; raise engine.kv_capacity_tokens"
        )
    sim = _Sim(cfg, wl)
    sim.run()
    t_done = np.array(sim.t_done)
    if np.isnan(t_done).any():
        raise RuntimeError(f"simulation ended with {int(np.isnan(t_done).sum())} rollouts unfinished")
    makespan = float(t_done.max())
    busy = np.array([e.busy_time for e in sim.engines])
    lat = t_done - np.array(sim.t_dispatch)
    decoded = sum(e.decoded for e in sim.engines)
    steps = sum(e.n_steps for e in sim.engines)
    st = sim.stats
    return SimResult(
        policy=cfg.policy,
        n_engines=cfg.n_engines,
        n_rollouts=wl.n,
        makespan_s=makespan,
        busy_fraction=float(busy.mean() / makespan),
        busy_fraction_min=float(busy.min() / makespan),
        kv_usage_mean=float(sum(e.kv_time for e in sim.engines) / (makespan * cfg.n_engines * cfg.engine.kv_capacity_tokens)),
        kv_peak_fraction=max(e.kv_peak for e in sim.engines) / cfg.engine.kv_capacity_tokens,
        mean_batch=float(decoded / max(steps, 1)),
        generated_tokens=int(wl.gen.sum()),
        decoded_tokens=int(decoded),
        preemptions=st["preemptions"],
        preempted_tokens=st["preempted"],
        evicted_cache_tokens=st["evicted"],
        recomputed_tokens=st["recomputed"],
        prefill_tokens=st["prefill"],
        latency_p50_s=float(np.percentile(lat, 50)),
        latency_p99_s=float(np.percentile(lat, 99)),
        completion_p50_s=float(np.percentile(t_done, 50)),
        completion_p99_s=float(np.percentile(t_done, 99)),
        engine_busy_s=busy.tolist(),
    )


# -- scenarios -------------------------------------------------------------------------

SCENARIOS: dict[str, dict] = {
    # the paper's RL step (§4): 64 engines, 512 problems × 32 rollouts, 8K then 12K caps
    "paper-8k": dict(n_engines=64, workload=dict(max_response_tokens=8192, response_median_tokens=3000.0)),
    "paper-12k": dict(n_engines=64, workload=dict(max_response_tokens=12288, response_median_tokens=5000.0)),
    # the same shape, small enough for tests and a quick look
    "small": dict(
        n_engines=4,
        engine=dict(kv_capacity_tokens=100_000, max_num_seqs=64),
        workload=dict(n_problems=16, rollouts_per_problem=8, max_response_tokens=4096, response_median_tokens=1500.0),
    ),
}


def scenario_config(name: str, **overrides) -> SimConfig:
    """A named scenario's :class:`SimConfig`, with top-level field overrides."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in SCENARIOS[name].items()}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    return SimConfig.model_validate(data)


def compare_policies(cfg: SimConfig, policies: tuple[str, ...] = POLICIES) -> dict[str, SimResult]:
    """Every policy on the very same workload (drawn once from ``cfg``)."""
    wl = sample_workload(cfg.workload, cfg.seed)
    return {p: simulate(cfg.model_copy(update={"policy": p}), wl) for p in policies}


__all__ = [
    "SCENARIOS",
    "SimResult",
    "Workload",
    "WorkloadConfig",
    "compare_policies",
    "sample_workload",
    "scenario_config",
    "simulate",
    "static_engine",
]

"""The fleet gateway: the sandbox API (``run``, ``run_batch``, ``close_session``, plus
``grade``) implemented by putting jobs on Redis and waiting for workers' results.

``RedisBackend(url)`` is what ``tirl sandbox serve --redis URL`` serves over HTTP; a
trainer can also use it directly as its tool executor (no HTTP hop).

Connections: however many requests wait, the gateway uses a handful of Redis
connections — one **sender** task coalesces concurrent submissions into one pipeline,
one **listener** task blocks on this gateway's result stream and resolves the waiting
futures by request id (the first result wins; later duplicates of an at-least-once
re-run are counted and dropped), and one **maintenance** task watches the epoch (Redis
data loss → resubmit what is still unanswered), reaps dead workers and trims the result
stream.

Every request has two deadlines. At ``queue_timeout_s + grace_s`` a job no worker has
taken is withdrawn from the stream (atomically, so it can never run later) and answered
``infra_error`` / ``queue_timeout``. ``queue_timeout_s`` is the caller's: ``run(...,
queue_timeout_s=)`` (or an ``ExecRequest``'s, or the HTTP request's field), else the
gateway's default (60 s) — a call made inside an RL step passes what the step allows, so a
burst that drains in 73 s is not cut at 60 s (:class:`tirl.sandbox.retry.RetryingExecutor`
does this from its budget). A job a worker holds gets the full budget,
``queue_timeout_s + (timeout + visibility_timeout_s) * max_deliveries + grace_s``; still
unanswered then, it gets ``worker_lost`` (or ``redis_unavailable``). Session calls go to
the worker holding the session; if it died they get ``session_lost`` (``session_reset:
true``).

A caller that goes away (its task cancelled, e.g. its HTTP client disconnected) stops
waiting; a job no worker has taken yet is withdrawn, so it never runs.

What it does not do: run code (workers do), kill a job a worker already runs when its
caller goes away (it finishes, and its result is dropped), or survive its own restart with
requests in flight (callers retry ``infra_error``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from tirl.reward.types import Grade
from tirl.sandbox.fleet import protocol as P
from tirl.sandbox.fleet.reaper import reap_dead_workers
from tirl.sandbox.types import ExecRequest, ExecResult

log = logging.getLogger("tirl.sandbox.fleet")


class FleetError(RuntimeError):
    """A grading job the fleet could not run (``reason`` as for ``infra_error``)."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        super().__init__(detail or f"sandbox fleet: {reason}")


@dataclass(eq=False)
class _Pending:
    job: P.Job
    payload: bytes
    future: asyncio.Future
    deadline: float  # loop time
    stream: str | None = None  # where it was put
    entry_id: bytes | None = None
    timer: asyncio.TimerHandle | None = None
    t0: float = 0.0  # loop time at submit


LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class FleetStats:
    submitted: int = 0
    answered: int = 0
    duplicates_dropped: int = 0
    resubmitted: int = 0
    cancelled: int = 0  # callers that stopped waiting (e.g. their HTTP client went away)
    by_reason: dict[str, int] = field(default_factory=dict)
    by_status: dict[str, int] = field(default_factory=dict)
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    latency_sum_s: float = 0.0

    def observe(self, status: str, latency_s: float) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1
        self.latency_sum_s += latency_s
        for i, b in enumerate(LATENCY_BUCKETS_S):
            if latency_s <= b:
                self.latency_counts[i] += 1
                return
        self.latency_counts[-1] += 1


class RedisBackend:
    """Gateway to a fleet of ``tirl sandbox worker`` processes over Redis."""

    def __init__(self, url: str, *, prefix: str = "tirl:fleet", queue_timeout_s: float = 60.0,
                 default_timeout_s: float = 10.0, grade_timeout_s: float = 10.0,
                 visibility_timeout_s: float = 10.0, max_deliveries: int = 2,
                 grace_s: float = 5.0, worker_ttl_s: float = 5.0, max_batch: int = 1024,
                 cfg: Any = None):
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"fleet gateway: expected a redis:// URL, got {url!r}")
        if cfg is not None:  # a SandboxConfig: take its default per-call limit
            default_timeout_s = float(getattr(cfg, "timeout_s", default_timeout_s))
        self.url = url
        self.keys = P.Keys(prefix)
        self.gid = uuid.uuid4().hex[:12]
        self.reply = self.keys.res(self.gid)
        self.queue_timeout_s = queue_timeout_s
        self.default_timeout_s = default_timeout_s
        self.grade_timeout_s = grade_timeout_s
        self.visibility_timeout_s = visibility_timeout_s
        self.max_deliveries = max_deliveries
        self.grace_s = grace_s
        self.worker_ttl_s = worker_ttl_s
        self.max_batch = max_batch
        self.stats = FleetStats()
        self._pending: dict[str, _Pending] = {}
        self._outbox: list[_Pending] = []
        self._outbox_ready: asyncio.Event | None = None
        self._r: aioredis.Redis | None = None
        self._tasks: list[asyncio.Task] = []
        self._epoch: bytes | None = None
        self._last_id = b"0-0"
        self._started = False
        self._gauges = {"queue_depth": 0, "workers": 0, "slots": 0}  # refreshed by maintenance
        self._expiring: set[asyncio.Future] = set()
        self._closing = False

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> RedisBackend:
        if self._started:
            return self
        self._r = aioredis.Redis.from_url(self.url, socket_connect_timeout=3, socket_timeout=10)
        self._outbox_ready = asyncio.Event()
        self._closing = False
        try:
            await self._init_redis()
        except RedisError as err:
            log.warning("fleet gateway: redis %s unreachable at start (%s); requests wait "
                        "for it until their deadline", self.url, err)
        self._tasks = [asyncio.create_task(c) for c in
                       (self._send_loop(), self._listen_loop(), self._maintenance_loop())]
        self._started = True
        return self

    async def close(self) -> None:
        self._closing = True  # redis-py may turn a cancelled read into ConnectionError
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        self._tasks = []
        for p in list(self._pending.values()):
            self._resolve(p, P.infra_result("gateway_closed", p.job.session_id))
        if self._r is not None:
            try:
                await asyncio.wait_for(self._r.delete(self.reply), 5)
            except (RedisError, asyncio.TimeoutError, OSError):
                pass
            await self._r.aclose()
        self._started = False

    async def __aenter__(self) -> RedisBackend:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _init_redis(self) -> None:
        r = self._r
        try:
            await r.xgroup_create(self.keys.jobs, P.GROUP, id="0", mkstream=True)
        except ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise
        await r.set(self.keys.epoch, uuid.uuid4().hex, nx=True)
        self._epoch = await r.get(self.keys.epoch)

    # ---------------------------------------------------------------- public API
    async def run(self, code: str, stdin: str = "", timeout_s: float | None = None,
                  session_id: str | None = None, *, queue_timeout_s: float | None = None) -> ExecResult:
        """Run one call on a worker. ``queue_timeout_s``: how long it may wait for a worker
        (the caller's budget); None: the gateway's ``queue_timeout_s``."""
        if queue_timeout_s is None:
            queue_timeout_s = self.queue_timeout_s
        elif not (queue_timeout_s > 0 and queue_timeout_s < float("inf")):
            raise ValueError(f"queue_timeout_s must be a finite number of seconds > 0 (or None "
                             f"for the gateway's {self.queue_timeout_s:g}), got {queue_timeout_s!r}")
        job = P.Job(rid=uuid.uuid4().hex, kind=P.EXEC, reply=self.reply,
                    queue_timeout_ms=int(queue_timeout_s * 1000), code=code, stdin=stdin,
                    timeout_s=timeout_s, session_id=session_id)
        d = await self._submit(job, timeout_s if timeout_s is not None else self.default_timeout_s,
                               queue_timeout_s)
        return ExecResult.from_dict(d)

    async def run_batch(self, requests: list[ExecRequest]) -> list[ExecResult]:
        return list(await asyncio.gather(*(
            self.run(q.code, q.stdin, q.timeout_s, q.session_id, queue_timeout_s=q.queue_timeout_s)
            for q in requests)))

    async def close_session(self, session_id: str) -> bool:
        job = P.Job(rid=uuid.uuid4().hex, kind=P.CLOSE, reply=self.reply,
                    queue_timeout_ms=int(self.queue_timeout_s * 1000), session_id=session_id)
        d = await self._submit(job, 5.0)
        return bool(d.get("closed", False))

    async def grade(self, response_text: str, gold: str) -> Grade:
        """Grade one answer on a worker (``tirl.reward.grade`` there). Raises
        :class:`FleetError` when no worker could do it."""
        job = P.Job(rid=uuid.uuid4().hex, kind=P.GRADE, reply=self.reply,
                    queue_timeout_ms=int(self.queue_timeout_s * 1000), response=response_text,
                    gold=gold, timeout_s=self.grade_timeout_s)
        d = await self._submit(job, self.grade_timeout_s)
        if "grade" not in d:
            raise FleetError(d.get("reason") or "infra_error", d.get("stderr", ""))
        return Grade(**d["grade"])

    async def grade_batch(self, items: list[tuple[str, str]]) -> list[Grade]:
        return list(await asyncio.gather(*(self.grade(t, g) for t, g in items)))

    async def health(self) -> dict[str, Any]:
        """Workers alive, their slots, queue depth; ``status`` is ``ok`` with at least one
        live worker, ``degraded`` with none, ``down`` without Redis."""
        try:
            r = self._r
            wids = [w.decode() for w in await r.smembers(self.keys.workers)]
            infos = await r.mget([self.keys.alive(w) for w in wids]) if wids else []
            alive = {w: json.loads(i) for w, i in zip(wids, infos) if i}
            depth = await r.xlen(self.keys.jobs)
        except RedisError as err:
            return {"status": "down", "backend": "redis-fleet", "error": str(err),
                    "waiting": len(self._pending)}
        return {"status": "ok" if alive else "degraded", "backend": "redis-fleet",
                "workers": len(alive), "slots": sum(i.get("slots", 0) for i in alive.values()),
                "queue_depth": depth, "worker_ids": sorted(alive), "waiting": len(self._pending),
                "answered": self.stats.answered, "duplicates_dropped": self.stats.duplicates_dropped,
                "infra_errors": dict(self.stats.by_reason)}

    def metrics_text(self) -> str:
        """Prometheus text for the gateway's own counters."""
        s = self.stats
        lines = [
            "# TYPE tirl_fleet_submitted_total counter", f"tirl_fleet_submitted_total {s.submitted}",
            "# TYPE tirl_fleet_answered_total counter", f"tirl_fleet_answered_total {s.answered}",
            "# TYPE tirl_fleet_duplicates_dropped_total counter",
            f"tirl_fleet_duplicates_dropped_total {s.duplicates_dropped}",
            "# TYPE tirl_fleet_resubmitted_total counter", f"tirl_fleet_resubmitted_total {s.resubmitted}",
            "# TYPE tirl_fleet_cancelled_total counter", f"tirl_fleet_cancelled_total {s.cancelled}",
            "# TYPE tirl_fleet_waiting gauge", f"tirl_fleet_waiting {len(self._pending)}",
            "# TYPE tirl_fleet_queue_depth gauge", f"tirl_fleet_queue_depth {self._gauges['queue_depth']}",
            "# TYPE tirl_fleet_workers gauge", f"tirl_fleet_workers {self._gauges['workers']}",
            "# TYPE tirl_fleet_slots gauge", f"tirl_fleet_slots {self._gauges['slots']}",
            "# TYPE tirl_fleet_infra_errors_total counter",
        ]
        lines += [f'tirl_fleet_infra_errors_total{{reason="{k}"}} {v}' for k, v in s.by_reason.items()]
        lines.append("# TYPE tirl_fleet_results_total counter")
        lines += [f'tirl_fleet_results_total{{status="{k}"}} {v}' for k, v in s.by_status.items()]
        lines.append("# TYPE tirl_fleet_latency_seconds histogram")
        acc = 0
        for b, c in zip(LATENCY_BUCKETS_S, s.latency_counts):
            acc += c
            lines.append(f'tirl_fleet_latency_seconds_bucket{{le="{b}"}} {acc}')
        acc += s.latency_counts[-1]
        lines.append(f'tirl_fleet_latency_seconds_bucket{{le="+Inf"}} {acc}')
        lines.append(f"tirl_fleet_latency_seconds_sum {s.latency_sum_s:.6f}")
        lines.append(f"tirl_fleet_latency_seconds_count {acc}")
        return "\n".join(lines) + "\n"

    # ---------------------------------------------------------------- submit / resolve
    async def _submit(self, job: P.Job, exec_timeout_s: float,
                      queue_timeout_s: float | None = None) -> dict[str, Any]:
        if not self._started:
            await self.start()
        loop = asyncio.get_running_loop()
        qt = self.queue_timeout_s if queue_timeout_s is None else queue_timeout_s
        budget = qt + (exec_timeout_s + self.visibility_timeout_s) * self.max_deliveries + self.grace_s
        now = loop.time()
        p = _Pending(job=job, payload=P.encode_job(job), future=loop.create_future(),
                     deadline=now + budget, t0=now)
        p.timer = loop.call_at(now + qt + self.grace_s, self._on_deadline, job.rid)
        self._pending[job.rid] = p
        self.stats.submitted += 1
        self._outbox.append(p)
        self._outbox_ready.set()
        try:
            return await p.future
        except asyncio.CancelledError:
            self._abandon(p)
            raise

    def _abandon(self, p: _Pending) -> None:
        """The caller stopped waiting: forget the request and withdraw its job if no worker
        has taken it (one still in the outbox is skipped by the sender; one being sent right
        now is withdrawn by :meth:`_send` once it has an entry id)."""
        if self._pending.get(p.job.rid) is p:
            del self._pending[p.job.rid]
            self.stats.cancelled += 1
        if p.timer is not None:
            p.timer.cancel()
        if p.entry_id is not None:
            self._withdraw_later(p)

    def _withdraw_later(self, p: _Pending) -> None:
        t = asyncio.ensure_future(self._withdraw(p))
        self._expiring.add(t)
        t.add_done_callback(self._expiring.discard)

    async def _withdraw(self, p: _Pending) -> None:
        try:
            await asyncio.wait_for(self._r.eval(P.WITHDRAW_IF_WAITING, 1, p.stream, P.GROUP,
                                                p.entry_id), 3)
        except (RedisError, asyncio.TimeoutError, OSError) as err:
            # not withdrawn: a worker may still run it; its result is dropped as a duplicate
            log.debug("fleet gateway: withdrawing abandoned job %s: %s", p.job.rid, err)

    def _resolve(self, p: _Pending, d: dict[str, Any]) -> None:
        if self._pending.get(p.job.rid) is p:
            del self._pending[p.job.rid]
        if p.timer is not None:
            p.timer.cancel()
        if not p.future.done():
            self.stats.answered += 1
            status = d.get("status") or ("grade" if "grade" in d else p.job.kind)
            self.stats.observe(status, asyncio.get_running_loop().time() - p.t0)
            if d.get("status") == "infra_error" and d.get("reason"):
                self.stats.by_reason[d["reason"]] = self.stats.by_reason.get(d["reason"], 0) + 1
            p.future.set_result(d)

    def _on_deadline(self, rid: str) -> None:
        p = self._pending.get(rid)
        if p is not None:
            t = asyncio.ensure_future(self._expire(p))
            self._expiring.add(t)  # keep a reference until it finishes
            t.add_done_callback(self._expiring.discard)

    async def _expire(self, p: _Pending) -> None:
        """At the queue deadline: withdraw a job no worker took (``queue_timeout``); at the
        final deadline: answer with the reason it did not finish."""
        loop = asyncio.get_running_loop()
        final = loop.time() >= p.deadline - 1e-3
        reason = P.REDIS_UNAVAILABLE
        if p.entry_id is not None:
            try:
                withdrawn = await asyncio.wait_for(self._r.eval(
                    P.WITHDRAW_IF_WAITING, 1, p.stream, P.GROUP, p.entry_id), 3)
                reason = P.QUEUE_TIMEOUT if withdrawn else P.WORKER_LOST
            except ResponseError:  # no group (Redis lost its data): it cannot be running
                reason = P.QUEUE_TIMEOUT
            except (RedisError, asyncio.TimeoutError, OSError):
                reason = P.REDIS_UNAVAILABLE
        if not final and reason != P.QUEUE_TIMEOUT:
            # a worker holds it (or Redis is away): wait for the full execution budget
            if p.future.done() or self._pending.get(p.job.rid) is not p:
                return
            p.timer = loop.call_at(p.deadline, self._on_deadline, p.job.rid)
            return
        if p.job.session_id is not None and p.stream != self.keys.jobs and reason == P.WORKER_LOST:
            reason = P.SESSION_LOST
        if p.job.kind == P.CLOSE:
            self._resolve(p, {"closed": False, "reason": reason})
        else:
            self._resolve(p, P.infra_result(reason, p.job.session_id))

    # ---------------------------------------------------------------- sender
    async def _send_loop(self) -> None:
        backoff = 0.1
        while not self._closing:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            while self._outbox:
                batch = self._outbox[: self.max_batch]
                del self._outbox[: self.max_batch]
                batch = [p for p in batch if not p.future.done()]
                try:
                    await self._send(batch)
                    backoff = 0.1
                except RedisError as err:
                    log.warning("fleet gateway: sending %d jobs failed (%s); retrying in %.1fs",
                                len(batch), err, backoff)
                    self._outbox[:0] = batch
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)

    async def _send(self, batch: list[_Pending]) -> None:
        if not batch:
            return
        pipe = self._r.pipeline(transaction=False)
        for p in batch:
            if p.job.session_id is None:
                pipe.xadd(self.keys.jobs, {"j": p.payload})
            else:
                mode = "close" if p.job.kind == P.CLOSE else "route"
                pipe.eval(P.ROUTE_SESSION, 1, self.keys.sess(p.job.session_id), self.keys.prefix,
                          p.payload, mode)
        out = await pipe.execute()
        for p, res in zip(batch, out):
            if p.job.session_id is None:
                p.stream, p.entry_id = self.keys.jobs, res
                if p.future.cancelled():  # its caller left while this batch was being sent
                    self._withdraw_later(p)
                continue
            where, eid = (x.decode() if isinstance(x, bytes) else x for x in res)
            if where == "lost":
                self._resolve(p, {"closed": False, "reason": P.SESSION_LOST} if p.job.kind == P.CLOSE
                              else P.infra_result(P.SESSION_LOST, p.job.session_id,
                                                  f"sandbox fleet: the worker holding session "
                                                  f"{p.job.session_id!r} died; its state is lost"))
            elif where == "none":
                self._resolve(p, {"closed": False})
            else:
                p.stream = self.keys.jobs if where == "shared" else self.keys.wjobs(where)
                p.entry_id = eid.encode()
                if p.future.cancelled():
                    self._withdraw_later(p)

    # ---------------------------------------------------------------- listener
    async def _listen_loop(self) -> None:
        backoff = 0.1
        while not self._closing:
            try:
                resp = await self._r.xread({self.reply: self._last_id}, count=2048, block=1000)
                backoff = 0.1
            except RedisError as err:
                log.warning("fleet gateway: result listener: %s; retrying in %.1fs", err, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            for _stream, entries in resp or []:
                for eid, fields in entries:
                    self._last_id = eid
                    rid = fields.get(b"rid", b"").decode()
                    p = self._pending.get(rid)
                    if p is None:
                        self.stats.duplicates_dropped += 1
                        continue
                    try:
                        d = json.loads(fields[b"r"])
                    except (KeyError, ValueError):
                        d = P.infra_result("bad_result", p.job.session_id)
                    self._resolve(p, d)

    # ---------------------------------------------------------------- maintenance
    async def _maintenance_loop(self) -> None:
        last_reap = last_gauges = 0.0
        while not self._closing:
            await asyncio.sleep(0.5)
            try:
                epoch = await self._r.get(self.keys.epoch)
                if self._epoch is None:  # first contact (Redis was away at start)
                    await self._init_redis()
                elif epoch != self._epoch:
                    await self._on_data_loss()
                if time.monotonic() - last_gauges > 2.0:
                    last_gauges = time.monotonic()
                    h = await self.health()
                    if h["status"] != "down":
                        for k in self._gauges:
                            self._gauges[k] = h.get(k, 0)
                if time.monotonic() - last_reap > self.worker_ttl_s:
                    last_reap = time.monotonic()
                    await reap_dead_workers(self._r, self.keys, post_result=self._post_script)
                    if self._last_id != b"0-0":
                        await self._r.xtrim(self.reply, minid=self._last_id, approximate=True)
            except RedisError as err:
                log.debug("fleet gateway: maintenance: %s", err)
            except Exception:
                log.exception("fleet gateway: maintenance")

    async def _post_script(self, keys, args):
        return await self._r.eval(P.POST_RESULT, len(keys), *keys, *args)

    async def _on_data_loss(self) -> None:
        """Redis came back empty: re-create the group and resubmit what is unanswered."""
        await self._init_redis()
        self._last_id = b"0-0"
        sent = [p for p in self._pending.values() if p.entry_id is not None and p not in self._outbox]
        log.warning("fleet gateway: redis lost its data (new epoch); resubmitting %d requests",
                    len(sent))
        for p in sent:
            p.entry_id = p.stream = None
        self.stats.resubmitted += len(sent)
        self._outbox.extend(sent)
        self._outbox_ready.set()

"""A fleet worker: takes jobs from Redis, runs them in the local sandbox pool, posts results.

``run_worker(url, slots)`` is what ``tirl sandbox worker --redis URL --slots N`` calls.
One worker process holds one local executor (a ``tirl.sandbox.Sandbox``: zygote, isolation,
sessions) and, lazily, a grader for answer-grading jobs (``tirl.reward``).

Loops, all on one event loop:

* **read** — ``XREADGROUP`` on its private session stream and the shared stream, never
  taking more than ``slots + prefetch`` jobs at a time (the rest stay in Redis for other
  workers);
* **post** — results are coalesced into one pipeline per batch; each goes through the
  ``POST_RESULT`` script (dedup marker, result, ``XACK``, ``XDEL`` in one atomic step);
  on a Redis outage results are kept and retried, not dropped;
* **lease** — every in-flight shared entry is re-claimed by this worker (``XCLAIM JUSTID``)
  well inside the visibility timeout, so long executions are not stolen; entries idle past
  the visibility timeout (their worker died) are taken with ``XAUTOCLAIM`` and re-run, or
  answered ``worker_lost`` once they have been delivered ``max_deliveries`` times;
* **heartbeat** — ``alive:{wid}`` with a TTL, the registry, Redis's clock, and the
  ``epoch`` token: a new epoch means Redis lost its data (restart without persistence),
  and the worker re-creates its groups and re-registers its sessions.

What it does not do: isolate code itself (the local ``Sandbox`` does; untrusted code runs
in children without network, so it cannot reach Redis), or persist anything across its
own death (the fleet's at-least-once delivery covers that).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from tirl.sandbox.fleet import protocol as P
from tirl.sandbox.fleet.reaper import reap_dead_workers

log = logging.getLogger("tirl.sandbox.fleet")


@dataclass
class WorkerOptions:
    prefix: str = "tirl:fleet"
    visibility_timeout_s: float = 10.0  # a job idle this long in a dead worker's PEL is re-taken
    max_deliveries: int = 2  # after this many deliveries a job is answered worker_lost
    worker_ttl_s: float = 5.0  # heartbeat key lifetime: a silent worker is dead after this
    heartbeat_s: float = 1.0
    prefetch: int | None = None  # extra jobs held beyond the slots (None = slots)
    session_ttl_s: float = 600.0
    block_ms: int = 1000
    drain_timeout_s: float = 30.0  # on stop: how long to wait for running jobs
    # SandboxConfig overrides for the local pool, e.g. {"timeout_s": 30, "memory_mb": 2048}
    # (several workers on one machine are fine: each sandbox claims its own uid block)
    sandbox: dict[str, Any] = field(default_factory=dict)


class FleetWorker:
    """One worker node. ``executor`` is anything with ``run``/``close_session`` (and
    optionally ``start``/``close``); ``grader`` anything with ``async grade(resp, gold)``
    returning a ``Grade`` (default: ``tirl.reward``, created on the first grading job)."""

    def __init__(self, url: str, slots: int, *, executor: Any = None, grader: Any = None,
                 options: WorkerOptions | None = None, worker_id: str | None = None):
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.url = url
        self.slots = slots
        self.opt = options or WorkerOptions()
        self.keys = P.Keys(self.opt.prefix)
        self.wid = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.executor = executor
        self._own_executor = executor is None
        self.grader = grader
        self._own_grader = False
        self.max_inflight = slots + (slots if self.opt.prefetch is None else self.opt.prefetch)
        self._inflight: dict[bytes, tuple[str, P.Job]] = {}  # entry id -> (stream, job)
        self._tasks: set[asyncio.Task] = set()
        self._results: asyncio.Queue = asyncio.Queue()
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._closed = False  # redis-py may turn a cancelled read into ConnectionError
        self._sessions: dict[str, float] = {}  # sid -> last use (monotonic), pruned after the TTL
        self._epoch: bytes | None = None
        self._clock_offset_ms = 0.0
        self._r: aioredis.Redis | None = None
        self._autoclaim_cursor = "0-0"
        self.stats = {"executed": 0, "reclaimed": 0, "worker_lost": 0, "queue_timeout": 0,
                      "forwarded": 0, "posted": 0}

    # ---------------------------------------------------------------- lifecycle
    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Serve until :meth:`stop`; then finish running jobs, leave the fleet cleanly."""
        if self.executor is None:
            from tirl.sandbox import Sandbox

            self.executor = Sandbox(**{"slots": self.slots, "session_ttl_s": self.opt.session_ttl_s,
                                       **self.opt.sandbox})
            await self.executor.start()
            for w in (await self.executor.health()).get("warnings", []):
                log.warning("fleet worker %s: sandbox: %s", self.wid, w)
        self._r = aioredis.Redis.from_url(self.url, socket_connect_timeout=3,
                                          socket_timeout=max(10.0, self.opt.block_ms / 1000 + 5))
        loops = [asyncio.create_task(c) for c in (
            self._post_loop(), self._heartbeat_loop(), self._lease_loop())]
        try:
            await self._register()
            log.info("fleet worker %s: %d slots, redis %s", self.wid, self.slots, _redact(self.url))
            await self._read_loop()
            await self._drain()
        finally:
            self._closed = True
            for t in loops:
                t.cancel()
            await asyncio.wait(loops, timeout=10)
            await self._leave()
            await self._r.aclose()
            if self._own_executor:
                await self.executor.close()
            if self._own_grader:
                await self.grader.aclose()

    async def _register(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._ensure_groups()
                await self._beat()
                return
            except RedisError as err:
                log.warning("fleet worker %s: redis unreachable (%s); retrying", self.wid, err)
                await _sleep_or(self._stopping, 1.0)

    async def _ensure_groups(self) -> None:
        r = self._r
        for stream in (self.keys.jobs, self.keys.wjobs(self.wid)):
            try:
                # id 0: entries added before the group existed are delivered too
                await r.xgroup_create(stream, P.GROUP, id="0", mkstream=True)
            except ResponseError as err:
                if "BUSYGROUP" not in str(err):
                    raise

    async def _beat(self) -> None:
        r = self._r
        info = json.dumps({"slots": self.slots, "host": socket.gethostname(), "pid": os.getpid(),
                           "inflight": len(self._inflight)})
        t0 = time.time()
        pipe = r.pipeline(transaction=False)
        pipe.set(self.keys.alive(self.wid), info, px=int(self.opt.worker_ttl_s * 1000))
        pipe.sadd(self.keys.workers, self.wid)
        pipe.set(self.keys.epoch, uuid.uuid4().hex, nx=True)
        pipe.get(self.keys.epoch)
        pipe.time()
        _, _, _, epoch, (sec, usec) = await pipe.execute()
        t1 = time.time()
        self._clock_offset_ms = (sec * 1000 + usec / 1000) - (t0 + t1) * 500
        idle = time.monotonic() - self.opt.session_ttl_s
        expired = [k for k, t in self._sessions.items() if t < idle]
        if expired:  # the local pool has evicted them too; their sess keys have expired
            await r.srem(self.keys.wsess(self.wid), *expired)
            for sid in expired:
                del self._sessions[sid]
        if epoch != self._epoch:
            if self._epoch is not None:
                log.warning("fleet worker %s: redis lost its data (new epoch); re-registering "
                            "groups and %d sessions", self.wid, len(self._sessions))
                await self._ensure_groups()
                pipe = r.pipeline(transaction=False)
                for sid in self._sessions:
                    pipe.set(self.keys.sess(sid), self.wid, nx=True, ex=int(self.opt.session_ttl_s))
                    pipe.sadd(self.keys.wsess(self.wid), sid)
                await pipe.execute()
            self._epoch = epoch

    async def _leave(self) -> None:
        """Leave cleanly: stop heart-beating, answer what waits in our session stream."""
        try:
            await self._r.delete(self.keys.alive(self.wid))
            await reap_dead_workers(self._r, self.keys, post_result=self._post_script, only=self.wid)
        except RedisError as err:
            log.warning("fleet worker %s: could not leave cleanly (%s); the reaper will", self.wid, err)

    async def _post_script(self, keys, args):
        return await self._r.eval(P.POST_RESULT, len(keys), *keys, *args)

    def _redis_now_ms(self) -> float:
        return time.time() * 1000 + self._clock_offset_ms

    # ---------------------------------------------------------------- read
    async def _read_loop(self) -> None:
        streams = {self.keys.wjobs(self.wid): ">", self.keys.jobs: ">"}
        backoff = 0.2
        while not self._stopping.is_set():
            free = self.max_inflight - len(self._inflight)
            if free <= 0:
                self._slot_freed.clear()
                await _wait_any(self._slot_freed, self._stopping)
                continue
            try:
                resp = await self._r.xreadgroup(P.GROUP, self.wid, streams, count=free,
                                                block=self.opt.block_ms)
                backoff = 0.2
            except ResponseError as err:
                if "NOGROUP" in str(err):
                    await self._safe(self._ensure_groups())
                    continue
                raise
            except RedisError as err:
                log.warning("fleet worker %s: read failed (%s); retrying in %.1fs", self.wid, err, backoff)
                await _sleep_or(self._stopping, backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            now = self._redis_now_ms()
            for stream_b, entries in resp or []:
                stream = stream_b.decode()
                for eid, fields in entries:
                    self._accept(stream, eid, fields, age_ms=now - P.entry_ms(eid), redelivered=False)

    def _accept(self, stream: str, eid: bytes, fields: dict, *, age_ms: float, redelivered: bool,
                deliveries: int = 1) -> None:
        try:
            job = P.decode_job(fields[b"j"])
        except (KeyError, ValueError) as err:
            log.error("fleet worker %s: dropping malformed job %s (%s)", self.wid, eid, err)
            self._spawn(self._ack_only(stream, eid))
            return
        self._inflight[eid] = (stream, job)
        self._spawn(self._handle(stream, eid, job, age_ms, redelivered, deliveries))

    def _spawn(self, coro) -> None:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    # ---------------------------------------------------------------- handle
    async def _handle(self, stream: str, eid: bytes, job: P.Job, age_ms: float,
                      redelivered: bool, deliveries: int) -> None:
        try:
            if redelivered and deliveries > self.opt.max_deliveries:
                self.stats["worker_lost"] += 1
                res = (P.infra_result(P.WORKER_LOST, job.session_id,
                                      f"sandbox fleet: the worker running this request died "
                                      f"({deliveries - 1} times); not re-run")
                       if job.kind != P.CLOSE else {"closed": False})
            elif not redelivered and age_ms > job.queue_timeout_ms:
                self.stats["queue_timeout"] += 1
                res = (P.infra_result(P.QUEUE_TIMEOUT, job.session_id,
                                      f"sandbox fleet: waited {age_ms / 1000:.1f}s in the queue, "
                                      f"over the {job.queue_timeout_ms / 1000:.1f}s limit")
                       if job.kind != P.CLOSE else {"closed": False})
            elif job.kind == P.EXEC:
                res = await self._exec(stream, eid, job, age_ms if not redelivered else 0.0,
                                       redelivered)
                if res is None:  # forwarded to the session's owner
                    return
                if redelivered:
                    res["extra"]["deliveries"] = deliveries
            elif job.kind == P.GRADE:
                res = await self._grade(job)
            elif job.kind == P.CLOSE:
                res = await self._close(job)
            else:
                res = P.infra_result("bad_job", job.session_id, f"unknown job kind {job.kind!r}")
        except Exception as err:  # an executor bug must still answer the request
            log.exception("fleet worker %s: job %s failed", self.wid, job.rid)
            res = P.infra_result("worker_error", job.session_id, f"sandbox fleet worker: {err!r}")
        await self._results.put((stream, eid, job, res))

    async def _exec(self, stream: str, eid: bytes, job: P.Job, queue_ms: float,
                    redelivered: bool = False) -> dict | None:
        sid = job.session_id
        if sid is not None:
            owner = await self._claim_session(sid, job.rid, first=not redelivered)
            if owner == "dup":
                await self._ack_only(stream, eid)
                self._done(eid)
                return None
            if owner != "mine":
                await self._forward(stream, eid, job, owner)
                return None
        result = await self.executor.run(job.code, stdin=job.stdin, timeout_s=job.timeout_s,
                                         session_id=sid)
        self.stats["executed"] += 1
        d = result.to_dict()
        d["queue_ms"] = float(d.get("queue_ms") or 0.0) + max(0.0, queue_ms)
        extra = dict(d.get("extra") or {})
        extra["worker"] = self.wid
        d["extra"] = extra
        return d

    async def _claim_session(self, sid: str, rid: str, first: bool) -> str:
        while True:
            try:
                owner = await self._r.eval(P.CLAIM_SESSION, 3, self.keys.sess(sid),
                                           self.keys.wsess(self.wid), self.keys.run_marker(rid),
                                           self.wid, self.opt.prefix, int(self.opt.session_ttl_s),
                                           sid, "1" if first else "0")
                break
            except RedisError as err:
                log.warning("fleet worker %s: session claim failed (%s); retrying", self.wid, err)
                await asyncio.sleep(0.5)
        owner = owner.decode() if isinstance(owner, bytes) else owner
        if owner == "mine":
            self._sessions[sid] = time.monotonic()
        return owner

    async def _forward(self, stream: str, eid: bytes, job: P.Job, owner: str) -> None:
        """A new session's first calls raced onto two workers: send ours to the owner."""
        self.stats["forwarded"] += 1
        while True:
            try:
                pipe = self._r.pipeline(transaction=True)
                pipe.xadd(self.keys.wjobs(owner), {"j": P.encode_job(job)})
                pipe.xack(stream, P.GROUP, eid)
                pipe.xdel(stream, eid)
                await pipe.execute()
                break
            except RedisError:
                await asyncio.sleep(0.5)
        self._done(eid)

    async def _grade(self, job: P.Job) -> dict:
        if self.grader is None:
            self.grader = _default_grader(self.slots)
            self._own_grader = True
        g = await self.grader.grade(job.response, job.gold)
        return {"grade": g.to_dict(), "worker": self.wid}

    async def _close(self, job: P.Job) -> dict:
        sid = job.session_id or ""
        closed = bool(await self.executor.close_session(sid))
        self._sessions.pop(sid, None)
        await self._r.eval(P.RELEASE_SESSION, 2, self.keys.sess(sid), self.keys.wsess(self.wid),
                           self.wid, sid)
        return {"closed": closed}

    async def _ack_only(self, stream: str, eid: bytes) -> None:
        try:
            await self._r.xack(stream, P.GROUP, eid)
            await self._r.xdel(stream, eid)
        except RedisError:
            pass

    def _done(self, eid: bytes) -> None:
        self._inflight.pop(eid, None)
        self._slot_freed.set()

    # ---------------------------------------------------------------- post
    async def _post_loop(self) -> None:
        while not self._closed:
            batch = [await self._results.get()]
            while not self._results.empty() and len(batch) < 512:
                batch.append(self._results.get_nowait())
            backoff = 0.2
            while True:
                try:
                    pipe = self._r.pipeline(transaction=False)
                    for stream, eid, job, res in batch:
                        keys = [self.keys.done(job.rid), job.reply, stream]
                        args = [P.GROUP, eid, job.rid, json.dumps(res), 600, 100000, 600]
                        pipe.eval(P.POST_RESULT, 3, *keys, *args)
                    await pipe.execute()
                    break
                except RedisError as err:
                    if self._closed:
                        return
                    log.warning("fleet worker %s: posting %d results failed (%s); retrying",
                                self.wid, len(batch), err)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
            self.stats["posted"] += len(batch)
            for _, eid, _, _ in batch:
                self._done(eid)

    # ---------------------------------------------------------------- lease / reclaim / reap
    async def _lease_loop(self) -> None:
        interval = max(0.1, self.opt.visibility_timeout_s / 4)
        last_reap = 0.0
        while not self._closed:
            await asyncio.sleep(interval)
            try:
                await self._extend_leases()
                await self._reclaim()
                if time.monotonic() - last_reap > self.opt.worker_ttl_s:
                    last_reap = time.monotonic()
                    await reap_dead_workers(self._r, self.keys, post_result=self._post_script)
            except RedisError as err:
                log.debug("fleet worker %s: lease loop: %s", self.wid, err)
            except Exception:
                log.exception("fleet worker %s: lease loop", self.wid)

    async def _extend_leases(self) -> None:
        ids = [eid for eid, (stream, _) in list(self._inflight.items()) if stream == self.keys.jobs]
        for i in range(0, len(ids), 500):
            await self._r.xclaim(self.keys.jobs, P.GROUP, self.wid, 0, ids[i:i + 500], justid=True)

    async def _reclaim(self) -> None:
        if self._stopping.is_set():
            return
        free = self.max_inflight - len(self._inflight)
        if free <= 0:
            return
        min_idle = int(self.opt.visibility_timeout_s * 1000)
        try:
            nxt, entries, _deleted = await self._r.xautoclaim(
                self.keys.jobs, P.GROUP, self.wid, min_idle, self._autoclaim_cursor, count=free)
        except ResponseError as err:
            if "NOGROUP" in str(err):
                return
            raise
        self._autoclaim_cursor = nxt.decode() if isinstance(nxt, bytes) else nxt
        for eid, fields in entries:
            if not fields or eid in self._inflight:
                continue
            pend = await self._r.xpending_range(self.keys.jobs, P.GROUP, eid, eid, 1)
            deliveries = pend[0]["times_delivered"] if pend else self.opt.max_deliveries + 1
            self.stats["reclaimed"] += 1
            log.warning("fleet worker %s: re-taking job %s (delivery %d)", self.wid, eid, deliveries)
            self._accept(self.keys.jobs, eid, fields, age_ms=0.0, redelivered=True,
                         deliveries=deliveries)

    async def _heartbeat_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.opt.heartbeat_s)
            try:
                await self._beat()
            except RedisError as err:
                log.warning("fleet worker %s: heartbeat failed (%s)", self.wid, err)

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.opt.drain_timeout_s
        while (self._inflight or not self._results.empty()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def _safe(self, coro) -> None:
        try:
            await coro
        except RedisError as err:
            log.warning("fleet worker %s: %s", self.wid, err)
            await asyncio.sleep(0.5)


def _default_grader(slots: int):
    from tirl.reward import Grader

    return Grader(workers=min(slots, os.cpu_count() or 1))


async def _sleep_or(ev: asyncio.Event, s: float) -> None:
    try:
        await asyncio.wait_for(ev.wait(), s)
    except asyncio.TimeoutError:
        pass


async def _wait_any(*events: asyncio.Event) -> None:
    tasks = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


def _redact(url: str) -> str:
    if "@" in url:
        scheme, rest = url.split("://", 1) if "://" in url else ("", url)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def run_worker(url: str, slots: int = 0, **options: Any) -> int:
    """Run one fleet worker until SIGINT/SIGTERM; returns the process exit status.

    ``slots`` = 0 takes the sandbox's default (2 per core). Options are
    :class:`WorkerOptions` fields."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not url.startswith(("redis://", "rediss://", "unix://")):
        log.error("fleet worker: --redis must be a redis:// URL, got %r", url)
        return 2
    if not slots:
        from tirl.sandbox.pool import default_slots

        slots = default_slots()
    try:
        opts = WorkerOptions(**options)
    except TypeError as err:
        log.error("fleet worker: bad option: %s", err)
        return 2

    async def main() -> None:
        worker = FleetWorker(url, slots, options=opts)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, worker.stop)
        await worker.run()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        return 130
    except Exception:
        log.exception("fleet worker: fatal error")
        return 1
    return 0


if __name__ == "__main__":
    import argparse
    import sys

    ap = argparse.ArgumentParser(description="a tirl sandbox fleet worker")
    ap.add_argument("--redis", required=True)
    ap.add_argument("--slots", type=int, default=0)
    ap.add_argument("--visibility-timeout", type=float, default=10.0)
    a = ap.parse_args()
    sys.exit(run_worker(a.redis, a.slots, visibility_timeout_s=a.visibility_timeout))

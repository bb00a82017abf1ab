"""Gateway + workers on loopback Redis: answers, affinity, deadlines, grading, connections."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import redis.asyncio as aioredis

from tests.fleet.conftest import wait_workers
from tests.fleet.fake import FakeExecutor, FakeGrader
from tirl.sandbox.fleet import FleetError, FleetWorker, RedisBackend, WorkerOptions
from tirl.sandbox.types import ExecRequest


def _gw(url: str, **kw) -> RedisBackend:
    kw.setdefault("visibility_timeout_s", 1.5)
    kw.setdefault("worker_ttl_s", 3.0)
    kw.setdefault("max_deliveries", 3)
    return RedisBackend(url, **kw)


@contextlib.asynccontextmanager
async def inproc_worker(url: str, wid: str, slots: int = 4, **opts):
    opts.setdefault("visibility_timeout_s", 1.5)
    opts.setdefault("worker_ttl_s", 3.0)
    opts.setdefault("heartbeat_s", 0.4)
    w = FleetWorker(url, slots, executor=FakeExecutor(slots), grader=FakeGrader(), worker_id=wid,
                    options=WorkerOptions(**opts))
    task = asyncio.create_task(w.run())
    try:
        yield w
    finally:
        w.stop()
        await asyncio.wait_for(task, 30)


async def test_two_workers_answer_every_request_with_its_own_result(redis_server, workers):
    workers.spawn("wa")
    workers.spawn("wb")
    async with _gw(redis_server.url) as gw:
        await wait_workers(gw, 2)
        reqs = [ExecRequest(code=f"sleep:0.02;{i}", stdin=str(i)) for i in range(300)]
        res = await asyncio.wait_for(gw.run_batch(reqs), 60)
        assert [r.status for r in res] == ["ok"] * 300
        assert [r.stdout for r in res] == [f"sleep:0.02;{i}|{i}" for i in range(300)]
        assert {r.extra["worker"] for r in res} == {"wa", "wb"}
        assert all(r.queue_ms >= 0 for r in res)
        h = await gw.health()
        assert h["status"] == "ok" and h["workers"] == 2 and h["slots"] == 8
        m = gw.metrics_text()
        assert 'tirl_fleet_results_total{status="ok"} 300' in m
        assert 'tirl_fleet_latency_seconds_bucket{le="+Inf"} 300' in m


async def test_sessions_stick_to_their_worker_and_keep_state(redis_server):
    async with _gw(redis_server.url) as gw, inproc_worker(redis_server.url, "w1"), \
            inproc_worker(redis_server.url, "w2"):
        await wait_workers(gw, 2)
        for s in ("s1", "s2", "s3", "s4"):
            # concurrent first calls race onto both workers; the loser forwards to the owner
            first = await asyncio.gather(*(gw.run("x", session_id=s) for _ in range(4)))
            assert sorted(r.stdout for r in first) == ["cell=1", "cell=2", "cell=3", "cell=4"]
            assert len({r.extra["worker"] for r in first}) == 1
            rest = [await gw.run("x", session_id=s) for _ in range(6)]
            assert [r.stdout for r in rest] == [f"cell={n}" for n in range(5, 11)]
            assert {r.extra["worker"] for r in rest} == {first[0].extra["worker"]}
        assert await gw.close_session("s1") is True
        assert await gw.close_session("s1") is False
        assert await gw.close_session("never-opened") is False
        again = await gw.run("x", session_id="s1")
        assert again.stdout == "cell=1"


async def test_session_lost_when_its_worker_is_killed(redis_server, workers):
    workers.spawn("wa")
    workers.spawn("wb")
    async with _gw(redis_server.url) as gw:
        await wait_workers(gw, 2)
        r1 = await gw.run("x", session_id="sess")
        r2 = await gw.run("x", session_id="sess")
        assert (r1.stdout, r2.stdout) == ("cell=1", "cell=2")
        owner = r1.extra["worker"]
        pending = asyncio.ensure_future(gw.run("sleep:30", session_id="sess"))
        await asyncio.sleep(0.5)
        workers.kill9(owner)
        lost = await asyncio.wait_for(pending, 60)
        assert lost.status == "infra_error" and lost.reason == "session_lost"
        assert lost.session_reset is True
        # the next call starts afresh on the survivor
        fresh = await asyncio.wait_for(gw.run("x", session_id="sess"), 30)
        if fresh.status == "infra_error":  # the tombstone is reported once
            assert fresh.reason == "session_lost"
            fresh = await asyncio.wait_for(gw.run("x", session_id="sess"), 30)
        assert fresh.status == "ok" and fresh.stdout == "cell=1"
        assert fresh.extra["worker"] != owner


async def test_no_worker_gives_queue_timeout_not_a_hang(redis_server):
    async with _gw(redis_server.url, queue_timeout_s=0.5, visibility_timeout_s=0.2,
                   grace_s=0.5) as gw:
        res = await asyncio.wait_for(gw.run_batch([ExecRequest("1")] * 20), 30)
        assert {(r.status, r.reason) for r in res} == {("infra_error", "queue_timeout")}
        with pytest.raises(FleetError) as e:
            await asyncio.wait_for(gw.grade("\\boxed{1}", "1"), 30)
        assert e.value.reason == "queue_timeout"


async def test_worker_answers_stale_jobs_with_queue_timeout(redis_server):
    async with _gw(redis_server.url, queue_timeout_s=0.5, grace_s=60) as gw:
        fut = asyncio.ensure_future(gw.run_batch([ExecRequest("late")] * 5))
        await asyncio.sleep(1.5)
        assert not fut.done()
        async with inproc_worker(redis_server.url, "late-w") as w:
            res = await asyncio.wait_for(fut, 30)
            assert {(r.status, r.reason) for r in res} == {("infra_error", "queue_timeout")}
            assert w.stats["executed"] == 0
            ok = await asyncio.wait_for(gw.run("fresh"), 30)
            assert ok.status == "ok" and ok.stdout == "fresh|"


async def test_grading_jobs_run_on_workers(redis_server):
    async with _gw(redis_server.url) as gw, inproc_worker(redis_server.url, "g1"):
        grades = await asyncio.wait_for(gw.grade_batch(
            [("so \\boxed{42}", "42"), ("\\boxed{41}", "42"), ("no answer here", "42")]), 30)
        assert [g.status for g in grades] == ["correct", "incorrect", "no_answer"]
        assert grades[0].reward == 1.0 and grades[1].reward == 0.0


@pytest.mark.slow
async def test_real_reward_grader_on_a_worker(redis_server):
    reward = pytest.importorskip("tirl.reward")
    if not hasattr(reward, "grade"):
        pytest.skip("tirl.reward.grade is not built yet")
    w = FleetWorker(redis_server.url, 1, executor=FakeExecutor(1), worker_id="rg",
                    options=WorkerOptions(heartbeat_s=0.4, worker_ttl_s=3.0))
    task = asyncio.create_task(w.run())
    try:
        async with _gw(redis_server.url) as gw:
            g = await asyncio.wait_for(gw.grade("<answer>\\boxed{\\frac{1}{2}}</answer>", "0.5"), 120)
            assert g.status == "correct"
            g = await asyncio.wait_for(gw.grade("<answer>\\boxed{3}</answer>", "4"), 120)
            assert g.status == "incorrect"
    finally:
        w.stop()
        await asyncio.wait_for(task, 60)


async def test_gateway_uses_a_few_connections_not_one_per_request(redis_server):
    async with _gw(redis_server.url) as gw, inproc_worker(redis_server.url, "c1", slots=16):
        await wait_workers(gw, 1)
        probe = aioredis.Redis.from_url(redis_server.url)
        try:
            fut = asyncio.ensure_future(gw.run_batch([ExecRequest("sleep:0.02")] * 2000))
            await asyncio.sleep(0.3)
            assert not fut.done()
            clients = await probe.client_list()
            res = await asyncio.wait_for(fut, 120)
        finally:
            await probe.aclose()
        assert len(res) == 2000 and all(r.status == "ok" for r in res)
        # gateway + one worker + this probe, each a handful of pooled connections
        assert len(clients) <= 16, [c.get("cmd") for c in clients]


async def test_graceful_worker_stop_answers_its_sessions(redis_server, workers):
    workers.spawn("wa")
    async with _gw(redis_server.url) as gw:
        await wait_workers(gw, 1)
        assert (await gw.run("x", session_id="s")).stdout == "cell=1"
        assert workers.stop("wa") == 0
        r = await asyncio.wait_for(gw.run("x", session_id="s"), 30)
        assert r.status == "infra_error" and r.reason == "session_lost"
        h = await gw.health()
        assert h["workers"] == 0 and h["status"] == "degraded"


async def test_a_session_call_sent_twice_runs_once(redis_server):
    """A gateway that retries a send after a broken pipeline may put the same request on
    Redis twice; a session cell must not run twice (state would change twice)."""
    from tirl.sandbox.fleet import protocol as P

    keys = P.Keys()
    r = aioredis.Redis.from_url(redis_server.url)
    try:
        async with inproc_worker(redis_server.url, "d1") as w:
            job = P.Job(rid="rid-1", kind=P.EXEC, reply="test:replies", queue_timeout_ms=60_000,
                        code="x", session_id="sd")
            for _ in range(2):
                await r.xadd(keys.jobs, {"j": P.encode_job(job)})
            job2 = P.Job(rid="rid-2", kind=P.EXEC, reply="test:replies", queue_timeout_ms=60_000,
                         code="x", session_id="sd")
            await r.xadd(keys.jobs, {"j": P.encode_job(job2)})
            replies = []
            for _ in range(100):
                replies = await r.xrange("test:replies")
                if len(replies) >= 2:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # a duplicate, if any, would have landed by now
            replies = await r.xrange("test:replies")
            assert sorted(f[b"rid"] for _, f in replies) == [b"rid-1", b"rid-2"]
            assert w.executor.sessions["sd"] == 2  # two distinct cells ran, not three
            assert await r.xlen(keys.jobs) == 0  # all three entries retired
    finally:
        await r.aclose()

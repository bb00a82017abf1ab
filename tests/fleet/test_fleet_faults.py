"""Faults: a worker killed with -9 under load, Redis restarted, 10,000 requests."""

from __future__ import annotations

import asyncio
import collections

import pytest

from tests.fleet.conftest import wait_workers
from tirl.sandbox.fleet import RedisBackend
from tirl.sandbox.types import ExecRequest


def _gw(url: str, **kw) -> RedisBackend:
    kw.setdefault("visibility_timeout_s", 1.5)
    kw.setdefault("worker_ttl_s", 3.0)
    kw.setdefault("max_deliveries", 3)
    return RedisBackend(url, **kw)


async def _kill_under_load(redis_server, workers, maxdel: int):
    workers.spawn("wa", slots=4, maxdel=maxdel)
    workers.spawn("wb", slots=4, maxdel=maxdel)
    async with _gw(redis_server.url, max_deliveries=maxdel) as gw:
        await wait_workers(gw, 2)
        n = 240
        tasks = [asyncio.ensure_future(gw.run(f"sleep:0.1;{i}", stdin=str(i))) for i in range(n)]
        # wait until wa has answered some and holds more in flight, then kill it
        while sum(t.done() for t in tasks) < 30:
            await asyncio.sleep(0.05)
        workers.kill9("wa")
        res = await asyncio.wait_for(asyncio.gather(*tasks), 90)
        assert len(res) == n
        for i, r in enumerate(res):
            assert r.status in ("ok", "infra_error"), r
            if r.status == "ok":
                assert r.stdout == f"sleep:0.1;{i}|{i}"  # its own answer, nobody else's
            else:
                assert r.reason == "worker_lost", r
        # every request answered exactly once: nothing left waiting, each future resolved
        # once; re-run duplicates (if any) were dropped by request id, not delivered
        assert gw.stats.answered == n and not gw._pending
        return res, gw.stats


async def test_kill9_under_load_reruns_every_lost_request(redis_server, workers):
    res, stats = await _kill_under_load(redis_server, workers, maxdel=3)
    assert all(r.status == "ok" for r in res), collections.Counter(
        (r.status, r.reason) for r in res)
    by_worker = collections.Counter(r.extra["worker"] for r in res)
    assert by_worker["wb"] > 0 and by_worker["wa"] > 0  # wa answered some before dying
    rerun = [r for r in res if r.extra.get("deliveries", 1) > 1]
    assert any(r.extra["worker"] == "wb" for r in rerun)  # wa's in-flight, re-run by wb


@pytest.mark.slow
async def test_kill9_with_one_delivery_answers_worker_lost(redis_server, workers):
    res, stats = await _kill_under_load(redis_server, workers, maxdel=1)
    lost = [r for r in res if r.status == "infra_error"]
    assert lost, "the killed worker held requests in flight; they must come back worker_lost"
    assert all(r.reason == "worker_lost" for r in lost)
    assert sum(r.status == "ok" for r in res) + len(lost) == len(res)


async def test_redis_restart_gateway_and_worker_reconnect(redis_server, workers):
    workers.spawn("wa", slots=4)
    async with _gw(redis_server.url, queue_timeout_s=30) as gw:
        await wait_workers(gw, 1)
        before = await gw.run_batch([ExecRequest(f"a{i}") for i in range(50)])
        assert all(r.status == "ok" for r in before)
        # requests in flight while Redis goes away and comes back empty
        during = asyncio.ensure_future(gw.run_batch(
            [ExecRequest(f"sleep:0.2;b{i}") for i in range(40)]))
        await asyncio.sleep(0.1)
        redis_server.restart()
        res = await asyncio.wait_for(during, 90)
        assert len(res) == 40
        for i, r in enumerate(res):
            assert r.status == "ok", r  # resubmitted after the data loss, or answered
            assert r.stdout == f"sleep:0.2;b{i}|"
        await wait_workers(gw, 1)
        after = await asyncio.wait_for(gw.run_batch([ExecRequest(f"c{i}") for i in range(50)]), 60)
        assert [r.stdout for r in after] == [f"c{i}|" for i in range(50)]
        assert gw.stats.resubmitted > 0 or all(r.status == "ok" for r in res)


@pytest.mark.slow
async def test_ten_thousand_requests_all_answered(redis_server, workers):
    workers.spawn("wa", slots=32)
    workers.spawn("wb", slots=32)
    async with _gw(redis_server.url) as gw:
        await wait_workers(gw, 2)
        n = 10_000
        res = await asyncio.wait_for(
            gw.run_batch([ExecRequest(str(i)) for i in range(n)]), 240)
        assert len(res) == n
        bad = [r for r in res if r.status != "ok"]
        assert not bad, collections.Counter((r.status, r.reason) for r in bad)
        assert [r.stdout for r in res] == [f"{i}|" for i in range(n)]
        assert gw.stats.answered == n and not gw._pending


async def test_gateway_and_worker_started_before_redis(redis_server):
    from tests.fleet.test_fleet import inproc_worker

    redis_server.stop()
    async with _gw(redis_server.url, queue_timeout_s=30) as gw:
        async with inproc_worker(redis_server.url, "early"):
            fut = asyncio.ensure_future(gw.run_batch([ExecRequest(f"e{i}") for i in range(20)]))
            await asyncio.sleep(1.0)
            assert not fut.done()
            assert (await gw.health())["status"] == "down"
            redis_server.start()
            res = await asyncio.wait_for(fut, 60)
            assert [r.stdout for r in res] == [f"e{i}|" for i in range(20)]

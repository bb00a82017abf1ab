"""The queue deadline follows the caller (per-request ``queue_timeout_s``), the retry wrapper
over the fleet, and a caller that goes away: its untaken job is withdrawn, never run."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from tests.fleet.test_fleet import _gw, inproc_worker
from tirl.sandbox.fleet import protocol as P
from tirl.sandbox.retry import RetryingExecutor
from tirl.sandbox.types import ExecRequest


async def test_a_callers_queue_timeout_overrides_the_gateways_default(redis_server):
    # the gateway default would cut at 0.5 s; calls that say they may wait 30 s are served
    # by a worker that only starts after 2 s (a burst that drains later than the default)
    async with _gw(redis_server.url, queue_timeout_s=0.5, grace_s=0.5) as gw:
        patient = asyncio.ensure_future(gw.run_batch(
            [ExecRequest(f"p{i}", queue_timeout_s=30.0) for i in range(5)]))
        hasty = asyncio.ensure_future(gw.run_batch([ExecRequest("h")] * 3))
        short = asyncio.ensure_future(gw.run("s", queue_timeout_s=0.2))
        await asyncio.sleep(2.0)
        assert hasty.done() and short.done() and not patient.done()
        assert {(r.status, r.reason) for r in hasty.result() + [short.result()]} == {
            ("infra_error", "queue_timeout")}
        async with inproc_worker(redis_server.url, "late") as w:
            res = await asyncio.wait_for(patient, 30)
            assert [r.stdout for r in res] == [f"p{i}|" for i in range(5)]
            assert w.stats["executed"] == 5 and all(r.queue_ms > 1000 for r in res)


async def test_retrying_executor_over_the_fleet_passes_its_budget(redis_server):
    async with _gw(redis_server.url, queue_timeout_s=0.5, grace_s=0.5) as gw:
        ex = RetryingExecutor(gw, budget_s=30.0)
        fut = asyncio.ensure_future(ex.run_batch([ExecRequest(f"b{i}") for i in range(4)]))
        await asyncio.sleep(1.5)  # past the gateway's own 0.5 s default
        assert not fut.done()
        async with inproc_worker(redis_server.url, "late"):
            res = await asyncio.wait_for(fut, 30)
        assert [r.status for r in res] == ["ok"] * 4 and all("attempts" not in r.extra for r in res)


async def test_an_abandoned_call_is_withdrawn_and_never_runs(redis_server):
    async with _gw(redis_server.url, queue_timeout_s=30.0) as gw:
        calls = [asyncio.ensure_future(gw.run(f"gone{i}")) for i in range(6)]
        r = aioredis.Redis.from_url(redis_server.url)
        try:
            keys = P.Keys()
            for _ in range(100):  # until all six are on the stream
                if await r.xlen(keys.jobs) == 6:
                    break
                await asyncio.sleep(0.05)
            assert await r.xlen(keys.jobs) == 6
            for c in calls:  # e.g. their HTTP clients disconnected
                c.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
            for _ in range(100):
                if await r.xlen(keys.jobs) == 0:
                    break
                await asyncio.sleep(0.05)
            assert await r.xlen(keys.jobs) == 0
        finally:
            await r.aclose()
        assert gw.stats.cancelled == 6 and not gw._pending
        assert "tirl_fleet_cancelled_total 6" in gw.metrics_text()
        async with inproc_worker(redis_server.url, "w") as w:
            ok = await asyncio.wait_for(gw.run("fresh"), 30)
            assert ok.stdout == "fresh|" and w.stats["executed"] == 1  # none of the six ran

"""The Dispatcher against OpenAI-compatible servers on loopback, with live /metrics.

The servers are small aiohttp fakes started in the test (``/v1/completions`` over token
ids, vLLM-format ``/metrics`` with ``vllm:cache_config_info``): they exercise the HTTP
paths — capacity discovery, live correction, a server that dies mid-run and comes back.
"""

import asyncio

import aiohttp
import pytest
from aiohttp import web

from tirl.dispatch import Dispatcher
from tirl.engines.base import Completion

from tests.engines.serving import serve_app


class FakeServer:
    def __init__(self, name: str, capacity_tokens: int, delay_s: float = 0.01):
        self.name = name
        self.capacity = capacity_tokens
        self.delay_s = delay_s
        self.in_flight_tokens = 0
        self.peak_tokens = 0
        self.requests = 0
        self.runner: web.AppRunner | None = None
        self.port = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/metrics", self.metrics)
        return app

    async def completions(self, request: web.Request) -> web.Response:
        body = await request.json()
        prompt = body["prompt"]
        need = len(prompt) + int(body["max_tokens"])
        self.requests += 1
        self.in_flight_tokens += need
        self.peak_tokens = max(self.peak_tokens, self.in_flight_tokens)
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight_tokens -= need
        ids = [hash(self.name) % 1000] * min(3, int(body["max_tokens"]))
        return web.json_response(
            {"id": "cmpl-1", "object": "text_completion", "model": body.get("model", "m"),
             "choices": [{"index": 0, "text": "abc", "token_ids": ids, "finish_reason": "stop"}]}
        )

    async def metrics(self, request: web.Request) -> web.Response:
        usage = self.in_flight_tokens / self.capacity
        blocks = self.capacity // 16
        text = (
            "# TYPE vllm:num_requests_running gauge\n"
            f'vllm:num_requests_running{{engine="0",model_name="m"}} {1.0 if self.in_flight_tokens else 0.0}\n'
            "# TYPE vllm:num_requests_waiting gauge\n"
            'vllm:num_requests_waiting{engine="0",model_name="m"} 0.0\n'
            "# TYPE vllm:kv_cache_usage_perc gauge\n"
            f'vllm:kv_cache_usage_perc{{engine="0",model_name="m"}} {usage}\n'
            "# TYPE vllm:cache_config_info gauge\n"
            f'vllm:cache_config_info{{block_size="16",engine="0",num_gpu_blocks="{blocks}"}} 1.0\n'
        )
        return web.Response(text=text, content_type="text/plain")

    async def start(self, port: int = 0) -> str:
        self.runner = web.AppRunner(self.app())
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{self.port}/v1"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


class HttpEngine:
    """A minimal OpenAI-compatible completions client over token ids."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self._session: aiohttp.ClientSession | None = None

    async def generate(self, prompt_ids, max_new_tokens, temperature=1.0, stop=None, *, top_p=1.0, top_k=0):
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._session.post(
            self.base_url + "/completions",
            json={"model": "m", "prompt": list(prompt_ids), "max_tokens": max_new_tokens, "temperature": temperature},
            timeout=aiohttp.ClientTimeout(total=10),
        ) as r:
            r.raise_for_status()
            data = await r.json()
        ch = data["choices"][0]
        return Completion(ch["token_ids"], None, ch["finish_reason"])

    async def aclose(self):
        if self._session is not None:
            await self._session.close()


@pytest.fixture
async def cluster():
    servers = [FakeServer("a", 4000), FakeServer("b", 4000), FakeServer("c", 8000)]
    urls = [await s.start() for s in servers]
    engines = [HttpEngine(u) for u in urls]
    yield servers, engines
    for e in engines:
        await e.aclose()
    for s in servers:
        await s.stop()


async def test_capacity_is_discovered_and_never_exceeded_over_http(cluster):
    servers, engines = cluster
    async with Dispatcher(engines, "kv", metrics_interval_s=0.05) as d:
        assert [ld.capacity_tokens for ld in d.loads] == [4000, 4000, 8000]
        assert all(m is not None and m.source == "vllm" for m in d.metrics)

        async def traj(j):
            async with d.lease(f"t{j}", 1000, group=f"p{j // 4}") as eng:
                idx = {eng.engine_index}
                for turn in range(3):
                    await eng.generate(list(range(50 + turn * 10)), 100)
                    idx.add(eng.engine_index)
                assert len(idx) == 1

        await asyncio.gather(*(traj(j) for j in range(40)))
        snap = d.snapshot()
    for s in servers:
        assert s.peak_tokens <= s.capacity  # what the server itself saw in flight
    # the engine with twice the KV took about twice the trajectories
    assert snap[2].leases_total > max(snap[0].leases_total, snap[1].leases_total)
    assert sum(x.leases_total for x in snap) == 40
    assert all(x.reserved_tokens == 0 for x in snap)


async def test_server_that_dies_is_drained_its_calls_retried_and_it_comes_back(cluster):
    servers, engines = cluster
    d = Dispatcher(engines, "kv", metrics_interval_s=0.05, fail_after=2)
    await d.start()
    try:
        done = []

        async def traj(j):
            async with d.lease(f"t{j}", 1000) as eng:
                for turn in range(4):
                    await eng.generate([j, turn], 50)
                    await asyncio.sleep(0.01)
                done.append(eng.engine_index)

        tasks = [asyncio.create_task(traj(j)) for j in range(12)]
        await asyncio.sleep(0.03)
        port = servers[1].port
        await servers[1].stop()  # mid-run
        await asyncio.gather(*tasks)
        assert len(done) == 12 and 1 not in done  # everything finished elsewhere
        assert not d.loads[1].healthy
        assert d.stats.retries >= 1 or d.stats.drained >= 1
        # it comes back on the same port: metrics answer again → admitted again
        await servers[1].start(port)
        for _ in range(200):
            if d.loads[1].healthy:
                break
            await asyncio.sleep(0.02)
        assert d.loads[1].healthy
    finally:
        await d.aclose()
    assert all(ld.reserved_tokens == 0 and ld.active == 0 for ld in d.loads)


class WrappingEngine(HttpEngine):
    """Like clients that wrap a dead connection in their own error type (no chaining)."""

    async def generate(self, *a, **k):
        try:
            return await super().generate(*a, **k)
        except aiohttp.ClientError:
            pass
        raise RuntimeError("the server failed after 2 attempts")


async def test_wrapped_connection_errors_are_recognised_by_asking_the_server(cluster):
    servers, _ = cluster
    engines = [WrappingEngine(f"http://127.0.0.1:{s.port}/v1") for s in servers]
    try:
        async with Dispatcher(engines, "round_robin", metrics_interval_s=30) as d:
            async with d.lease("t", 100) as eng:
                first = eng.engine_index
                await servers[first].stop()
                c = await eng.generate([1, 2], 3)
                assert eng.engine_index != first and len(c.token_ids) == 3
            assert not d.loads[first].healthy and d.stats.retries == 1
            # an error from a server that still answers is the caller's, not retried
            bad = WrappingEngine("http://127.0.0.1:1/v1")  # nothing listens: no metrics either
            d2 = Dispatcher([bad], "round_robin", metrics_urls=[None])
            with pytest.raises(RuntimeError, match="failed after"):
                await d2.generate([1], 1)
            assert d2.loads[0].healthy
            await bad.aclose()
    finally:
        for e in engines:
            await e.aclose()


async def test_new_llamacpp_capacity_comes_from_slots():
    from pathlib import Path

    fix = Path(__file__).parent / "fixtures"
    async def metrics(request):
        return web.Response(text=(fix / "llamacpp_metrics_new.txt").read_text())

    async def slots(request):
        return web.Response(text=(fix / "llamacpp_slots.json").read_text(), content_type="application/json")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/slots", slots)
    async with serve_app(app) as url, aiohttp.ClientSession() as s:
        from tirl.dispatch.metrics import fetch_engine_metrics

        m = await fetch_engine_metrics(s, url + "/v1")
    assert m.source == "llamacpp" and m.kv_capacity_tokens == 16384 and m.kv_used_tokens == 311
    assert (m.running, m.waiting) == (1, 0)

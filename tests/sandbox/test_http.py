"""HTTP API (validation, routes) and SandboxClient (micro-batching, retries, local mode)."""

import asyncio

import aiohttp
import pytest

from tirl.sandbox.client import SandboxClient
from tirl.sandbox.config import SandboxConfig
from tirl.sandbox.http import serve
from tirl.sandbox.types import ExecRequest, ExecResult
from tirl.engines.launch import free_port as _free_port


class FakeBackend:
    """Echo backend: records calls; fails the first `fail_first` runs of each code with infra_error."""

    def __init__(self, fail_first: int = 0):
        self.cfg = SandboxConfig(max_code_bytes=2048, max_stdin_bytes=1024, max_batch=100)
        self.batches: list[int] = []
        self.attempts: dict[str, int] = {}
        self.fail_first = fail_first
        self.closed: list[str] = []

    async def run(self, code, stdin="", timeout_s=None, session_id=None):
        return (await self.run_batch([ExecRequest(code, stdin, timeout_s, session_id)]))[0]

    async def run_batch(self, reqs):
        self.batches.append(len(reqs))
        out = []
        for r in reqs:
            n = self.attempts[r.code] = self.attempts.get(r.code, 0) + 1
            if r.code.startswith("flaky") and n <= self.fail_first:
                out.append(ExecResult("infra_error", reason="zygote_died"))
            elif r.code == "backend-bug":
                raise RuntimeError("backend exploded")
            elif r.code.startswith("raise"):
                out.append(ExecResult("error", stderr="boom", exit_code=1))
            else:
                out.append(ExecResult("ok", stdout=f"{r.code}|{r.stdin}|{r.timeout_s}|{r.session_id}"))
        return out

    async def close_session(self, sid):
        self.closed.append(sid)
        return sid == "known"

    async def health(self):
        return {"status": "ok", "slots": 1}

    def metrics_text(self):
        return "fake_metric 1\n"


@pytest.fixture
async def served():
    backends = []

    async def start(backend):
        port = _free_port()
        runner = await serve(backend, "127.0.0.1", port)
        backends.append(runner)
        return f"http://127.0.0.1:{port}"

    yield start
    for r in backends:
        await r.cleanup()


@pytest.mark.parametrize("body,status,field", [
    (b"{not json", 400, "body"),
    (b"[1, 2]", 400, "body"),
    (b'{"stdin": "x"}', 400, "code"),
    (b'{"code": 5}', 400, "code"),
    (b'{"code": "1", "stdin": 3}', 400, "stdin"),
    (b'{"code": "1", "timeout_s": -1}', 400, "timeout_s"),
    (b'{"code": "1", "timeout_s": 1e9}', 400, "timeout_s"),
    (b'{"code": "1", "timeout_s": "5"}', 400, "timeout_s"),
    (b'{"code": "1", "timeout_s": true}', 400, "timeout_s"),
    (b'{"code": "1", "session_id": 7}', 400, "session_id"),
    (b'{"code": "1", "sesion_id": "a"}', 400, "sesion_id"),
    (b'{"code": "' + b"x" * 3000 + b'"}', 413, "code"),
    (b'{"code": "1", "stdin": "' + b"y" * 2000 + b'"}', 413, "stdin"),
])
async def test_bad_requests_name_the_field(served, body, status, field):
    url = await served(FakeBackend())
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/execute", data=body) as r:
            assert r.status == status
            assert (await r.json())["field"] == field


async def test_batch_validation_names_the_item(served):
    url = await served(FakeBackend())
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/execute/batch",
                          json={"requests": [{"code": "1"}, {"code": "2", "timeout_s": 0}]}) as r:
            assert r.status == 400 and (await r.json())["field"] == "requests[1].timeout_s"
        async with s.post(url + "/v1/execute/batch", json={"requests": [{"code": "1"}] * 101}) as r:
            assert r.status == 413 and (await r.json())["field"] == "requests"


async def test_routes(served):
    fb = FakeBackend()
    url = await served(fb)
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/execute", json={"code": "a", "stdin": "i", "timeout_s": 2,
                                                      "session_id": "z"}) as r:
            d = await r.json()
            assert r.status == 200 and d["status"] == "ok" and d["stdout"] == "a|i|2.0|z"
        async with s.delete(url + "/v1/sessions/known") as r:
            assert r.status == 204
        async with s.delete(url + "/v1/sessions/other") as r:
            assert r.status == 404
        async with s.get(url + "/healthz") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        async with s.get(url + "/metrics") as r:
            assert "fake_metric 1" in await r.text()
    assert fb.closed == ["known", "other"]


async def test_client_micro_batches_concurrent_calls(served):
    fb = FakeBackend()
    url = await served(fb)
    async with SandboxClient(url, max_batch=16, batch_window_s=0.05) as c:
        res = await asyncio.gather(*(c.run(f"c{i}") for i in range(40)))
    assert [r.stdout.split("|")[0] for r in res] == [f"c{i}" for i in range(40)]
    assert sum(fb.batches) == 40 and len(fb.batches) <= 5 and max(fb.batches) == 16


async def test_client_retries_infra_errors_only(served):
    fb = FakeBackend(fail_first=2)
    url = await served(fb)
    async with SandboxClient(url, retries=3, backoff_s=0.01) as c:
        ok, err = await asyncio.gather(c.run("flaky1"), c.run("raise1"))
    assert ok.status == "ok" and fb.attempts["flaky1"] == 3
    assert err.status == "error" and fb.attempts["raise1"] == 1


async def test_client_gives_up_with_infra_error(served):
    fb = FakeBackend(fail_first=100)
    url = await served(fb)
    async with SandboxClient(url, retries=2, backoff_s=0.01) as c:
        r = await c.run("flaky2")
    assert r.status == "infra_error" and fb.attempts["flaky2"] == 3 and r.extra["attempts"] == 3


async def test_client_connection_failure_is_typed():
    async with SandboxClient(f"http://127.0.0.1:{_free_port()}", retries=1, backoff_s=0.01) as c:
        r = await c.run("1")
    assert r.status == "infra_error" and r.reason.startswith("connection")


async def test_client_bad_item_does_not_sink_batch(served):
    url = await served(FakeBackend())
    async with SandboxClient(url, batch_window_s=0.05) as c:
        good, bad = await asyncio.gather(c.run("ok"), c.run("x" * 5000))
    assert good.status == "ok"
    assert bad.status == "error" and bad.reason == "bad_request" and "code" in bad.stderr


async def test_real_sandbox_over_http(served):
    cfg = SandboxConfig(slots=2, preload=["math"])
    async with SandboxClient.local(cfg) as local:
        url = await served(local._local)
        async with SandboxClient(url) as c:
            r1, r2 = await c.run_batch([ExecRequest("import math\nmath.factorial(5)"),
                                        ExecRequest("1/0")])
            assert (r1.status, r1.stdout) == ("ok", "120\n")
            assert r2.status == "error" and "ZeroDivisionError" in r2.stderr
            assert (await c.run("v = 7", session_id="s1")).status == "ok"
            assert (await c.run("v * 6", session_id="s1")).stdout == "42\n"
            assert await c.close_session("s1") is True
            assert await c.close_session("s1") is False
            h = await c.health()
            assert h["status"] == "ok" and h["isolation"]["network"] in (True, False)
        assert (await local.run("2**10")).stdout == "1024\n"


async def test_backend_failure_is_a_typed_infra_error(served):
    url = await served(FakeBackend())
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/execute", json={"code": "backend-bug", "session_id": "q"}) as r:
            d = await r.json()
            assert r.status == 200 and d["status"] == "infra_error" and "exploded" in d["reason"]
            assert d["session_id"] == "q"

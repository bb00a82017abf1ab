"""tirl.engines.vllm_weights against a fake server that speaks vLLM 0.32's dev routes: the order
of calls, the request shapes, the in-flight policy → pause mode, and what a failure leaves behind.
(Runs in `make test`; the real-server suite is tests/vllm/test_real_vllm.py.)"""

import contextlib
import socket

import aiohttp
import pytest
from aiohttp import web

from tirl.engines import vllm_weights as vw


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeVLLM:
    """Records every call; behaves as vLLM 0.32 with VLLM_SERVER_DEV_MODE=1 (or without: dev=False)."""

    def __init__(self, *, dev=True, reload_error=None, flush_ok=True, version_override=None):
        self.dev, self.reload_error, self.flush_ok = dev, reload_error, flush_ok
        self.version_override = version_override
        self.calls: list[tuple[str, dict, dict | None]] = []
        self.paused = False
        self.version = "default"

    async def _body(self, request):
        text = await request.text()
        import json

        return json.loads(text) if text else None

    async def handle(self, request):
        path = request.path
        body = await self._body(request) if request.method == "POST" else None
        self.calls.append((path, dict(request.query), body))
        if path == "/v1/models":
            return web.json_response({"data": [{"id": "m", "owned_by": "vllm"}]})
        if not self.dev:
            return web.json_response({"detail": "Not Found"}, status=404)
        if path == "/pause":
            self.paused = True
            return web.json_response({"status": "paused"})
        if path == "/resume":
            self.paused = False
            return web.json_response({"status": "resumed"})
        if path == "/is_paused":
            return web.json_response({"is_paused": self.paused})
        if path == "/collective_rpc":
            if self.reload_error:
                return web.json_response({"error": self.reload_error}, status=500)
            return web.json_response({"results": [None]})
        if path == "/reset_prefix_cache":
            return web.json_response({"success": self.flush_ok})
        if path == "/update_weight_version":
            self.version = body["new_version"]
            return web.json_response({"success": True, "new_version": self.version})
        if path == "/weight_info":
            return web.json_response({"weight_version": self.version_override or self.version})
        return web.json_response({"detail": "Not Found"}, status=404)

    @contextlib.asynccontextmanager
    async def running(self):
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            await runner.cleanup()


async def test_reload_pauses_reloads_flushes_versions_resumes_in_that_order():
    srv = FakeVLLM()
    async with srv.running() as url, aiohttp.ClientSession() as s:
        times = await vw.reload_from_disk(s, url, "/shared/v3", 3)
    assert [c[0] for c in srv.calls] == ["/pause", "/collective_rpc", "/reset_prefix_cache",
                                         "/update_weight_version", "/resume", "/weight_info"]
    pause_q = srv.calls[0][1]
    assert pause_q == {"mode": "wait", "clear_cache": "true"}  # in_flight="finish" by default
    assert srv.calls[1][2]["method"] == "reload_weights"
    assert srv.calls[1][2]["kwargs"] == {"weights_path": "/shared/v3"}  # strings only, as vLLM takes
    assert srv.calls[2][1] == {"reset_running_requests": "true"}
    assert srv.calls[3][2] == {"new_version": "3"}
    assert srv.version == "3" and not srv.paused
    assert set(times) == {"pause_s", "reload_s", "flush_s", "resume_s", "total_s"}
    assert times["total_s"] >= times["reload_s"] >= 0


@pytest.mark.parametrize("in_flight,mode", [("finish", "wait"), ("pause", "keep"), ("abort", "abort")])
async def test_in_flight_policy_picks_the_pause_mode(in_flight, mode):
    srv = FakeVLLM()
    async with srv.running() as url, aiohttp.ClientSession() as s:
        await vw.reload_from_disk(s, url, "/d", 1, in_flight=in_flight)
    assert srv.calls[0][1]["mode"] == mode


async def test_unknown_in_flight_policy_fails_before_any_request():
    srv = FakeVLLM()
    async with srv.running() as url, aiohttp.ClientSession() as s:
        with pytest.raises(ValueError, match="in_flight='drain'.*finish"):
            await vw.reload_from_disk(s, url, "/d", 1, in_flight="drain")
    assert srv.calls == []


async def test_a_failed_reload_names_the_servers_error_and_leaves_it_paused():
    srv = FakeVLLM(reload_error="FileNotFoundError: /nowhere has no safetensors")
    async with srv.running() as url, aiohttp.ClientSession() as s:
        with pytest.raises(vw.VLLMWeightError, match=r"collective_rpc answered 500: FileNotFoundError.*"
                                                     r"left paused"):
            await vw.reload_from_disk(s, url, "/nowhere", 2)
    assert srv.paused and srv.version == "default"  # not resumed on unknown weights, not relabelled
    assert "/resume" not in [c[0] for c in srv.calls]


async def test_a_prefix_cache_that_is_not_flushed_is_an_error():
    srv = FakeVLLM(flush_ok=False)
    async with srv.running() as url, aiohttp.ClientSession() as s:
        with pytest.raises(vw.VLLMWeightError, match="kept its prefix cache.*left paused"):
            await vw.reload_from_disk(s, url, "/d", 2)
    assert srv.paused and srv.version == "default"


async def test_a_server_without_dev_mode_says_how_to_start_it():
    srv = FakeVLLM(dev=False)
    async with srv.running() as url, aiohttp.ClientSession() as s:
        with pytest.raises(vw.VLLMWeightError, match="404.*VLLM_SERVER_DEV_MODE=1"):
            await vw.check_reloadable(s, url)
        with pytest.raises(vw.VLLMWeightError, match="VLLM_SERVER_DEV_MODE=1"):
            await vw.reload_from_disk(s, url, "/d", 1)
        assert await vw.is_vllm(s, url)


async def test_a_version_changed_by_someone_else_is_reported():
    srv = FakeVLLM(version_override="7")
    async with srv.running() as url, aiohttp.ClientSession() as s:
        with pytest.raises(vw.VLLMWeightError, match="reports weight version '7' after loading version 4"):
            await vw.reload_from_disk(s, url, "/d", 4)


async def test_check_reloadable_refuses_a_paused_server_and_returns_the_version():
    srv = FakeVLLM()
    async with srv.running() as url, aiohttp.ClientSession() as s:
        assert await vw.check_reloadable(s, url) == "default"
        srv.paused = True
        with pytest.raises(vw.VLLMWeightError, match="is paused"):
            await vw.check_reloadable(s, url)


async def test_an_unreachable_server_is_a_weight_error_naming_the_url():
    port = free_port()
    async with aiohttp.ClientSession() as s:
        with pytest.raises(vw.VLLMWeightError, match=f"cannot reach http://127.0.0.1:{port}/pause"):
            await vw.reload_from_disk(s, f"http://127.0.0.1:{port}/v1", "/d", 1)


def test_server_root_strips_v1_and_slashes():
    assert vw.server_root("http://h:8000/v1/") == "http://h:8000"
    assert vw.server_root("http://h:8000") == "http://h:8000"
    assert vw.pause_mode("pause") == "keep"

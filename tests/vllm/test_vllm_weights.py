"""tirl.engines.vllm_weights against a fake server that speaks vLLM 0.32's dev routes: the order
of calls, the request shapes, the in-flight policy → pause mode, and what a failure leaves behind.
(Runs in `make test`; the real-server suite is tests/vllm/test_real_vllm.py.)"""

import asyncio
import contextlib
import json

import aiohttp
import pytest
from aiohttp import web

from tirl.engines import vllm_weights as vw
from tirl.engines.launch import free_port

from tests.engines.serving import serve_app


class FakeVLLM:
    """Records every call; behaves as vLLM 0.32 with VLLM_SERVER_DEV_MODE=1 (or without: dev=False)."""

    def __init__(self, *, dev=True, ext=True, reload_error=None, flush_ok=True, version_override=None):
        self.dev, self.ext, self.reload_error, self.flush_ok = dev, ext, reload_error, flush_ok
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
            if body["method"] == vw.EXTENSION_METHOD and not self.ext:  # vLLM 0.32's own words
                return web.json_response({"error": {"message": (
                    "Call to collective_rpc method failed: Worker failed with error ''CPUWorker' "
                    "object has no attribute 'tirl_reload_weights'', please check the stack trace "
                    "above for the root cause"), "code": 500}}, status=500)
            if self.reload_error:
                return web.json_response({"error": self.reload_error}, status=500)
            if body["method"] == vw.EXTENSION_METHOD:  # one worker's answer
                return web.json_response({"results": [{"weights_path": body["kwargs"]["weights_path"],
                                                       "reprocessed": ["lm_head", "model.embed_tokens"]}]})
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
        async with serve_app(app) as url:
            yield url + "/v1"


async def test_reload_pauses_reloads_flushes_versions_resumes_in_that_order():
    srv = FakeVLLM()
    async with srv.running() as url, aiohttp.ClientSession() as s:
        times = await vw.reload_from_disk(s, url, "/shared/v3", 3)
    assert [c[0] for c in srv.calls] == ["/pause", "/collective_rpc", "/reset_prefix_cache",
                                         "/update_weight_version", "/resume", "/weight_info"]
    pause_q = srv.calls[0][1]
    assert pause_q == {"mode": "wait", "clear_cache": "true"}  # in_flight="finish" by default
    assert srv.calls[1][2]["method"] == "tirl_reload_weights"  # the worker extension's
    assert srv.calls[1][2]["kwargs"] == {"weights_path": "/shared/v3"}  # strings only, as vLLM takes
    assert srv.calls[2][1] == {"reset_running_requests": "true"}
    assert srv.calls[3][2] == {"new_version": "3"}
    assert srv.version == "3" and not srv.paused
    assert set(times) == {"method", "repacked", "pause_s", "reload_s", "flush_s", "resume_s", "total_s"}
    assert times["method"] == "tirl_reload_weights"
    assert times["repacked"] == ["lm_head", "model.embed_tokens"]
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


def model_dir(tmp_path, tied: bool):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "tie_word_embeddings": tied}))
    return str(tmp_path)


async def test_without_the_extension_an_untied_model_uses_vllms_own_reload(tmp_path):
    srv = FakeVLLM(ext=False)
    d = model_dir(tmp_path, tied=False)
    async with srv.running() as url, aiohttp.ClientSession() as s:
        times = await vw.reload_from_disk(s, url, d, 5)
    rpcs = [c[2]["method"] for c in srv.calls if c[0] == "/collective_rpc"]
    assert rpcs == ["tirl_reload_weights", "reload_weights"] and times["method"] == "reload_weights"
    assert times["repacked"] == []
    assert srv.version == "5" and not srv.paused


@pytest.mark.parametrize("tied", [True, None])  # None: no readable config.json: the safe path
async def test_without_the_extension_a_tied_model_is_refused_before_any_reload(tmp_path, tied):
    srv = FakeVLLM(ext=False)
    d = model_dir(tmp_path, tied=True) if tied else str(tmp_path / "missing")
    async with srv.running() as url, aiohttp.ClientSession() as s:
        with pytest.raises(vw.VLLMWeightError, match="ties its LM head.*--worker-extension-cls "
                                                     "tirl.engines.vllm_ext.TirlWorkerExtension"):
            await vw.reload_from_disk(s, url, d, 5)
    rpcs = [c[2]["method"] for c in srv.calls if c[0] == "/collective_rpc"]
    assert rpcs == ["tirl_reload_weights"] and srv.paused and srv.version == "default"


@contextlib.asynccontextmanager
async def hangs_up(times: int):
    """Closes the first ``times`` connections without answering, then answers 200 with JSON."""
    seen = []

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        seen.append(1)
        if len(seen) <= times:
            writer.close()
            return
        body = b'{"weight_version": "9"}'
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", seen
    finally:
        server.close()


async def test_a_connection_closed_by_the_server_is_retried_once():
    # POST: aiohttp itself never resends it (it may resend a GET on its own)
    async with hangs_up(1) as (url, seen), aiohttp.ClientSession() as s:
        await vw.set_weight_version(s, url, 9)
        assert len(seen) == 2
    async with hangs_up(2) as (url, seen), aiohttp.ClientSession() as s:
        with pytest.raises(vw.VLLMWeightError, match="closed the connection twice"):
            await vw.set_weight_version(s, url, 9)
        assert len(seen) == 2

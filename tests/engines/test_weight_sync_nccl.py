"""The experimental `nccl` backend's control flow against fake vLLM and SGLang servers
(the broadcast goes to a fake group; no GPU, no NCCL)."""

import asyncio
import threading

import pytest
from aiohttp import web

from tirl.engines.weight_sync import NcclWeightSync, WeightSyncError, tensor_specs

from tests.agent.tiny import tiny_model, tiny_tokenizer
from tirl.engines.launch import free_port


class FakeGroup:
    def __init__(self):
        self.sent = []
        self.done = threading.Event()

    def broadcast(self, t, src):
        assert src == 0
        self.sent.append(tuple(t.shape))


def answer(fn):
    async def handler(request):
        return web.json_response(fn())
    return handler


def fake_server(kind, log, group_box, world=1, fail_update=False):
    app = web.Application()

    async def record(request):
        body = await request.json() if request.can_read_body else None
        log.append((request.path, dict(request.query), body))
        return body

    async def ok(request):
        await record(request)
        return web.json_response({"success": True})

    async def update(request):
        await record(request)
        # the server receives while this call is open: it returns after the broadcast
        while not group_box or len(group_box[0].sent) < len(tensor_specs(group_box[1])[0]):
            await asyncio.sleep(0.005)
        if fail_update:
            return web.json_response({"error": "CUDA error: out of memory"}, status=500)
        return web.json_response({"message": "Weights updated", "success": True})

    if kind == "vllm":
        app.add_routes([web.get("/get_world_size", answer(lambda: {"world_size": world})),
                        web.post("/init_weight_transfer_engine", ok), web.post("/pause", ok),
                        web.post("/update_weights", update), web.post("/update_weight_version", ok),
                        web.post("/resume", ok)])
    else:
        state = {"v": "default"}

        async def upd(request):
            r = await update(request)
            state["v"] = log[-1][2]["weight_version"]
            return r

        app.add_routes([web.get("/model_info", answer(lambda: {"weight_version": state["v"]})),
                        web.get("/get_server_info", answer(lambda: {"tp_size": world})),
                        web.post("/init_weights_update_group", ok), web.post("/pause_generation", ok),
                        web.post("/update_weights_from_distributed", upd), web.post("/continue_generation", ok)])
    return app


async def start(app):
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/v1"


@pytest.mark.parametrize("in_flight", ["finish", "pause"])
async def test_nccl_push_to_a_vllm_and_an_sglang_server(in_flight):
    model = tiny_model(tiny_tokenizer(), hidden=32, layers=1, heads=2, kv_heads=1)
    vlog, slog, box = [], [], []
    r1, vurl = await start(fake_server("vllm", vlog, box, world=2))
    r2, surl = await start(fake_server("sglang", slog, box, world=1))
    made = {}

    def factory(addr, port, world):
        made.update(addr=addr, port=port, world=world)
        g = FakeGroup()
        box[:] = [g, model]
        return g

    sync = NcclWeightSync(in_flight=in_flight, master_address="10.0.0.1", master_port=29999, group_factory=factory)
    try:
        res = await sync.push(model, 1, [vurl, surl])
        assert res.confirmed == [vurl, surl] and not res.failed
        assert made == {"addr": "10.0.0.1", "port": 29999, "world": 1 + 2 + 1}
        names, dtypes, shapes, _ = tensor_specs(model)
        assert box[0].sent == [tuple(s) for s in shapes]
        vpaths = [p for p, _, _ in vlog]
        assert vpaths == ["/init_weight_transfer_engine", "/pause", "/update_weights", "/update_weight_version", "/resume"]
        assert vlog[0][2] == {"init_info": {"master_address": "10.0.0.1", "master_port": 29999,
                                            "rank_offset": 1, "world_size": 4}}
        assert vlog[1][1] == {"mode": "keep" if in_flight == "pause" else "wait"}
        assert vlog[2][2]["update_info"] == {"names": names, "dtype_names": dtypes, "shapes": shapes, "packed": False}
        spaths = [p for p, _, _ in slog]
        want = ["/init_weights_update_group", "/update_weights_from_distributed"]
        if in_flight == "pause":
            want = ["/init_weights_update_group", "/pause_generation", "/update_weights_from_distributed",
                    "/continue_generation"]
        assert spaths == want
        assert slog[0][2]["rank_offset"] == 3 and slog[0][2]["world_size"] == 4
        upd = [b for p, _, b in slog if p == "/update_weights_from_distributed"][0]
        assert upd["weight_version"] == "1" and upd["dtypes"] == dtypes and upd["group_name"] == "tirl_weights"
        # a second push reuses the group
        box[0].sent.clear()
        await sync.push(model, 2, [vurl, surl])
        assert [p for p, _, _ in vlog].count("/init_weight_transfer_engine") == 1
    finally:
        await sync.aclose()
        await r1.cleanup()
        await r2.cleanup()


async def test_a_server_failing_the_nccl_update_is_named():
    model = tiny_model(tiny_tokenizer(), hidden=32, layers=1, heads=2, kv_heads=1)
    log1, log2, box = [], [], []
    r1, good = await start(fake_server("vllm", log1, box))
    r2, bad = await start(fake_server("vllm", log2, box, fail_update=True))

    def factory(addr, port, world):
        box[:] = [FakeGroup(), model]
        return box[0]

    sync = NcclWeightSync(master_address="127.0.0.1", group_factory=factory)
    try:
        res = await sync.push(model, 1, [good, bad])
        assert res.confirmed == [good] and "out of memory" in res.failed[bad]
        with pytest.raises(WeightSyncError, match="no server"):
            await sync.push(model, 2, [bad])
    finally:
        await sync.aclose()
        await r1.cleanup()
        await r2.cleanup()

"""Weight updates of a running `tirl serve` app (tirl.engines.weights_api) driven by the
`disk` sync client (tirl.engines.weight_sync), in-process on loopback."""

import asyncio
import contextlib

import aiohttp
import pytest
import torch
from aiohttp import web

from tirl.engines.local import LocalEngine
from tirl.engines.openai import OpenAIEngine
from tirl.engines.server import ModelServer
from tirl.engines.weight_sync import DiskWeightSync, WeightSyncError, save_weights, server_version
from tirl.engines.weights_api import add_weight_routes

from tests.agent.tiny import tiny_model, tiny_tokenizer
from tirl.engines.launch import free_port


@contextlib.asynccontextmanager
async def served(engine, tok):
    """`tirl serve`'s app with the weight routes added (what the lead's one-line hook does)."""
    app = ModelServer(engine, tok, "tiny").app()
    state = add_weight_routes(app, engine, tok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", state
    finally:
        await runner.cleanup()


def perturbed(model, seed):
    """A copy of ``model`` with every parameter moved (a 'trained' version)."""
    import copy

    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return m


def own_logprobs(model, prompt, ids):
    seq = torch.tensor([prompt + ids])
    with torch.no_grad():
        lp = torch.log_softmax(model(seq).logits[0, :-1].float(), -1)
    return [float(lp[len(prompt) - 1 + i, t]) for i, t in enumerate(ids)]


async def completion(url, prompt, n=8):
    eng = OpenAIEngine(url + "/v1", "tiny", require_logprobs=True)
    try:
        return await eng.generate(prompt, n, 0.0)
    finally:
        await eng.aclose()


async def test_disk_sync_reloads_in_place_and_the_server_answers_with_the_new_weights(tmp_path):
    tok = tiny_tokenizer()
    trainer_model = tiny_model(tok)
    served_model = tiny_model(tok)
    engine = LocalEngine(served_model, tok, max_batch=4)
    prompt = tok.encode("What is 6 times 7?")
    sync = DiskWeightSync(tmp_path / "weights", keep_versions=1)
    try:
        async with served(engine, tok) as (url, state):
            before = await completion(url, prompt)
            assert before.meta["weight_version"] == "0"
            new = perturbed(trainer_model, 1)
            res = await sync.push(new, 1, [url + "/v1"])
            assert res.confirmed == [url + "/v1"] and not res.failed and res.bytes > 0
            assert (tmp_path / "weights" / "v1" / "model.safetensors").exists()
            after = await completion(url, prompt)
            assert after.meta["weight_version"] == "1"
            assert after.logprobs == pytest.approx(own_logprobs(new, prompt, after.token_ids), abs=1e-4)
            assert after.logprobs != pytest.approx(before.logprobs, abs=1e-3)
            # a second version replaces the first on disk (keep_versions=1) and on the server
            newer = perturbed(trainer_model, 2)
            await sync.push(newer, 2, [url])
            assert not (tmp_path / "weights" / "v1").exists()
            async with aiohttp.ClientSession() as s:
                text = await (await s.get(url + "/metrics")).text()
            assert "tirl:weight_version 2" in text and "tirl:weight_updates_total 2" in text
            assert (await completion(url, prompt)).meta["weight_version"] == "2"
    finally:
        await sync.aclose()
        await engine.aclose()


async def test_a_failed_load_changes_nothing_and_is_reported(tmp_path):
    tok = tiny_tokenizer()
    engine = LocalEngine(tiny_model(tok), tok, max_batch=4)
    prompt = tok.encode("What is 6 times 7?")
    other = tiny_model(tok, hidden=32, heads=2, kv_heads=1)  # another architecture
    try:
        async with served(engine, tok) as (url, state):
            before = await completion(url, prompt)
            async with aiohttp.ClientSession() as s:
                r = await s.post(url + "/update_weights_from_disk", json={"model_path": str(tmp_path / "nope")})
                body = await r.json()
                assert r.status == 400 and body["success"] is False and "not a directory" in body["message"]
                r = await s.post(url + "/update_weights_from_disk", json={"model_path": "x", "abort_all_requests": True})
                assert r.status == 400 and "abort_all_requests" in (await r.json())["message"]
            sync = DiskWeightSync(tmp_path / "w")
            with pytest.raises(WeightSyncError, match="shape"):
                await sync.push(other, 5, [url])  # the only server failed: nothing confirmed
            await sync.aclose()
            assert state.version == "0" and state.failures == 2
            after = await completion(url, prompt)
            assert after.token_ids == before.token_ids and after.logprobs == pytest.approx(before.logprobs)
            async with aiohttp.ClientSession() as s:
                text = await (await s.get(url + "/metrics")).text()
            assert "tirl:weight_update_failures_total 2" in text
    finally:
        await engine.aclose()


async def test_one_dead_server_is_named_and_the_others_confirm(tmp_path):
    tok = tiny_tokenizer()
    engine = LocalEngine(tiny_model(tok), tok, max_batch=4)
    dead = f"http://127.0.0.1:{free_port()}/v1"
    sync = DiskWeightSync(tmp_path / "w", timeout_s=5)
    try:
        async with served(engine, tok) as (url, state):
            res = await sync.push(perturbed(engine.model, 3), 1, [url, dead])
            assert res.confirmed == [url] and list(res.failed) == [dead]
            assert "Connect" in res.failed[dead] or "connect" in res.failed[dead]
            assert await server_version(sync.http, url) == "1"
    finally:
        await sync.aclose()
        await engine.aclose()


async def test_in_flight_requests_finish_on_the_old_weights_by_default(tmp_path):
    tok = tiny_tokenizer()
    engine = LocalEngine(tiny_model(tok), tok, max_batch=4)
    prompt = tok.encode("What is 6 times 7?")
    new = perturbed(engine.model, 4)
    path = tmp_path / "v1"
    save_weights(new, path)
    try:
        async with served(engine, tok) as (url, state):
            eng = OpenAIEngine(url + "/v1", "tiny", require_logprobs=True)
            long = asyncio.create_task(eng.generate(prompt, 60, 0.0))
            while state.in_flight == 0:
                await asyncio.sleep(0.005)
            paused, _ = await state.update_from_disk(str(path), None, "1", True)
            old = await long
            assert paused == 0 and old.meta["weight_version"] == "0"
            assert "weight_version_start" not in old.meta or old.meta["weight_version_start"] == "0"
            fresh = await eng.generate(prompt, 8, 0.0)
            assert fresh.meta["weight_version"] == "1"
            assert fresh.logprobs == pytest.approx(own_logprobs(new, prompt, fresh.token_ids), abs=1e-4)
            await eng.aclose()
    finally:
        await engine.aclose()


async def test_pause_in_place_freezes_running_requests_and_they_continue_on_the_new_weights(tmp_path):
    tok = tiny_tokenizer()
    engine = LocalEngine(tiny_model(tok), tok, max_batch=4)
    prompt = tok.encode("What is 6 times 7?")
    sync = DiskWeightSync(tmp_path / "w", in_flight="pause")
    try:
        async with served(engine, tok) as (url, state):
            eng = OpenAIEngine(url + "/v1", "tiny", require_logprobs=True)
            long = asyncio.create_task(eng.generate(prompt, 200, 0.0))
            while engine.stats()["running"] == 0:
                await asyncio.sleep(0.005)
            res = await sync.push(perturbed(engine.model, 5), 1, [url])
            assert res.confirmed == [url]
            comp = await long
            assert comp.meta["weight_version"] == "1" and comp.meta["weight_version_start"] == "0"
            assert not state.paused
            await eng.aclose()
    finally:
        await sync.aclose()
        await engine.aclose()


def test_saved_versions_are_a_hugging_face_model_directory(tmp_path):
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    model = perturbed(tiny_model(tok), 7)
    size = save_weights(model, tmp_path / "v3")
    assert size == (tmp_path / "v3" / "model.safetensors").stat().st_size and not (tmp_path / "v3.tmp").exists()
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "v3")
    x = torch.tensor([tok.encode("What is 6 times 7?")])
    with torch.no_grad():
        assert torch.allclose(model(x).logits, again(x).logits, atol=1e-6)

"""The ``tirl view`` HTTP API over real fixture directories, including path traversal."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.view.fixture import make_eval_dir, make_train_run
from tirl.view.server import make_app, parse_filter, resolve_roots, run_view, start_view


@pytest.fixture
def dirs(tmp_path):
    run = make_train_run(tmp_path / "run")
    ev_a = make_eval_dir(tmp_path / "eval_a", correct_for=2)
    ev_b = make_eval_dir(tmp_path / "eval_b", correct_for=1)
    (tmp_path / "secret.txt").write_text("top secret")
    os.symlink(tmp_path / "secret.txt", run / "plots" / "leak.png")
    os.symlink(tmp_path / "secret.txt", run / "trajectories" / "leak.jsonl")
    return {"run": run, "a": ev_a, "b": ev_b, "tmp": tmp_path}


async def _client(roots):
    client = TestClient(TestServer(make_app(roots)))
    await client.start_server()
    return client


async def _get(client, path, status=200, **params):
    r = await client.get(path, params=params or None)
    assert r.status == status, await r.text()
    return await r.json() if r.content_type == "application/json" else await r.text()


async def test_overview_api(dirs):
    c = await _client(resolve_roots(dirs["run"]))
    try:
        roots = await _get(c, "/api/roots")
        a = roots["a"]
        assert a["kind"] == "train" and a["name"] == "run" and a["plots"] == ["plots/rl.png"]
        # the symlink out of the run is not listed
        assert [s["path"] for s in a["sources"]] == ["trajectories/train.jsonl"]
        recs = (await _get(c, "/api/metrics", root="a"))["records"]
        assert [r.get("held_out_acc") for r in recs if r["phase"] == "eval"] == [0.25, 0.75]
        page = await c.get("/")
        assert page.status == 200 and "tirl view" in await page.text()
        js = await c.get("/static/app.js")
        assert js.status == 200 and js.content_type == "application/javascript"
        png = await c.get("/files/a/plots/rl.png")
        assert png.status == 200 and (await png.read()).startswith(b"\x89PNG")
        await _get(c, "/api/metrics", 400, root="z")
    finally:
        await c.close()


async def test_list_filters_pages_and_search(dirs):
    c = await _client(resolve_roots(dirs["run"]))
    src = "a:trajectories/train.jsonl"
    try:
        d = await _get(c, "/api/list", src=src, limit="10")  # unfiltered: served before any summary
        assert d["records"] == 24 and d["total"] == 24 and [r["i"] for r in d["rows"]] == list(range(10))
        assert d["rows"][3]["kept"] is False and d["rows"][3]["errors"] == ["timeout"]
        d2 = await _get(c, "/api/list", src=src, limit="10", offset="20")
        assert [r["i"] for r in d2["rows"]] == [20, 21, 22, 23]
        d = await _get(c, "/api/list", src=src, step="2", correct="false", kept="true")
        assert d["total"] == 2 and all(r["step"] == 2 and r["correct"] is False and r["kept"] for r in d["rows"])
        d = await _get(c, "/api/list", src=src, error="parse_error")
        assert [r["i"] for r in d["rows"]] == [22]
        d = await _get(c, "/api/list", src=src, q="unique-p0-s1-j", limit="3")
        assert d["total"] is None and len(d["rows"]) == 3 and d["next_after"] == d["rows"][-1]["i"]
        d = await _get(c, "/api/list", src=src, q="unique-p0-s1-j", after=str(d["next_after"]))
        assert len(d["rows"]) == 1 and d["next_after"] is None
        err = await _get(c, "/api/list", 400, src=src, step="two")
        assert "step='two' must be an integer" in err["error"]
        await _get(c, "/api/list", 400, src="trajectories/train.jsonl")  # no root prefix
        await _get(c, "/api/list", 404, src="a:trajectories/none.jsonl")
    finally:
        await c.close()


async def test_live_file_is_reindexed(dirs):
    c = await _client(resolve_roots(dirs["run"]))
    src = "a:trajectories/train.jsonl"
    try:
        assert (await _get(c, "/api/list", src=src))["records"] == 24
        with (dirs["run"] / "trajectories" / "train.jsonl").open("a") as f:
            f.write(json.dumps({"turns": [], "problem_id": "p9", "step": 4, "reward": 1.0}) + "\n")
        d = await _get(c, "/api/list", src=src, step="4")
        assert d["records"] == 25 and d["total"] == 1 and d["rows"][0]["problem_id"] == "p9"
        # rewritten shorter: indexed and summarized from scratch, no stale rows
        (dirs["run"] / "trajectories" / "train.jsonl").write_text(
            json.dumps({"turns": [], "problem_id": "p7", "step": 1, "reward": 0.0}) + "\n")
        d = await _get(c, "/api/list", src=src, step="1")
        assert d["records"] == 1 and d["total"] == 1 and d["rows"][0]["problem_id"] == "p7"
    finally:
        await c.close()


async def test_record_and_group(dirs):
    c = await _client(resolve_roots(dirs["run"]))
    src = "a:trajectories/train.jsonl"
    try:
        r = await _get(c, "/api/record", src=src, i="22")
        assert r["kind"] == "trajectory" and r["final_answer"] == "42" and r["tokens"] is None
        rec = r["record"]
        assert rec["step"] == 3 and rec["problem_id"] == "p1" and rec["policy_version"] == 2
        assert rec["turns"][0]["tool_calls"][-1]["error_kind"] == "parse_error"
        await _get(c, "/api/record", 404, src=src, i="24")
        g = await _get(c, "/api/group", src=src, problem="p0", step="2")
        assert [it["summary"]["sample"] for it in g["items"]] == [0, 1, 2, 3]
        assert [it["summary"]["kept"] for it in g["items"]] == [True, True, False, False]
        assert "logprobs" not in g["items"][0]["record"]
        await _get(c, "/api/group", 400, src=src)
    finally:
        await c.close()


async def test_tokens_are_decoded_with_the_runs_tokenizer(dirs):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"t{i}": i for i in range(200)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    (dirs["run"] / "checkpoints" / "step_3").mkdir()
    tok.save(str(dirs["run"] / "checkpoints" / "step_3" / "tokenizer.json"))
    c = await _client(resolve_roots(dirs["run"]))
    try:
        r = await _get(c, "/api/record", src="a:trajectories/train.jsonl", i="0")
        assert r["tokens"][:3] == ["t100", "t101", "t102"] and len(r["tokens"]) == 16
    finally:
        await c.close()


async def test_two_eval_outputs_side_by_side(dirs):
    c = await _client(resolve_roots(dirs["a"], dirs["b"]))
    try:
        roots = await _get(c, "/api/roots")
        assert set(roots) == {"a", "b"} and roots["b"]["kind"] == "eval"
        ga = await _get(c, "/api/group", src="a:samples/bench.jsonl", problem="q1")
        gb = await _get(c, "/api/group", src="b:samples/bench.jsonl", problem="q1")
        assert [it["summary"]["correct"] for it in ga["items"]] == [True, True, False]
        assert [it["summary"]["correct"] for it in gb["items"]] == [True, False, False]
        assert ga["items"][0]["final_answer"] == "7"
        d = await _get(c, "/api/list", src="b:samples/bench.jsonl", correct="true")
        assert d["total"] == 3
    finally:
        await c.close()


@pytest.mark.parametrize("path", [
    "/files/a/../secret.txt",
    "/files/a/%2e%2e/secret.txt",
    "/files/a/plots/%2e%2e%2f%2e%2e%2fsecret.txt",
    "/files/a/%2Fetc%2Fpasswd",
    "/files/a/plots/leak.png",
    "/files/z/plots/rl.png",
    "/static/..%2fserver.py",
    "/static/%2e%2e",
])
async def test_no_file_outside_the_directory(dirs, path):
    c = await _client(resolve_roots(dirs["run"]))
    try:
        r = await c.get(path)  # aiohttp's client keeps the encoded path as written
        body = await r.text()
        # refused, or normalised to a path inside (``/static/%2e%2e`` becomes ``/``: the page)
        assert r.status in (403, 404) or (r.status == 200 and "<title>tirl view</title>" in body), (path, r.status)
        assert "top secret" not in body and "def make_app" not in body
    finally:
        await c.close()


@pytest.mark.parametrize("src", ["a:../secret.txt", "a:%2e%2e/secret.txt", "a:trajectories/leak.jsonl",
                                 "a:/etc/passwd", "a:trajectories/../../secret.txt"])
async def test_no_record_file_outside_the_directory(dirs, src):
    c = await _client(resolve_roots(dirs["run"]))
    try:
        r = await c.get("/api/list", params={"src": src})
        assert r.status in (403, 404), (src, r.status)
        assert "top secret" not in await r.text()
    finally:
        await c.close()


def test_parse_filter():
    f = parse_filter({"step": "3", "correct": "false", "kept": "", "problem": "p1", "error": "timeout"})
    assert (f.step, f.correct, f.kept, f.problem, f.error, f.finish) == (3, False, None, "p1", "timeout", None)


async def test_start_view_binds_a_free_loopback_port(dirs):
    runner, url = await start_view(dirs["run"], port=0)
    try:
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0/")
    finally:
        await runner.cleanup()


def test_run_view_refuses_a_directory_it_cannot_show(tmp_path, capsys):
    assert run_view(tmp_path / "nope") == 2
    assert "is not a directory" in capsys.readouterr().err


async def test_big_file_is_indexed_in_steps(dirs, monkeypatch):
    import tirl.view.server as server

    monkeypatch.setattr(server, "SCAN_BYTES", 4096)  # the fixture file is ~100 KB: many steps
    c = await _client(resolve_roots(dirs["run"]))
    src = "a:trajectories/train.jsonl"
    try:
        first = await _get(c, "/api/list", src=src, limit="5")
        assert first["counting"] and 0 < first["records"] < 24
        assert [r["i"] for r in first["rows"]] == list(range(min(5, first["records"])))
        for _ in range(200):
            d = await _get(c, "/api/list", src=src, correct="true")
            if not d["counting"] and d["summarized"] == 24:
                break
            await asyncio.sleep(0.02)
        assert d["records"] == 24 and d["total"] == 12
    finally:
        await c.close()

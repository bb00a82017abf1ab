"""The Dispatcher over two real `tirl serve` processes on loopback (slow: model start-up).

A tiny random Llama is saved to a temporary directory and served twice; the
dispatcher discovers each server's KV capacity from its vLLM-named ``/metrics``, keeps
every trajectory on one server, never books more than a server holds, and, when one
server is killed, drains it and finishes the remaining work on the other.
"""

import asyncio
import socket
import subprocess
import sys
import time

import aiohttp
import pytest

from tirl.dispatch import Dispatcher
from tirl.engines.openai import OpenAIEngine

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    from tirl.engines.config import ModelConfig
    from tirl.engines.models import load_model

    root = tmp_path_factory.mktemp("tiny")
    from tirl.agent.format import tokenizer_sample_texts

    model, tok = load_model(ModelConfig(path="scratch", vocab_size=320, hidden_size=32, num_layers=1,
                                        num_heads=2, max_position=512), texts=tokenizer_sample_texts())
    model.save_pretrained(root)
    tok.save_pretrained(root)
    procs, urls = [], []
    for i in range(2):
        port = free_port()
        log = open(root / f"serve{i}.log", "w")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tirl.cli", "serve", "--model", str(root), "--served-name", "tiny",
             "--port", str(port), "--max-batch", "4", "--max-seq-len", "256", "--threads", "1"],
            stdout=log, stderr=subprocess.STDOUT,
        ))
        urls.append(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 150
        for url, p in zip(urls, procs):
            while True:
                assert p.poll() is None, (root / "serve0.log").read_text()[-2000:]
                try:
                    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=1):
                        break
                except OSError:
                    assert time.monotonic() < deadline, "tirl serve did not start in 150 s"
                    time.sleep(0.3)
        yield procs, urls, len(tok)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


async def test_dispatch_over_two_tirl_serve_processes(servers):
    procs, urls, vocab = servers
    engines = [OpenAIEngine(u + "/v1", "tiny", retries=1) for u in urls]
    try:
        async with Dispatcher(engines, "kv", metrics_interval_s=0.2, fail_after=2) as d:
            caps = [ld.capacity_tokens for ld in d.loads]
            assert caps == [4 * 256] * 2  # max_batch × max_seq_len, from vllm:cache_config_info
            peak = [0, 0]

            async def traj(j, turns=2):
                prompt = [(j * 7 + t) % (vocab - 10) + 5 for t in range(20)]
                async with d.lease(f"t{j}", 300, group=f"p{j // 3}") as eng:
                    where = set()
                    for _ in range(turns):
                        where.add(eng.engine_index)
                        for i, ld in enumerate(d.loads):
                            assert ld.reserved_tokens <= ld.capacity_tokens
                            peak[i] = max(peak[i], ld.reserved_tokens)
                        c = await eng.generate(prompt, 12, 1.0)
                        assert 1 <= len(c.token_ids) <= 12
                        prompt = prompt + c.token_ids + [7, 8]
                    where.add(eng.engine_index)
                    return where

            wheres = await asyncio.gather(*(traj(j) for j in range(12)))
            assert all(len(w) == 1 for w in wheres)  # sticky
            assert {next(iter(w)) for w in wheres} == {0, 1}
            assert max(peak) == 900 and d.stats.waited > 0  # 3 × 300 filled a server; others waited
            assert all(ld.reserved_tokens == 0 for ld in d.loads)

            procs[1].kill()  # a server dies
            procs[1].wait(timeout=20)
            more = await asyncio.gather(*(traj(100 + j, turns=3) for j in range(6)))
            assert all(len(w) >= 1 for w in more)
            used_after = {next(iter(w)) if len(w) == 1 else -1 for w in more}
            assert not d.loads[1].healthy
            assert 1 not in used_after or d.stats.retries > 0
            assert all(ld.reserved_tokens == 0 and ld.active == 0 for ld in d.loads)
    finally:
        for e in engines:
            await e.aclose()

"""The Dispatcher over two real `tirl serve` processes on loopback (slow: model start-up).

A tiny random Llama is saved to a temporary directory and served twice; the
dispatcher discovers each server's KV capacity from its vLLM-named ``/metrics``, keeps
every trajectory on one server, never books more than a server holds, and, when one
server is killed, drains it and finishes the remaining work on the other.
"""

import asyncio

import pytest

from tirl.dispatch import Dispatcher
from tirl.engines.launch import launch_servers
from tirl.engines.openai import OpenAIEngine

pytestmark = pytest.mark.slow


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
    with launch_servers(root, 2, root, max_batch=4, max_seq_len=256, start_timeout_s=150) as srv:
        yield srv.procs, [u.removesuffix("/v1") for u in srv.urls], len(tok)


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

"""LocalEngine's bounded memory, windowed prefill, per-row failures and cancellation."""

import asyncio
import math

import pytest
import torch

import tirl.engines.local as local_mod
from tirl.engines.local import LocalEngine, _KVCache
from tirl.engines.sampling import check_sampling

from tests.agent.tiny import tiny_model, tiny_tokenizer
from tests.engines.test_local import hf_greedy, ref_logprobs


async def test_a_long_prompt_is_prefilled_in_windows_and_matches_hf():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    eng = LocalEngine(model, tok, prefill_chunk=16, prefix_cache_rows=0)
    long = tok.encode("What is 6 times 7? Let me think about it. " * 6)
    short = tok.encode("What is 6?")
    assert len(long) > 3 * 16
    outs = await asyncio.gather(eng.generate(long, 8, 0.0), eng.generate(short, 8, 0.0))
    for p, c in zip((long, short), outs):
        assert c.token_ids == hf_greedy(model, p, 8)
        assert torch.allclose(torch.tensor(c.logprobs), ref_logprobs(model, p, c.token_ids), atol=1e-4)
    assert eng.prefill_tokens_computed == len(long) + len(short)
    eng.close()


async def test_windows_after_a_reused_prefix_match_hf():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    eng = LocalEngine(model, tok, prefill_chunk=16)
    p = tok.encode("A long enough prompt for the prefix cache to matter here.")
    ref = hf_greedy(model, p, 10)
    c1 = await eng.generate(p, 10, 0.0, [ref[5]])
    nxt = p + c1.token_ids + tok.encode(" tool says 42. " * 5)
    assert len(nxt) - len(p) > 2 * 16
    c2 = await eng.generate(nxt, 6, 0.0)
    assert eng.prefix_hit_tokens > 0
    assert c2.token_ids == hf_greedy(model, nxt, 6)
    eng.close()


async def test_allocation_follows_the_requests_not_the_limits():
    tok = tiny_tokenizer()
    model = tiny_model(tok, max_pos=512)
    eng = LocalEngine(model, tok, max_batch=64, prefix_cache_rows=0)
    assert eng.kv_budget_tokens == 64 * 512  # tiny model: the default bytes allow every row
    p = list(range(10, 60))
    await eng.generate(p, 10, 0.0)
    s = eng.stats()
    assert s["kv_peak_tokens"] == 60  # one row of prompt + max_new, not 64 rows of 512
    assert s["kv_allocated_tokens"] == 0  # idle: released
    assert s["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * 4  # layers × K,V × kv heads × head dim × fp32
    eng.close()


async def test_the_budget_bounds_the_cache_and_requests_wait_for_room():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    eng = LocalEngine(model, tok, max_batch=8, kv_budget_tokens=130)
    prompts = [list(range(10 + i, 60 + i)) for i in range(4)]  # need 60 each: 2 fit at once
    comps = await asyncio.gather(*(eng.generate(p, 10, 0.0) for p in prompts))
    assert all(len(c.token_ids) == 10 for c in comps)
    assert [c.token_ids for c in comps] == [hf_greedy(model, p, 10) for p in prompts]
    assert 120 <= eng.kv_peak_tokens <= 130
    with pytest.raises(ValueError, match="kv_budget_tokens is 130"):
        await eng.generate(list(range(10, 130)), 20, 0.0)
    assert eng.max_request_tokens() == 130
    eng.close()


def test_cache_plan_doubles_rows_within_the_budget_and_shrinks_a_stale_cap():
    c = _KVCache(1, 1, 2, torch.float32, torch.device("cpu"), max_rows=64, max_len=512, budget=1000)
    c.ensure(1, 100)
    assert (c.rows, c.cap) == (1, 100)
    c.ensure(2, 100)
    assert (c.rows, c.cap) == (2, 100)
    c.ensure(3, 120)
    assert (c.rows, c.cap) == (4, 120)  # doubled
    c.ensure(5, 120)
    assert (c.rows, c.cap) == (8, 120) and c.tokens <= 1000
    c.k[0][0, 0, :3] = torch.tensor([[1.0, 2.0]] * 3)
    c.fit(2, 400, keep=1)
    assert (c.rows, c.cap) == (2, 400) and c.k[0][0, 0, :3].tolist() == [[1.0, 2.0]] * 3
    assert c.plan(3, 300) == (3, 300)  # 3 × 400 > 1000: the cap drops to the need
    c.fit(0, 0, keep=0)
    assert c.tokens == 0 and c.k == []


@pytest.mark.parametrize("kw, field", [
    (dict(temperature=math.nan), "temperature"), (dict(temperature=-1.0), "temperature"),
    (dict(temperature=math.inf), "temperature"), (dict(top_p=math.nan), "top_p"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(top_k=-1), "top_k"),
    (dict(top_k=2.5), "top_k"), (dict(top_k=True), "top_k"),
])
def test_check_sampling_names_the_bad_field(kw, field):
    args = dict(temperature=1.0, top_p=1.0, top_k=0) | kw
    with pytest.raises(ValueError, match=f"^{field} "):
        check_sampling(**args)


async def test_a_nan_temperature_is_refused_before_it_reaches_the_batch():
    tok = tiny_tokenizer()
    eng = LocalEngine(tiny_model(tok), tok)
    with pytest.raises(ValueError, match="temperature"):
        await eng.generate([5, 6, 7], 4, math.nan)
    c = await eng.generate([5, 6, 7], 4, 1.0)
    assert len(c.token_ids) == 4
    eng.close()


async def test_a_row_whose_sampling_fails_errors_alone(monkeypatch):
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    real = local_mod.sample_tokens

    def flaky(logits, temperature, *a, **kw):  # rows at temperature 0.77 cannot be sampled
        if bool((temperature == 0.77).any()):
            raise RuntimeError("probability tensor contains either inf, nan or element < 0")
        return real(logits, temperature, *a, **kw)

    monkeypatch.setattr(local_mod, "sample_tokens", flaky)
    eng = LocalEngine(model, tok, max_batch=4)
    p = tok.encode("What is 6 times 7?")
    good, bad = await asyncio.gather(eng.generate(p, 12, 0.0), eng.generate(p, 12, 0.77),
                                     return_exceptions=True)
    assert isinstance(bad, RuntimeError) and "probability tensor" in str(bad)
    assert good.token_ids == hf_greedy(model, p, 12)
    assert eng.stats()["running"] == 0
    eng.close()


async def test_a_cancelled_request_stops_generating():
    tok = tiny_tokenizer()
    eng = LocalEngine(tiny_model(tok), tok, max_batch=4)
    task = asyncio.create_task(eng.generate([5, 6, 7], 400, 1.0))
    while eng.tokens_generated < 3:
        await asyncio.sleep(0.005)
    task.cancel()
    for _ in range(500):
        if eng.stats()["running"] == 0:
            break
        await asyncio.sleep(0.01)
    assert eng.stats()["running"] == 0 and eng.tokens_generated < 400
    c = await eng.generate([5, 6, 7], 5, 0.0)  # the engine keeps serving
    assert len(c.token_ids) == 5
    eng.close()


async def test_parked_prefixes_are_exact_copies_evicted_to_stay_in_the_budget():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    eng = LocalEngine(model, tok, max_batch=4, kv_budget_tokens=130)
    p = list(range(10, 60))
    c = await eng.generate(p, 10, 0.0)
    assert eng.stats()["kv_allocated_tokens"] == len(p) + 9  # idle: only the parked turn, exact length
    nxt = p + c.token_ids + [7, 8]
    c2 = await eng.generate(nxt, 4, 0.0)  # reuses it
    assert eng.prefix_hit_tokens == len(p) + 9 and c2.token_ids == hf_greedy(model, nxt, 4)
    other = list(range(100, 200))
    c3 = await eng.generate(other, 20, 0.0)  # needs 120: the parked turns make room
    assert c3.token_ids == hf_greedy(model, other, 20)
    assert eng.kv_peak_tokens <= 130
    eng.close()


async def test_a_reused_prefix_beside_a_longer_fresh_prompt_stays_in_the_cache_rows():
    """One prefill group: row A reuses 41 parked positions and adds 2, row B prefills 44. The
    padded suffix width (44) past A's offset must not write beyond the rows' length (46)."""
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    eng = LocalEngine(model, tok, max_batch=4)
    p = [(7 * i) % 300 + 5 for i in range(41)]
    await eng.generate(p, 1, 0.0)  # parks the prompt's K/V
    a, b = p + [5, 6], [(11 * i) % 300 + 5 for i in range(44)]
    with eng._cv:  # both queued before the scheduler thread looks (the lock is re-entrant)
        ta = asyncio.ensure_future(eng.generate(a, 3, 0.0))
        tb = asyncio.ensure_future(eng.generate(b, 2, 0.0))
        while len(eng._waiting) < 2:
            await asyncio.sleep(0)
    ca, cb = await asyncio.gather(ta, tb)
    assert eng.prefix_hit_tokens == 41
    assert ca.token_ids == hf_greedy(model, a, 3) and cb.token_ids == hf_greedy(model, b, 2)
    eng.close()


@pytest.mark.parametrize("budget, chunk", [(None, 512), (700, 16), (250, 16)])
async def test_mixed_two_turn_traffic_matches_hf_within_the_budget(budget, chunk):
    """Random prompt lengths and budgets, second turns reusing parked prefixes, short and long
    prompts in the same steps: every greedy completion equals HF's, the cache stays in budget."""
    import random

    rng = random.Random(5)
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    eng = LocalEngine(model, tok, max_batch=3, kv_budget_tokens=budget, prefill_chunk=chunk)
    prompts = [[rng.randrange(5, 300) for _ in range(rng.randrange(3, 60))] for _ in range(8)]
    news = [rng.randrange(1, 12) for _ in prompts]
    firsts = await asyncio.gather(*(eng.generate(p, n, 0.0) for p, n in zip(prompts, news)))
    seconds = [p + c.token_ids + [rng.randrange(5, 300) for _ in range(rng.randrange(1, 40))]
               for p, c in zip(prompts, firsts)]
    outs = await asyncio.gather(*(eng.generate(s, n, 0.0) for s, n in zip(seconds, news)))
    for p, n, c in zip(prompts + seconds, news + news, list(firsts) + list(outs)):
        assert c.token_ids == hf_greedy(model, p, n)
    assert eng.kv_peak_tokens <= eng.kv_budget_tokens
    if budget is None:  # room to park every first turn
        assert eng.prefix_hit_tokens > 0
    eng.close()

import asyncio

import pytest
import torch

from tirl.engines.local import LocalEngine
from tirl.engines.sampling import filter_logits, sample_tokens

from tests.agent.tiny import tiny_model, tiny_tokenizer


def hf_greedy(model, prompt, n):
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                         pad_token_id=0)
    return out[0, len(prompt):].tolist()


def ref_logprobs(model, prompt, gen, temperature=1.0):
    with torch.no_grad():
        logits = model(torch.tensor([prompt + gen])).logits[0, len(prompt) - 1:-1].float()
    return torch.log_softmax(logits / temperature, -1).gather(-1, torch.tensor(gen)[:, None])[:, 0]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
async def test_continuous_batching_matches_hf_greedy_and_logprobs(arch):
    tok = tiny_tokenizer()
    model = tiny_model(tok, arch=arch)
    eng = LocalEngine(model, tok, max_batch=2)  # 5 requests through 2 rows: sequences join as others finish
    assert eng.fast_path
    prompts = [tok.encode("What is 6 times 7? " * (i + 1)) for i in range(5)]
    lengths = [3, 12, 7, 16, 5]
    comps = await asyncio.gather(*(eng.generate(p, n, 0.0) for p, n in zip(prompts, lengths)))
    for p, n, c in zip(prompts, lengths, comps):
        assert c.finish_reason == "length" and len(c.token_ids) == n
        assert c.token_ids == hf_greedy(model, p, n)
        assert torch.allclose(torch.tensor(c.logprobs), ref_logprobs(model, p, c.token_ids), atol=1e-4)
    eng.close()


async def test_sampled_logprobs_use_the_temperature():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    eng = LocalEngine(model, tok, max_batch=4, seed=1)
    p = tok.encode("q: 1+1")
    comps = await asyncio.gather(*(eng.generate(p, 15, 0.7) for _ in range(3)))
    assert len({tuple(c.token_ids) for c in comps}) > 1  # sampling, not greedy
    for c in comps:
        assert torch.allclose(torch.tensor(c.logprobs), ref_logprobs(model, p, c.token_ids, 0.7), atol=1e-4)
    eng.close()


async def test_stops_on_token_ids_and_strings_and_includes_the_stop():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    eng = LocalEngine(model, tok)
    p = tok.encode("stop test")
    ref = hf_greedy(model, p, 30)
    stop_id = ref[4]
    first = ref.index(stop_id)
    c = await eng.generate(p, 30, 0.0, [stop_id])
    assert c.finish_reason == "stop" and c.stop_reason == stop_id and c.token_ids == ref[:first + 1]
    text = tok.decode(ref[:10], skip_special_tokens=False)
    stop_str = text[-3:]
    c = await eng.generate(p, 30, 0.0, [stop_str])
    assert c.finish_reason == "stop" and c.stop_reason == stop_str
    assert tok.decode(c.token_ids, skip_special_tokens=False).endswith(stop_str) or \
        stop_str in tok.decode(c.token_ids, skip_special_tokens=False)
    assert len(c.token_ids) <= 10
    eng.close()


async def test_context_limit_and_mode_restore():
    tok = tiny_tokenizer()
    model = tiny_model(tok, max_pos=64)
    model.train()
    eng = LocalEngine(model, tok)
    c = await eng.generate(list(range(10, 60)), 100, 0.0)
    assert len(c.token_ids) == 14 and c.finish_reason == "length" and c.meta["context_limit"]
    c = await eng.generate(list(range(10, 80)), 5, 0.0)
    assert c.token_ids == [] and c.meta["context_limit"]
    for _ in range(200):  # the engine goes idle and restores train mode
        if model.training:
            break
        await asyncio.sleep(0.01)
    assert model.training
    assert eng.stats()["running"] == 0 and eng.stats()["waiting"] == 0
    eng.close()


async def test_weights_updated_in_place_are_used_on_the_next_call():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    eng = LocalEngine(model, tok)
    p = tok.encode("hello")
    before = await eng.generate(p, 8, 0.0)
    with torch.no_grad():
        torch.manual_seed(3)
        for w in model.model.layers[0].mlp.parameters():
            w.add_(torch.randn_like(w))
    after = await eng.generate(p, 8, 0.0)
    assert after.token_ids == hf_greedy(model, p, 8)
    assert torch.allclose(torch.tensor(after.logprobs), ref_logprobs(model, p, after.token_ids), atol=1e-4)
    assert not torch.allclose(torch.tensor(after.logprobs), torch.tensor(before.logprobs), atol=1e-3)
    eng.close()


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05]]))
    f = filter_logits(logits, torch.tensor([1.0, 0.7]), torch.tensor([2, 0]))
    assert torch.isfinite(f[0]).tolist() == [True, True, False, False]
    assert torch.isfinite(f[1]).tolist() == [True, True, False, False]  # 0.5 + 0.3 >= 0.7
    f = filter_logits(logits, torch.tensor([0.4, 1.0]), torch.tensor([0, 0]))
    assert torch.isfinite(f[0]).tolist() == [True, False, False, False]
    assert torch.isfinite(f[1]).all()
    tokens, lp = sample_tokens(logits, torch.tensor([1.0, 1.0]), torch.tensor([0.4, 1.0]),
                               torch.tensor([0, 0]), torch.Generator().manual_seed(0))
    assert tokens[0] == 0 and abs(float(lp[0])) < 1e-6  # renormalised over the nucleus


async def test_agent_loop_on_a_random_model_is_token_exact():
    from tirl.agent.config import AgentConfig, SamplingConfig
    from tirl.agent.loop import AgentLoop
    from tests.agent.fakes import FakeTools

    tok = tiny_tokenizer()
    model = tiny_model(tok, max_pos=1024)
    eng = LocalEngine(model, tok, max_batch=8)
    loop = AgentLoop(eng, tok, FakeTools(), AgentConfig(system_prompt="short"),
                     sampling=SamplingConfig(max_tokens=40, max_turns=3))
    trajs = await loop.run_many([{"problem": f"{i}*7?", "answer": "7", "id": i} for i in range(4)], n=3)
    assert len(trajs) == 12
    for t in trajs:
        assert t.finish_reason in ("answer", "max_tokens", "max_turns")
        assert len(t.response_ids) == len(t.response_mask) == len(t.logprobs) <= 40
        gen = [lp for lp, m in zip(t.logprobs, t.response_mask) if m]
        assert gen and all(lp < 0 for lp in gen)
        assert sum(t.response_mask) == sum(turn.n_generated for turn in t.turns)
    # logprobs of policy tokens agree with a fresh forward over the whole trajectory
    t = trajs[0]
    ids = t.prompt_ids + t.response_ids
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), -1)
    n = len(t.prompt_ids)
    ref = lp[n - 1:].gather(-1, torch.tensor(t.response_ids)[:, None])[:, 0]
    mask = torch.tensor(t.response_mask, dtype=torch.bool)
    assert torch.allclose(ref[mask], torch.tensor(t.logprobs)[mask], atol=1e-4)
    assert loop.prefix_mismatches == 0
    eng.close()


async def test_next_turn_reuses_the_parked_prefix_and_matches_hf():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    eng = LocalEngine(model, tok, max_batch=3, prefix_cache_rows=4)
    prompts = [tok.encode("What is 6 times 7? Let me think. " * (i + 1)) for i in range(4)]
    refs = [hf_greedy(model, p, 12) for p in prompts]
    # turn 1 of four trajectories, each ending on its own stop token (so its K/V is parked)
    firsts = await asyncio.gather(*(eng.generate(p, 12, 0.0, [r[8]]) for p, r in zip(prompts, refs)))
    assert all(c.finish_reason == "stop" for c in firsts)
    computed = eng.prefill_tokens_computed
    # turn 2: context = prompt + turn 1 + "tool" tokens; only the new tokens are prefilled
    extra = tok.encode(" tool says 42.")
    seconds = [p + c.token_ids + extra for p, c in zip(prompts, firsts)]
    outs = await asyncio.gather(*(eng.generate(s, 6, 0.0) for s in seconds))
    assert eng.prefix_hit_tokens > 0
    assert eng.prefill_tokens_computed - computed < sum(len(s) for s in seconds) / 2
    for s, c in zip(seconds, outs):
        assert c.token_ids == hf_greedy(model, s, 6)
        assert torch.allclose(torch.tensor(c.logprobs), ref_logprobs(model, s, c.token_ids), atol=1e-4)
    eng.close()


async def test_prefix_cache_off_gives_the_same_tokens():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    p = tok.encode("A long enough prompt for the prefix cache to matter here.")
    a, b = LocalEngine(model, tok, prefix_cache_rows=0), LocalEngine(model, tok)
    first = await a.generate(p, 10, 0.0)
    stop = first.token_ids[5]
    outs = []
    for eng in (a, b):
        c1 = await eng.generate(p, 10, 0.0, [stop])
        c2 = await eng.generate(p + c1.token_ids + p[:7], 10, 0.0)
        outs.append((c1.token_ids, c2.token_ids))
    assert outs[0] == outs[1] and a.prefix_hit_tokens == 0 and b.prefix_hit_tokens > 0
    a.close()
    b.close()


async def test_parked_prefixes_are_dropped_after_a_training_step():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    eng = LocalEngine(model, tok)
    p = tok.encode("A long enough prompt for the prefix cache to matter here.")
    ref = hf_greedy(model, p, 10)
    c1 = await eng.generate(p, 10, 0.0, [ref[5]])
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(torch.tensor([p])).logits.sum().backward()
    opt.step()
    model.eval()
    nxt = p + c1.token_ids + p[:7]
    c2 = await eng.generate(nxt, 6, 0.0)
    assert eng.prefix_hit_tokens == 0
    assert c2.token_ids == hf_greedy(model, nxt, 6)
    eng.close()


async def test_train_mode_is_back_when_the_last_result_arrives():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    model.train()
    eng = LocalEngine(model, tok)
    for _ in range(3):
        await asyncio.gather(*(eng.generate(tok.encode("x y z"), 4, 1.0) for _ in range(3)))
        assert model.training  # no waiting: restored before the futures resolved
    eng.close()


async def test_a_seeded_request_gets_the_same_tokens_alone_or_batched_in_any_order():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    target = tok.encode("What is 6 times 7?")
    others = [tok.encode("q: 1+1 " * (i + 1)) for i in range(5)]

    alone_eng = LocalEngine(model, tok, max_batch=8, seed=0)
    alone = await alone_eng.generate(target, 20, 1.0, seed=1234)
    again = await alone_eng.generate(target, 20, 1.0, seed=1234)
    other_seed = await alone_eng.generate(target, 20, 1.0, seed=4321)
    alone_eng.close()
    assert again.token_ids == alone.token_ids
    assert other_seed.token_ids != alone.token_ids  # the seed is used

    async def late(coro, delay_steps):
        for _ in range(delay_steps):
            await asyncio.sleep(0)
        return await coro

    for shared_seed, order in ((7, [0, 1, 2, 3, 4]), (99, [4, 2, 0, 3, 1])):
        # another engine seed, 3 rows for 6 requests (the target joins a running batch), other
        # requests seeded and unseeded, arriving in another order
        eng = LocalEngine(model, tok, max_batch=3, seed=shared_seed)
        reqs = [eng.generate(others[i], 8 + i, 1.0, seed=None if i % 2 else 50 + i) for i in order]
        reqs.insert(2, late(eng.generate(target, 20, 1.0, seed=1234), 3))
        comps = await asyncio.gather(*reqs)
        eng.close()
        got = comps[2]
        assert got.token_ids == alone.token_ids
        assert torch.allclose(torch.tensor(got.logprobs), torch.tensor(alone.logprobs), atol=1e-4)
    assert torch.allclose(torch.tensor(alone.logprobs), ref_logprobs(model, target, alone.token_ids), atol=1e-4)


async def test_without_a_seed_the_tokens_depend_on_the_batch():
    # what the per-request seed fixes: the shared generator's draws go to whoever is in the batch
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    target = tok.encode("What is 6 times 7?")
    eng = LocalEngine(model, tok, max_batch=8, seed=0)
    alone = await eng.generate(target, 20, 1.0)
    eng.close()
    eng = LocalEngine(model, tok, max_batch=8, seed=0)
    other = eng.generate(tok.encode("q: 1+1"), 20, 1.0)
    batched = (await asyncio.gather(other, eng.generate(target, 20, 1.0)))[1]
    eng.close()
    assert batched.token_ids != alone.token_ids


def test_row_generators_make_each_row_independent_of_the_others():
    from tirl.engines.sampling import row_generator

    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    ones, zeros = torch.ones(4), torch.zeros(4, dtype=torch.long)
    tok, lp = sample_tokens(logits, ones, ones, zeros, row_generators=[row_generator(s) for s in range(4)])
    perm = [2, 0, 3, 1]
    tok2, lp2 = sample_tokens(logits[perm], ones, ones, zeros, torch.Generator().manual_seed(5),
                              row_generators=[row_generator(perm[i]) if i != 1 else None for i in range(4)])
    for j, i in enumerate(perm):
        if j != 1:  # row 1 of the permuted batch uses the shared generator
            assert int(tok2[j]) == int(tok[i]) and float(lp2[j]) == float(lp[i])
    # top-k filtered tokens are never picked by the inverse CDF
    k = torch.full((4,), 3, dtype=torch.long)
    top3 = torch.topk(logits, 3, dim=-1).indices
    for s in range(20):
        t, _ = sample_tokens(logits, ones, ones, k, row_generators=[row_generator(100 * s + r) for r in range(4)])
        assert all(int(t[r]) in top3[r].tolist() for r in range(4))

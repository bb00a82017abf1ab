"""Rollout throughput: the asynchronous agent loop against a lockstep schedule, same run.

Part 1 (schedule): a batch of trajectories on a scripted engine (fixed turns, simulated
generation latency) with a long-tailed tool-latency mix, run twice through the same
``AgentLoop``: asynchronously (each trajectory continues as soon as its own tool calls
return) and in lockstep (a barrier: every trajectory's next turn waits until every active
trajectory's tool calls of this turn are back — the batch waits for its slowest call).
Reports trajectories/s, tool calls/s, the speed-up and prefix mismatches (must be 0).

Part 2 (engine): LocalEngine useful tokens/s on a demo-sized random model (continuous
batching, slot KV cache) against ``transformers`` ``model.generate`` on the same prompts in
static batches of the same size, both on one torch thread; once with equal response lengths
and once with varied ones (as rollouts have: a static batch decodes until its longest row ends).

Part 3 (prefix reuse): three-turn contexts (each turn = the previous context + the model's
tokens + tool tokens) on LocalEngine with and without reusing the previous turn's K/V.

Prints one JSON object. Usage: ``python benchmarks/rollout_bench.py [--trajectories 128]
[--seed 0] [--skip-engine]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import threading
import time

from tirl.agent import format as fmt
from tirl.agent.config import AgentConfig
from tirl.agent.loop import AgentLoop
from tirl.engines.scripted import ScriptedEngine
from tirl.sandbox.types import ExecResult


def bench_tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tags = ["<reason>", "</reason>", "<answer>", "</answer>", "<tool_call>", "</tool_call>",
            "<tool_response>", "</tool_response>", "<tools>", "</tools>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    tok.add_tokens([AddedToken(t, normalized=False) for t in tags])
    corpus = [fmt.system_prompt(which="short"), fmt.format_tool_call("print(12 * 34)"),
              fmt.format_tool_response(ExecResult(status="ok", stdout="408\n")),
              "<reason>compute</reason><answer>\\boxed{408}</answer> What is 12 * 34?"] * 10
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=512, special_tokens=special + tags, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


# ---------------------------------------------------------------------------------------
# part 1: schedules


class LatencyTools:
    """Tool executor with a long-tailed latency mix (seconds), drawn per call from a seeded RNG."""

    MIX = {"fast": (0.85, 0.02, 0.15), "slow": (0.12, 0.3, 1.0), "timeout": (0.03, 2.0, 2.0)}

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.calls = 0

    def draw(self) -> float:
        u = self.rng.random()
        acc = 0.0
        for p, lo, hi in self.MIX.values():
            acc += p
            if u < acc:
                return self.rng.uniform(lo, hi)
        return self.MIX["fast"][1]

    async def run(self, code, stdin="", timeout_s=None, session_id=None):
        self.calls += 1
        lat = self.draw()
        await asyncio.sleep(lat)
        return ExecResult(status="timeout" if lat >= 2.0 else "ok", stdout="1\n", exec_ms=lat * 1000)

    async def close_session(self, session_id):
        return True


class LockstepBarrier:
    """Wraps an engine: turn k of every trajectory starts when all active ones reached it."""

    def __init__(self, inner, parties: int):
        self.inner = inner
        self.parties = parties
        self.arrived = 0
        self.event = asyncio.Event()

    def leave(self, _traj=None) -> None:
        self.parties -= 1
        self._maybe_release()

    def _maybe_release(self) -> None:
        if self.parties and self.arrived >= self.parties:
            self.arrived = 0
            ev, self.event = self.event, asyncio.Event()
            ev.set()

    async def generate(self, *args, **kw):
        ev = self.event
        self.arrived += 1
        self._maybe_release()
        if not ev.is_set():
            await ev.wait()
        return await self.inner.generate(*args, **kw)


def turns_script(rng: random.Random, n: int) -> dict[str, int]:
    """Tool turns per problem: 1–6, most trajectories short, some long."""
    return {f"p{i}": rng.choice([1, 1, 2, 2, 3, 3, 4, 5, 6]) for i in range(n)}


async def run_schedule(lockstep: bool, n: int, seed: int, tok) -> dict:
    rng = random.Random(seed)
    n_calls = turns_script(rng, n)
    gen_rng = random.Random(seed + 1)

    def script(prompt: str, turn: int) -> str:
        pid = prompt.split("problem ")[-1].split("<")[0].strip()
        if turn < n_calls[pid]:
            return "<reason>check</reason>" + fmt.format_tool_call(f"print({turn})")
        return "<answer>\\boxed{1}</answer>"

    inner = ScriptedEngine(tok, script, latency_s=lambda: gen_rng.uniform(0.02, 0.06), record=False)
    tools = LatencyTools(seed + 2)
    engine = LockstepBarrier(inner, n) if lockstep else inner
    loop = AgentLoop(engine, tok, tools, AgentConfig(max_turns=8, max_tokens=4096, system_prompt="short",
                                                     concurrency=n))
    items = [{"problem": f"problem p{i}", "answer": "1", "id": f"p{i}"} for i in range(n)]
    t0 = time.perf_counter()
    trajs = await loop.run_many(items, n=1, on_done=engine.leave if lockstep else None)
    dt = time.perf_counter() - t0
    return {"seconds": round(dt, 3), "trajectories_per_s": round(n / dt, 2),
            "tool_calls_per_s": round(tools.calls / dt, 2), "tool_calls": tools.calls,
            "finished_answer": sum(t.finish_reason == "answer" for t in trajs),
            "prefix_mismatches": loop.prefix_mismatches, "prefix_checks": loop.prefix_checks}


# ---------------------------------------------------------------------------------------
# part 2: engine


def in_thread(fn):
    out = {}

    def target():
        import torch

        torch.set_num_threads(1)
        out["v"] = fn()

    th = threading.Thread(target=target)
    th.start()
    th.join()
    return out["v"]


def bench_engine(tok, n: int = 64, batch: int = 32, lengths: tuple[int, int] = (8, 128), rounds: int = 3) -> dict:
    """Useful tokens/s: LocalEngine vs HF generate, for fixed and for varied response lengths.

    Varied lengths are what rollouts look like (each response stops at its own end); a static
    batch keeps decoding until its longest member is done, so its finished rows are wasted.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tirl.engines.local import LocalEngine

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=128, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        tie_word_embeddings=True, eos_token_id=None, bos_token_id=None, pad_token_id=0)).eval()
    rng = random.Random(0)
    prompts = [[rng.randrange(3, len(tok)) for _ in range(rng.randrange(40, 100))] for _ in range(n)]
    varied = [rng.randrange(*lengths) for _ in range(n)]
    fixed = [sum(varied) // n] * n
    eng = LocalEngine(model, tok, max_batch=batch, threads=1)

    def local(news):
        async def go():
            return await asyncio.gather(*(eng.generate(p, k, 1.0) for p, k in zip(prompts, news)))
        t0 = time.perf_counter()
        comps = asyncio.run(go())
        return sum(len(c.token_ids) for c in comps) / (time.perf_counter() - t0)

    def hf(news):
        useful = 0
        t0 = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(news), batch):
                chunk, want = prompts[i:i + batch], news[i:i + batch]
                width = max(len(p) for p in chunk)
                ids = torch.zeros((len(chunk), width), dtype=torch.long)
                mask = torch.zeros_like(ids)
                for r, p in enumerate(chunk):  # left padding
                    ids[r, width - len(p):] = torch.tensor(p)
                    mask[r, width - len(p):] = 1
                model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max(want),
                               min_new_tokens=max(want), do_sample=True, top_k=0, pad_token_id=0)
                useful += sum(want)  # rows past their own end are wasted work
        return useful / (time.perf_counter() - t0)

    local(fixed[:batch])  # warm-up
    in_thread(lambda: hf(fixed[:batch]))
    out = {"model": f"llama 4x128, vocab {len(tok)}", "sequences": n, "batch": batch,
           "varied_new_tokens": list(lengths), "fixed_new_tokens": fixed[0], "rounds": rounds}
    for name, news in (("fixed", fixed), ("varied", varied)):
        a, b = [], []
        for _ in range(rounds):  # interleaved, so load changes hit both alike
            a.append(local(news))
            b.append(in_thread(lambda: hf(news)))
        ratios = sorted(x / y for x, y in zip(a, b))
        out[name] = {"local_tokens_per_s": round(statistics.median(a), 1),
                     "hf_generate_tokens_per_s": round(statistics.median(b), 1),
                     "ratio_median": round(statistics.median(ratios), 2),
                     "ratio_range": [round(ratios[0], 2), round(ratios[-1], 2)]}
    eng.close()
    return out


def bench_prefix_reuse(tok, n: int = 48, turns: int = 3, new: int = 32, tool_tokens: int = 24,
                       rounds: int = 3) -> dict:
    """Multi-turn contexts on LocalEngine with and without prefix reuse (same prompts, same run)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tirl.engines.local import LocalEngine

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=128, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
        tie_word_embeddings=True, eos_token_id=None, bos_token_id=None, pad_token_id=0)).eval()
    rng = random.Random(1)
    prompts = [[rng.randrange(3, len(tok)) for _ in range(rng.randrange(100, 200))] for _ in range(n)]
    tool = [[rng.randrange(3, len(tok)) for _ in range(tool_tokens)] for _ in range(n * turns)]

    def run(rows: int) -> tuple[float, int, int]:
        eng = LocalEngine(model, tok, max_batch=32, threads=1, prefix_cache_rows=rows)

        async def traj(i: int) -> int:
            ctx, made = list(prompts[i]), 0
            for t in range(turns):
                c = await eng.generate(ctx, new, 1.0)
                made += len(c.token_ids)
                ctx = ctx + c.token_ids + tool[i * turns + t]
            return made

        async def go():
            return await asyncio.gather(*(traj(i) for i in range(n)))

        t0 = time.perf_counter()
        made = sum(asyncio.run(go()))
        dt = time.perf_counter() - t0
        eng.close()
        return made / dt, eng.prefill_tokens_computed, eng.prefix_hit_tokens

    run(2 * n)  # warm-up
    on, off = [], []
    for _ in range(rounds):
        on.append(run(2 * n))
        off.append(run(0))
    ratios = sorted(a[0] / b[0] for a, b in zip(on, off))
    return {"trajectories": n, "turns": turns, "new_tokens_per_turn": new, "tool_tokens_per_turn": tool_tokens,
            "with_reuse_tokens_per_s": round(statistics.median(x[0] for x in on), 1),
            "without_reuse_tokens_per_s": round(statistics.median(x[0] for x in off), 1),
            "prefill_tokens_with": on[0][1], "prefill_tokens_without": off[0][1],
            "ratio_median": round(statistics.median(ratios), 2),
            "ratio_range": [round(ratios[0], 2), round(ratios[-1], 2)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trajectories", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-engine", action="store_true")
    args = ap.parse_args()
    tok = bench_tokenizer()
    asyn = asyncio.run(run_schedule(False, args.trajectories, args.seed, tok))
    lock = asyncio.run(run_schedule(True, args.trajectories, args.seed, tok))
    out = {
        "benchmark": "rollout_bench",
        "tool_latency_mix": {k: {"p": p, "seconds": [lo, hi]} for k, (p, lo, hi) in LatencyTools.MIX.items()},
        "async": asyn, "lockstep": lock,
        "speedup_async_vs_lockstep": round(lock["seconds"] / asyn["seconds"], 2),
    }
    if not args.skip_engine:
        out["engine"] = bench_engine(tok)
        out["prefix_reuse"] = bench_prefix_reuse(tok)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

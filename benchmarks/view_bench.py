"""``tirl view`` on a big trajectory file: open, page, filter, read one record, search.

Writes ``--n`` synthetic training trajectories (default 100,000; ``--tokens`` response tokens
each, with their ids, mask and log-probs, two turns and a tool call, the trainer's step /
kept / advantage fields) to a temporary JSONL file, then serves it with the real app
(``tirl.view.server.make_app``) and times, from an HTTP client:

- ``open_s``: the first page of the browser (``/api/list``), starting from nothing: the
  byte-offset index of the first 64 MiB plus that page (the target: under 2 s);
- ``page_ms``: a page of 50 deep in the file, unfiltered and filtered (target: under 100 ms),
  and ``record_ms``: one full record (``/api/record``), medians of 20 each;
- ``count_s``: until the whole file's line offsets are known (the record count; background);
- ``summaries_s``: until every record is summarized in the background (filters complete);
- ``search_s``: a text search whose only match is the last record (the worst case: a scan
  of the whole file, ``search_requests`` requests of at most 256 MiB each);
- ``rss_mb``: the resident memory the app gained (it never holds the records).

The baseline, measured in the same run on the same file, is what a script does without an
index: ``json.loads`` of every line into a list (``baseline_load_s``). The ratios are
``baseline_load_s / open_s`` and ``baseline_load_s / summaries_s``.

Run: ``.venv/bin/python benchmarks/view_bench.py [--n 100000] [--tokens 128]``. Prints one JSON
object. Times depend on the machine and its load; the ratios much less.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from tirl.view.server import make_app, resolve_roots  # noqa: E402


def write_records(path: Path, n: int, tokens: int, seed: int = 0) -> int:
    """n trajectory records (about what the trainer writes); returns the file's size."""
    rng = random.Random(seed)
    ids = list(range(1000, 1000 + tokens))
    mask = [1] * (tokens - 8) + [0] * 8
    lps = [round(-rng.random() * 2, 4) for _ in range(tokens)]
    ents = [round(rng.random() * 3, 4) for _ in range(tokens)]
    group = 16
    with path.open("w") as f:
        for k in range(n):
            step, pid, j = k // 512 + 1, f"p{(k // group) % 32}", k % group
            correct = (k * 7919) % 3 == 0
            status = "ok" if j % 5 else ("error" if j % 10 == 0 else "timeout")
            rec = {
                "prompt_ids": ids[:32], "response_ids": ids, "response_mask": mask, "logprobs": lps,
                "turns": [
                    {"text": f"Let me think about problem {pid}, sample {j}.\n<tool_call>...</tool_call>",
                     "tool_calls": [{"raw": "{}", "name": "python", "arguments": {"code": f"print({k} * 2)", "input": ""},
                                     "parse_error": None,
                                     "result": {"status": status, "stdout": f"{k * 2}\n", "stderr": "", "exit_code": 0,
                                                "exec_ms": 3.0, "queue_ms": 0.1, "truncated": False, "session_id": None,
                                                "session_reset": False, "reason": None, "extra": {}},
                                     "error_kind": None, "tool_ms": 3.5}],
                     "gen_ms": 100.0, "tool_ms": 3.5, "n_generated": tokens // 2, "n_tool_tokens": 8, "finish": "stop"},
                    {"text": f"So the answer is \\boxed{{{42 if correct else 41}}}. record-{k:07d}", "tool_calls": [],
                     "gen_ms": 50.0, "tool_ms": 0.0, "n_generated": tokens // 2 - 8, "n_tool_tokens": 0, "finish": "stop"}],
                "finish_reason": "answer" if j % 7 else "max_tokens", "text": "…", "problem_id": pid, "gold": "42",
                "meta": {"sample_index": j}, "reward": 1.0 if correct else 0.0,
                "grade_status": "correct" if correct else "incorrect",
                "step": step, "stage": "s1", "kept": j < group // 2, "advantage": 0.5 if correct else -0.5,
                "roc_penalty": 0.0, "policy_version": step - 1, "entropy": ents,
            }
            f.write(json.dumps(rec) + "\n")
    return path.stat().st_size


def baseline_load(path: Path) -> float:
    t = time.perf_counter()
    with path.open() as f:
        recs = [json.loads(line) for line in f]
    dt = time.perf_counter() - t
    assert recs
    del recs
    return dt


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def measure(run: Path, n: int) -> dict:
    client = TestClient(TestServer(make_app(resolve_roots(run))))
    await client.start_server()
    src = "a:trajectories/train.jsonl"

    async def get(path, **params):
        r = await client.get(path, params=params)
        assert r.status == 200, await r.text()
        return await r.json()

    try:
        rss0 = rss_mb()
        t = time.perf_counter()
        first = await get("/api/list", src=src, limit=50)
        open_s = time.perf_counter() - t
        assert len(first["rows"]) == 50, first
        count_s = None
        while True:
            d = await get("/api/list", src=src, limit=1)
            if count_s is None and not d["counting"]:
                count_s = time.perf_counter() - t
                assert d["records"] == n, d["records"]
            if d["summarized"] >= n:
                break
            await asyncio.sleep(0.05)
        summaries_s = time.perf_counter() - t

        async def timed(path, **params) -> float:
            t0 = time.perf_counter()
            await get(path, **params)
            return (time.perf_counter() - t0) * 1000

        rng = random.Random(1)
        page = [await timed("/api/list", src=src, limit=50, offset=rng.randrange(n - 50)) for _ in range(20)]
        filt = [await timed("/api/list", src=src, limit=50, correct="false", kept="true",
                            step=str(rng.randrange(1, n // 512)), error="any") for _ in range(20)]
        rec = [await timed("/api/record", src=src, i=rng.randrange(n)) for _ in range(20)]
        # the worst case: the only match is the last record, so the search follows its cursor
        # ("more matches") through the whole file, 256 MiB per request
        t = time.perf_counter()
        found, requests, after = [], 0, None
        while True:
            hit = await get("/api/list", src=src, q=f"record-{n - 1:07d}", limit=5,
                            **({"after": after} if after is not None else {}))
            requests += 1
            found += [r["i"] for r in hit["rows"]]
            after = hit["next_after"]
            if after is None:
                break
        search_s = time.perf_counter() - t
        return {"open_s": round(open_s, 3), "count_s": round(count_s, 3), "summaries_s": round(summaries_s, 3),
                "page_ms": round(statistics.median(page), 2), "page_filtered_ms": round(statistics.median(filt), 2),
                "record_ms": round(statistics.median(rec), 2), "search_s": round(search_s, 3),
                "search_found": found, "search_requests": requests,
                "rss_mb": round(rss_mb() - rss0, 1)}
    finally:
        await client.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="view_bench_") as tmp:
        run = Path(tmp) / "run"
        (run / "trajectories").mkdir(parents=True)
        (run / "metrics.jsonl").write_text('{"step": 1, "reward": 0.5}\n')
        path = run / "trajectories" / "train.jsonl"
        t = time.perf_counter()
        size = write_records(path, args.n, args.tokens)
        gen_s = time.perf_counter() - t
        os.posix_fadvise(os.open(path, os.O_RDONLY), 0, 0, os.POSIX_FADV_WILLNEED) if hasattr(os, "posix_fadvise") else None
        res = asyncio.run(measure(run, args.n))  # the app first: the baseline must not warm it more
        base = baseline_load(path)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"n": args.n, "tokens_per_record": args.tokens, "file_mb": round(size / 2**20, 1),
           "generate_s": round(gen_s, 1), **res, "baseline_load_s": round(base, 3),
           "ratio_baseline_over_open": round(base / res["open_s"], 1),
           "ratio_baseline_over_summaries": round(base / res["summaries_s"], 2),
           "process_peak_rss_mb_incl_baseline": round(peak_mb, 1),
           "targets": {"open_s": 2.0, "page_ms": 100.0},
           "meets_targets": res["open_s"] < 2.0 and res["page_ms"] < 100.0 and res["page_filtered_ms"] < 100.0}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

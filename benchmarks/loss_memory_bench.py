"""Loss-path memory benchmark: peak memory of log-probs (+ entropy) forward+backward, the
full-logits path the trainer uses today vs ``tirl.rl.logprobs.chunked_logprobs``, on CPU.

The "loss path" is what follows the decoder: hidden states ``[tokens, hidden]`` → output
projection ``[vocab, hidden]`` → fp32 log-softmax → gather (→ entropy) → a scalar →
backward to the hidden states and the projection. Hidden size is small (16) so the
``[tokens × vocab]`` terms dominate, as they do at scale.

How memory is measured: every case runs in a fresh subprocess with
``MALLOC_MMAP_THRESHOLD_=65536`` (glibc then serves every tensor from its own mmap and gives
it back on free, so the resident set follows torch's live CPU allocations). The inputs are
allocated first; ``peak = ru_maxrss after − RSS before`` the loss path (both from the kernel),
i.e. the extra resident memory at the high-water mark. A case whose loss path never rises
above the process's earlier high-water mark is reported as unmeasured, never as 0.

The full-logits path at 32,768 tokens × 151,936 needs ~20 GB per fp32 tensor and does not fit
this machine: it is measured at 512/1,024/2,048 tokens, fitted ``a + b·tokens`` by least
squares, and the 32K point is marked ``extrapolated``. The chunked path is measured at 32K.

Run: ``.venv/bin/python benchmarks/loss_memory_bench.py [--quick]``. About 2 CPU-minutes
(user) plus ~1.5 of kernel time zero-filling fresh mmaps; on a loaded shared machine the
wall time is longer (13 min at load 10). The 32K chunked point is most of it; ``--quick``
skips it (its peak equals the 2K point's within a few MiB). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VOCAB = 151_936
HIDDEN = 16
MIB = 1 << 20


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_case(path: str, tokens: int, vocab: int, hidden: int, entropy: bool, chunk: int | None) -> dict:
    """One measurement, in this process (called in a fresh subprocess)."""
    import torch

    from tirl.rl.logprobs import chunked_logprobs, default_chunk_size

    torch.manual_seed(0)
    torch.set_num_threads(2)
    h = (torch.randn(tokens, hidden) * 0.5).requires_grad_()
    w = (torch.randn(vocab, hidden) * 0.1).requires_grad_()
    t = torch.randint(0, vocab, (tokens,))
    coef = torch.randn(tokens)
    max_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rss_before = _rss_bytes()
    t0 = time.perf_counter()
    if path == "naive":  # exactly the trainer's _sequence_logprobs on these hidden states
        logits = (h @ w.t()).float()
        logp = torch.log_softmax(logits, dim=-1)
        lp = logp.gather(-1, t.unsqueeze(-1)).squeeze(-1)
        ent = -(logp.exp() * logp).sum(-1) if entropy else None
    else:
        lp, ent = chunked_logprobs(h, w, t, chunk_size=chunk, with_entropy=entropy)
    loss = (lp * coef).sum() + (0.01 * ent.sum() if ent is not None else 0.0)
    loss.backward()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    measured = peak > max_before
    return {
        "path": path, "tokens": tokens, "vocab": vocab, "hidden": hidden, "entropy": entropy,
        "chunk_tokens": (chunk or default_chunk_size(vocab)) if path == "chunked" else None,
        "peak_mib": round((peak - rss_before) / MIB, 1) if measured else None,
        "tokens_x_vocab_fp32_mib": round(tokens * vocab * 4 / MIB, 1),
        "seconds": round(seconds, 2), "measured": measured,
    }


def spawn(path: str, tokens: int, vocab: int, entropy: bool, chunk: int | None = None) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="2",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = [sys.executable, __file__, "--case", path, str(tokens), str(vocab), str(int(entropy)),
            str(chunk or 0)]
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"case {args[3:]} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b·x``."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", nargs=5, metavar=("PATH", "TOKENS", "VOCAB", "ENTROPY", "CHUNK"))
    ap.add_argument("--quick", action="store_true", help="skip the 32K-token chunked points")
    a = ap.parse_args()
    if a.case:
        path, tokens, vocab, ent, chunk = a.case
        print(json.dumps(run_case(path, int(tokens), int(vocab), HIDDEN, bool(int(ent)), int(chunk) or None)))
        return 0
    t_start = time.perf_counter()
    target = 32_768
    cases: list[dict] = []
    # 1. tokens sweep at the Qwen vocabulary: the full-logits path where it fits ...
    naive_tokens = [512, 1024, 2048]
    for ent in (True, False):
        for n in naive_tokens:
            cases.append(spawn("naive", n, VOCAB, ent))
    # ... the chunked path at 2,048 and (entropy, the larger case) at 32,768 tokens
    cases.append(spawn("chunked", 2048, VOCAB, False))
    cases.append(spawn("chunked", 2048, VOCAB, True))
    if not a.quick:
        cases.append(spawn("chunked", target, VOCAB, True))
    # 2. vocabulary sweep (default chunk = 2**26 / vocab tokens): chunked at 2,048 tokens,
    #    full logits at 512 tokens (both with entropy)
    for v in (32_000, 65_536, 262_144):
        cases.append(spawn("chunked", 2048, v, True))
    for v in (32_000, 65_536):
        cases.append(spawn("naive", 512, v, True))

    def pick(path, ent, vocab=VOCAB, tokens=None):
        return [c for c in cases if c["path"] == path and c["entropy"] == ent and c["vocab"] == vocab
                and (tokens is None or c["tokens"] == tokens) and c["measured"]]

    summary: dict = {}
    for ent in (True, False):
        nv = [c for c in pick("naive", ent) if c["tokens"] in naive_tokens]
        a0, b0 = fit_line([c["tokens"] for c in nv], [c["peak_mib"] for c in nv])
        naive_32k = a0 + b0 * target
        ch = pick("chunked", ent, tokens=target) or pick("chunked", ent, tokens=2048)
        chunked = ch[0]
        summary["with_entropy" if ent else "logprobs_only"] = {
            "tokens": target, "vocab": VOCAB,
            "naive_peak_mib": round(naive_32k), "naive_extrapolated": True,
            "naive_fit": {"a_mib": round(a0, 1), "b_mib_per_token": round(b0, 4),
                          "b_in_fp32_tokens_x_vocab_tensors": round(b0 * MIB / (VOCAB * 4), 2)},
            "chunked_peak_mib": chunked["peak_mib"], "chunked_measured_at_tokens": chunked["tokens"],
            "ratio_naive_over_chunked": round(naive_32k / chunked["peak_mib"], 1),
        }
    cv = sorted((c for c in cases if c["path"] == "chunked" and c["tokens"] == 2048 and c["entropy"]
                 and c["measured"]), key=lambda c: c["vocab"])
    summary["chunked_vocab_sweep_2048_tokens_mib"] = {str(c["vocab"]): c["peak_mib"] for c in cv}
    summary["chunked_vocab_spread_mib"] = round(max(c["peak_mib"] for c in cv) - min(c["peak_mib"] for c in cv), 1)
    nvv = sorted((c for c in cases if c["path"] == "naive" and c["tokens"] == 512 and c["entropy"]),
                 key=lambda c: c["vocab"])
    summary["naive_vocab_sweep_512_tokens_mib"] = {str(c["vocab"]): c["peak_mib"] for c in nvv}
    summary["chunked_tokens_sweep_with_entropy_mib"] = {
        str(c["tokens"]): c["peak_mib"] for c in pick("chunked", True)}
    print(json.dumps({
        "benchmark": "loss_memory", "hidden": HIDDEN, "threads": 2,
        "memory": "ru_maxrss − RSS before the loss path, fresh subprocess, MALLOC_MMAP_THRESHOLD_=65536",
        "summary": summary, "cases": cases,
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

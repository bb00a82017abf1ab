"""Synthetic rollout workloads for the dispatch simulator (vectorised numpy sampling).

A workload is one RL step: ``n_problems`` problems × ``rollouts_per_problem`` rollouts.
Each problem has a prompt (shared by its group) and a difficulty that scales the response
lengths of its whole group (hard problems make long groups: this is what makes a fixed
share per engine unbalanced). A rollout is a chain of turns: generate ``gen[j]`` tokens,
and, after every turn but the last, wait for a tool call (``latency[j]`` seconds) whose
response adds ``tool[j]`` tokens to the context. The response budget (generated + tool
tokens) is capped at ``max_response_tokens``; rollouts that hit it are the truncated ones.

The distributions are long-tailed (log-normal lengths and latencies, Poisson tool calls)
with defaults chosen from the paper's numbers (§3: ~2.75 tool calls per rollout at 0.3 s
mean latency; §4: mean length 1K→4K at an 8K cap). They are a model, not a trace.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tirl.dispatch.config import WorkloadConfig


@dataclass
class Workload:
    """Rollouts of one step, turn data in flat arrays (CSR layout via ``seg_start``)."""

    prompt: np.ndarray  # [n] prompt tokens
    group: np.ndarray  # [n] problem index (rollouts of a problem are contiguous)
    seg_start: np.ndarray  # [n + 1] offsets into the flat turn arrays
    gen: np.ndarray  # [turns] tokens generated in each turn
    tool: np.ndarray  # [turns] tool-response tokens after each turn (0 after the last)
    latency: np.ndarray  # [turns] tool latency after each turn in seconds (0 after the last)
    max_response_tokens: int

    @property
    def n(self) -> int:
        return len(self.prompt)

    def response_tokens(self) -> np.ndarray:
        """Per rollout: generated + tool tokens (≤ max_response_tokens)."""
        return np.add.reduceat(self.gen + self.tool, self.seg_start[:-1])

    def n_turns(self) -> np.ndarray:
        return np.diff(self.seg_start)


def sample_workload(cfg: WorkloadConfig, seed: int = 0) -> Workload:
    """Draw one step's rollouts from ``cfg`` (deterministic for a given seed)."""
    rng = np.random.default_rng(seed)
    p, r = cfg.n_problems, cfg.rollouts_per_problem
    n = p * r
    group = np.repeat(np.arange(p), r)
    prompt_p = np.clip(
        np.round(cfg.prompt_median_tokens * np.exp(cfg.prompt_sigma * rng.standard_normal(p))), 16, 16384
    ).astype(np.int64)
    difficulty = np.exp(cfg.difficulty_sigma * rng.standard_normal(p))
    length = cfg.response_median_tokens * difficulty[group] * np.exp(cfg.response_sigma * rng.standard_normal(n))
    length = np.clip(np.round(length), 16, cfg.max_response_tokens).astype(np.int64)

    # tool calls: Poisson, at most max_turns - 1, and at most one per 64 response tokens
    calls = rng.poisson(cfg.tool_calls_mean, n)
    calls = np.minimum(np.minimum(calls, cfg.max_turns - 1), length // 64).astype(np.int64)
    turns = calls + 1
    seg_start = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(turns, out=seg_start[1:])
    total = int(seg_start[-1])
    owner = np.repeat(np.arange(n), turns)
    last = np.zeros(total, dtype=bool)
    last[seg_start[1:] - 1] = True

    tool = np.round(cfg.tool_tokens_median * np.exp(cfg.tool_tokens_sigma * rng.standard_normal(total)))
    tool = np.clip(tool, 8, 4096)
    tool[last] = 0
    # tool output may take at most half of a rollout's budget: scale down where it would
    tool_sum = np.add.reduceat(tool, seg_start[:-1])
    scale = np.minimum(1.0, (length // 2) / np.maximum(tool_sum, 1))
    tool = np.floor(tool * scale[owner]).astype(np.int64)
    tool_sum = np.add.reduceat(tool, seg_start[:-1])
    gen_total = length - tool_sum  # ≥ length / 2 ≥ 32 * calls ≥ turns

    # split the generated tokens over the turns (Dirichlet(1) shares), every turn ≥ 1 token
    w = rng.exponential(1.0, total)
    share = w / np.add.reduceat(w, seg_start[:-1])[owner]
    spare = (gen_total - turns)[owner]
    gen = 1 + np.floor(share * spare).astype(np.int64)
    gen_sum = np.add.reduceat(gen, seg_start[:-1])
    gen[seg_start[1:] - 1] += gen_total - gen_sum

    mu = np.log(cfg.tool_latency_mean_s) - cfg.tool_latency_sigma**2 / 2  # mean of lognormal = mean
    latency = np.minimum(np.exp(mu + cfg.tool_latency_sigma * rng.standard_normal(total)), cfg.tool_timeout_s)
    latency[last] = 0.0
    return Workload(
        prompt=prompt_p[group],
        group=group,
        seg_start=seg_start,
        gen=gen,
        tool=tool,
        latency=latency,
        max_response_tokens=cfg.max_response_tokens,
    )

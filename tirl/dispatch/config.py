"""Configuration of rollout dispatch across inference engines (section ``[dispatch]``).

Also the typed configuration of the dispatch simulator (:class:`SimConfig`, used by
``tirl dispatch simulate`` and ``benchmarks/dispatch_bench.py``); it is not part of a run's
``Config`` because a simulation is not a run.
"""

from typing import Literal

from pydantic import Field

from tirl.schema import Section

Policy = Literal["static", "round_robin", "least_requests", "kv"]
POLICIES: tuple[str, ...] = ("static", "round_robin", "least_requests", "kv")


class DispatchConfig(Section):
    policy: Policy = Field(
        "kv", description="How trajectories are assigned to engines (kv = by free KV cache)."
    )
    engines: list[str] = Field(
        default_factory=list, description="Base URLs of OpenAI-compatible engines; empty = local."
    )
    kv_capacity_tokens: int = Field(
        0, ge=0, description="KV tokens per engine; 0 = discover from the engine's metrics."
    )
    group_affinity: bool = Field(False, description="Keep a GRPO group on one engine.")
    metrics_interval_s: float = Field(1.0, gt=0, description="How often engine metrics are read.")
    max_active_per_engine: int = Field(
        0, ge=0, description="Cap on trajectories in flight per engine (all policies); 0 = none."
    )
    max_retries: int = Field(
        2, ge=0, description="How many other engines a failed generate call is retried on."
    )
    fail_after: int = Field(
        3, ge=1, description="Consecutive failed metric reads after which an engine is drained."
    )
    kv_reserve_fraction: float = Field(
        1.0,
        gt=0,
        le=1,
        description="kv: book this fraction of prompt + max response per trajectory (1.0 = the "
        "paper's rule, never preempts; lower overcommits, see docs/dispatch.md).",
    )
    kv_booking: Literal["max", "forecast", "peak"] = Field(
        "peak",
        description="kv: book the whole budget (max, the paper's rule: never overflows); context "
        "so far + expected remaining length (forecast); or the most a trajectory is expected "
        "to hold at any future point, kv_peak_z standard deviations kept free (peak, the "
        "default). forecast and peak learn lengths from finished trajectories, book the whole "
        "budget until they have seen one, and re-book every turn.",
    )
    kv_peak_z: float = Field(
        2.5, ge=0, description="kv peak: standard deviations of an engine's summed bookings kept free."
    )
    kv_margin: float = Field(
        0.05, ge=0, lt=1, description="kv forecast/peak: fraction of each engine's KV capacity kept unbooked."
    )
    kv_order: Literal["fifo", "longest_first"] = Field(
        "longest_first",
        description="kv forecast/peak: which waiting trajectory is admitted next: in arrival order "
        "(fifo), or of the problem (lease group) its started trajectories show to be longest, "
        "spreading the first wave over all problems (longest_first); under peak booking "
        "longest_first also books each trajectory from its problem's lengths.",
    )
    kv_order_prior: float = Field(
        2.0, gt=0, description="kv longest_first: weight, in trajectories, of the global length "
        "distribution when a problem's score is estimated from its own trajectories.",
    )
    kv_spread_groups: bool = Field(
        True,
        description="kv: send a trajectory to the engine with the fewest trajectories of its group "
        "in flight before the one with the most free KV (a group's lengths are correlated; "
        "spreading them keeps each engine's total near its forecast). group_affinity wins over it.",
    )
    kv_bound: Literal["sum", "curve"] = Field(
        "sum",
        description="kv peak: bound an engine's future KV use by the sum of its trajectories' "
        "peaks (sum) or by the maximum over time of their summed expected usage (curve: "
        "trajectories at different stages do not peak together; contexts inside a call are "
        "estimated from the engine's measured decode rate).",
    )


class SimEngineConfig(Section):
    """One simulated inference engine (defaults: a 14B model on one 192 GB accelerator)."""

    kv_capacity_tokens: int = Field(
        480_000,
        ge=1,
        description="KV-cache size in tokens. Default: Qwen3-14B in bf16 (160 KiB/token) on a "
        "192 GB accelerator shared with a colocated trainer (~75 GB left for KV).",
    )
    max_num_seqs: int = Field(256, ge=1, description="Most sequences decoded in one batch.")
    prefill_tokens_per_s: float = Field(12_000.0, gt=0, description="Prefill throughput.")
    step_base_s: float = Field(
        0.010, ge=0, description="Decode step time at batch 1, excluding attention (weights read)."
    )
    step_per_seq_s: float = Field(6e-5, ge=0, description="Extra step time per sequence in batch.")
    step_per_kv_token_s: float = Field(
        3e-8, ge=0, description="Extra step time per resident KV token (attention reads)."
    )


class WorkloadConfig(Section):
    """One RL step's rollouts: a problem has a prompt and a difficulty shared by its group."""

    n_problems: int = Field(512, ge=1, description="Problems in the step.")
    rollouts_per_problem: int = Field(32, ge=1, description="Rollouts per problem (2G).")
    max_response_tokens: int = Field(8192, ge=16, description="Token budget (generated + tool).")
    response_median_tokens: float = Field(3000.0, gt=0, description="Median response length.")
    response_sigma: float = Field(0.6, ge=0, description="Log-normal sigma within a group.")
    difficulty_sigma: float = Field(
        0.5, ge=0, description="Log-normal sigma of a problem's length multiplier (whole group)."
    )
    prompt_median_tokens: float = Field(450.0, gt=0, description="Median prompt length (tokens).")
    prompt_sigma: float = Field(0.3, ge=0, description="Log-normal sigma of prompt length.")
    tool_calls_mean: float = Field(2.75, ge=0, description="Mean tool calls per rollout (Poisson).")
    max_turns: int = Field(10, ge=1, description="Turn limit per rollout.")
    tool_tokens_median: float = Field(60.0, gt=0, description="Median tool-response tokens.")
    tool_tokens_sigma: float = Field(0.8, ge=0, description="Log-normal sigma of tool-response tokens.")
    tool_latency_mean_s: float = Field(0.3, gt=0, description="Mean tool-call latency.")
    tool_latency_sigma: float = Field(1.0, ge=0, description="Log-normal sigma of tool latency.")
    tool_timeout_s: float = Field(10.0, gt=0, description="Tool latencies are capped here.")


class SimConfig(Section):
    """A whole simulation: K identical engines, one workload, one dispatch policy."""

    n_engines: int = Field(64, ge=1, description="Identical inference engines.")
    engine: SimEngineConfig = Field(default_factory=SimEngineConfig, description="The engines' speed and KV size.")
    workload: WorkloadConfig = Field(default_factory=WorkloadConfig, description="The step's rollouts.")
    policy: Policy = Field("kv", description="Dispatch policy to simulate.")
    group_affinity: bool = Field(False, description="kv: keep a group on one engine if it fits.")
    kv_reserve_fraction: float = Field(
        1.0,
        gt=0,
        le=1,
        description="kv: reserve this fraction of prompt + max response per rollout "
        "(1.0 = the paper's rule; below 1 overcommits and may preempt).",
    )
    kv_booking: Literal["max", "forecast", "peak"] = Field(
        "peak",
        description="kv: book prompt + max response (max, the paper's rule); context so far + "
        "expected remaining length (forecast); or the most a rollout is expected to hold at any "
        "future point, with kv_peak_z standard deviations kept free (peak, the default). "
        "Forecast and peak learn lengths from the previous step and re-book every turn.",
    )
    kv_margin: float = Field(
        0.05, ge=0, lt=1, description="kv forecast/peak: fraction of KV capacity kept unbooked."
    )
    kv_peak_z: float = Field(
        2.5, ge=0, description="kv peak: standard deviations of the summed bookings kept free."
    )
    kv_order: Literal["fifo", "longest_first"] = Field(
        "longest_first",
        description="kv forecast/peak: which waiting rollout goes next: in arrival order (fifo), "
        "or of the problem its started rollouts show to be longest, spreading the first wave "
        "over all problems (longest_first); under peak booking longest_first also books each "
        "rollout from its problem's lengths (the global ones scaled by the problem's score).",
    )
    kv_order_prior: float = Field(
        2.0, gt=0, description="kv longest_first: weight, in rollouts, of the global length distribution "
        "when a problem's score is estimated from its own rollouts.",
    )
    kv_bound: Literal["sum", "curve"] = Field(
        "sum",
        description="kv peak: bound an engine's future usage by the sum of its trajectories' peaks "
        "(sum) or by the maximum over time of their summed expected usage curves, states "
        "taken at every engine step chunk (curve).",
    )
    kv_spread_groups: bool = Field(
        True,
        description="kv: send a rollout to the engine with the fewest rollouts of its problem in "
        "flight before the one with the most free KV (a problem's lengths are correlated; "
        "spreading them keeps each engine's total near its forecast).",
    )
    kv_live_usage: bool = Field(
        True,
        description="kv: also gate on the engine's live KV usage (what the real dispatcher "
        "reads from /metrics), so an overcommitted engine stops taking rollouts when full; "
        "under peak booking, growth since the last booking is added to the bookings.",
    )
    max_active_per_engine: int = Field(
        0, ge=0, description="least_requests: cap per engine; 0 = the engine's max_num_seqs."
    )
    chunk_steps: int = Field(
        64, ge=1, description="Most decode steps simulated as one event (arrivals join between)."
    )
    seed: int = Field(0, ge=0, description="Seed of the workload and the simulation.")

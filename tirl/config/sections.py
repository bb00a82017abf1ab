"""The sections a run adds on top of the parts' own: ``[run]``, ``[rl]``, ``[sft]``,
``[[stages]]``, ``[eval]``, ``[serve]``, ``[train]``, ``[rollout]``.

The parts below (sandbox, reward, engines, dispatch, agent, data) each own their section in
``tirl/<part>/config.py``; the sections here belong to the applications that compose those
parts (training, evaluation, serving). Defaults are the paper's (rStar2-Agent §2.2.3, §4, §5)
unless a description says otherwise. Every field's description is its reference
documentation: ``--print-config`` prints it above the value.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tirl.agent.config import SamplingOverride
from tirl.schema import Section


class RunConfig(Section):
    name: str = Field("run", description="Run name; outputs go to <output_dir>/<name>/.")
    output_dir: str = Field("runs", description="Parent directory of run directories.")
    seed: int = Field(0, ge=0, description="Seed for every random choice of the run.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the policy runs; auto picks cuda when available."
    )
    threads: int = Field(0, ge=0, description="torch CPU threads (0 = torch's default).")
    resume: bool = Field(True, description="Resume from the run directory's last checkpoint.")
    trackers: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=list,
        description="Experiment trackers that mirror metrics.jsonl (the source of truth): "
        "tensorboard, wandb (offline without WANDB_API_KEY), mlflow (a local file store).",
    )
    allow_config_change: bool = Field(
        False,
        description="Resume even though settings other than step counts, logging and checkpoint "
        "cadence changed (the changes are recorded in config_changes.jsonl); false = refuse.",
    )
    resume_from: str | None = Field(
        None, description="Resume from this checkpoint name under checkpoints/ instead of the latest."
    )


class RLConfig(Section):
    algorithm: Literal["grpo_roc", "grpo"] = Field(
        "grpo_roc",
        description="grpo_roc = oversample oversample×G rollouts and keep G by Resample-on-Correct "
        "(§2.2.3); grpo = sample G and keep all.",
    )
    problems_per_step: int = Field(512, ge=1, description="Groups (problems) per training step, all ranks together.")
    group_size: int = Field(16, ge=2, description="G: rollouts kept per problem.")
    oversample: int = Field(2, ge=1, description="grpo_roc: rollouts sampled per problem = oversample × G.")
    roc_mode: Literal["weighted", "topk"] = Field(
        "weighted",
        description="How positives are kept: weighted = sampled with probability inversely "
        "proportional to the RoC penalty (the paper); topk = lowest penalty first (the release).",
    )
    min_pos: int = Field(2, ge=0, description="Positives kept per group where available.")
    min_neg: int = Field(2, ge=0, description="Negatives kept per group where available.")
    dynamic_sampling: bool = Field(
        True,
        description="Refill groups dropped for equal rewards with new problems; false = the "
        "batch shrinks (the release's behaviour).",
    )
    max_refill_rounds: int = Field(4, ge=0, description="Dynamic sampling's budget: a step starts at most problems_per_step × this "
                                   "replacement problems for groups without signal (what this many full refill rounds "
                                   "would start); each starts as soon as a group fails.")
    advantage: Literal["mean_std", "mean"] = Field(
        "mean_std", description="Group advantage: (r - mean) / std (Eq. 4) or r - mean."
    )
    clip_low: float = Field(0.2, ge=0, le=1, description="PPO clip below: ratio ≥ 1 - clip_low (Eq. 7).")
    clip_high: float = Field(0.28, ge=0, le=10, description="PPO clip above (clip-higher): ratio ≤ 1 + clip_high.")
    dual_clip: float = Field(
        3.0, ge=0, description="Dual-clip bound c for negative advantages (the release's); 0 disables."
    )
    entropy_coef: float = Field(
        0.0, ge=0,
        description="Entropy bonus weight (0 = none, the paper's); > 0 computes token entropy in chunks.",
    )
    lr: float = Field(1e-6, gt=0, le=1, description="AdamW learning rate, constant after warm-up.")
    warmup_steps: int = Field(20, ge=0, description="Linear learning-rate warm-up (optimizer steps).")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, ge=0, description="Gradient-norm clip; 0 = no clipping.")
    micro_batch_tokens: int = Field(
        16384, ge=16, description="Token budget of one forward/backward micro-batch (padded tokens)."
    )
    loss_chunk_tokens: int | None = Field(
        None, ge=1,
        description="Tokens whose logits exist at once in the loss (memory: chunk × vocab × 4 "
        "bytes), so no full [tokens × vocab] tensor is built; unset = 2**26 / vocab (256 MiB).",
    )
    rollout_batch: int = Field(
        64, ge=1, description="Sequences the in-process engine decodes together (LocalEngine max_batch)."
    )
    checkpoint_every: int = Field(10, ge=1, description="Write a checkpoint every N RL steps.")
    plot_every: int = Field(5, ge=1, description="Redraw plots/*.png every N RL steps.")
    save_trajectories: int = Field(
        64, ge=0,
        description="Trajectories per RL step written to trajectories/step_<n>.jsonl (kept and "
        "dropped, with reward, advantage and RoC penalty); 0 = none.",
    )


class TrainConfig(Section):
    """How the policy is trained across processes (see docs/distributed.md)."""

    strategy: Literal["auto", "single", "ddp", "fsdp"] = Field(
        "auto",
        description="single = one process; ddp = DistributedDataParallel (a full replica per rank, "
        "gradients all-reduced); fsdp = FSDP2 fully_shard per decoder layer and the root "
        "(parameters, gradients and AdamW state sharded); auto = ddp under torchrun with more "
        "than one rank, else single. With model.dtype = bfloat16 every strategy computes in "
        "bf16 and keeps fp32 master weights and optimizer state.",
    )


class RolloutConfig(Section):
    """Rollouts on inference servers (``[dispatch] engines``): weight sync and staleness.

    Unused when ``[dispatch] engines`` is empty (rollouts then run on the trainer's own
    weights in-process). See docs/disagg.md.
    """

    sync: Literal["disk", "nccl"] = Field(
        "disk",
        description="How new weights reach the servers: disk = safetensors (HF layout) under "
        "sync_dir + POST /update_weights_from_disk (tirl serve, SGLang); nccl = broadcast over a "
        "NCCL group (vLLM weight transfer / SGLang update_weights_from_distributed; GPU only, "
        "experimental).",
    )
    sync_every: int = Field(
        1, ge=1,
        description="Push weights after every N optimizer steps (1 = every step). Rollouts between "
        "pushes are up to N-1 versions old, so max_staleness must be at least N-1.",
    )
    sync_dir: str = Field(
        "", description="Where disk sync writes v<N>/ (a path every server can read); empty = "
        "<run dir>/weights."
    )
    keep_versions: int = Field(2, ge=1, description="disk: newest v<N>/ directories kept; older ones are deleted.")
    sync_timeout_s: float = Field(
        300.0, gt=0, description="Most seconds one server may take to load and confirm a version."
    )
    max_staleness: int = Field(
        0, ge=0,
        description="0 = synchronous (the paper): every server confirms the new weights before the "
        "next rollouts. k > 0 = rollouts for the next step run while the trainer updates; a "
        "trajectory more than k versions older than the trainer is dropped (counted).",
    )
    in_flight: Literal["finish", "pause"] = Field(
        "finish",
        description="Requests running when new weights arrive: finish = they complete on the old "
        "weights (new requests wait), pause = they are paused in place and continue on the new "
        "weights (the trajectory records the oldest version it used).",
    )
    is_cap: float = Field(
        2.0, ge=1.0,
        description="Truncated importance sampling cap C for stale rollouts: each token's loss is "
        "weighted by min(π_old/π_behaviour, C) (applied when max_staleness > 0).",
    )


class SFTConfig(Section):
    enabled: bool = Field(True, description="Run the non-reasoning SFT stage before RL.")
    data: str = Field(
        "tool_format",
        description="SFT material: tool_format (procedural tool-call format), tool_recovery "
        "(format with recoverable first mistakes), or a .jsonl file of examples.",
    )
    size: int = Field(2000, ge=1, description="SFT examples.")
    epochs: int = Field(3, ge=1, description="Passes over the SFT examples.")
    lr: float = Field(5e-6, gt=0, le=1, description="SFT learning rate (AdamW, after warm-up).")
    batch_size: int = Field(128, ge=1, description="Examples per SFT optimizer step.")
    max_length: int = Field(1024, ge=16, description="Examples are cut to this many tokens.")
    warmup_steps: int = Field(20, ge=0, description="Linear learning-rate warm-up (SFT steps).")


class StageConfig(Section):
    name: str = Field("stage1", description="Stage name (metrics, checkpoints, report).")
    steps: int = Field(300, ge=0, description="RL steps in this stage.")
    sampling: SamplingOverride = Field(
        default_factory=SamplingOverride,
        description="Sampling settings of this stage over [sampling] (e.g. max_tokens, max_turns).",
    )
    tasks: list[str] | None = Field(None, description="Override data.tasks for this stage (procedural data).")
    difficulty_filter_k: int = Field(
        0, ge=0, description="Before the stage: sample k per problem, drop those solved k/k (0 = off)."
    )
    reset_optimizer: bool = Field(False, description="Start the stage with fresh optimizer state.")


class EvalConfig(Section):
    benchmarks: list[str] = Field(
        default_factory=lambda: ["aime24"],
        description="Benchmark names (see `tirl eval --list-benchmarks`) or .jsonl/.parquet files.",
    )
    k: int = Field(16, ge=1, le=1024, description="Samples per problem (avg@k, pass@k, maj@k).")
    sampling: SamplingOverride = Field(
        default_factory=lambda: SamplingOverride(temperature=0.6, max_turns=30, max_tokens=30000),
        description="Evaluation sampling over [sampling]; the paper's protocol (§5.1) by default: "
        "temperature 0.6, 30 turns, 30,000 tokens.",
    )
    concurrency: int = Field(64, ge=1, description="Samples in flight at once.")
    bootstrap_samples: int = Field(1000, ge=0, description="Bootstrap resamples for the 95% intervals.")
    limit: int = Field(0, ge=0, description="Evaluate only the first N problems; 0 = all.")
    save_text: bool = Field(True, description="Keep each sample's response text in samples/<benchmark>.jsonl.")
    save_trajectories: bool = Field(
        False, description="Also write full trajectories (token ids, turns, tool results) to trajectories/."
    )
    max_infra_error_fraction: float = Field(
        0.1, ge=0, le=1,
        description="A run whose share of samples lost to infrastructure failures exceeds this "
        "exits non-zero (the servers or sandbox were not working).",
    )


class ServeConfig(Section):
    """`tirl serve`: a local model behind an OpenAI-compatible API."""

    host: str = Field("127.0.0.1", description="Address to listen on (loopback by default).")
    port: int = Field(8000, ge=1, le=65535, description="Port to listen on.")
    served_model_name: str | None = Field(
        None, description="The model name clients send (default: the model directory's name)."
    )
    max_batch: int = Field(64, ge=1, le=4096, description="Sequences decoded together.")
    max_seq_len: int = Field(0, ge=0, description="Context limit in tokens; 0 = the model's.")
    kv_budget_tokens: int | None = Field(
        None, ge=1,
        description="K/V positions the engine may allocate across all requests (a request that "
        "cannot fit gets 400); unset = half the free GPU memory, or on CPU a quarter of RAM up to 2 GiB.",
    )
    header_timeout_s: float = Field(30.0, gt=0, description="A client must send its request headers within this (s).")
    body_timeout_s: float = Field(30.0, gt=0, description="A client must send its request body within this (s); else 408.")

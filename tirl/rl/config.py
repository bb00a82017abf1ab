"""Configuration of GRPO-RoC, SFT and the multi-stage recipe (sections ``[rl]``, ``[sft]``,
``[[stages]]``). Defaults are the paper's (§2.2.3, §4) unless noted."""

from typing import Literal

from pydantic import Field

from tirl.schema import Section


class RLConfig(Section):
    algorithm: Literal["grpo_roc", "grpo"] = Field(
        "grpo_roc", description="grpo_roc = oversample 2G, resample on correct; grpo = plain G."
    )
    problems_per_step: int = Field(512, ge=1, description="Groups per training step.")
    group_size: int = Field(16, ge=2, description="G: rollouts kept per problem.")
    oversample: int = Field(2, ge=1, description="Rollouts sampled = oversample × G (RoC).")
    roc_mode: Literal["weighted", "topk"] = Field(
        "weighted", description="weighted = the paper's; topk = the release's lowest penalty."
    )
    min_pos: int = Field(2, ge=0, description="Positives kept where available.")
    min_neg: int = Field(2, ge=0, description="Negatives kept where available.")
    dynamic_sampling: bool = Field(
        True, description="Refill dropped (all-equal) groups with new problems; off = shrink."
    )
    max_refill_rounds: int = Field(4, ge=0)
    advantage: Literal["mean_std", "mean"] = Field("mean_std")
    clip_low: float = Field(0.2, ge=0, le=1)
    clip_high: float = Field(0.28, ge=0, le=10)
    dual_clip: float = Field(3.0, ge=0, description="0 disables dual-clip.")
    kl_coef: float = Field(0.0, ge=0)
    entropy_coef: float = Field(0.0, ge=0)
    lr: float = Field(1e-6, gt=0, le=1)
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, ge=0)
    micro_batch_tokens: int = Field(16384, ge=16, description="Token budget of a micro-batch.")
    rollout_batch: int = Field(
        64, ge=1, description="Sequences the in-process engine decodes together (LocalEngine max_batch)."
    )
    checkpoint_every: int = Field(10, ge=1)
    plot_every: int = Field(5, ge=1)


class SFTConfig(Section):
    enabled: bool = Field(True)
    data: str = Field("tool_format", description="SFT material: a generator name or JSONL file.")
    size: int = Field(2000, ge=1)
    epochs: int = Field(3, ge=1)
    lr: float = Field(5e-6, gt=0, le=1)
    batch_size: int = Field(128, ge=1)
    max_length: int = Field(1024, ge=16)
    warmup_steps: int = Field(20, ge=0)


class StageConfig(Section):
    name: str = Field("stage1")
    steps: int = Field(300, ge=0)
    max_tokens: int = Field(8192, ge=16, description="Response budget in this stage.")
    max_turns: int = Field(10, ge=1)
    tasks: list[str] | None = Field(None, description="Override data.tasks for this stage.")
    difficulty_filter_k: int = Field(
        0, ge=0, description="Before the stage: sample k per problem, drop those solved k/k."
    )
    reset_optimizer: bool = Field(False)

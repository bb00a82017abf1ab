"""Configuration of rollout dispatch across inference engines (section ``[dispatch]``)."""

from typing import Literal

from pydantic import Field

from tirl.schema import Section


class DispatchConfig(Section):
    policy: Literal["static", "round_robin", "least_requests", "kv"] = Field(
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

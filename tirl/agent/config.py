"""Configuration of the multi-turn rollout: how it is rendered (``[agent]``) and how it is
sampled (``[sampling]``).

:class:`SamplingConfig` is the one place for the rollout's sampling settings (token budget,
turn limit, temperature, top-p, top-k, stop strings). A run has one ``[sampling]`` section
(the training default); a stage (``[[stages]] sampling``) and evaluation (``[eval] sampling``)
may override any of its keys with a :class:`SamplingOverride`. ``tirl.config.resolve_sampling``
resolves the settings of a phase once, and the agent loop receives them as one object.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tirl.schema import Section


class AgentConfig(Section):
    format: Literal["rstar2", "chat_template"] = Field(
        "rstar2",
        description="rstar2 = the paper's ChatML prompt with <reason>/<answer> and hermes "
        "<tool_call>; chat_template = the model tokenizer's own template with tools.",
    )
    open_with_reason: bool = Field(
        True,
        description="rstar2 format: every assistant turn is opened with '<reason>' by the "
        "template (as the release does), so the model continues inside its reasoning.",
    )
    tool_response_max_chars: int = Field(
        2048, ge=64, description="Tool output longer than this keeps its head and tail (characters)."
    )
    tool_response_timing: bool = Field(
        True,
        description="Tool responses state the measured run time ('Execution succeeded in 0.01s.', "
        "the paper's format); false = 'Execution succeeded.', so a rollout does not depend on "
        "how fast the sandbox happened to be (needed for runs that repeat exactly).",
    )
    stateful_tool: bool = Field(
        False, description="One sandbox session per trajectory (globals persist across calls)."
    )
    concurrency: int = Field(256, ge=1, description="Trajectories in flight at once (per process).")
    system_prompt: str | None = Field(
        None,
        description="rstar2 format: None = the paper-style system prompt with the tool schema; "
        "'short' = a compact one for tiny models with short contexts; any other text is used as is.",
    )


class SamplingConfig(Section):
    """How a rollout is sampled: budget, turn limit and the token sampler."""

    max_tokens: int = Field(
        8192, ge=16,
        description="Token budget of a response, shared by generated and tool-response tokens (tokens).",
    )
    max_turns: int = Field(10, ge=1, le=1000, description="Assistant turns per trajectory (T in the paper).")
    max_tokens_per_turn: int = Field(
        0, ge=0, description="Cap on one turn's generation (tokens); 0 = the remaining budget."
    )
    temperature: float = Field(1.0, ge=0, le=5, description="Sampling temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass in (0, 1]; 1 = off.")
    top_k: int = Field(0, ge=0, description="Sample among the k most likely tokens; 0 = off.")
    stop: list[str] = Field(
        default_factory=list,
        description="Extra stop strings ending a turn (the end-of-turn token always does).",
    )

    def with_overrides(self, override: "SamplingOverride | None") -> "SamplingConfig":
        """These settings with every key the override sets replaced."""
        if override is None:
            return self
        return self.model_copy(update=override.model_dump(exclude_none=True))


class SamplingOverride(Section):
    """Keys of :class:`SamplingConfig` to change for one phase (unset keys are inherited)."""

    max_tokens: int | None = Field(None, ge=16, description="Token budget (generated + tool tokens).")
    max_turns: int | None = Field(None, ge=1, le=1000, description="Assistant turns per trajectory.")
    max_tokens_per_turn: int | None = Field(None, ge=0, description="Cap on one turn's generation; 0 = budget.")
    temperature: float | None = Field(None, ge=0, le=5, description="Sampling temperature.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling mass.")
    top_k: int | None = Field(None, ge=0, description="Top-k; 0 = off.")
    stop: list[str] | None = Field(None, description="Extra stop strings.")

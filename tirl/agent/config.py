"""Configuration of the multi-turn tool-integrated rollout (section ``[agent]``)."""

from typing import Literal

from pydantic import Field

from tirl.schema import Section


class AgentConfig(Section):
    format: Literal["rstar2", "chat_template"] = Field(
        "rstar2",
        description="rstar2 = the paper's ChatML prompt with <reason>/<answer> and hermes "
        "<tool_call>; chat_template = the model tokenizer's own template with tools.",
    )
    max_turns: int = Field(10, ge=1, le=1000, description="Assistant turns per trajectory (T).")
    max_tokens: int = Field(
        8192, ge=16, description="Token budget of a response, shared by generated and tool tokens."
    )
    max_tokens_per_turn: int = Field(0, ge=0, description="Cap on one turn's generation; 0 = budget.")
    temperature: float = Field(1.0, ge=0, le=5, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 = no top-k.")
    tool_response_max_chars: int = Field(
        2048, ge=64, description="Tool output longer than this keeps its head and tail."
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
    concurrency: int = Field(256, ge=1, description="Trajectories in flight at once.")
    system_prompt: str | None = Field(
        None,
        description="rstar2 format: None = the paper-style system prompt with the tool schema; "
        "'short' = a compact one for tiny models with short contexts; any other text is used as is.",
    )

"""Configuration of evaluation (section ``[eval]``); defaults are the paper's (§5.1)."""

from pydantic import Field

from tirl.schema import Section


class EvalConfig(Section):
    benchmarks: list[str] = Field(default_factory=lambda: ["aime24"])
    k: int = Field(16, ge=1, le=1024, description="Samples per problem.")
    temperature: float = Field(0.6, ge=0, le=5)
    top_p: float = Field(1.0, gt=0, le=1)
    max_turns: int = Field(30, ge=1)
    max_tokens: int = Field(30000, ge=16)
    concurrency: int = Field(64, ge=1)
    bootstrap_samples: int = Field(1000, ge=0, description="Resamples for the 95% intervals.")
    limit: int = Field(0, ge=0, description="Evaluate only the first N problems; 0 = all.")
    save_text: bool = Field(True, description="Keep each sample's response text in samples/<benchmark>.jsonl.")
    save_trajectories: bool = Field(
        False, description="Also write full trajectories (token ids, turns, tool results) to trajectories/."
    )
    tokenizer: str | None = Field(
        None,
        description="Tokenizer (HF directory or cached hub id) used to render prompts when the "
        "model is behind a server; default: model.path.",
    )

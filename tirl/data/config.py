"""Configuration of problem sources (section ``[data]``)."""

from typing import Literal

from pydantic import Field

from tirl.schema import Section


class DataConfig(Section):
    source: Literal["procedural", "reasoning_gym", "file", "benchmark"] = Field(
        "procedural",
        description="procedural = tirl's own generators; reasoning_gym = reasoning-gym "
        "datasets; file = JSONL/Parquet at `path`; benchmark = a named benchmark.",
    )
    tasks: list[str] = Field(
        default_factory=lambda: ["multiply"], description="Generator or dataset names to mix."
    )
    path: str | None = Field(None, description="JSONL/Parquet file or benchmark name.")
    problem_field: str = Field("problem", description="Field holding the problem text in a data file.")
    answer_field: str = Field("answer", description="Field holding the reference answer in a data file.")
    integer_answers_only: bool = Field(True, description="RL data: keep integer answers (§2.2.1).")
    size: int = Field(10000, ge=1, description="Training problems (generated, or taken from the file).")
    held_out_size: int = Field(100, ge=0, description="Problems kept apart for evaluation.")
    data_dir: str | None = Field(
        None,
        description="Folder where benchmark names resolve to <name>.jsonl; unset = the files "
        "shipped with tirl (tirl/data/files, provenance in its README.md).",
    )

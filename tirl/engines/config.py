"""Configuration of the policy model and where it generates (section ``[model]``)."""

from typing import Literal

from pydantic import Field

from tirl.schema import Section


class ModelConfig(Section):
    path: str = Field(
        "scratch",
        description="A Hugging Face model directory or .gguf file; 'scratch' = a small "
        "transformer initialised from random weights with a tokenizer built locally.",
    )
    gguf_file: str | None = Field(None, description="GGUF file name inside `path`, if any.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32")
    base_url: str | None = Field(
        None, description="Generate through an OpenAI-compatible server instead of in-process."
    )
    served_name: str | None = Field(None, description="Model name on that server.")
    # the from-scratch architecture (used when path = 'scratch')
    vocab_size: int = Field(512, ge=64, le=262144)
    hidden_size: int = Field(128, ge=16)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    max_position: int = Field(1024, ge=64)
    gradient_checkpointing: bool = Field(False)

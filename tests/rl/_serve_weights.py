"""`tirl serve`'s app + the weight routes, as a process:
``python -m tests.rl._serve_weights DIR PORT [MAX_BATCH]``.

What the lead's one-line hook (``add_weight_routes`` in tirl/engines/server.py's app factory)
gives `python -m tirl.cli serve`; the disaggregated-training tests start this until then.
"""

import asyncio
import sys


async def main(path: str, port: int, max_batch: int = 8) -> None:
    import torch
    from aiohttp import web

    from tirl.engines.config import ModelConfig
    from tirl.engines.local import LocalEngine
    from tirl.engines.models import load_model
    from tirl.engines.server import ModelServer
    from tirl.engines.weights_api import add_weight_routes

    torch.set_num_threads(1)
    model, tok = load_model(ModelConfig(path=path))
    model.eval()
    engine = LocalEngine(model, tok, max_batch=max_batch, max_seq_len=512, threads=1)
    app = ModelServer(engine, tok, "tiny").app()
    add_weight_routes(app, engine, tok, model_path=path)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"serving on {port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), *(int(a) for a in sys.argv[3:4])))

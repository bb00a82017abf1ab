"""Helpers for tests that run `tirl serve` in-process on a loopback port."""

import asyncio
import contextlib

from tirl.engines.scripted import ScriptedEngine
from tirl.engines.server import serve
from tirl.engines.launch import free_port


@contextlib.asynccontextmanager
async def running(engine, tok, name="tiny", **kw):
    """``serve(...)`` as a task for the block; yields the base URL (no ``/v1``)."""
    port = free_port()
    ready = asyncio.Event()
    task = asyncio.create_task(serve(engine, tok, name, "127.0.0.1", port, ready, **kw))
    await asyncio.wait_for(ready.wait(), 30)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def serve_app(app):
    """An aiohttp application (a fake server) on a free loopback port for the block; yields
    the base URL (no ``/v1``)."""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


class Recording(ScriptedEngine):
    """A scripted engine with the stats `tirl serve` reads; records each call's ``stop``."""

    max_seq_len = 4096

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.stops: list[list] = []

    async def generate(self, prompt_ids, max_new_tokens, temperature=1.0, stop=None, **kw):
        self.stops.append(list(stop or []))
        return await super().generate(prompt_ids, max_new_tokens, temperature, stop, **kw)

    def stats(self):
        return {"running": 0, "waiting": 0, "kv_used_tokens": 0, "kv_capacity_tokens": 4096, "kv_usage": 0.0}

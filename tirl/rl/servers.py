"""The trainer's side of rollouts on inference servers (``[dispatch] engines``, docs/disagg.md).

:class:`ServerWeights` keeps the servers on the trainer's weights: after an optimizer update
(every ``rollout.sync_every``) rank 0 pushes the weights through the sync backend
(:mod:`tirl.engines.weight_sync`: ``disk`` or ``nccl``) and every server confirms the new
version; a server that fails to load is taken out of the dispatcher's rotation, with an
ERROR log line and a metric — never left serving stale weights unnoticed.

The trainer numbers its weights by the optimizer updates applied (a step without groups to
learn from changes nothing); staleness is counted in these versions. A resume restarts the
count at the global step (at least every earlier label, so labels only grow). Set
:attr:`ServerWeights.dirty` after an update.

What it does not do: decide staleness or importance weights (:mod:`tirl.rl.staleness`), or
run the rollouts themselves (the builder's dispatcher does).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, ContextManager

from tirl.rl import distributed as D

log = logging.getLogger("tirl.train")


class ServerWeights:
    """Weight versions and their push to the rollout servers (see the module docstring)."""

    def __init__(self, cfg, urls: list[str], run_root: Path, dispatcher: Any, *, main: bool):
        from tirl.engines.weight_sync import make_weight_sync

        self.every = cfg.rollout.sync_every
        self.backend = make_weight_sync(cfg.rollout, cfg.rollout.sync_dir or run_root / "weights")
        self.urls = list(urls)
        self.dispatcher = dispatcher
        self.main = main
        self.served: int | None = None  # the version the servers confirmed last
        self.dirty = True  # the servers do not have the trainer's current weights
        self.failed = 0
        self._rec: dict[str, Any] = {}

    async def push(self, model: Any, version: int, step: int, full_weights: Callable[[], ContextManager]) -> None:
        """Push the current weights (``version``) if the servers lack them (every rank calls
        it; rank 0 writes and waits for every server's confirmation). ``full_weights``: the
        context in which ``model`` holds full parameters (FSDP gathers them; collective)."""
        if not self.dirty or (self.served is not None and step % self.every):
            return
        with full_weights():
            if self.main:
                res = await self.backend.push(model, version, list(self.urls))
                for url, why in res.failed.items():
                    self.retire(url, f"weight version {version} not loaded: {why}")
                self._rec["sync_seconds"] = self._rec.get("sync_seconds", 0.0) + res.seconds
                self._rec["sync_write_seconds"] = self._rec.get("sync_write_seconds", 0.0) + res.write_seconds
                self._rec["sync_bytes"] = res.bytes
                self._rec["sync_s_per_gb"] = res.seconds_per_gb
        D.barrier()
        self.dirty = False
        self.served = version

    def retire(self, url: str, why: str) -> None:
        """Take ``url`` out of rotation for good (it cannot serve the current weights)."""
        from tirl.dispatch.dispatcher import Dispatcher
        from tirl.engines.weight_sync import server_root

        self.failed += 1
        if url in self.urls:
            self.urls.remove(url)
        log.error("inference server %s is out of rotation: %s", url, why)
        if isinstance(self.dispatcher, Dispatcher):
            for k, u in enumerate(self.dispatcher.metrics_urls):
                if u and server_root(u) == server_root(url):
                    self.dispatcher.retire(k, why)

    def metrics(self) -> dict[str, Any]:
        """This step's sync numbers (then reset): seconds, bytes, s/GB, servers, version."""
        rec = {**self._rec, "sync_failed_servers": self.failed, "servers_in_rotation": len(self.urls),
               "policy_version": self.served}
        self._rec = {}
        return rec

    async def aclose(self) -> None:
        await self.backend.aclose()

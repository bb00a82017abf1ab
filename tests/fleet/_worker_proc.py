"""A fleet worker process for tests: ``python _worker_proc.py URL SLOTS WID VIS MAXDEL fake|real``."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.fleet.fake import FakeExecutor, FakeGrader  # noqa: E402
from tirl.sandbox.fleet import FleetWorker, WorkerOptions  # noqa: E402


async def main(url: str, slots: int, wid: str, vis: float, maxdel: int, mode: str) -> None:
    ex = FakeExecutor(slots) if mode == "fake" else None
    gr = FakeGrader() if mode == "fake" else None
    w = FleetWorker(url, slots, executor=ex, grader=gr, worker_id=wid,
                    options=WorkerOptions(visibility_timeout_s=vis, max_deliveries=maxdel,
                                          worker_ttl_s=3.0, heartbeat_s=0.4, drain_timeout_s=5))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, w.stop)
    await w.run()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    a = sys.argv[1:]
    asyncio.run(main(a[0], int(a[1]), a[2], float(a[3]), int(a[4]), a[5]))

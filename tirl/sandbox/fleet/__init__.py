"""The sandbox fleet: tool execution across many machines over Redis (issue 9).

``RedisBackend(url)`` — the gateway side (``tirl sandbox serve --redis URL`` serves it over
HTTP; a trainer may use it directly: it has ``run``, ``run_batch``, ``close_session`` and
``grade``). ``run_worker(url, slots)`` — a worker node (``tirl sandbox worker``).
The protocol (Redis Streams with a consumer group, and why) is in ``protocol.py``; the
user guide is ``docs/fleet.md``.
"""

from tirl.sandbox.fleet.gateway import FleetError, FleetStats, RedisBackend
from tirl.sandbox.fleet.worker import FleetWorker, WorkerOptions, run_worker

__all__ = ["FleetError", "FleetStats", "FleetWorker", "RedisBackend", "WorkerOptions", "run_worker"]

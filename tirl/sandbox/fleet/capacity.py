"""Capacity model of the fleet: how many worker nodes (and gateways, and Redis instances)
serve a step's tool calls within a mean-latency target, from measured per-call CPU costs.

Pure arithmetic over numbers from ``benchmarks/fleet_bench.py`` (``cpu_ms_per_call``);
docs/fleet.md explains the two regimes. What it does not model: network latency between
machines (add it to ``transit_ms``), memory, or code that waits rather than computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class FleetPlan:
    calls_per_s: float  # throughput the fleet must sustain
    worker_cores: float
    worker_nodes: int
    gateway_cores: float
    redis_instances: int


def required_rate(calls: int, latency_s: float, exec_s: float, window_s: float = 0.0,
                  utilization: float = 0.7) -> float:
    """Calls/s the fleet must be able to serve.

    ``window_s`` = 0 (burst): all ``calls`` arrive at once and are served first-in
    first-out at rate μ, so the mean wait is calls / (2μ); mean latency = that + exec_s must
    stay ≤ ``latency_s``. ``window_s`` > 0 (steady): calls arrive evenly over the window and
    the fleet runs at ``utilization`` of its capacity, where queueing adds little."""
    if latency_s <= exec_s:
        raise ValueError(f"latency target {latency_s}s is not above the execution time {exec_s}s")
    if window_s > 0:
        return calls / window_s / utilization
    return calls / (2.0 * (latency_s - exec_s))


def plan(calls: int, latency_s: float, worker_cpu_ms: float, *, exec_s: float | None = None,
         window_s: float = 0.0, cores_per_node: int = 16, gateway_cpu_ms: float = 0.1,
         redis_cpu_ms: float = 0.02, redis_utilization: float = 0.5,
         utilization: float = 0.7) -> FleetPlan:
    """Worker nodes, gateway cores and Redis instances for ``calls`` per step.

    ``worker_cpu_ms``: CPU per call on a worker node (sandbox + fleet loop), the mean over
    the workload mix. ``exec_s`` defaults to that CPU time (code that computes)."""
    if worker_cpu_ms <= 0 or cores_per_node < 1:
        raise ValueError("worker_cpu_ms must be > 0 and cores_per_node >= 1")
    ex = worker_cpu_ms / 1000 if exec_s is None else exec_s
    rate = required_rate(calls, latency_s, ex, window_s, utilization)
    cores = rate * worker_cpu_ms / 1000
    return FleetPlan(
        calls_per_s=rate, worker_cores=cores, worker_nodes=max(1, math.ceil(cores / cores_per_node)),
        gateway_cores=rate * gateway_cpu_ms / 1000,
        redis_instances=max(1, math.ceil(rate * redis_cpu_ms / 1000 / redis_utilization)))

"""Counters and latency histograms of the sandbox, rendered as Prometheus text.

Plain in-memory numbers updated by the supervisor (single event loop, no locks). Not a
Prometheus client library: just enough of the text format for ``GET /metrics``.
"""

from __future__ import annotations

import bisect
from collections import Counter

from tirl.sandbox.types import EXEC_STATUSES

BUCKETS_MS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = BUCKETS_MS):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def render(self, name: str, help_: str) -> list[str]:
        lines = [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
        acc = 0
        for b, c in zip(self.buckets, self.counts):
            acc += c
            lines.append(f'{name}_bucket{{le="{b:g}"}} {acc}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {self.n}')
        lines.append(f"{name}_sum {self.total:.3f}")
        lines.append(f"{name}_count {self.n}")
        return lines


class SandboxMetrics:
    def __init__(self) -> None:
        self.results: Counter[str] = Counter({s: 0 for s in EXEC_STATUSES})
        self.reasons: Counter[str] = Counter()
        self.exec_ms = Histogram()
        self.queue_ms = Histogram()
        self.zygote_restarts = 0
        self.cancelled: Counter[str] = Counter({"queued": 0, "running": 0})  # callers gone

    def record(self, status: str, exec_ms: float, queue_ms: float, reason: str | None) -> None:
        self.results[status] += 1
        if reason:
            self.reasons[reason] += 1
        self.exec_ms.observe(exec_ms)
        self.queue_ms.observe(queue_ms)

    def render(self, gauges: dict[str, float]) -> str:
        lines: list[str] = []
        for name, value in gauges.items():
            lines += [f"# TYPE tirl_sandbox_{name} gauge", f"tirl_sandbox_{name} {value:g}"]
        lines += ["# HELP tirl_sandbox_results_total Results by status.",
                  "# TYPE tirl_sandbox_results_total counter"]
        lines += [f'tirl_sandbox_results_total{{status="{s}"}} {n}' for s, n in self.results.items()]
        lines += ["# TYPE tirl_sandbox_reasons_total counter"]
        lines += [f'tirl_sandbox_reasons_total{{reason="{r}"}} {n}' for r, n in self.reasons.items()]
        lines += ["# HELP tirl_sandbox_cancelled_total Calls cancelled because their caller went "
                  "away, by where they were (queued: never started; running: child killed).",
                  "# TYPE tirl_sandbox_cancelled_total counter"]
        lines += [f'tirl_sandbox_cancelled_total{{stage="{k}"}} {n}' for k, n in self.cancelled.items()]
        lines += ["# TYPE tirl_sandbox_zygote_restarts_total counter",
                  f"tirl_sandbox_zygote_restarts_total {self.zygote_restarts}"]
        lines += self.exec_ms.render("tirl_sandbox_exec_ms", "Execution time per call (ms).")
        lines += self.queue_ms.render("tirl_sandbox_queue_ms", "Time waiting for a slot (ms).")
        return "\n".join(lines) + "\n"

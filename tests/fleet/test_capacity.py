"""The capacity model against hand-worked numbers (docs/fleet.md)."""

import pytest

from tirl.sandbox.fleet.capacity import plan, required_rate


def test_burst_rate_from_mean_wait():
    # 45,000 calls at once, mean latency 0.3 s, 30 ms execution: wait budget 0.27 s =
    # N / (2 mu)  ->  mu = 45000 / 0.54 = 83,333 calls/s
    assert required_rate(45_000, 0.3, 0.03) == pytest.approx(83_333.33, rel=1e-4)


def test_steady_rate_over_a_window_at_70_percent():
    assert required_rate(45_000, 0.3, 0.01, window_s=600) == pytest.approx(75 / 0.7)


def test_plan_burst_10ms_calls_on_16_core_nodes():
    p = plan(45_000, 0.3, 10.0, exec_s=0.03, cores_per_node=16, gateway_cpu_ms=0.08,
             redis_cpu_ms=0.02, redis_utilization=0.5)
    # 83,333/s x 10 ms = 833.3 cores -> 53 nodes; gateways 6.7 cores; redis 1.67 cores at
    # 50 % each -> 4 instances
    assert p.worker_cores == pytest.approx(833.33, rel=1e-4)
    assert p.worker_nodes == 53
    assert p.gateway_cores == pytest.approx(6.667, rel=1e-3)
    assert p.redis_instances == 4


def test_plan_steady_fits_one_node():
    p = plan(45_000, 0.3, 10.0, window_s=120, cores_per_node=16)
    assert p.worker_cores == pytest.approx(45_000 / 120 / 0.7 * 0.01)
    assert p.worker_nodes == 1


def test_latency_below_execution_is_refused():
    with pytest.raises(ValueError, match="latency target"):
        required_rate(10, 0.01, 0.05)

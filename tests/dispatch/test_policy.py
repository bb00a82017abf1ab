"""The dispatch policies as pure functions."""

import pytest

from tirl.dispatch.policy import EngineLoad, choose_engine, static_engine


def loads(*free, cap=100):
    return [EngineLoad(capacity_tokens=cap, reserved_tokens=cap - f) for f in free]


def test_kv_picks_the_engine_with_most_free_tokens_that_fits():
    assert choose_engine("kv", loads(10, 60, 40), 30) == 1
    assert choose_engine("kv", loads(10, 20), 30) is None  # nobody has room: wait


def test_kv_prefers_group_engine_when_it_fits_else_falls_back():
    ls = loads(50, 90)
    assert choose_engine("kv", ls, 40, preferred=0) == 0
    assert choose_engine("kv", ls, 60, preferred=0) == 1


def test_kv_live_usage_lowers_free_and_queueing_engines_get_nothing_new():
    ls = loads(80, 70)
    ls[0].live_used_tokens = 90  # fuller than our bookings say (another client)
    assert ls[0].free_tokens() == 10
    assert choose_engine("kv", ls, 30) == 1
    ls[1].live_waiting, ls[1].active = 4, 1
    assert choose_engine("kv", ls, 5) == 0


def test_kv_unknown_capacity_balances_by_bookings():
    ls = [EngineLoad(reserved_tokens=500), EngineLoad(reserved_tokens=100)]
    assert choose_engine("kv", ls, 10**9) in (0, 1)
    ls[0].active, ls[1].active = 3, 1
    assert choose_engine("kv", ls, 10) in (0, 1)


def test_unhealthy_engines_are_never_chosen():
    for policy in ("static", "round_robin", "least_requests", "kv"):
        ls = loads(100, 100, 100)
        ls[0].healthy = False
        ls[2].healthy = False
        for n in range(6):
            assert choose_engine(policy, ls, 10, ordinal=n, group_index=n) == 1


def test_static_and_round_robin_ignore_load():
    ls = loads(0, 100)
    assert choose_engine("static", ls, 50, group_index=2) == 0
    assert [choose_engine("round_robin", ls, 50, ordinal=n) for n in range(4)] == [0, 1, 0, 1]
    assert static_engine(130, 64) == 2


def test_least_requests_respects_its_cap():
    ls = [EngineLoad(active=3, max_active=3), EngineLoad(active=1, max_active=3), EngineLoad(active=2, max_active=3)]
    assert choose_engine("least_requests", ls, 0) == 1
    ls[1].active = 3
    ls[2].active = 3
    assert choose_engine("least_requests", ls, 0) is None


def test_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="'fastest'"):
        choose_engine("fastest", loads(1), 1)
    with pytest.raises(ValueError, match="at least one engine"):
        choose_engine("kv", [], 1)

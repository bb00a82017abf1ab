"""The dispatch policies as pure functions."""

import math

import pytest

from tirl.dispatch.policy import EngineLoad, LongestFirstOrder, choose_engine, static_engine


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


def test_kv_unknown_capacity_is_not_infinitely_free():
    from tirl.dispatch.policy import UNKNOWN_CAPACITY_TOKENS

    known = EngineLoad(capacity_tokens=4 * UNKNOWN_CAPACITY_TOKENS)
    unknown = EngineLoad(reserved_tokens=1000, active=1)
    # before: the unknown engine counted as infinitely free and got every lease first
    assert unknown.free_tokens() == UNKNOWN_CAPACITY_TOKENS - 1000
    assert choose_engine("kv", [unknown, known], 2000) == 1
    # it is booked against the assumed capacity: full means wait (or another engine)
    unknown.reserved_tokens, unknown.active = UNKNOWN_CAPACITY_TOKENS - 100, 3
    assert choose_engine("kv", [unknown], 200) is None
    assert choose_engine("kv", [unknown, known], 200) == 1
    # once metrics (or the config) give the capacity, the real number rules
    unknown.capacity_tokens = 10 * UNKNOWN_CAPACITY_TOKENS
    assert choose_engine("kv", [unknown, known], 200) == 0


def test_kv_an_idle_engine_of_unknown_capacity_takes_any_single_lease():
    # progress: a lease larger than the assumed capacity is never stuck behind a guess
    from tirl.dispatch.policy import UNKNOWN_CAPACITY_TOKENS

    idle = EngineLoad()
    assert choose_engine("kv", [idle], 3 * UNKNOWN_CAPACITY_TOKENS) == 0
    idle.active, idle.reserved_tokens = 1, 3 * UNKNOWN_CAPACITY_TOKENS
    assert choose_engine("kv", [idle], 10) is None


def test_kv_keeps_safety_sd_standard_deviations_of_the_bookings_free():
    # cap 1000, booked 600 with a standard deviation of 100: two sd kept free leaves 200
    ld = EngineLoad(capacity_tokens=1000, reserved_tokens=600, reserved_var=100.0**2, active=3, safety_sd=2.0)
    assert ld.free_tokens() == 200
    assert choose_engine("kv", [ld], 250) is None
    assert choose_engine("kv", [ld], 150) == 0
    # the same bookings taken as sure (variance 0) leave 400
    sure = EngineLoad(capacity_tokens=1000, reserved_tokens=600, active=3, safety_sd=2.0)
    assert sure.free_tokens() == 400
    assert choose_engine("kv", [ld, sure], 150) == 1  # more free room wins


def test_kv_growth_since_the_last_booking_is_read_from_live_usage():
    # bookings 500 made when the trajectories held 300 tokens; live usage says 450 now:
    # they grew 150 since, which the bookings do not know about
    ld = EngineLoad(capacity_tokens=1000, reserved_tokens=500, context_tokens=300, live_used_tokens=450, active=4)
    assert ld.free_tokens() == 1000 - 500 - 150
    assert choose_engine("kv", [ld], 360) is None
    assert choose_engine("kv", [ld], 340) == 0
    # without the context, live usage only caps: max(500, 450) used
    untracked = EngineLoad(capacity_tokens=1000, reserved_tokens=500, live_used_tokens=450, active=4)
    assert untracked.free_tokens() == 500
    # live usage below the booked context (a cache evicted, a turn queued): no credit, no debit
    ld.live_used_tokens = 200
    assert ld.free_tokens() == 500


def test_longest_first_spreads_the_first_wave_then_prefers_long_problems():
    o = LongestFirstOrder(prior_weight=2.0)
    for item in ("a1", "a2", "b1", "b2", "c1", "c2"):
        o.add(item, item[0])
    assert len(o) == 6
    # no evidence: the problem with the fewest started goes first → one of each, in order seen
    for expected in ("a1", "b1", "c1"):
        assert o.head() == expected
        o.start(expected)
    assert o.head() == "a2"  # all started once, all score 0: first seen
    # b's rollout has outlived its peers (evidence +1): score 1 / (1 started + 2 prior) = 1/3
    o.update("b", 0.0, 1.0)
    assert o.score("b") == pytest.approx(1 / 3)
    # a's finished short (−0.5): score −1/6, below c's 0
    o.update("a", 0.0, -0.5)
    assert o.score("a") == pytest.approx(-1 / 6)
    assert o.head() == "b2"
    o.start("b2", 0.3)  # starting adds its evidence and a started rollout: (1 + 0.3) / (2 + 2)
    assert o.score("b") == pytest.approx(1.3 / 4)
    assert o.head() == "c2"
    o.remove("c2")  # cancelled while waiting
    assert o.head() == "a2" and o.waiting("a2") and not o.waiting("c2")
    o.start("a2")
    assert o.head() is None and len(o) == 0


def test_longest_first_rejects_a_non_positive_prior():
    with pytest.raises(ValueError, match="prior_weight must be > 0, got 0"):
        LongestFirstOrder(0)


def test_kv_curve_bound_admits_what_the_sum_of_peaks_refuses():
    from tirl.dispatch.forecast import LengthForecast

    f = LengthForecast(400, [100, 200, 300, 400], resolution=100)
    ld = EngineLoad(capacity_tokens=285)
    old = f.future([150], [100])  # one trajectory at context 150: curve 150, 166.7, 116.7, 0, 0
    new = f.future([50], [0])  # a fresh one: 50, 112.5, 125, 87.5, 0 (its peak 125)
    # by peaks: 166.7 + 125 = 291.7 > 285 → no room
    ld.reserved_tokens = math.ceil(f.peak(150, 100)[0])
    assert choose_engine("kv", [ld], math.ceil(f.peak(50, 0)[0])) is None
    # by the curve: they peak at different times, the sum peaks at 279.2 ≤ 285 → admitted
    ld.set_future(*old)
    assert ld.future_used == pytest.approx(166.67, abs=0.01)
    assert ld.free_tokens() == pytest.approx(285 - 166.67, abs=0.01)
    assert choose_engine("kv", [ld], 125, reserve_future=new) == 0
    ld.add_future(*new)
    assert ld.future_used == pytest.approx(279.17, abs=0.01)
    assert choose_engine("kv", [ld], 125, reserve_future=new) is None  # a second one does not fit
    # safety_sd counts where the curve peaks: sd of the sum at Δ = 100 is sqrt(4218.75 + 150²·2/9) ≈ 86.6
    ld = EngineLoad(capacity_tokens=285, safety_sd=0.1)
    ld.set_future(*old)
    ld.add_future(*new)
    assert ld.future_used == pytest.approx(279.17 + 0.1 * math.sqrt(150**2 * 0.75 * 0.25 + 250**2 * 2 / 9), abs=0.01)
    # the most free engine that fits wins; engines without a curve use the scalar test
    full, empty = EngineLoad(capacity_tokens=285), EngineLoad(capacity_tokens=285)
    full.set_future(*old)
    empty.set_future(*f.future([], []))
    assert choose_engine("kv", [full, empty], 125, reserve_future=new) == 1
    assert choose_engine("kv", [EngineLoad(capacity_tokens=100)], 125, reserve_future=new) is None


def test_kv_spreads_a_group_before_it_packs_by_free_tokens():
    ls = loads(50, 40, 30)  # free 50, 40, 30 of 100
    assert choose_engine("kv", ls, 10) == 0
    # engine 0 already runs 2 of the group, engine 1 one, engine 2 none: fewest siblings first
    assert choose_engine("kv", ls, 10, siblings=[2, 1, 0]) == 2
    assert choose_engine("kv", ls, 10, siblings=[1, 1, 2]) == 0  # a tie: most free
    assert choose_engine("kv", ls, 35, siblings=[2, 1, 0]) == 1  # engine 2 lacks room
    assert choose_engine("kv", ls, 10, siblings=[2, 1, 0], preferred=0) == 0  # affinity wins
    with pytest.raises(ValueError, match="siblings has 2 entries for 3 engines"):
        choose_engine("kv", ls, 10, siblings=[0, 0])


def test_kv_an_idle_engine_takes_a_lease_inside_its_margin_rather_than_never():
    """capacity 1000 with 5% headroom books at most 950 alongside others; a 980-token lease
    must still run on an engine with nothing else (it used to wait forever)."""
    idle = EngineLoad(capacity_tokens=1000, headroom=0.05)
    assert idle.free_tokens() == 950
    assert choose_engine("kv", [idle], 980) == 0
    assert choose_engine("kv", [idle], 1001) is None  # more than it holds: never (refused up front)
    busy = EngineLoad(capacity_tokens=1000, headroom=0.05, active=1, reserved_tokens=10)
    assert choose_engine("kv", [busy], 980) is None  # beside another lease the margin holds

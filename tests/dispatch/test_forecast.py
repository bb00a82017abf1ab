"""The remaining-length forecast behind ``kv`` forecast booking (hand-worked numbers)."""

import asyncio
import math

import pytest

from tirl.dispatch import Dispatcher
from tirl.dispatch.dispatcher import _Lease
from tirl.dispatch.forecast import LengthForecast
from tirl.engines.base import Completion


def test_expected_remaining_is_the_mean_of_longer_lengths_minus_progress():
    f = LengthForecast(1000, [100, 200, 300, 900], resolution=1)
    assert f.remaining(0) == 375  # mean of all four
    assert f.remaining(150) == 317  # (200 + 300 + 900) / 3 - 150 = 316.67, rounded up
    assert f.remaining(300) == 900 - 300
    assert f.remaining(950) == 1  # past everything seen: a little more
    assert f.remaining(1000) == 0  # at the cap: nothing
    assert f.booking(50, 150) == 50 + 150 + 317


def test_no_observations_means_the_safe_maximum():
    f = LengthForecast(8192)
    assert f.remaining(0) == 8192 and f.remaining(1000) == 8192 - 1000


def test_observe_updates_the_forecast():
    f = LengthForecast(1000, resolution=1)
    for x in (100, 100, 100):
        f.observe(x)
    assert f.remaining(0) == 100
    f.observe(700)
    assert f.remaining(0) == 250


class Echo:
    """Returns ``n`` tokens per call, ``n`` set by the test."""

    def __init__(self):
        self.n = 10

    async def generate(self, prompt_ids, max_new_tokens, temperature=1.0, stop=None, *, top_p=1.0, top_k=0):
        await asyncio.sleep(0)
        return Completion([1] * self.n, None, "stop")


async def test_dispatcher_forecast_books_less_then_rebooks_each_turn_and_releases_all():
    e = Echo()
    d = Dispatcher([e], "kv", capacity_tokens=10_000, booking="forecast")
    # no history yet: the first lease books its whole budget
    async with d.lease("a", 2000) as eng:
        assert d.loads[0].reserved_tokens == 2000
        await eng.generate([0] * 100, 500)
    # it ended at 110 tokens of context: that is now the forecast
    async with d.lease("b", 2000) as eng:
        assert d.loads[0].reserved_tokens == 110
        e.n = 400
        await eng.generate([0] * 100, 500)  # now at 500: longer than anything seen
        assert 500 <= d.loads[0].reserved_tokens <= 2000
    assert d.loads[0].reserved_tokens == 0
    # a lease never books more than it asked for
    e.n = 5000
    async with d.lease("c", 1000) as eng:
        await eng.generate([0] * 10, 5000)
        assert d.loads[0].reserved_tokens == 1000
    assert d.loads[0].reserved_tokens == 0 and d.loads[0].active == 0


def test_peak_booking_by_hand():
    # lengths 100, 200, 300, 400 on a grid of 100: P(L > x) = 1, 3/4, 2/4, 1/4, 0 at x = 0..400
    f = LengthForecast(400, [100, 200, 300, 400], resolution=100)
    # a fresh trajectory with 50 tokens of prompt holds (50 + x) · P(L > x) in expectation:
    # 112.5, 125, 87.5, 0 at x = 100..400 → its peak is 125 at x = 200, where P = 1/2
    mean, var = f.peak(50, 0)
    assert mean == 125 and var == 250**2 * 0.25
    # after 100 tokens (context 150) only 200, 300, 400 remain: P = 2/3, 1/3, 0 at 200, 300, 400
    mean, var = f.peak(150, 100)
    assert mean == pytest.approx(250 * 2 / 3) and var == pytest.approx(250**2 * (2 / 3) * (1 / 3))
    # after 150 (context 200): 250·2/3 and 350·1/3 are below what it holds now → its context, sure
    assert f.peak(200, 150) == (200, 0.0)
    # the peak is far below the expected final size the forecast booking books
    assert f.peak(50, 0)[0] < f.booking(50, 0) == 50 + 250


def test_peak_booking_without_history_or_past_everything_seen():
    assert LengthForecast(8192).peak(100, 1000) == (100 + 7192, 0.0)  # the safe rule
    f = LengthForecast(1000, [100], resolution=10)
    assert f.peak(600, 500) == (610, 0.0)  # longer than anything seen: a little more
    f.observe(900)
    assert f.peak(600, 500)[0] > 600  # a longer length seen: the forecast learns it


async def test_dispatcher_peak_books_expected_peak_with_variance_and_releases_all():
    e = Echo()
    d = Dispatcher([e], "kv", capacity_tokens=10_000, booking="peak", safety_sd=2.0, margin=0.05)
    ld = d.loads[0]
    assert (ld.headroom, ld.safety_sd, ld.context_tokens) == (0.05, 2.0, 0)
    async with d.lease("a", 2000) as eng:  # no history: the whole budget
        assert ld.reserved_tokens == 2000 and ld.reserved_var == 0
        await eng.generate([0] * 100, 500)
    # one length seen (110): a fresh lease is expected to hold at most 64 tokens (grid 64)
    async with d.lease("b", 2000) as eng:
        assert ld.reserved_tokens == 64
        e.n = 400
        await eng.generate([0] * 100, 500)  # at 500: past everything seen → 500 + 64
        assert ld.reserved_tokens == 564 and ld.context_tokens == 500
        assert ld.free_tokens() == 10_000 * 0.95 - 564
    assert (ld.reserved_tokens, ld.reserved_var, ld.context_tokens, ld.active) == (0, 0, 0, 0)
    # lengths 110 and 500: P(L > x) = 1/2 for 128 ≤ x < 500, so the peak is 448 · 1/2 = 224
    # with variance 448² · 1/4; two standard deviations (2 · 224) are kept free
    async with d.lease("c", 2000):
        assert ld.reserved_tokens == 224 and ld.reserved_var == 448**2 / 4
        assert ld.free_tokens() == 10_000 * 0.95 - 224 - 2 * 224
    assert (ld.reserved_tokens, ld.reserved_var, ld.context_tokens) == (0, 0, 0)


def test_dispatch_config_default_is_kv_with_peak_booking():
    from tirl.dispatch.config import DispatchConfig

    cfg = DispatchConfig()
    assert (cfg.policy, cfg.kv_booking, cfg.kv_peak_z, cfg.kv_margin) == ("kv", "peak", 2.5, 0.05)
    assert (cfg.kv_order, cfg.kv_order_prior) == ("longest_first", 2.0)
    d = Dispatcher.from_config(cfg, [Echo(), Echo()])
    assert d.booking == "peak" and all(ld.safety_sd == 2.5 and ld.headroom == 0.05 for ld in d.loads)
    assert d._order is not None and d._order.prior_weight == 2.0
    assert d.spread_groups and (cfg.kv_spread_groups, cfg.kv_bound) == (True, "sum")
    assert Dispatcher([Echo()], "kv", booking="max", order="longest_first")._order is None  # needs lengths


def test_log_evidence_by_hand():
    # lengths 100, 200, 400, 800 (grid of 100): E[log L] = log 100 + 1.5 log 2
    f = LengthForecast(1000, [100, 200, 400, 800], resolution=100)
    ln2 = math.log(2)
    assert f.log_evidence(400, finished=True) == pytest.approx(0.5 * ln2)  # log 400 − mean
    assert f.log_evidence(100, finished=True) == pytest.approx(-1.5 * ln2)
    assert f.log_evidence(0, finished=False) == 0.0  # a fresh rollout says nothing
    # running past 200: it is one of 400, 800 → E[log L | L > 200] = log 100 + 2.5 log 2
    assert f.log_evidence(250, finished=False) == pytest.approx(ln2)
    # running past everything seen: at least its length so far
    assert f.log_evidence(900, finished=False) == pytest.approx(math.log(900) - math.log(100) - 1.5 * ln2)
    assert LengthForecast(1000).log_evidence(500, finished=True) == 0.0  # no history: no evidence


def test_peak_booking_of_a_longer_or_shorter_problem_by_hand():
    f = LengthForecast(400, [100, 200, 300, 400], resolution=100)
    assert f.peak(50, 0, scale=1.0) == f.peak(50, 0)
    # scale 2: lengths 200, 400, 400, 400 (capped): P(L > x) = 1, 1, 3/4, 3/4, 0 at x = 0..400
    # (50 + x) · P = 150, 187.5, 262.5, 0 at x = 100..400 → peak 262.5 at x = 300, P = 3/4
    mean, var = f.peak(50, 0, scale=2.0)
    assert mean == pytest.approx(262.5) and var == pytest.approx(350**2 * 0.75 * 0.25)
    # scale 1/2: lengths 50, 100, 150, 200: P = 1, 1/2, 0 at x = 0, 100, 200 → (50 + 100) / 2
    assert f.peak(50, 0, scale=0.5) == (pytest.approx(75.0), pytest.approx(150**2 * 0.25))
    with pytest.raises(ValueError, match="scale"):
        f.peak(50, 0, scale=0.0)


class Full:
    """Returns ``max_new_tokens`` tokens per call."""

    async def generate(self, prompt_ids, max_new_tokens, temperature=1.0, stop=None, *, top_p=1.0, top_k=0):
        await asyncio.sleep(0)
        return Completion([1] * max_new_tokens, None, "length")


async def test_dispatcher_longest_first_admits_the_long_problems_waiting_rollout_first():
    # lengths seen: 100 and 1000 tokens of context; one engine of 2000, no margins
    d = Dispatcher([Full()], "kv", capacity_tokens=2000, booking="peak", safety_sd=0.0, margin=0.0,
                   order="longest_first")
    d.forecast.observe(100)
    d.forecast.observe(1000)
    started: list[str] = []
    release = asyncio.Event()

    async def run(key, group, n_tokens):
        async with d.lease(key, 1500, group=group) as eng:
            started.append(key)
            await eng.generate([0] * 10, n_tokens)
            await release.wait()

    # in flight: problem "easy" at 100 tokens of context, "hard" at 900
    first = [asyncio.create_task(run("easy-0", "easy", 90)), asyncio.create_task(run("hard-0", "hard", 890))]
    await asyncio.sleep(0.01)
    assert started == ["easy-0", "hard-0"]
    # evidence: easy-0 has outlived nothing (0); hard-0 has outlived the 100 seen:
    # E[log L | L > 896] − E[log L] = log 1000 − (log 100 + log 1000) / 2 = ½ log 10, over 1 + prior 2
    assert d._order.score("easy") == 0.0
    assert d._order.score("hard") == pytest.approx(0.5 * math.log(10) / 3)
    # their peak bookings (hard-0's from its problem's lengths, scaled up) leave no room
    # for a fresh one: new leases wait
    waiting = [asyncio.create_task(run("easy-1", "easy", 90)), asyncio.create_task(run("hard-1", "hard", 890))]
    await asyncio.sleep(0.01)
    assert started == ["easy-0", "hard-0"]  # both wait; easy-1 arrived first
    release.set()
    await asyncio.gather(*first, *waiting)
    assert started[2:] == ["hard-1", "easy-1"]  # the long problem's rollout went ahead
    assert d.loads[0].reserved_tokens == 0 and d.loads[0].active == 0 and d.loads[0].reserved_var == 0


def test_future_usage_curve_by_hand():
    # lengths 100, 200, 300, 400 on a grid of 100: P(L > x) = 1, 3/4, 2/4, 1/4, 0 at x = 0..400
    f = LengthForecast(400, [100, 200, 300, 400], resolution=100)
    # a fresh trajectory of context 50 holds (50 + Δ) · P(L > Δ) at Δ = 0, 100, ..., 400
    mean, var = f.future([50], [0])
    assert mean.tolist() == [50, 112.5, 125, 87.5, 0]
    assert var.tolist() == [0, 150**2 * 0.75 * 0.25, 250**2 * 0.25, 350**2 * 0.25 * 0.75, 0]
    assert (mean.max(), var[mean.argmax()]) == f.peak(50, 0)  # its maximum is its peak booking
    # with one at context 150 that has run 100 (P = 2/3, 1/3, 0 of running 100, 200, 300 more):
    # 150, 166.7, 116.7, 0 → the two peak at different times: max of the sum 279.2 < 125 + 166.7
    mean, _ = f.future([50, 150], [0, 100])
    assert mean.tolist() == pytest.approx([200, 112.5 + 250 * 2 / 3, 125 + 350 / 3, 87.5, 0])
    assert mean.max() == pytest.approx(279.1667, abs=1e-3)
    assert mean.max() < f.peak(50, 0)[0] + f.peak(150, 100)[0] == pytest.approx(291.6667, abs=1e-3)
    # a problem twice as long (lengths 200, 400, 400, 400): as peak() with scale 2
    mean, var = f.future([50], [0], [2.0])
    assert mean.max() == pytest.approx(f.peak(50, 0, 2.0)[0]) and var[mean.argmax()] == pytest.approx(f.peak(50, 0, 2.0)[1])
    # past everything seen it is expected to end within one grid step; nothing seen: to the cap
    assert f.future([500], [450])[0].tolist() == [500, 600, 0, 0, 0]
    assert LengthForecast(400, resolution=100).future([50], [100])[0].tolist() == [50, 150, 250, 350, 0]


async def test_dispatcher_curve_bound_tracks_its_leases_and_estimates_calls_in_flight():
    d = Dispatcher([Full()], "kv", capacity_tokens=10_000, booking="peak", safety_sd=0.0, margin=0.0,
                   bound="curve")
    d.forecast = LengthForecast(400, [100, 200, 300, 400], resolution=100)  # lengths as in the tests above
    async with d.lease("a", 400) as a:
        await a.generate([0] * 50, 100)  # a now holds 150
        async with d.lease("b", 400):
            # a: 150, 166.7, 116.7, 0 (it has run 150); b, fresh: 0, 75, 100, 75 → the sum peaks at 241.7
            assert d.loads[0].future_used == pytest.approx(250 * 2 / 3 + 75, abs=0.01)
            assert len(d._on_engine[0]) == 2
    assert not d._on_engine[0] and d.loads[0].active == 0
    # inside a call: the call's prompt + the engine's rate × (time in the call + the refresh interval)
    lease = _Lease("c", 2000, None)
    now = 100.0
    lease.ctx, lease.call_since, lease.call_ctx, lease.call_max = 300, now - 1.0, 500, 1000
    d._rate[0] = 100.0
    assert d._lease_context_now(lease, 0, now) == 500 + math.ceil(100 * (1.0 + 0.25))
    d._rate[0] = 0.0  # rate not measured yet: the call may have produced all of max_new_tokens
    assert d._lease_context_now(lease, 0, now) == 1500
    lease.call_since = None  # between calls: its context after the last one
    assert d._lease_context_now(lease, 0, now) == 300
    # metrics say the engine holds more than the estimates add up to: the rest goes to the
    # leases inside a call, by time in the call (here 3 s and 1 s: 600 → 450 and 150)
    d.forecast = LengthForecast(4000, [1000, 2000], resolution=100)
    x, y, z = _Lease("x", 4000, None), _Lease("y", 4000, None), _Lease("z", 4000, None)
    for lz, since in ((x, now - 3.0), (y, now - 1.0)):
        lz.call_since, lz.call_ctx, lz.call_max = since, 1000, 3000
    z.ctx = 500
    d._on_engine[0] = {x, y, z}
    d._rate[0] = 0.0001  # ~0 tokens so far by the rate: estimates 1001, 1001, 500 = 2502
    d.loads[0].live_used_tokens = 3102
    d._refresh_future(0, now)
    expect = d.forecast.future([1001 + 450, 1001 + 150, 500], [1001 + 450, 1001 + 150, 500])
    assert d.loads[0].future_mean.tolist() == pytest.approx(expect[0].tolist())


async def test_dispatcher_spreads_a_group_over_engines_and_forgets_it_on_release():
    d = Dispatcher([Echo(), Echo()], "kv", capacity_tokens=[10_000, 5_000], spread_groups=True)
    async with d.lease("a", 1000, group="p"), d.lease("b", 1000, group="p"), d.lease("c", 1000, group="q"):
        # a: the most free (0); b, same group: the other engine despite less room; c: most free again
        assert [ld.active for ld in d.loads] == [2, 1]
        assert d._siblings == {("p", 0): 1, ("p", 1): 1, ("q", 0): 1}
    assert d._siblings == {}
    assert Dispatcher([Echo()], "round_robin", spread_groups=True).spread_groups is False  # kv only


async def test_longest_first_a_woken_waiter_that_lost_its_place_passes_the_wake_on():
    # before any lengths are seen, peak booking books the whole reservation: one lease fills it
    d = Dispatcher([Echo()], "kv", capacity_tokens=2000, booking="peak", order="longest_first")
    first = d.lease("l0", 1500)
    await first.__aenter__()
    started: list[str] = []

    async def wait_for(key, group):
        async with d.lease(key, 1500, group=group):
            started.append(key)
            await asyncio.sleep(0.05)

    a = asyncio.create_task(wait_for("a", "p"))
    b = asyncio.create_task(wait_for("b", "q"))
    await asyncio.sleep(0.01)
    assert started == [] and d._order.head() is not None
    await first.__aexit__(None, None, None)  # room: the head ("a") is woken ...
    d._order.update("q", 0.0, 5.0)  # ... but before it runs, problem q turns out long: b leads
    await asyncio.wait_for(asyncio.gather(a, b), timeout=2.0)
    assert started == ["b", "a"]

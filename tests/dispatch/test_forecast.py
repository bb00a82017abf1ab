"""The remaining-length forecast behind ``kv`` forecast booking (hand-worked numbers)."""

import asyncio

import pytest

from tirl.dispatch import Dispatcher
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
    assert (cfg.policy, cfg.kv_booking, cfg.kv_peak_z, cfg.kv_margin) == ("kv", "peak", 2.0, 0.05)
    d = Dispatcher.from_config(cfg, [Echo(), Echo()])
    assert d.booking == "peak" and all(ld.safety_sd == 2.0 and ld.headroom == 0.05 for ld in d.loads)

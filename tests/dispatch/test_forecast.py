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


def test_usage_forecast_curve_by_hand():
    from tirl.dispatch.forecast import UsageForecast

    # lengths 100, 200, 300, 400; grid of 5 points over 400 tokens → Δ = 0, 100, 200, 300, 400
    f = UsageForecast([100, 200, 300, 400], 400, points=5, resolution=1)
    assert f.delta.tolist() == [0, 100, 200, 300, 400]
    mean, var = f.curves(context=50, response_so_far=0)
    # P(L > Δ): 1, 3/4, 2/4, 1/4, 0 → expected tokens (50 + Δ) · P
    assert mean.tolist() == [50.0, 150 * 0.75, 250 * 0.5, 350 * 0.25, 0.0]
    assert var[0] == 0 and var[2] == 250**2 * 0.25
    # after 150 tokens only 200, 300, 400 remain possible: P(L > 150 + Δ | L > 150) = 1, 2/3, 1/3, 0, 0
    mean, _ = f.curves(context=200, response_so_far=150)
    assert mean.tolist() == pytest.approx([200.0, 300 * 2 / 3, 400 / 3, 0.0, 0.0])

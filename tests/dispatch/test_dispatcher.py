"""The Dispatcher: capacity, release on every path, stickiness, affinity, metrics, failover."""

import asyncio

import pytest

from tirl.dispatch import Dispatcher, NoEngineAvailable
from tirl.dispatch.metrics import EngineMetrics
from tirl.engines.base import Completion


class FakeEngine:
    """Answers with its own index; records calls; can be told to fail or to block."""

    def __init__(self, idx, delay=0.0):
        self.idx = idx
        self.delay = delay
        self.calls = []
        self.dead = False
        self.gate: asyncio.Event | None = None

    async def generate(self, prompt_ids, max_new_tokens, temperature=1.0, stop=None, *, top_p=1.0, top_k=0):
        self.calls.append(list(prompt_ids))
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.dead:
            raise ConnectionRefusedError(f"engine {self.idx} is down")
        return Completion([self.idx] * min(max_new_tokens, 2), None, "stop")


class CapacityWatch:
    """Checks the reservation invariant at every step of a run."""

    def __init__(self, d):
        self.d = d
        self.peak = [0] * len(d.loads)

    def check(self):
        for i, ld in enumerate(self.d.loads):
            assert ld.reserved_tokens <= ld.capacity_tokens, (i, ld)
            assert ld.reserved_tokens >= 0 and ld.active >= 0
            self.peak[i] = max(self.peak[i], ld.reserved_tokens)


async def test_kv_capacity_never_exceeded_and_everything_released():
    engines = [FakeEngine(i, delay=0.001) for i in range(3)]
    d = Dispatcher(engines, "kv", capacity_tokens=1000)
    watch = CapacityWatch(d)

    async def traj(j):
        reserve = 100 + (j * 37) % 400
        async with d.lease(f"t{j}", reserve) as eng:
            watch.check()
            seen = set()
            for turn in range(3):
                c = await eng.generate([j, turn], 4)
                seen.add(c.token_ids[0])
                watch.check()
            assert len(seen) == 1  # sticky: every turn on one engine
            assert seen == {eng.engine_index}

    await asyncio.gather(*(traj(j) for j in range(60)))
    assert all(ld.reserved_tokens == 0 and ld.active == 0 for ld in d.loads)
    assert max(watch.peak) > 500  # it really filled engines up
    assert d.stats.leases == 60 and d.stats.waited > 0


async def test_release_on_exception_and_on_cancel_while_running_or_waiting():
    e = FakeEngine(0)
    d = Dispatcher([e], "kv", capacity_tokens=100)
    with pytest.raises(RuntimeError, match="boom"):
        async with d.lease("a", 80):
            raise RuntimeError("boom")
    assert d.loads[0].reserved_tokens == 0

    e.gate = asyncio.Event()
    entered = asyncio.Event()

    async def holder():
        async with d.lease("b", 80) as eng:
            entered.set()
            await eng.generate([1], 1)  # blocks on the gate

    h = asyncio.create_task(holder())
    await entered.wait()
    waiter = asyncio.create_task(d.generate([2], 50))  # 51 tokens: must wait behind b
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not waiter.done() and len(d._waiters) == 1
    waiter.cancel()  # cancelled while waiting for admission
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert len(d._waiters) == 0 and d.loads[0].reserved_tokens == 80
    h.cancel()  # cancelled while generating
    with pytest.raises(asyncio.CancelledError):
        await h
    assert d.loads[0].reserved_tokens == 0 and d.loads[0].active == 0
    e.gate = None
    assert (await d.generate([3], 5)).token_ids == [0, 0]  # the engine is usable again


async def test_waiters_are_admitted_in_order_when_room_frees():
    d = Dispatcher([FakeEngine(0)], "kv", capacity_tokens=100)
    order = []
    release = asyncio.Event()

    async def first():
        async with d.lease("big", 90):
            await release.wait()

    async def later(name, size):
        async with d.lease(name, size):
            order.append(name)

    t0 = asyncio.create_task(first())
    await asyncio.sleep(0)
    tasks = [asyncio.create_task(later(f"w{i}", 30)) for i in range(3)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert order == []  # all wait, nobody polls its way in
    release.set()
    await asyncio.gather(t0, *tasks)
    assert order == ["w0", "w1", "w2"]


async def test_impossible_reservation_fails_fast_with_the_numbers():
    d = Dispatcher([FakeEngine(0), FakeEngine(1)], "kv", capacity_tokens=[100, 200])
    with pytest.raises(ValueError, match="250.*200"):
        async with d.lease("x", 250):
            pass
    assert not d._waiters


async def test_group_affinity_keeps_a_group_together_when_it_fits():
    d = Dispatcher([FakeEngine(i, delay=0.01) for i in range(4)], "kv", capacity_tokens=1000, group_affinity=True)
    where = {}

    async def traj(g, j):
        async with d.lease(f"{g}-{j}", 100, group=g) as eng:
            where.setdefault(g, set()).add(eng.engine_index)
            await eng.generate([j], 1)

    await asyncio.gather(*(traj(g, j) for g in range(3) for j in range(8)))
    assert all(len(v) == 1 for v in where.values())
    assert len({next(iter(v)) for v in where.values()}) == 3  # groups spread over engines


async def test_round_robin_and_static_spread_by_trajectory_and_by_group():
    d = Dispatcher([FakeEngine(i) for i in range(3)], "round_robin")
    got = [(await d.generate([i], 1)).token_ids[0] for i in range(6)]
    assert got == [0, 1, 2, 0, 1, 2]
    s = Dispatcher([FakeEngine(i) for i in range(3)], "static")
    got = [(await s.generate([i], 1, group=f"p{i // 2}")).token_ids[0] for i in range(6)]
    assert got == [0, 0, 1, 1, 2, 2]


async def test_live_metrics_correct_the_choice_and_discover_capacity():
    d = Dispatcher([FakeEngine(0), FakeEngine(1)], "kv")
    d.apply_metrics(0, EngineMetrics(source="vllm", kv_used_fraction=0.9, kv_capacity_tokens=1000, running=5, waiting=0))
    d.apply_metrics(1, EngineMetrics(source="vllm", kv_used_fraction=0.1, kv_capacity_tokens=1000, running=1, waiting=0))
    assert [ld.capacity_tokens for ld in d.loads] == [1000, 1000]
    async with d.lease("a", 200) as eng:
        assert eng.engine_index == 1  # engine 0 is busy with someone else's work
    d.apply_metrics(1, EngineMetrics(source="vllm", kv_used_fraction=0.95, waiting=3))
    with pytest.raises(ValueError, match="1000"):
        async with d.lease("b", 5000):
            pass


async def test_dead_engine_is_drained_and_the_call_retried_elsewhere():
    engines = [FakeEngine(i) for i in range(3)]
    d = Dispatcher(engines, "kv", capacity_tokens=1000)
    async with d.lease("t", 100) as eng:
        first = eng.engine_index
        await eng.generate([1], 1)
        engines[first].dead = True
        c = await eng.generate([1, 2, 3], 1)  # the whole conversation goes to the new engine
        assert c.token_ids[0] != first and eng.engine_index == c.token_ids[0]
        assert engines[c.token_ids[0]].calls[-1] == [1, 2, 3]
        assert d.loads[first].reserved_tokens == 0 and d.loads[eng.engine_index].reserved_tokens == 100
    assert not d.loads[first].healthy and d.stats.retries == 1 and d.stats.drained == 1
    for i in range(5):  # no new lease goes to the drained engine
        assert (await d.generate([i], 1)).token_ids[0] != first
    assert all(ld.reserved_tokens == 0 for ld in d.loads)


async def test_all_engines_dead_raises_typed_errors():
    engines = [FakeEngine(0), FakeEngine(1)]
    for e in engines:
        e.dead = True
    d = Dispatcher(engines, "least_requests", max_retries=5)
    with pytest.raises(NoEngineAvailable, match="drained"):
        await d.generate([1], 1)
    assert all(ld.reserved_tokens == 0 and ld.active == 0 for ld in d.loads)


async def test_bad_request_errors_are_not_retried():
    class Picky(FakeEngine):
        async def generate(self, *a, **k):
            raise ValueError("prompt too long")

    d = Dispatcher([Picky(0), FakeEngine(1)], "round_robin")
    with pytest.raises(ValueError, match="prompt too long"):
        await d.generate([1], 1)
    assert d.loads[0].healthy and d.stats.retries == 0


def test_constructor_errors_name_the_value():
    with pytest.raises(ValueError, match="'busy'"):
        Dispatcher([FakeEngine(0)], "busy")
    with pytest.raises(ValueError, match="2 entries for 1"):
        Dispatcher([FakeEngine(0)], capacity_tokens=[1, 2])
    with pytest.raises(ValueError, match="at least one engine"):
        Dispatcher([], "kv")


def test_dispatcher_from_a_config_section():
    from tirl.dispatch import dispatcher_for
    from tirl.dispatch.config import DispatchConfig

    cfg = DispatchConfig(policy="kv", kv_capacity_tokens=5000, group_affinity=True, kv_booking="forecast",
                         max_retries=4)
    d = dispatcher_for(cfg, [FakeEngine(0), FakeEngine(1)])
    assert d.policy == "kv" and d.group_affinity and d.booking == "forecast" and d.max_retries == 4
    assert [ld.capacity_tokens for ld in d.loads] == [5000, 5000]
    with pytest.raises(ValueError, match="dispatch.engines is empty"):
        dispatcher_for(DispatchConfig())


async def test_a_moved_lease_goes_before_new_waiters():
    a, b = FakeEngine(0), FakeEngine(1)
    d = Dispatcher([a, b], "kv", capacity_tokens=100)
    order = []
    free_b = asyncio.Event()
    on_a = asyncio.Event()

    async def holder_b():
        async with d.lease("hold-b", 60) as eng:
            assert eng.engine_index == 1
            await free_b.wait()

    go = asyncio.Event()

    async def moved():
        async with d.lease("moved", 60) as eng:
            assert eng.engine_index == 0
            on_a.set()
            await go.wait()
            a.dead = True
            await eng.generate([1], 1)  # fails on a, waits for room on b
            order.append(("moved", eng.engine_index))

    async def newcomer():
        async with d.lease("new", 60) as eng:
            order.append(("new", eng.engine_index))

    m = asyncio.create_task(moved())
    await on_a.wait()
    hb = asyncio.create_task(holder_b())
    for _ in range(3):
        await asyncio.sleep(0)
    n = asyncio.create_task(newcomer())  # queued: a is booked by "moved", b by "hold-b"
    for _ in range(3):
        await asyncio.sleep(0)
    go.set()  # "moved" now fails over and must wait for b — ahead of "new"
    for _ in range(5):
        await asyncio.sleep(0)
    assert order == [] and len(d._waiters) == 2
    free_b.set()
    await asyncio.gather(hb, m, n)
    assert order == [("moved", 1), ("new", 1)]


# ---- start-up checks of owned engines, async close and health (issues #12, #17)


class StartableEngine(FakeEngine):
    def __init__(self, idx, fail=None):
        super().__init__(idx)
        self.fail, self.starts, self.closed = fail, 0, 0

    async def start(self):
        self.starts += 1
        if self.fail:
            raise ConnectionRefusedError(self.fail)

    async def aclose(self):
        self.closed += 1


async def test_owned_engines_are_checked_at_start_and_a_dead_one_is_named():
    from tirl.dispatch import EngineStartError

    good, bad = StartableEngine(0), StartableEngine(1, fail="nothing listens on :9")
    d = Dispatcher([good, bad], "kv", capacity_tokens=100, own_engines=True, names=["good", "bad"])
    with pytest.raises(EngineStartError, match=r"1 of 2 engines.*bad: nothing listens on :9"):
        await d.start()
    assert good.closed == bad.closed == 1  # nothing left open
    # lazily started by a lease: the first lease fails, later ones at once with the same error
    d2 = Dispatcher([StartableEngine(0, fail="down")], "kv", capacity_tokens=100, own_engines=True)
    for _ in range(3):
        with pytest.raises(EngineStartError, match="down"):
            async with d2.lease("t", 10):
                pass
    assert d2.engines[0].starts == 1
    with pytest.raises(EngineStartError):  # an explicit start tries again
        await d2.start()
    assert d2.engines[0].starts == 2


async def test_engines_not_owned_are_neither_started_nor_closed():
    e = StartableEngine(0)
    async with Dispatcher([e], "kv", capacity_tokens=100) as d:
        async with d.lease("t", 10) as eng:
            await eng.generate([1], 1)
        h = await d.health()
    assert e.starts == 0 and e.closed == 0
    assert h["policy"] == "kv" and h["engines"][0]["leases_total"] == 1 and h["stats"]["leases"] == 1
    async with Dispatcher([e], "kv", capacity_tokens=100, own_engines=True):
        pass
    assert e.starts == 1 and e.closed == 1


async def test_dispatcher_for_urls_fails_fast_on_a_closed_port():
    import socket

    from tirl.dispatch import EngineStartError, dispatcher_for
    from tirl.dispatch.config import DispatchConfig

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = dispatcher_for(DispatchConfig(engines=[f"http://127.0.0.1:{port}/v1"]), model="m")
    with pytest.raises(EngineStartError, match="is the server running"):
        await d.start()
    await d.aclose()

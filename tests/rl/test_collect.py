"""collect_groups: dynamic sampling that starts each replacement the moment a group fails.

A fake rollout decides each problem's rewards from the problem alone (``signal`` problems get
one 1 among 0s, the others all 0) and finishes after a delay we choose, so the tests can check
what must not depend on timing (which problems run, which groups are kept, RoC's draws) and
what must (a replacement starts before the slowest group of its "round" finishes).
"""

import asyncio
import random

from tirl.agent.trajectory import Trajectory
from tirl.rl.rollouts import Timings, collect_groups


def make_rollout(signal: set[int], delays: dict[int, float] | None = None, log: list | None = None,
                 gate: dict[int, asyncio.Event] | None = None):
    async def rollout(problems, n, index):
        (p,) = problems
        if log is not None:
            log.append(("start", p["id"], index))
        if gate and p["id"] in gate:
            await gate[p["id"]].wait()
        await asyncio.sleep((delays or {}).get(p["id"], 0.0))
        g = []
        for i in range(n):
            t = Trajectory(prompt_ids=[1], problem_id=str(p["id"]))
            t.reward = 1.0 if (p["id"] in signal and i == 0) else 0.0
            g.append(t)
        if log is not None:
            log.append(("done", p["id"], index))
        return [g]
    return rollout


def problems():
    counter = iter(range(10_000))
    return lambda k: [{"id": next(counter)} for _ in range(k)]


def collect(rollout, want=4, refill=2, dynamic=True, algorithm="grpo", seed=0):
    return asyncio.run(collect_groups(
        rollout, problems(), want=want, group_size=4, algorithm=algorithm, oversample=2, roc_mode="weighted",
        min_pos=1, min_neg=1, dynamic_sampling=dynamic, max_refill_rounds=refill, rng=random.Random(seed)))


def kept_ids(c):
    return [g[0].problem_id for g in c.groups]


def test_failed_groups_are_replaced_until_want_groups_have_signal():
    # problems 0..3 start; 1 and 3 fail -> 4 and 5 start; 5 fails -> 6 starts (signal)
    c = collect(make_rollout(signal={0, 2, 4, 6}))
    assert kept_ids(c) == ["0", "2", "4", "6"]
    assert (c.groups_sampled, c.groups_dropped, c.refills) == (7, 3, 3)
    assert all(t.meta["kept"] for g in c.groups for t in g)
    assert sum(not t.meta["kept"] for t in c.sampled) == 3 * 4


def test_the_budget_is_problems_per_step_times_max_refill_rounds():
    c = collect(make_rollout(signal=set()), want=4, refill=2)  # nothing ever has signal
    assert c.groups == [] and c.groups_sampled == 4 + 8 and c.refills == 8
    c = collect(make_rollout(signal=set()), want=4, refill=2, dynamic=False)
    assert c.groups_sampled == 4 and c.refills == 0


def test_timing_changes_nothing_but_when():
    """The same problems, kept groups and RoC draws whether early or late problems finish first."""
    signal = {0, 3, 5, 6, 9}
    fast_first = {i: 0.001 * i for i in range(20)}
    slow_first = {i: 0.001 * (20 - i) for i in range(20)}
    a = collect(make_rollout(signal, fast_first), algorithm="grpo_roc")
    b = collect(make_rollout(signal, slow_first), algorithm="grpo_roc")
    assert kept_ids(a) == kept_ids(b) == ["0", "3", "5", "6"]
    assert [[a.sampled.index(t) for t in g] for g in a.groups] == [[b.sampled.index(t) for t in g] for g in b.groups]
    assert a.groups_sampled == b.groups_sampled == 7


def test_a_replacement_starts_while_a_slow_group_still_runs():
    """Problem 0 cannot finish until problem 4 (problem 1's replacement) has started: a round
    barrier would deadlock here; the streaming collector starts 4 when 1 fails."""
    gate = {0: asyncio.Event()}
    log: list = []

    async def run():
        inner = make_rollout(signal={0, 2, 3, 4}, log=log, gate=gate)

        async def rollout(problems, n, index):
            if problems[0]["id"] == 4:
                gate[0].set()
            return await inner(problems, n, index)

        return await asyncio.wait_for(collect_groups(
            rollout, problems(), want=4, group_size=2, algorithm="grpo", oversample=1, roc_mode="weighted",
            min_pos=1, min_neg=1, dynamic_sampling=True, max_refill_rounds=1, rng=random.Random(0)), 10)

    c = asyncio.run(run())
    assert kept_ids(c) == ["0", "2", "3", "4"]
    assert log.index(("start", 4, 4)) < log.index(("done", 0, 0))


def test_problem_index_is_passed_for_seeding():
    seen = []
    inner = make_rollout(signal={0, 1, 3})

    async def rollout(problems, n, index):
        seen.append((problems[0]["id"], index))
        return await inner(problems, n, index)

    collect(rollout, want=3, refill=1)
    assert sorted(seen) == [(0, 0), (1, 1), (2, 2), (3, 3)]


def test_timings_count_overlapping_work_once(monkeypatch):
    import tirl.rl.rollouts as R

    now = [0.0]
    monkeypatch.setattr(R.time, "perf_counter", lambda: now[0])
    t = Timings()
    a, b = t.span("generation"), t.span("generation")
    a.__enter__()               # 0: a starts
    now[0] = 1.0
    b.__enter__()               # 1: b starts
    now[0] = 2.0
    a.__exit__(None, None, None)  # 2: a ends
    assert t.generation == 2.0  # b still runs: counted up to now
    now[0] = 3.0
    b.__exit__(None, None, None)  # 3: b ends -> 3 s of wall time, not 2 + 2
    now[0] = 5.0
    with t.span("generation"):
        now[0] = 5.5
    assert t.generation == 3.5 and t.grading == 0.0

"""RetryingExecutor: queue deadlines follow the call's budget; queue_timeout/worker_lost are
retried within it (a fake inner executor and a fake clock: no sandbox, no waiting)."""

from __future__ import annotations

import asyncio

import pytest

from tirl.sandbox.retry import RetryingExecutor
from tirl.sandbox.types import ExecRequest, ExecResult


class Clock:
    def __init__(self):
        self.t = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    async def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s


class FakeInner:
    """Answers each call from a script of (seconds it takes, result); records what it got."""

    def __init__(self, clock: Clock, script: list[tuple[float, ExecResult]]):
        self.clock, self.script = clock, list(script)
        self.calls: list[dict] = []
        self.closed: list[str] = []
        self.was_closed = False

    async def run(self, code, stdin="", timeout_s=None, session_id=None, *, queue_timeout_s=None):
        self.calls.append({"code": code, "stdin": stdin, "timeout_s": timeout_s,
                           "session_id": session_id, "queue_timeout_s": queue_timeout_s})
        took, res = self.script.pop(0)
        self.clock.t += took
        return ExecResult(**{k: v for k, v in vars(res).items() if k != "extra"}, extra=dict(res.extra))

    async def close_session(self, sid):
        self.closed.append(sid)
        return True

    async def start(self):
        return self

    async def close(self):
        self.was_closed = True

    async def health(self):
        return {"status": "ok"}


def infra(reason, **kw):
    return ExecResult("infra_error", reason=reason, **kw)


OK = ExecResult("ok", stdout="42\n", exit_code=0)


def make(script, **kw):
    clock = Clock()
    inner = FakeInner(clock, script)
    kw.setdefault("backoff_s", 0.5)
    return clock, inner, RetryingExecutor(inner, clock=clock, sleep=clock.sleep, **kw)


async def test_each_attempt_waits_only_for_the_budget_left_and_retries_until_it_succeeds():
    clock, inner, ex = make([(60.0, infra("queue_timeout")), (10.0, infra("worker_lost")), (1.0, OK)],
                            budget_s=300)
    res = await ex.run("print(42)", "in", 5.0, None)
    assert res.status == "ok" and res.extra["attempts"] == 3
    # 300 s budget: 60 s spent + 0.5 s backoff, then 10 s + 1 s backoff
    assert [c["queue_timeout_s"] for c in inner.calls] == [300.0, 239.5, 228.5]
    assert clock.sleeps == [0.5, 1.0]
    assert all(c["code"] == "print(42)" and c["stdin"] == "in" and c["timeout_s"] == 5.0
               for c in inner.calls)
    assert (ex.retries, ex.gave_up) == (2, 0)


async def test_gives_up_with_the_last_result_when_the_budget_is_spent():
    clock, inner, ex = make([(59.0, infra("queue_timeout")), (41.0, infra("queue_timeout"))],
                            budget_s=100)
    res = await ex.run("x")
    assert res.reason == "queue_timeout" and res.extra["attempts"] == 2
    assert [c["queue_timeout_s"] for c in inner.calls] == [100.0, 40.5]
    assert ex.gave_up == 1 and not inner.script


async def test_gives_up_after_max_attempts():
    clock, inner, ex = make([(0.0, infra("worker_lost"))] * 3, budget_s=1e6, max_attempts=3,
                            backoff_s=1.0, max_backoff_s=1.5)
    res = await ex.run("x")
    assert res.reason == "worker_lost" and res.extra["attempts"] == 3 and len(inner.calls) == 3
    assert clock.sleeps == [1.0, 1.5]  # doubled, capped


@pytest.mark.parametrize("res", [
    ExecResult("error", stderr="ZeroDivisionError", exit_code=1),  # the user's own failure
    ExecResult("timeout", reason="wall_time"),
    infra("zygote_died"),  # not in retry_on
    infra("worker_lost", session_id="s", session_reset=True),  # state lost: never re-run a cell
    OK,
])
async def test_other_results_are_returned_at_once(res):
    clock, inner, ex = make([(1.0, res)], budget_s=100)
    out = await ex.run("x", session_id=res.session_id)
    assert out.status == res.status and out.reason == res.reason and len(inner.calls) == 1
    assert "attempts" not in out.extra and clock.sleeps == []


async def test_retry_on_is_configurable():
    clock, inner, ex = make([(0.0, infra("zygote_died")), (0.0, OK)], budget_s=10,
                            retry_on=("zygote_died",))
    assert (await ex.run("x")).status == "ok" and len(inner.calls) == 2


async def test_a_step_deadline_and_a_callers_queue_timeout_shorten_the_budget():
    clock, inner, ex = make([(0.0, OK)] * 3, budget_s=600)
    ex.deadline = clock.t + 120.0
    await ex.run("x")
    await ex.run("x", queue_timeout_s=30.0)
    clock.t += 500.0  # past the step's deadline: one minimal try, no waiting
    await ex.run("x")
    assert [c["queue_timeout_s"] for c in inner.calls] == [120.0, 30.0, 1e-3]


async def test_batch_close_session_close_and_the_rest_delegate():
    clock, inner, ex = make([(0.0, infra("queue_timeout")), (0.0, OK), (0.0, OK)], budget_s=50)
    a, b = await ex.run_batch([ExecRequest("a"), ExecRequest("b", queue_timeout_s=5.0)])
    assert a.status == b.status == "ok"
    assert sorted(c["queue_timeout_s"] for c in inner.calls) == [5.0, 49.5, 50.0]
    assert await ex.close_session("s1") is True and inner.closed == ["s1"]
    assert await ex.health() == {"status": "ok"}
    async with ex:
        pass
    assert inner.was_closed


async def test_an_inner_executor_without_queue_timeout_still_gets_retries():
    class Plain:
        def __init__(self):
            self.results = [infra("queue_timeout"), OK]

        async def run(self, code, stdin="", timeout_s=None, session_id=None):
            return self.results.pop(0)

    ex = RetryingExecutor(Plain(), budget_s=10, backoff_s=0)
    res = await ex.run("x")
    assert res.status == "ok" and res.extra["attempts"] == 2


async def test_real_sandbox_queue_deadline_follows_the_budget():
    from tirl.sandbox.pool import Sandbox

    async with Sandbox(slots=1, preload=["math"]) as sb:
        # the one slot busy for 2 s: a call with a 0.2 s budget times out in the queue,
        # one with a 60 s budget waits for the slot
        sleeper = asyncio.ensure_future(sb.run("import time; time.sleep(2)", timeout_s=10))
        await asyncio.sleep(0.3)
        res = await RetryingExecutor(sb, budget_s=0.2, backoff_s=0.05).run("print(1)")
        assert res.status == "infra_error" and res.reason == "queue_timeout"
        assert res.queue_ms >= 100 and "queue_timeout_s" in res.stderr
        long = await RetryingExecutor(sb, budget_s=60).run("print(1)")
        assert long.status == "ok" and long.stdout == "1\n" and long.queue_ms > 500
        assert (await sleeper).status == "ok"
        assert 'tirl_sandbox_reasons_total{reason="queue_timeout"} 1' in sb.metrics_text()


@pytest.mark.parametrize("kw,msg", [
    ({"budget_s": 0}, "budget_s"), ({"budget_s": float("inf")}, "budget_s"),
    ({"max_attempts": 0}, "max_attempts"), ({"retry_on": "queue_timeout"}, "retry_on"),
    ({"backoff_s": -1}, "backoff_s"),
])
def test_bad_settings_are_refused_by_name(kw, msg):
    with pytest.raises(ValueError, match=msg):
        RetryingExecutor(FakeInner(Clock(), []), **kw)

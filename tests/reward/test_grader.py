"""Grader: batch grading in worker processes, timeouts, crashes, scorers, the event loop.

One worker pool for the whole module (pools take a second or two to start on a busy
machine). Limits are generous and no test asserts on timing except "the loop kept running".
"""

import asyncio

import pytest

from tests.reward import judges
from tirl.reward import Grader, Scorer, scorer_for
from tirl.reward.scorers import as_scorer

TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def grader():
    g = Grader(workers=2, timeout_s=TIMEOUT_S).start()
    yield g
    g.close()


def boxed(ans: str) -> str:
    return f"<reason>work</reason><answer>The answer is \\boxed{{{ans}}}</answer>"


async def test_batch_mixes_fast_symbolic_and_no_answer_in_order(grader):
    items = [
        (boxed("1,000"), "1000"),
        (boxed("999"), "1000"),
        (boxed(r"\frac{1}{\sqrt{2}+1}"), r"\sqrt{2}-1"),
        ("I give up", "3"),
        (boxed(r"\ln 8"), r"2\ln 2"),
        (boxed(r"\{2,1\}"), r"\{1,2\}"),
        (boxed(r"\frac{\pi}{3}"), r"\frac{\pi}{6}"),
    ]
    res = await grader.grade_batch(items)
    assert [g.status for g in res] == ["correct", "incorrect", "correct", "no_answer",
                                       "incorrect", "correct", "incorrect"]
    assert [g.method for g in res] == ["fast", "fast", "symbolic", "extract", "symbolic", "fast",
                                       "fast"]
    assert res[2].extracted == r"\frac{1}{\sqrt{2}+1}" and res[2].gold == r"\sqrt{2}-1"


async def test_single_grade(grader):
    g = await grader.grade(boxed("x = 3"), "3")
    assert g.correct and g.reward == 1.0
    g = await grader.grade(boxed("3"), "")
    assert g.status == "incorrect" and "empty reference" in g.detail


async def test_hung_and_killed_checks_are_timeouts_and_the_pool_recovers(grader):
    # one batch (the limits run concurrently): a Python-level hang stopped by the worker's
    # signal, a hang that ignores signals (only killing the worker stops it)
    res = await grader.grade_batch(
        [(boxed("1"), "1"), (boxed("2"), "2"), (boxed("4"), "4")],
        scorers=[Scorer("custom", fn=judges.sleeps_forever), Scorer("custom", fn=judges.ignores_signals),
                 None])
    assert [g.status for g in res] == ["timeout", "timeout", "correct"]
    assert "soft" in res[0].detail
    assert "killed" in res[1].detail
    assert [g.reward for g in res] == [0.0, 0.0, 1.0]  # a genuine timeout is a wrong answer
    # the pool replaced the killed worker and keeps grading
    again = await grader.grade_batch([(boxed(r"\ln 8"), r"3\ln 2"), (boxed(r"\ln 9"), r"3\ln 2")])
    assert [g.status for g in again] == ["correct", "incorrect"]


async def test_a_worker_that_crashes_once_is_retried_in_a_fresh_worker(grader, tmp_path):
    before = grader.counts["retry"]
    sc = Scorer("custom", entry={"marker": str(tmp_path / "crashed")}, fn=judges.crashes_once)
    res = await grader.grade_batch([(boxed("7"), "7")], scorers=[sc])
    assert (tmp_path / "crashed").exists()  # it did crash the first time
    assert res[0].status == "correct" and res[0].reward == 1.0
    assert grader.counts["retry"] == before + 1


async def test_a_worker_that_crashes_twice_is_an_infra_error_with_no_reward(grader):
    before = grader.counts["infra_error"]
    res = await grader.grade_batch([(boxed("3"), "3"), (boxed("4"), "4")],
                                   scorers=[Scorer("custom", fn=judges.crashes), None])
    assert res[0].status == "infra_error" and "crashed" in res[0].detail
    assert res[0].reward is None and not res[0].correct  # callers drop it, never reward it 0
    assert res[1].status == "correct"
    assert grader.counts["infra_error"] == before + 1
    # the pool replaced both crashed workers
    again = await grader.grade(boxed(r"\ln 8"), r"3\ln 2")
    assert again.correct


async def test_a_judge_that_cannot_reach_a_worker_is_the_callers_error(grader):
    with pytest.raises(ValueError, match="module-level function"):
        await grader.grade(boxed("1"), "1", Scorer("custom", fn=lambda a, g, e: 1.0))


def test_grade_reward_by_status():
    from tirl.reward import Grade

    assert Grade("correct").reward == 1.0
    assert [Grade(s).reward for s in ("incorrect", "no_answer", "timeout")] == [0.0, 0.0, 0.0]
    assert Grade("infra_error").reward is None


async def test_scorer_that_raises_is_incorrect_not_correct(grader):
    res = await grader.grade(boxed("1"), "1", Scorer("custom", fn=judges.raises))
    assert res.status == "incorrect" and "judge failed" in res.detail


async def test_event_loop_keeps_running_while_checks_hang(grader):
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    t = asyncio.create_task(ticker())
    fast = [(boxed(str(i)), str(i)) for i in range(2000)]
    res = await grader.grade_batch(fast + [(boxed("1"), "1")],
                                   scorers=[None] * 2000 + [Scorer("custom", fn=judges.sleeps_forever)])
    t.cancel()
    assert res[-1].status == "timeout" and all(g.correct for g in res[:-1])
    # the hung item took at least 0.8 * TIMEOUT_S; a blocked loop would not have ticked
    assert ticks >= 5


# an item of reasoning-gym's prime_factorization generator (seed 7), as the data part stores it
RG_PROBLEM = {
    "id": "pf-0", "source": "reasoning_gym:prime_factorization", "answer": "3 × 3 × 37",
    "problem": "Find the prime factorization of 333. Write the factors separated by × "
               "(Example: for 12 the answer would be: 2 × 2 × 3)",
    "metadata": {"source_dataset": "prime_factorization", "source_index": 0, "number": 333,
                 "factors": [3, 3, 37]},
}


async def test_reasoning_gym_scorer_judges_its_own_problems(grader):
    sc = scorer_for(RG_PROBLEM)
    assert sc.name == "reasoning_gym:prime_factorization" and sc.entry["metadata"]["number"] == 333
    gold = RG_PROBLEM["answer"]
    items = [("<answer>3 × 3 × 37</answer>", gold),  # reasoning-gym's own format: no box
             (boxed("3 × 3 × 37"), gold),
             (boxed("9 × 37"), gold),  # right product, not prime: partial credit 0.5
             (boxed("2 × 3"), gold),
             ("no answer here", gold)]
    res = await grader.grade_batch(items, scorers=[sc] * len(items))
    assert [g.status for g in res] == ["correct", "correct", "incorrect", "incorrect", "no_answer"]
    assert res[0].method == "reasoning_gym:prime_factorization" and "score=1" in res[0].detail
    assert "score=0.5" in res[2].detail  # partial credit is kept, but the reward is binary
    assert res[2].reward == 0.0


def test_scorer_specs():
    assert scorer_for({"source": "math500"}).name == "math"
    assert scorer_for({"source": "reasoning-gym/basic_arithmetic", "answer": "4"}).entry == {
        "question": "", "answer": "4", "metadata": {}}
    assert as_scorer({"name": "reasoning_gym:leg_counting"}).dataset == "leg_counting"
    bare = {"source": "reasoning_gym", "answer": "4", "metadata": {"source_dataset": "chain_sum"}}
    assert scorer_for(bare).name == "reasoning_gym:chain_sum"
    assert scorer_for(bare, mode="math").name == "math"
    assert scorer_for({"source": "reasoning_gym", "answer": "4"}).name == "math"  # no dataset named
    with pytest.raises(ValueError, match="mode"):
        scorer_for(bare, mode="sympy")
    with pytest.raises(ValueError, match="unknown scorer"):
        as_scorer("sympy")


async def test_unknown_dataset_is_reported_not_correct(grader):
    res = await grader.grade(boxed("1"), "1", "reasoning_gym:no_such_dataset")
    assert res.status == "incorrect" and "no_such_dataset" in res.detail


async def test_scorers_length_must_match(grader):
    with pytest.raises(ValueError, match="one scorer"):
        await grader.grade_batch([(boxed("1"), "1")], scorers=[None, None])


def test_sync_use_and_close():
    with Grader(workers=1, timeout_s=TIMEOUT_S) as g:
        res = g.grade_batch_sync([(boxed("0.5"), r"\frac12"), (boxed(r"\sqrt{2}"), "1.41")])
        assert [r.status for r in res] == ["correct", "incorrect"]
    with pytest.raises(RuntimeError, match="closed"):
        g.start()


async def test_close_mid_batch_reports_pending_checks_as_timeouts():
    g = Grader(workers=1, timeout_s=30.0)
    await asyncio.to_thread(g.start)
    task = asyncio.create_task(g.grade_batch(
        [(boxed("1"), "1"), (boxed("2"), "2")],
        scorers=[Scorer("custom", fn=judges.sleeps_forever), None]))
    await asyncio.sleep(0.5)
    await asyncio.to_thread(g.close)
    res = await asyncio.wait_for(task, 30)
    assert res[0].status == "timeout" and "closed" in res[0].detail
    assert res[1].status == "correct"


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="timeout_s"):
        Grader(timeout_s=0)
    with pytest.raises(ValueError, match="workers"):
        Grader(workers=-1)


async def test_bad_scorer_fails_before_any_work(grader):
    with pytest.raises(ValueError, match="unknown scorer 'sympy'"):
        await grader.grade_batch([(boxed(r"\ln 2"), r"\ln 2"), (boxed("1"), "1")], scorers=[None, "sympy"])

"""The evaluation run with a scripted rollout loop: numbers, files, resume, warnings."""

from __future__ import annotations

import asyncio
import json

import pytest

from tirl.config import load_config
from tirl.eval.harness import SettingsMismatch, evaluate, rebuild_report
from tirl.eval.runner import EvalAborted
from tests.eval.conftest import FakeLoop


def make_cfg(data_dir, *extra):
    return load_config(None, [f'data.data_dir="{data_dir}"', 'eval.benchmarks=["aime24"]',
                              "eval.k=4", "eval.limit=3", "eval.concurrency=2",
                              "eval.bootstrap_samples=200", *extra])


def golds(data_dir):
    rows = [json.loads(line) for line in (data_dir / "aime24.jsonl").read_text().splitlines()[:3]]
    return {r["id"]: r["answer"] for r in rows}


def scripted_answers(data_dir):
    """Per problem, the multiset of 4 outcomes described in the test below."""
    g = golds(data_dir)
    p0, p1, p2 = list(g)
    table = {p0: [g[p0], g[p0], g[p0], "7"],
             p1: [g[p1], "5", "5", None],
             p2: [g[p2], "9", None, g[p2]]}
    answer_for = lambda pid, j: table[pid][j]  # noqa: E731
    finish_for = lambda pid, j: "max_tokens" if (pid, j) == (p2, 3) else "answer"  # noqa: E731
    return answer_for, finish_for


async def test_end_to_end_numbers_and_files(tmp_path, data_dir, fake_grader):
    cfg = make_cfg(data_dir)
    answer_for, finish_for = scripted_answers(data_dir)
    loop = FakeLoop(answer_for, finish_for)
    res = await evaluate(cfg, tmp_path / "run", loop=loop, grader=fake_grader, progress=False)
    assert len(loop.calls) == 12
    # the eval's sampling settings are the paper's by default (30 turns, 30000 tokens, T=0.6)
    saved = json.loads((tmp_path / "run" / "eval_settings.json").read_text())
    assert (saved["max_turns"], saved["max_tokens"], saved["temperature"]) == (30, 30000, 0.6)
    s = res.summaries[0]
    # hand-computed: per-problem accuracy 3/4, 1/4, 1/4 (the truncated right answer scores 0)
    assert s.avg_at_k.value == pytest.approx((0.75 + 0.25 + 0.25) / 3)
    # maj: correct wins 3-1; "5" beats correct 2-1; correct ties "9" 1-1 (truncated and
    # missing answers do not vote) -> 1, 0, 1/2
    assert s.maj_at_k.value == pytest.approx(0.5)
    # pass@2 = 1 - C(4-c,2)/C(4,2): c=3 -> 1, c=1 -> 1/2, c=1 -> 1/2
    assert s.pass_at[2].value == pytest.approx(2 / 3)
    assert s.pass_at[4].value == pytest.approx(1.0)
    assert s.pass_at[1] == s.avg_at_k  # the same estimate, with the same interval
    for e in (s.avg_at_k, s.maj_at_k, s.pass_at[2]):
        assert e.lo <= e.value <= e.hi
    assert s.response_tokens_mean == pytest.approx(17.5)  # 10, 15, 20, 25 per problem
    assert s.response_tokens_median == pytest.approx(17.5)
    assert s.generated_tokens_mean == pytest.approx(13.5)
    assert s.tool_calls_per_sample == 2 and s.tool_calls_per_problem == 8
    assert s.tool_error_rate == pytest.approx(0.5)
    assert s.finish_reasons == {"answer": 11, "max_tokens": 1}
    assert s.statuses == {"correct": 5, "incorrect": 4, "no_answer": 2, "truncated": 1}

    run = tmp_path / "run"
    lines = (run / "samples" / "aime24.jsonl").read_text().splitlines()
    assert len(lines) == 12
    assert {(json.loads(x)["problem_id"], json.loads(x)["sample"]) for x in lines} == {
        (p, i) for p in golds(data_dir) for i in range(4)}
    report = json.loads((run / "report.json").read_text())
    assert report["benchmarks"][0]["avg_at_k"]["value"] == pytest.approx(s.avg_at_k.value)
    assert report["settings"]["k"] == 4 and report["warnings"] == []
    assert "k = 4 (paper: 16)" in " ".join(report["protocol_deviations"])
    md = (run / "report.md").read_text()
    assert "| aime24 | 3 |" in md and "avg@4" in md and "maj@4" in md and "pass@2" in md
    for png in ("accuracy.png", "response_length.png"):
        assert (run / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "config.toml").is_file() and (run / "eval_settings.json").is_file()

    # the report can be rebuilt from the samples alone, with the same numbers
    again = rebuild_report(run)
    assert again.summaries[0].avg_at_k == s.avg_at_k
    assert again.summaries[0].maj_at_k == s.maj_at_k


async def test_resume_after_interruption_reuses_finished_samples(tmp_path, data_dir, fake_grader):
    g = golds(data_dir)
    p0 = next(iter(g))
    answer_for = lambda pid, j: g[pid] if pid == p0 else "1000"  # noqa: E731
    cfg = make_cfg(data_dir)
    out = tmp_path / "run"
    loop = FakeLoop(answer_for, gate_after=5)
    task = asyncio.create_task(evaluate(cfg, out, loop=loop, grader=fake_grader, progress=False))
    for _ in range(2000):
        await asyncio.sleep(0.005)
        if len(loop.calls) >= 7:  # 5 done, 2 in flight and blocked (concurrency 2)
            break
    assert len(loop.calls) == 7
    task.cancel()  # the interruption (Ctrl-C cancels the run the same way)
    with pytest.raises(asyncio.CancelledError):
        await task
    saved = [json.loads(x) for x in (out / "samples" / "aime24.jsonl").read_text().splitlines()]
    assert len(saved) == 5
    assert not (out / "report.json").exists()

    loop2 = FakeLoop(answer_for)
    res = await evaluate(cfg, out, loop=loop2, grader=fake_grader, progress=False)
    assert len(loop2.calls) == 12 - 5  # only the missing samples were generated
    saved_keys = {(r["problem_id"], r["sample"]) for r in saved}
    assert res.runs["aime24"].reused == 5 and res.runs["aime24"].new == 7
    assert {(r.problem_id, r.sample) for r in res.runs["aime24"].records} == {
        (p, i) for p in g for i in range(4)}
    # per problem, exactly the samples that were not saved were generated
    from collections import Counter
    saved_per = Counter(p for p, _ in saved_keys)
    assert Counter(p for p, _ in loop2.calls) == Counter({p: 4 - saved_per[p] for p in g if saved_per[p] < 4})
    assert res.summaries[0].avg_at_k.value == pytest.approx(1 / 3)
    assert res.summaries[0].samples == 12

    # a third run has nothing to do
    loop3 = FakeLoop(answer_for)
    await evaluate(cfg, out, loop=loop3, grader=fake_grader, progress=False)
    assert loop3.calls == []
    # k can grow: only the new sample indices run
    loop4 = FakeLoop(answer_for)
    res4 = await evaluate(make_cfg(data_dir, "eval.k=6"), out, loop=loop4, grader=fake_grader,
                          progress=False)
    assert len(loop4.calls) == 6 and res4.summaries[0].samples == 18


async def test_changed_settings_are_refused_not_mixed(tmp_path, data_dir, fake_grader):
    out = tmp_path / "run"
    ans = lambda pid, j: "1"  # noqa: E731
    await evaluate(make_cfg(data_dir), out, loop=FakeLoop(ans), grader=fake_grader, progress=False)
    with pytest.raises(SettingsMismatch, match="temperature: saved 0.6, now 0.7"):
        await evaluate(make_cfg(data_dir, "eval.sampling.temperature=0.7"), out, loop=FakeLoop(ans),
                       grader=fake_grader, progress=False)
    loop = FakeLoop(ans)
    await evaluate(make_cfg(data_dir, "eval.sampling.temperature=0.7"), out, loop=loop, grader=fake_grader,
                   progress=False, fresh=True)
    assert len(loop.calls) == 12


async def test_temperature_zero_with_k_above_one_warns_loudly(tmp_path, data_dir, fake_grader, capsys):
    cfg = make_cfg(data_dir, "eval.sampling.temperature=0", "eval.k=2")
    res = await evaluate(cfg, tmp_path / "run", loop=FakeLoop(lambda p, j: "1"), grader=fake_grader,
                         progress=False)
    err = capsys.readouterr().err
    assert "WARNING" in err and "temperature 0" in err and "k=2" in err
    assert res.warnings and "identical" in res.warnings[0]
    assert "**WARNING:**" in (tmp_path / "run" / "report.md").read_text()
    assert json.loads((tmp_path / "run" / "report.json").read_text())["warnings"]
    # k = 1 at temperature 0 is a legitimate greedy run: no warning
    await evaluate(make_cfg(data_dir, "eval.sampling.temperature=0", "eval.k=1"), tmp_path / "greedy",
                   loop=FakeLoop(lambda p, j: "1"), grader=fake_grader, progress=False)
    assert "WARNING" not in capsys.readouterr().err


async def test_identical_samples_at_positive_temperature_warn(tmp_path, data_dir, fake_grader, capsys):
    # a server that ignores the temperature: every sample of a problem is the same text
    res = await evaluate(make_cfg(data_dir), tmp_path / "run", loop=FakeLoop(lambda p, j: "1"),
                         grader=fake_grader, progress=False)
    assert res.summaries[0].identical_sample_problems == 3
    assert any("ignoring the temperature" in w for w in res.warnings)
    assert "ignoring the temperature" in capsys.readouterr().err
    # varied samples: no such warning
    res2 = await evaluate(make_cfg(data_dir), tmp_path / "run2", loop=FakeLoop(lambda p, j: str(j)),
                          grader=fake_grader, progress=False)
    assert res2.summaries[0].identical_sample_problems == 0 and res2.warnings == []


async def test_infra_failures_are_recorded_retried_and_a_dead_engine_aborts(tmp_path, data_dir, fake_grader):
    g = golds(data_dir)
    p1 = list(g)[1]
    out = tmp_path / "run"
    flaky = FakeLoop(lambda pid, j: g[pid], fail_for=lambda pid, j: pid == p1 and j == 0)
    res = await evaluate(make_cfg(data_dir), out, loop=flaky, grader=fake_grader, progress=False)
    s = res.summaries[0]
    assert s.infra_errors == 1 and s.statuses["infra_error"] == 1
    assert s.avg_at_k.value == pytest.approx((1 + 0.75 + 1) / 3)
    assert "infrastructure" in (out / "report.md").read_text()
    bad = [r for r in res.runs["aime24"].records if r.status == "infra_error"][0]
    assert "refused" in bad.error
    retry = FakeLoop(lambda pid, j: g[pid])
    res2 = await evaluate(make_cfg(data_dir), out, loop=retry, grader=fake_grader, progress=False)
    assert retry.calls == [(p1, 0)]
    assert res2.summaries[0].avg_at_k.value == pytest.approx(1.0)

    dead = FakeLoop(lambda pid, j: "1", fail_for=lambda pid, j: True)
    with pytest.raises(EvalAborted, match="refused the connection"):
        await evaluate(make_cfg(data_dir), tmp_path / "dead", loop=dead, grader=fake_grader,
                       progress=False)
    assert len(dead.calls) < 12

    # the real AgentLoop catches engine errors and returns infra_error trajectories instead
    def caught(pid, j):
        return "infra_error"
    dead2 = FakeLoop(lambda pid, j: None, finish_for=caught)
    with pytest.raises(EvalAborted, match="the first 5 samples all failed"):
        await evaluate(make_cfg(data_dir), tmp_path / "dead2", loop=dead2, grader=fake_grader,
                       progress=False)


async def test_unknown_benchmark_fails_before_any_sampling(tmp_path, data_dir, fake_grader):
    from tirl.data.benchmarks import BenchmarkError

    loop = FakeLoop(lambda p, j: "1")
    cfg = make_cfg(data_dir, 'eval.benchmarks=["aime24", "aime42"]')
    with pytest.raises(BenchmarkError, match="aime42"):
        await evaluate(cfg, tmp_path / "run", loop=loop, grader=fake_grader, progress=False)
    assert loop.calls == []
    cfg = make_cfg(data_dir, f'eval.benchmarks=["aime24", "{data_dir / "aime24.jsonl"}"]')
    with pytest.raises(BenchmarkError, match="aime24 given twice"):
        await evaluate(cfg, tmp_path / "run", loop=loop, grader=fake_grader, progress=False)


async def test_breakdown_by_level_and_subject(tmp_path, data_dir, fake_grader):
    from tirl.data.benchmarks import load_problems

    probs = load_problems("math500", data_dir=data_dir, limit=20, hub=False)
    meta = {p["id"]: p for p in probs}
    loop = FakeLoop(lambda pid, j: meta[pid]["answer"] if meta[pid]["level"] <= 2 else "nope")
    cfg = load_config(None, [f'data.data_dir="{data_dir}"', 'eval.benchmarks=["math500"]', "eval.k=2",
                             "eval.limit=20", "eval.bootstrap_samples=50"])
    from tests.eval.conftest import InProcessGrader

    res = await evaluate(cfg, tmp_path / "run", loop=loop, grader=InProcessGrader(), progress=False)
    by_level = res.summaries[0].breakdowns["level"]
    levels = sorted({p["level"] for p in probs})
    assert list(by_level) == [str(v) for v in levels]
    for v, row in by_level.items():
        assert row["avg"] == (1.0 if int(v) <= 2 else 0.0)
        assert row["problems"] == sum(p["level"] == int(v) for p in probs)
    assert "subject" in res.summaries[0].breakdowns
    assert "By level:" in (tmp_path / "run" / "report.md").read_text()
    # aime24 problems carry no grouping field: no breakdown
    assert "By " not in (tmp_path / "run" / "report.md").read_text().split("## math500")[0]


async def test_benchmarks_run_together_under_one_concurrency_limit(tmp_path, data_dir, fake_grader):
    loop = FakeLoop(lambda pid, j: str(j))
    cfg = make_cfg(data_dir, 'eval.benchmarks=["aime24", "aime25"]', "eval.concurrency=3",
                   "eval.save_trajectories=true")
    res = await evaluate(cfg, tmp_path / "run", loop=loop, grader=fake_grader, progress=False)
    assert loop.max_in_flight == 3
    assert [s.benchmark for s in res.summaries] == ["aime24", "aime25"]
    assert [s.samples for s in res.summaries] == [12, 12]
    assert {r.benchmark for r in res.runs["aime25"].records} == {"aime25"}
    for name in ("aime24", "aime25"):
        lines = (tmp_path / "run" / "trajectories" / f"{name}.jsonl").read_text().splitlines()
        assert len(lines) == 12 and "response_ids" in json.loads(lines[0])

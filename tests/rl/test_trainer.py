"""The trainer end to end on a tiny model: one run, and exact resume."""

import json

import pytest
import torch

from tests.rl.conftest import scripted_policy, tiny_config
from tirl.rl.trainer import train
from tirl.runs import read_metrics


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _last_ckpt(root):
    return root / "checkpoints" / (root / "checkpoints" / "latest").read_text().strip()


@pytest.mark.slow
def test_two_step_training_writes_metrics_plots_report_and_checkpoint(tmp_path, tools_factory):
    cfg = tiny_config(tmp_path, "smoke", **{"stages.0.steps": 2})
    res = train(cfg, progress=False, engine_factory=scripted_policy(), tools_factory=tools_factory)
    root = tmp_path / "smoke"
    recs = read_metrics(root / "metrics.jsonl")
    rl = [r for r in recs if r.get("phase") == "rl"]
    assert [r["step"] for r in rl] == [1, 2]
    for r in rl:
        # the scripted policy errs on every third rollout: groups have signal, RoC keeps G each
        assert 0 < r["reward"] < 1 and r["groups_kept"] == 2 and r["trajectories_kept"] == 8
        assert r["tool_calls_per_traj"] == pytest.approx(1.0)
        assert r["tool_error_ratio"] == 0.0  # a wrong operator is a wrong answer, not a tool error
        for key in ("clip_frac", "entropy", "grad_norm", "time_generation", "time_update", "tokens_per_s"):
            assert r[key] is not None
        assert r["grad_norm"] > 0
    labels = [e["label"] for e in res["evals"]]
    assert labels == ["sft", "stage1"]
    assert (root / "report.md").read_text().count("held_out") >= 1
    assert (root / "plots" / "reward.png").exists()
    ck = _last_ckpt(root)
    assert (ck / "config.json").exists() and (ck / "tokenizer.json").exists()


@pytest.mark.slow
def test_resume_two_plus_one_equals_three_straight(tmp_path, tools_factory):
    straight = tiny_config(tmp_path, "straight", **{"sft.enabled": "false"})
    train(straight, progress=False, engine_factory=scripted_policy(), tools_factory=tools_factory)
    split = tiny_config(tmp_path, "split", **{"sft.enabled": "false"})
    train(split, progress=False, engine_factory=scripted_policy(), tools_factory=tools_factory, stop_after=2)
    assert json.loads(json.dumps(read_metrics(tmp_path / "split" / "metrics.jsonl")[-1]))["step"] == 2
    train(split, progress=False, engine_factory=scripted_policy(), tools_factory=tools_factory)
    a, b = _weights(_last_ckpt(tmp_path / "straight")), _weights(_last_ckpt(tmp_path / "split"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa = torch.load(_last_ckpt(tmp_path / "straight") / "trainer_state.pt", weights_only=False)
    sb = torch.load(_last_ckpt(tmp_path / "split") / "trainer_state.pt", weights_only=False)
    assert sa["state"]["global_step"] == sb["state"]["global_step"] == 3
    assert sa["state"]["cursor"] == sb["state"]["cursor"]
    ma = [r for r in read_metrics(tmp_path / "straight" / "metrics.jsonl") if r.get("phase") == "rl"]
    mb = [r for r in read_metrics(tmp_path / "split" / "metrics.jsonl") if r.get("phase") == "rl"]
    assert [(r["step"], r["reward"], r["grad_norm"]) for r in ma] == [(r["step"], r["reward"], r["grad_norm"]) for r in mb]


class _RecordingGrader:
    def __init__(self):
        self.scorers = None

    async def grade_batch(self, items, scorers=None):
        from tirl.reward.types import Grade

        self.scorers = list(scorers) if scorers is not None else None
        return [Grade(status="correct") for _ in items]


@pytest.mark.parametrize("mode", ["source", "math"])
def test_rollouts_are_graded_by_each_problems_scorer_and_seeded(mode):
    import asyncio

    from tirl.agent.config import AgentConfig, SamplingConfig
    from tirl.agent.loop import AgentLoop, derive_seed
    from tirl.engines.scripted import ScriptedEngine
    from tirl.reward.scorers import MATH, scorer_for
    from tirl.rl.rollouts import rollout_and_grade
    from tests.agent.tiny import tiny_tokenizer
    from tests.rl.conftest import InstantTools

    tok = tiny_tokenizer()
    engine = ScriptedEngine(tok, ["<reason>x</reason><answer>\\boxed{42}</answer>"])
    grader = _RecordingGrader()
    loop = AgentLoop(engine, tok, InstantTools(), AgentConfig(), sampling=SamplingConfig(max_turns=1, max_tokens=64))
    rg = {"id": "rg0", "problem": "What is 40 + 2?", "answer": "42", "source": "reasoning_gym:basic_arithmetic"}
    plain = {"id": "p0", "problem": "What is 6 times 7?", "answer": "42"}
    groups = asyncio.run(rollout_and_grade(loop, grader, [rg, plain], 2, scorer=mode, seed=derive_seed(0)))
    assert [len(g) for g in groups] == [2, 2]
    names = [s.name for s in grader.scorers]
    if mode == "source":
        assert names == [scorer_for(rg, "source").name] * 2 + ["math"] * 2
        assert names[0] != "math"
    else:
        assert grader.scorers == [MATH] * 4
    assert None not in engine.seeds and len(set(engine.seeds)) == 4


def test_sft_text_follows_tool_response_timing():
    from tirl.data.sft import example_texts, load_sft_examples, render_example_text

    ex = load_sft_examples("tool_format", 20, 0)
    timed = [e for e in ex if "Execution succeeded in" in example_texts(e)]
    assert timed  # the SFT data shows run times by default
    for e in timed:
        prompt, segs = render_example_text(e, timing=False)
        text = prompt + "".join(t for t, _ in segs)
        assert "Execution succeeded.\nstdout:" in text and "Execution succeeded in" not in text
        # only the status line changed: the trained (assistant) segments are the same
        _, ref = render_example_text(e)
        assert [t for t, m in segs if m] == [t for t, m in ref if m]

"""Bounded staleness: versions, the stale filter, truncated importance sampling (hand-worked),
the IS-weighted update, the [rollout] checks, and the async trainer's exact resume."""

import copy
import json
import math

import pytest
import torch

from tirl.agent.trajectory import Trajectory, Turn
from tirl.config import ConfigError
from tirl.rl.staleness import drop_stale, staleness_histogram, trajectory_version, truncated_is_weights
from tirl.rl.logprobs import token_logprobs
from tirl.rl.parallel import wrap_policy
from tirl.rl.update import policy_update

from tests.rl.conftest import scripted_policy, tiny_config


def traj(version, reward, turns_versions=None):
    t = Trajectory(prompt_ids=[1, 2], response_ids=[3], response_mask=[1], logprobs=[-1.0], reward=reward)
    t.turns = [Turn(text="x", weight_version=v) for v in (turns_versions or [])]
    if version is not None:
        t.meta["policy_version"] = version
    return t


def test_a_trajectory_counts_as_old_as_its_oldest_turn():
    assert trajectory_version(traj(None, 1.0, ["4", "5"])) == 4
    assert trajectory_version(traj(None, 1.0, [None, "7"])) == 7
    assert trajectory_version(traj(None, 1.0, ["default"])) is None  # SGLang's label is no step
    assert trajectory_version(traj(None, 1.0, [])) is None


def test_drop_stale_by_hand():
    # trainer at version 5, k = 1: versions 4 and 5 stay, 3 goes
    g1 = [traj(5, 1.0), traj(4, 0.0), traj(3, 1.0)]       # one stale; 2 left with signal
    g2 = [traj(3, 1.0), traj(3, 0.0), traj(5, 1.0)]       # 1 left: no group
    g3 = [traj(4, 1.0), traj(4, 0.0)]                     # all fresh: untouched
    g4 = [traj(2, 0.0), traj(5, 1.0), traj(5, 1.0)]       # left all-equal: no signal
    kept, dropped, gdrop = drop_stale([g1, g2, g3, g4], 5, 1)
    assert [len(g) for g in kept] == [2, 2] and kept[1] is g3
    assert dropped == 1 + 2 + 1 and gdrop == 2
    assert drop_stale([g1], 5, 0)[1] == 2  # synchronous: only version 5 is fresh
    assert staleness_histogram([5, 4, 4, None, 3], 5) == {0: 1, 1: 2, 2: 1}
    with pytest.raises(ValueError):
        drop_stale([g1], 5, -1)


def test_truncated_is_weights_by_hand():
    old = torch.tensor([[0.0, math.log(3.0), math.log(0.5), -2.0]])
    beh = torch.tensor([[0.0, 0.0, 0.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = truncated_is_weights(old, beh, mask, cap=2.0)
    # exp(0)=1; exp(log 3)=3 → capped at 2; exp(log .5)=.5; masked → 0
    assert w.tolist()[0] == pytest.approx([1.0, 2.0, 0.5, 0.0])
    assert not w.requires_grad
    with pytest.raises(ValueError, match="cap"):
        truncated_is_weights(old, beh, mask, cap=0.5)


def _groups_and_model():
    from tests.agent.tiny import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_model(tok, hidden=32, layers=1, heads=2, kv_heads=1)
    prompt = tok.encode("What is 6 times 7?")
    out = []
    for i, r in enumerate([1.0, 0.0]):
        resp = tok.encode(f" the answer is {40 + i}")
        out.append(Trajectory(prompt_ids=prompt, response_ids=resp, response_mask=[1] * len(resp),
                              logprobs=[0.0] * len(resp), reward=r))
    return model, tok, [out]


def _model_logprobs(model, t):
    seq = torch.tensor([t.prompt_ids + t.response_ids])
    with torch.no_grad():
        lp, _ = token_logprobs(model, seq, torch.ones_like(seq))
    return lp[0, len(t.prompt_ids) - 1:].tolist()


@pytest.mark.parametrize("shift,weight,capped", [(math.log(1.5), 1.5, 0.0), (math.log(3.0), 2.0, 1.0)])
def test_the_update_weights_each_tokens_loss_by_the_truncated_ratio(shift, weight, capped):
    from tirl.config.sections import RLConfig

    rl = RLConfig(lr=1e-3, warmup_steps=0, micro_batch_tokens=4096, grad_clip=0)
    model, tok, groups = _groups_and_model()
    for t in groups[0]:  # behaviour μ = π_old / e^shift  →  w = min(e^shift, 2)
        t.logprobs = [x - shift for x in _model_logprobs(model, t)]
    plain_m, is_m = (wrap_policy(copy.deepcopy(model), "single") for _ in range(2))
    plain = policy_update(plain_m, torch.optim.SGD(plain_m.parameters(), lr=0.0), copy.deepcopy(groups), rl,
                          step=0, pad_id=0, device="cpu")
    weighted = policy_update(is_m, torch.optim.SGD(is_m.parameters(), lr=0.0), copy.deepcopy(groups), rl,
                             step=0, pad_id=0, device="cpu", is_cap=2.0)
    assert weighted["is_weight_mean"] == pytest.approx(weight, rel=1e-4)
    assert weighted["is_capped_frac"] == pytest.approx(capped)
    assert weighted["loss"] == pytest.approx(weight * plain["loss"], rel=1e-4, abs=1e-7)
    assert weighted["grad_norm"] == pytest.approx(weight * plain["grad_norm"], rel=1e-3)


def test_rollout_settings_that_cannot_work_are_refused_before_any_work():
    from tirl.stack import check_rollout_config

    cfg = tiny_config("/tmp", **{"rollout.max_staleness": 1})
    with pytest.raises(ConfigError, match="dispatch.engines"):
        check_rollout_config(cfg, remote=False)
    check_rollout_config(cfg, remote=True)
    cfg = tiny_config("/tmp", **{"rollout.sync_every": 3, "rollout.max_staleness": 1})
    with pytest.raises(ConfigError, match="max_staleness >= 2"):
        check_rollout_config(cfg, remote=True)


def _step_problems(run_dir):
    out = {}
    for f in sorted((run_dir / "trajectories").glob("step_*.jsonl")):
        recs = [json.loads(x) for x in f.read_text().splitlines()]
        out[f.name] = sorted({r["problem_id"] for r in recs})
    return out


def test_async_k1_runs_and_a_resume_consumes_exactly_the_same_problems(tmp_path, tools_factory):
    """The async pipeline (next step's rollouts during the update, threaded update, IS loss)
    with a scripted engine: 3 steps straight == 2 steps, interruption, resume for 1."""
    from tirl.rl.trainer import train

    extra = {"rollout.max_staleness": 1, "sft.enabled": "false", "rl.save_trajectories": 64,
             "rl.checkpoint_every": 1}
    straight = tiny_config(tmp_path, name="straight", **extra)
    r = train(straight, progress=False, engine_factory=scripted_policy(), tools_factory=tools_factory)
    assert r["global_step"] == 3
    cut = tiny_config(tmp_path, name="cut", **extra)
    train(cut, progress=False, engine_factory=scripted_policy(), tools_factory=tools_factory, stop_after=2)
    # a crash after step 2 resumes from step 1's checkpoint, written while step 2's rollouts
    # were already running: step 2 is redone on exactly the problems it had
    resumed = tiny_config(tmp_path, name="cut", **extra, **{"run.resume_from": "step_000001"})
    train(resumed, progress=False, engine_factory=scripted_policy(), tools_factory=tools_factory)
    a, b = _step_problems(tmp_path / "straight"), _step_problems(tmp_path / "cut")
    assert list(a) == ["step_000001.jsonl", "step_000002.jsonl", "step_000003.jsonl"]
    assert a == b
    recs = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    rl = [x for x in recs if x.get("phase") == "rl"]
    assert len(rl) == 3 and all("time_trainer_idle" in x and "stale_dropped" in x for x in rl)
    assert all(x.get("is_weight_mean") is not None for x in rl if x.get("policy_tokens"))


async def test_a_retired_engine_stays_out_when_its_metrics_answer_again():
    from tirl.dispatch.dispatcher import Dispatcher
    from tirl.engines.scripted import ScriptedEngine

    from tests.agent.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    engines = [ScriptedEngine(tok, ["a"]), ScriptedEngine(tok, ["b"])]
    d = Dispatcher(engines, "round_robin", capacity_tokens=10_000)
    d._drain(1, "a transient failure")
    d._undrain(1)  # what a good metrics reading does
    assert d.loads[1].healthy
    d.retire(0, "weight version 3 not loaded")
    d._undrain(0)
    assert not d.loads[0].healthy and d.stats.retired == 1
    for _ in range(3):
        await d.generate([1, 2, 3], 4, 0.0)
    assert engines[0].calls == 0 and engines[1].calls == 3

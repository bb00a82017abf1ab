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

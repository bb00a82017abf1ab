"""Disaggregated training: two `tirl serve` processes on loopback + the trainer (slow).

Synchronous (max_staleness = 0) for 3 steps: after every push each server's log-probs for a
fixed prompt equal the trainer's own to 1e-4, and every trajectory's server-stamped version
is the step it was used in. Then one server is killed during a step: the step completes on
the other, nothing is rewarded 0 for it, and the dead server is reported and retired.

The servers are `python -m tirl.cli serve` processes (with the weight-update routes). Rewards come from a fake judge (alternating 1/0) so a
random tiny policy still produces groups with signal, i.e. real updates.
"""

import asyncio
import json

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture
def model_dir(tmp_path):
    from tirl.agent.format import tokenizer_sample_texts
    from tirl.engines.config import ModelConfig
    from tirl.engines.models import load_model

    torch.manual_seed(0)
    model, tok = load_model(ModelConfig(path="scratch", vocab_size=320, hidden_size=32, num_layers=1,
                                        num_heads=2, max_position=512), texts=tokenizer_sample_texts())
    d = tmp_path / "tiny"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture
def servers(model_dir, tmp_path):
    from tirl.engines.launch import launch_servers

    with launch_servers(model_dir, 2, tmp_path, max_batch=8, max_seq_len=512, start_timeout_s=150) as srv:
        yield srv.procs, srv.urls


def disagg_config(tmp_path, model_dir, urls, name, **extra):
    from tirl.config import load_config

    overrides = [
        f"run.output_dir={tmp_path}", f"run.name={name}", "run.seed=3", f"model.path={model_dir}", "model.served_name=tiny",
        "data.size=64", "data.held_out_size=2", "sft.enabled=false",
        "rl.algorithm=grpo", "rl.problems_per_step=2", "rl.group_size=4", "rl.lr=1e-2",
        "rl.warmup_steps=0", "rl.micro_batch_tokens=2048", "rl.checkpoint_every=100", "rl.plot_every=100",
        "rl.max_refill_rounds=0", "rl.save_trajectories=64", "stages.0.steps=3",
        "sampling.max_tokens=24", "sampling.max_turns=1",
        "eval.k=1", "eval.sampling.max_tokens=16", "eval.sampling.max_turns=1",
        "dispatch.metrics_interval_s=0.2", "dispatch.fail_after=2",
        "dispatch.engines=[" + ",".join(f'"{u}"' for u in urls) + "]",
    ] + [f"{k}={v}" for k, v in extra.items()]
    return load_config("demo", overrides)


def fake_judge(monkeypatch, on_call=None):
    """Alternating rewards for every graded (not infra-failed) trajectory."""
    import tirl.rl.trainer as T

    real = T.rollout_and_grade
    calls = {"n": 0}

    async def judged(loop, grader, problems, n, **kw):
        calls["n"] += 1
        if on_call:
            on_call(calls["n"])
        groups = await real(loop, grader, problems, n, **kw)
        for g in groups:
            for i, t in enumerate(g):
                if t.reward is not None:
                    t.reward = float(i % 2 == 0)
        return groups

    monkeypatch.setattr(T, "rollout_and_grade", judged)


def probe_after_every_sync(monkeypatch, record, tokenizer):
    """After each push: every server's log-probs for a fixed prompt vs the trainer's own."""
    from tirl.engines.openai import OpenAIEngine
    from tirl.rl.servers import ServerWeights

    real = ServerWeights.push

    async def probed(self, model, version, step, full_weights):
        was_dirty = self.dirty
        await real(self, model, version, step, full_weights)
        if not was_dirty or self.dirty:
            return
        prompt = tokenizer.encode("What is 6 times 7?")
        for url in list(self.urls):
            eng = OpenAIEngine(url, "tiny", require_logprobs=True)
            comp = await eng.generate(prompt, 6, 0.0)
            await eng.aclose()
            seq = torch.tensor([prompt + comp.token_ids])
            with torch.no_grad():
                lp = torch.log_softmax(model(seq).logits[0, :-1].float(), -1)
            own = [float(lp[len(prompt) - 1 + i, t]) for i, t in enumerate(comp.token_ids)]
            diff = max(abs(a - b) for a, b in zip(own, comp.logprobs))
            record.append((step, url, comp.meta["weight_version"], diff))

    monkeypatch.setattr(ServerWeights, "push", probed)


def read(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_three_synchronous_steps_on_two_servers(tmp_path, model_dir, servers, monkeypatch, tools_factory):
    from tirl.rl.trainer import train

    procs, urls = servers
    fake_judge(monkeypatch)
    probes: list = []
    from transformers import AutoTokenizer

    probe_after_every_sync(monkeypatch, probes, AutoTokenizer.from_pretrained(model_dir))
    cfg = disagg_config(tmp_path, model_dir, urls, "sync")
    res = train(cfg, progress=False, tools_factory=tools_factory)
    assert res["global_step"] == 3
    # pushed versions 0 (before the first rollouts), 1, 2, 3; each server answered with each
    assert sorted({(s, v) for s, _, v, _ in probes}) == [(0, "0"), (1, "1"), (2, "2"), (3, "3")]
    assert len(probes) == 8 and max(d for *_, d in probes) < 1e-4
    run = tmp_path / "sync"
    for step in (1, 2, 3):
        recs = read(run / "trajectories" / f"step_{step:06d}.jsonl")
        assert recs and all(r["policy_version"] == step - 1 for r in recs)
        assert all(t["weight_version"] == str(step - 1) for r in recs for t in r["turns"])
    rl = [m for m in read(run / "metrics.jsonl") if m.get("phase") == "rl"]
    assert [m["policy_version"] for m in rl] == [1, 2, 3]
    assert all(m["stale_dropped"] == 0 and m["staleness_hist"] == {"0": m["trajectories_kept"]} or
               set(m["staleness_hist"]) == {"0"} for m in rl)
    assert all(m["sync_seconds"] > 0 and m["sync_bytes"] > 0 and m["servers_in_rotation"] == 2 for m in rl)
    assert all(m["policy_tokens"] > 0 for m in rl)  # real updates happened


def test_a_server_killed_during_a_step_is_reported_and_the_step_completes(tmp_path, model_dir, servers,
                                                                         monkeypatch, tools_factory, caplog):
    from tirl.rl.trainer import train

    procs, urls = servers

    def kill_during_second_step(call):
        if call == 3:  # 1 = held-out eval, 2 = step 1, 3 = step 2
            asyncio.get_running_loop().call_later(0.05, procs[0].kill)

    fake_judge(monkeypatch, kill_during_second_step)
    cfg = disagg_config(tmp_path, model_dir, urls, "kill")
    with caplog.at_level("WARNING"):
        res = train(cfg, progress=False, tools_factory=tools_factory)
    assert res["global_step"] == 3 and procs[0].poll() is not None
    run = tmp_path / "kill"
    for step in (1, 2, 3):
        recs = read(run / "trajectories" / f"step_{step:06d}.jsonl")
        assert all(r["reward"] is None for r in recs if r["grade_status"] == "infra_error")
    rl = [m for m in read(run / "metrics.jsonl") if m.get("phase") == "rl"]
    assert rl[1]["trajectories_kept"] > 0  # the step finished on the other server
    assert rl[-1]["servers_in_rotation"] == 1 and rl[-1]["sync_failed_servers"] >= 1
    assert any(urls[0] in r.getMessage() and "out of rotation" in r.getMessage() for r in caplog.records)


def test_async_k1_on_two_servers_never_uses_rollouts_older_than_one_version(tmp_path, model_dir, servers,
                                                                             monkeypatch, tools_factory):
    from tirl.rl.trainer import train

    procs, urls = servers
    fake_judge(monkeypatch)
    cfg = disagg_config(tmp_path, model_dir, urls, "async", **{"rollout.max_staleness": 1})
    assert train(cfg, progress=False, tools_factory=tools_factory)["global_step"] == 3
    run = tmp_path / "async"
    rl = [m for m in read(run / "metrics.jsonl") if m.get("phase") == "rl"]
    assert set(rl[0]["staleness_hist"]) == {"0"}  # the first step is not prefetched
    for m in rl:
        assert m["staleness_max"] <= 1 and m["stale_dropped"] == 0
        assert m["policy_tokens"] == 0 or m["is_weight_mean"] > 0
    for step in (2, 3):  # prefetched during the previous update: made by version step-2 or step-1
        recs = read(run / "trajectories" / f"step_{step:06d}.jsonl")
        assert recs and {r["policy_version"] for r in recs} <= {step - 2, step - 1}

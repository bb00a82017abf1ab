"""Resume that cannot lie: a changed config is refused (or recorded), a corrupt checkpoint is
named, a restarted SFT leaves no doubled metrics, bad start-up inputs fail before any work."""

import json

import pytest

from tests.rl.conftest import scripted_policy, tiny_config
from tirl.config import ConfigError
from tirl.rl.checkpoint import CheckpointError
from tirl.rl.checkpoint import config_changes
from tirl.rl.trainer import train
from tirl.runs import read_metrics


def _run(cfg, tools_factory, **kw):
    return train(cfg, progress=False, engine_factory=scripted_policy(), tools_factory=tools_factory, **kw)


def test_config_changes_lists_dotted_keys_and_stage_entries():
    old = {"rl": {"lr": 1e-3, "group_size": 4}, "stages": [{"name": "s", "steps": 3}]}
    new = {"rl": {"lr": 2e-3, "group_size": 4}, "stages": [{"name": "s", "steps": 5}], "run": {"seed": 1}}
    assert config_changes(old, new) == ["rl.lr", "run", "stages.0.steps"]


@pytest.mark.slow
def test_resume_refuses_a_changed_config_unless_forced_and_records_it(tmp_path, tools_factory):
    base = {"sft.enabled": "false"}
    _run(tiny_config(tmp_path, "r", **base), tools_factory, stop_after=1)
    with pytest.raises(ConfigError, match=r"changed: rl\.lr"):
        _run(tiny_config(tmp_path, "r", **base, **{"rl.lr": "0.5"}), tools_factory)
    # logging cadence (and step counts) may change: the run continues
    res = _run(tiny_config(tmp_path, "r", **base, **{"rl.plot_every": 2}), tools_factory, stop_after=2)
    assert res["global_step"] == 2
    changes = [json.loads(line) for line in (tmp_path / "r" / "config_changes.jsonl").read_text().splitlines()]
    assert changes[-1]["changed"] == ["rl.plot_every"]
    # --force (run.allow_config_change) resumes across any change and records it
    forced = tiny_config(tmp_path, "r", **base, **{"rl.lr": "0.5", "run.allow_config_change": "true"})
    assert _run(forced, tools_factory)["global_step"] == 3
    last = json.loads((tmp_path / "r" / "config_changes.jsonl").read_text().splitlines()[-1])
    assert "rl.lr" in last["changed"]


@pytest.mark.slow
def test_a_truncated_checkpoint_is_named_and_an_earlier_one_offered(tmp_path, tools_factory):
    cfg = tiny_config(tmp_path, "c", **{"sft.enabled": "false", "rl.checkpoint_every": 1, "stages.0.steps": 3})
    _run(cfg, tools_factory, stop_after=2)
    ck = tmp_path / "c" / "checkpoints"
    latest = ck / (ck / "latest").read_text().strip()
    state = latest / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(CheckpointError) as err:
        _run(cfg, tools_factory)
    msg = str(err.value)
    assert str(state) in msg and "run.resume_from='step_000001'" in msg
    # the offered checkpoint works
    res = _run(tiny_config(tmp_path, "c", **{"sft.enabled": "false", "rl.checkpoint_every": 1,
                                              "stages.0.steps": 3, "run.resume_from": "step_000001"}),
               tools_factory)
    assert res["global_step"] == 3


@pytest.mark.slow
def test_a_restarted_sft_does_not_double_its_metrics(tmp_path, tools_factory):
    cfg = tiny_config(tmp_path, "s", **{"stages.0.steps": 1})
    run = tmp_path / "s"
    run.mkdir()
    # what a run killed during SFT leaves: SFT lines, no checkpoint
    (run / "metrics.jsonl").write_text('{"phase": "sft", "sft_step": 10, "sft_loss": 3.0, "step": 0}\n'
                                       '{"phase": "sft", "sft_step": 20, "sft_lo')
    _run(cfg, tools_factory)
    recs = read_metrics(run / "metrics.jsonl")
    steps = [r["sft_step"] for r in recs if r.get("phase") == "sft"]
    assert steps == sorted(set(steps)), f"SFT steps repeated: {steps}"


def test_a_missing_model_path_fails_before_any_directory(tmp_path):
    cfg = tiny_config(tmp_path, "m", **{"model.path": str(tmp_path / "no-such-model")})
    with pytest.raises(ConfigError, match="neither a local path nor a model in the Hugging Face cache"):
        train(cfg, progress=False)
    assert not (tmp_path / "m").exists()

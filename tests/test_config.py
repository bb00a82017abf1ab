"""Config loading, overrides and every error path."""

from pathlib import Path

import pytest

from tirl.config import (Config, ConfigError, available_recipes, config_to_toml, load_config,
                         parse_override)


def test_defaults_are_the_papers():
    cfg = load_config(None)
    assert cfg.rl.clip_low == 0.2 and cfg.rl.clip_high == 0.28
    assert cfg.rl.group_size == 16 and cfg.rl.oversample == 2
    assert cfg.eval.temperature == 0.6 and cfg.eval.k == 16 and cfg.eval.max_turns == 30


@pytest.mark.parametrize("recipe", ["demo", "rstar2-14b", "smollm2-135m"])
def test_bundled_recipes_validate(recipe):
    assert recipe in available_recipes()
    cfg = load_config(recipe)
    assert isinstance(cfg, Config)
    assert cfg.stages, "every recipe has at least one RL stage"


def test_rstar2_recipe_carries_paper_settings():
    cfg = load_config("rstar2-14b")
    assert [s.steps for s in cfg.stages] == [300, 85, 125]
    assert [s.max_tokens for s in cfg.stages] == [8192, 12288, 12288]
    assert cfg.stages[2].max_turns == 15 and cfg.stages[2].reset_optimizer
    assert cfg.rl.problems_per_step == 512 and cfg.rl.lr == 1e-6


@pytest.mark.parametrize(
    "text, keys, value",
    [
        ("rl.lr=1e-6", ["rl", "lr"], 1e-6),
        ("run.name=foo", ["run", "name"], "foo"),
        ("run.name=\"123\"", ["run", "name"], "123"),
        ("rl.group_size=8", ["rl", "group_size"], 8),
        ("agent.stateful_tool=true", ["agent", "stateful_tool"], True),
        ('eval.benchmarks=["aime24", "math500"]', ["eval", "benchmarks"], ["aime24", "math500"]),
        ("data.path=../x/y.jsonl", ["data", "path"], "../x/y.jsonl"),
    ],
)
def test_parse_override(text, keys, value):
    assert parse_override(text) == (keys, value)


def test_overrides_apply_and_validate():
    cfg = load_config("rstar2-14b", ["rl.lr=0.01", "stages.1.steps=3", "run.name=x"])
    assert cfg.rl.lr == 0.01 and cfg.stages[1].steps == 3 and cfg.run.name == "x"


def test_override_coerces_int_to_float():
    assert load_config(None, ["sandbox.timeout_s=3"]).sandbox.timeout_s == 3.0


@pytest.mark.parametrize(
    "override, needles",
    [
        ("rl.lrr=1", ["rl.lrr", "Did you mean 'lr'"]),
        ("rll.lr=1", ["rll", "Did you mean 'rl'"]),
        ("rl.lr=-1", ["rl.lr", "-1", "greater than 0"]),
        ("rl.lr=fast", ["rl.lr", "fast"]),
        ("rl.roc_mode=best", ["rl.roc_mode", "best", "weighted", "topk"]),
        ("rl.group_size=1", ["rl.group_size", "greater than or equal to 2"]),
        ("agent.max_turns=2.5", ["agent.max_turns", "2.5"]),
        ("rl.lr", ["section.key=value"]),
        ("=3", ["empty key"]),
        ("rl.lr.x=1", ["rl.lr", "not a section"]),
        ("stages.5.steps=1", ["stages", "index"]),
        ("stages.0.stepz=1", ["stepz", "Did you mean 'steps'"]),
    ],
)
def test_override_errors_name_key_and_value(override, needles):
    with pytest.raises(ConfigError) as exc:
        load_config("demo", [override])
    msg = str(exc.value)
    for n in needles:
        assert n in msg, (n, msg)


def test_unknown_key_in_file_suggests(tmp_path: Path):
    f = tmp_path / "c.toml"
    f.write_text("[rl]\ngroup_sise = 4\n[[stages]]\nstepss = 3\n")
    with pytest.raises(ConfigError) as exc:
        load_config(f)
    msg = str(exc.value)
    assert "rl.group_sise" in msg and "group_size" in msg
    assert "stages.0.stepss" in msg and "'steps'" in msg


def test_bad_toml_and_missing_file(tmp_path: Path):
    f = tmp_path / "bad.toml"
    f.write_text("[rl\nlr = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(f)
    with pytest.raises(ConfigError, match="not found.*demo"):
        load_config(tmp_path / "nope.toml")


def test_resolved_config_roundtrips(tmp_path: Path):
    cfg = load_config("demo", ["rl.lr=0.5"])
    f = tmp_path / "resolved.toml"
    f.write_text(config_to_toml(cfg))
    assert load_config(f) == cfg

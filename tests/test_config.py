"""Config loading, overrides and every error path."""

from pathlib import Path

import pytest

from tirl.config import (Config, ConfigError, available_recipes, config_to_toml, load_config,
                         parse_override, resolve_sampling)


def test_defaults_are_the_papers():
    cfg = load_config(None)
    assert cfg.rl.clip_low == 0.2 and cfg.rl.clip_high == 0.28
    assert cfg.rl.group_size == 16 and cfg.rl.oversample == 2
    ev = resolve_sampling(cfg, "eval")
    assert ev.temperature == 0.6 and cfg.eval.k == 16 and ev.max_turns == 30 and ev.max_tokens == 30000
    tr = resolve_sampling(cfg, "train")
    assert tr.temperature == 1.0 and tr.max_turns == 10 and tr.max_tokens == 8192


@pytest.mark.parametrize("recipe", ["demo", "rstar2-14b", "smollm2-135m"])
def test_bundled_recipes_validate(recipe):
    assert recipe in available_recipes()
    cfg = load_config(recipe)
    assert isinstance(cfg, Config)
    assert cfg.stages, "every recipe has at least one RL stage"


def test_rstar2_recipe_carries_paper_settings():
    cfg = load_config("rstar2-14b")
    assert [s.steps for s in cfg.stages] == [300, 85, 125]
    per_stage = [resolve_sampling(cfg, "train", s) for s in cfg.stages]
    assert [s.max_tokens for s in per_stage] == [8192, 12288, 12288]
    assert [s.max_turns for s in per_stage] == [10, 10, 15] and cfg.stages[2].reset_optimizer
    assert resolve_sampling(cfg, "eval").max_tokens == 30000
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
        ("sampling.max_turns=2.5", ["sampling.max_turns", "2.5"]),
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


def test_stage_and_eval_override_only_the_keys_they_set():
    cfg = load_config("demo")
    base = resolve_sampling(cfg, "train", 0)
    ev = resolve_sampling(cfg, "eval")
    assert (base.max_turns, base.max_tokens, base.temperature) == (2, 96, 1.0)
    assert (ev.max_turns, ev.max_tokens, ev.temperature) == (2, 96, 0.0)  # only temperature set
    cfg = load_config("demo", ["stages.0.sampling.max_tokens=64", "sampling.top_p=0.9"])
    st = resolve_sampling(cfg, "train", 0)
    assert st.max_tokens == 64 and st.top_p == 0.9 and st.max_turns == 2


def _walk_fields(model, path=""):
    from tirl.config import _submodel

    for name, f in model.model_fields.items():
        yield f"{path}{name}", f
        sub, _ = _submodel(f.annotation)
        if sub is not None:
            yield from _walk_fields(sub, f"{path}{name}.")


def test_every_setting_is_described():
    missing = [k for k, f in _walk_fields(Config) if not (f.description or "").strip()]
    assert not missing, f"config fields without a description: {missing}"


def test_print_config_shows_descriptions_and_round_trips():
    import tomllib

    from tirl.config import validate_config

    for recipe in ("demo", "rstar2-14b"):
        cfg = load_config(recipe)
        text = config_to_toml(cfg, comments=True)
        assert "# Assistant turns per trajectory (T in the paper)." in text
        assert validate_config(tomllib.loads(text)) == cfg


def test_empty_config_file_is_refused(tmp_path):
    f = tmp_path / "empty.toml"
    f.write_text("# nothing here\n")
    with pytest.raises(ConfigError, match="empty"):
        load_config(f)


def test_shipped_configs_repeat_no_sampling_key():
    """One place per setting: a stage or eval override never restates [sampling]'s value."""
    for recipe in available_recipes():
        cfg = load_config(recipe)
        base = cfg.sampling.model_dump()
        for sec in [s.sampling for s in cfg.stages]:
            same = {k for k, v in sec.model_dump(exclude_none=True).items() if base[k] == v}
            assert not same, f"{recipe}: a stage repeats {same}"

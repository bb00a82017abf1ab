"""Typed configuration: TOML files plus ``section.key=value`` overrides, validated up front.

A run's whole configuration is one :class:`Config`. The parts own their sections
(``tirl/<part>/config.py``: sandbox, reward, model, dispatch, agent, sampling, data); the
applications' sections (run, rl, train, sft, stages, eval, serve) are in :mod:`tirl.config.sections`.
This package composes them and does the loading:

* :func:`load_config` reads a TOML file, applies command-line overrides, and validates the
  result with pydantic before any work starts.
* Every error — an unknown key, a wrong type, an out-of-range value, a malformed override —
  raises :class:`ConfigError` whose message names the key, the bad value and what is
  allowed, and suggests the closest key for a typo.
* :func:`resolve_sampling` gives the one :class:`~tirl.agent.config.SamplingConfig` of a
  phase: ``[sampling]``, overridden by the stage's or evaluation's ``sampling`` table.
* :func:`config_to_toml` writes the resolved config, optionally with every field's
  description as a comment (``--print-config``), so a config documents itself.

What it does not do: environment-variable interpolation, includes, or merging several
files. One file plus overrides is the whole model, which keeps a run reproducible from the
``config.toml`` written into its run directory.
"""

from __future__ import annotations

import difflib
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, Field, ValidationError

from tirl.agent.config import AgentConfig, SamplingConfig
from tirl.config.sections import (EvalConfig, RLConfig, RolloutConfig, RunConfig, ServeConfig,
                                  SFTConfig, StageConfig, TrainConfig)
from tirl.data.config import DataConfig
from tirl.dispatch.config import DispatchConfig
from tirl.engines.config import ModelConfig
from tirl.reward.config import RewardConfig
from tirl.sandbox.config import SandboxConfig
from tirl.schema import Section

Phase = Literal["train", "eval", "chat", "serve"]


class Config(Section):
    """The whole configuration of a run (training, evaluation, chat, serving or the demo)."""

    run: RunConfig = Field(default_factory=RunConfig, description="Where outputs go, seed, device.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The policy model and its tokenizer.")
    data: DataConfig = Field(default_factory=DataConfig, description="Training problems and benchmark files.")
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig, description="The code-execution tool.")
    reward: RewardConfig = Field(default_factory=RewardConfig, description="Answer grading.")
    agent: AgentConfig = Field(default_factory=AgentConfig, description="How a rollout is rendered.")
    sampling: SamplingConfig = Field(
        default_factory=SamplingConfig,
        description="How rollouts are sampled in training (stages and eval may override keys).",
    )
    dispatch: DispatchConfig = Field(
        default_factory=DispatchConfig, description="Inference servers for rollouts and how work is spread."
    )
    rl: RLConfig = Field(default_factory=RLConfig, description="GRPO-RoC.")
    train: TrainConfig = Field(
        default_factory=TrainConfig, description="Distributed strategy and mixed precision of training."
    )
    sft: SFTConfig = Field(default_factory=SFTConfig, description="The non-reasoning SFT stage.")
    stages: list[StageConfig] = Field(default_factory=list, description="The RL stages, in order.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation (tirl eval, held-out).")
    serve: ServeConfig = Field(default_factory=ServeConfig, description="tirl serve.")
    rollout: RolloutConfig = Field(
        default_factory=RolloutConfig,
        description="Rollouts on [dispatch] engines during training: weight sync, staleness.",
    )


def resolve_sampling(cfg: Config, phase: Phase, stage: StageConfig | int | None = None) -> SamplingConfig:
    """The sampling settings of a phase: ``[sampling]`` with the stage's (train) or the
    evaluation's (eval, and held-out evaluation during training) overrides applied."""
    base = cfg.sampling
    if phase == "eval":
        return base.with_overrides(cfg.eval.sampling)
    if phase == "train" and stage is not None:
        st = cfg.stages[stage] if isinstance(stage, int) else stage
        return base.with_overrides(st.sampling)
    return base


class ConfigError(ValueError):
    """A configuration problem a user can fix; the message says what and how."""


# ---------------------------------------------------------------------------------------
# overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into a key path and a value parsed as TOML (else a string).

    ``rl.lr=1e-6`` gives a float, ``run.name=foo`` a string, ``eval.benchmarks=["aime24"]``
    a list. Quoting is only needed for strings that would otherwise parse as another type.
    """
    if "=" not in text:
        raise ConfigError(
            f"override {text!r} is not of the form section.key=value (e.g. rl.lr=1e-6)"
        )
    key, raw = text.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(f"override {text!r} has an empty key part; write section.key=value")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return parts, value


def _closest(name: str, choices: list[str]) -> str:
    match = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" Did you mean {match[0]!r}?" if match else ""


def _submodel(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(model class, is_list) for a field annotation of ``Model`` or ``list[Model]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    args = getattr(annotation, "__args__", ())
    if getattr(annotation, "__origin__", None) is list and args:
        inner = args[0]
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner, True
    return None, False


def _model_for(path: list[str]) -> type[BaseModel] | None:
    """The pydantic model class at a key path (list indices are skipped); None at a leaf."""
    model: type[BaseModel] | None = Config
    for part in path:
        if part.isdigit():
            continue
        if model is None or part not in model.model_fields:
            return None
        model, _ = _submodel(model.model_fields[part].annotation)
    return model


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``data[path...] = value``, checking each key against the schema on the way.

    List sections are addressed by index: ``stages.0.steps=10``.
    """
    node: Any = data
    model: type[BaseModel] | None = Config
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        shown = ".".join(path[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(
                    f"override {'.'.join(path)!r}: {'.'.join(path[:depth])!r} is a list of "
                    f"{len(node)} entries; address one by index, e.g. "
                    f"{'.'.join(path[:depth])}.0.<key>=value"
                )
            if last:
                node[int(part)] = value
                return
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(
                f"override {'.'.join(path)!r}: {'.'.join(path[:depth])!r} is a value, not a section"
            )
        if model is not None:
            if part not in model.model_fields:
                known = sorted(model.model_fields)
                where = ".".join(path[:depth]) or "the top level"
                raise ConfigError(
                    f"unknown config key {shown!r} (in {where}).{_closest(part, known)} "
                    f"Known keys: {', '.join(known)}"
                )
            model, is_list = _submodel(model.model_fields[part].annotation)
        else:
            is_list = False
        if last:
            node[part] = value
            return
        if part not in node:
            if is_list:
                raise ConfigError(
                    f"override {'.'.join(path)!r}: {shown!r} has no entries in the config "
                    "file to override; define them in the TOML file"
                )
            node[part] = {}
        node = node[part]


# ---------------------------------------------------------------------------------------
# validation errors in words


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        loc = [str(x) for x in e["loc"]]
        key = ".".join(loc)
        kind = e["type"]
        if kind == "extra_forbidden":
            model = _model_for(loc[:-1])
            known = sorted(model.model_fields) if model is not None else []
            lines.append(
                f"  - unknown key {key!r}.{_closest(loc[-1], known)}"
                + (f" Known keys here: {', '.join(known)}" if known else "")
            )
            continue
        value = e.get("input")
        shown = json.dumps(value) if isinstance(value, (int, float, str, bool, list)) else repr(value)
        allowed = e["msg"]
        ctx = e.get("ctx") or {}
        if "expected" in ctx:
            allowed = f"expected one of {ctx['expected']}"
        lines.append(f"  - {key} = {shown}: {allowed}")
    return "\n".join(lines)


def validate_config(data: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def find_config_file(name_or_path: str | Path) -> Path:
    """A path as given, or a bundled recipe name (``demo`` → ``configs/demo.toml``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for base in (Path.cwd() / "configs", Path(__file__).resolve().parents[2] / "configs"):
        cand = base / (p.name if p.suffix == ".toml" else f"{p.name}.toml")
        if cand.is_file():
            return cand
    raise ConfigError(
        f"config file {str(name_or_path)!r} not found; give a path to a TOML file or a recipe "
        f"name from configs/ ({', '.join(available_recipes()) or 'none found'})"
    )


def available_recipes() -> list[str]:
    d = Path(__file__).resolve().parents[2] / "configs"
    return sorted(p.stem for p in d.glob("*.toml")) if d.is_dir() else []


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a TOML file (or defaults when None), apply overrides, validate, return it."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        file = find_config_file(path)
        source = str(file)
        try:
            data = tomllib.loads(file.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{file}: not valid TOML: {err}") from None
        if not data:
            raise ConfigError(
                f"{file} is empty: a config names at least one setting (see configs/ for "
                "recipes); to run on defaults, give no config file"
            )
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(data, keys, value)
    if overrides:
        source += " + overrides " + " ".join(overrides)
    return validate_config(data, source)




def config_to_toml(cfg: Config, comments: bool = False) -> str:
    """The resolved config as TOML (None values are omitted: TOML has no null). With
    ``comments``, each key is preceded by its field description."""
    data = cfg.model_dump(mode="json", exclude_none=True)
    if not comments:
        return tomli_w.dumps(data)
    return _commented(type(cfg), data)


def _toml_value(value: Any) -> str:
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def _describe(model: type[BaseModel], name: str) -> str:
    return (model.model_fields[name].description or "").replace("\n", " ")


def _commented(model: type[BaseModel], data: dict[str, Any], prefix: str = "") -> str:
    """TOML with descriptions: scalars first, then sub-tables, then arrays of tables."""
    lines: list[str] = []
    tables: list[tuple[str, type[BaseModel], dict]] = []
    arrays: list[tuple[str, type[BaseModel], list]] = []
    for name, value in data.items():
        sub, is_list = _submodel(model.model_fields[name].annotation)
        if sub is not None and is_list:
            arrays.append((name, sub, value))
        elif sub is not None:
            tables.append((name, sub, value))
        else:
            desc = _describe(model, name)
            if desc:
                lines.append(f"# {desc}")
            lines.append(f"{name} = {_toml_value(value)}")
    out = "\n".join(lines)
    for name, sub, value in tables:
        key = f"{prefix}{name}"
        desc = _describe(model, name)
        block = (f"# {desc}\n" if desc else "") + f"[{key}]\n" + _commented(sub, value, key + ".")
        out += ("\n\n" if out else "") + block.rstrip()
    for name, sub, items in arrays:
        key = f"{prefix}{name}"
        desc = _describe(model, name)
        for item in items:
            block = (f"# {desc}\n" if desc else "") + f"[[{key}]]\n" + _commented(sub, item, key + ".")
            out += ("\n\n" if out else "") + block.rstrip()
    return out + ("\n" if not prefix else "")

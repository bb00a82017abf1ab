"""What every command shares: ``[CONFIG] [section.key=value ...]`` arguments, flags as sugar
for overrides, and ``--print-config``."""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any, Iterable

_OVERRIDE = re.compile(r"^([A-Za-z_]\w*)(\.[\w-]+)+=")


def add_config_args(p: argparse.ArgumentParser, *, positional: str = "[CONFIG]") -> None:
    """``items`` (the config and overrides) and ``--print-config``."""
    p.add_argument("items", nargs="*", metavar=f"{positional} [KEY=VALUE ...]",
                   help="a TOML config (or recipe name from configs/) and section.key=value overrides, "
                        "e.g. rl.lr=1e-6 stages.0.steps=10")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config, each setting with its description, and exit")


def split_items(items: Iterable[str]) -> tuple[list[str], list[str]]:
    """(positional arguments, ``section.key=value`` overrides) — an override names a known
    config section before its first dot."""
    from tirl.config import Config

    pos, ov = [], []
    for it in items:
        m = _OVERRIDE.match(it)
        (ov if m and m.group(1) in Config.model_fields else pos).append(it)
    return pos, ov


def toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string


def sugar(pairs: Iterable[tuple[Any, str]], *, strings: bool = False) -> list[str]:
    """Overrides from flag values that were given: ``[(value, "section.key"), ...]``."""
    out = []
    for value, key in pairs:
        if value is None:
            continue
        if isinstance(value, bool):
            out.append(f"{key}={'true' if value else 'false'}")
        elif strings or isinstance(value, str):
            out.append(f"{key}={toml_str(str(value))}")
        else:
            out.append(f"{key}={value}")
    return out


def resolve_config(args: argparse.Namespace, flag_overrides: list[str] = (), *, default: str | None = None,
                   config_required: bool = False, extra_positionals: int = 0):
    """The command's Config: the file (first positional, else ``default``), then the flags'
    overrides, then the explicit ``section.key=value`` items. Returns (cfg, positionals)."""
    from tirl.config import ConfigError, load_config

    pos, ov = split_items(args.items)
    config = default
    if len(pos) > extra_positionals:
        config = pos.pop(0)
    if len(pos) > extra_positionals:
        raise ConfigError(f"unexpected argument(s) {pos[extra_positionals:]}: give one CONFIG, then "
                          "section.key=value overrides")
    if config is None and config_required:
        from tirl.config import available_recipes

        raise ConfigError(f"give a config: a TOML file or a recipe name ({', '.join(available_recipes())})")
    return load_config(config, list(flag_overrides) + ov), pos


def print_config(cfg) -> int:
    from tirl.config import config_to_toml

    sys.stdout.write(config_to_toml(cfg, comments=True))
    return 0

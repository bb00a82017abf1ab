"""`tirl doctor`: what this machine has, and which features of tirl can run here.

Versions (Python, torch, transformers, math-verify), CPU count, GPUs, redis-server; then one
line per feature saying whether it can run and, if not, what is missing. A part of tirl adds
its own feature checks in ``tirl/<part>/health.py`` as ``checks() -> list[Check]``
(:class:`tirl.health.Check`).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import json
import os
import platform
import shutil
import sys
from dataclasses import asdict

from tirl.health import Check

PARTS = ["sandbox", "reward", "agent", "engines", "dispatch", "rl", "eval", "data"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="report versions, hardware and which features can run here")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_doctor)


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def environment() -> dict:
    gpus: list[str] = []
    torch_v = _version("torch")
    if torch_v:
        try:
            import torch

            if torch.cuda.is_available():
                gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        except Exception as err:  # a broken torch install is worth reporting, not crashing on
            gpus = [f"torch import failed: {err}"]
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch_v,
        "transformers": _version("transformers"),
        "math-verify": _version("math-verify"),
        "reasoning-gym": _version("reasoning-gym"),
        "gpus": gpus,
        "redis-server": shutil.which("redis-server"),
    }


def feature_checks(env: dict) -> list[Check]:
    checks = [
        Check("torch (training, local models)", env["torch"] is not None,
              env["torch"] or "missing: run `make venv` (installs torch 2.13.0 CPU) or install your own"),
        Check("GPU training", bool(env["gpus"]) and "failed" not in str(env["gpus"]),
              ", ".join(env["gpus"]) or "no CUDA device: CPU only (the demo runs on CPU)"),
        Check("math-verify (symbolic grading)", env["math-verify"] is not None,
              env["math-verify"] or "missing: pip install 'math-verify[antlr4_13_2]'"),
        Check("reasoning-gym problems", env["reasoning-gym"] is not None,
              env["reasoning-gym"] or "missing: pip install reasoning-gym"),
        Check("sandbox fleet (Redis)", env["redis-server"] is not None,
              (f"redis-server at {env['redis-server']}" if env["redis-server"] else
               "redis-server not installed (apt-get install redis-server); a remote Redis still works")),
    ]
    for part in PARTS:
        try:
            mod = importlib.import_module(f"tirl.{part}.health")
        except ModuleNotFoundError as err:
            if err.name == f"tirl.{part}.health":
                continue
            checks.append(Check(f"{part}", False, f"import failed: {err}"))
            continue
        try:
            checks.extend(mod.checks())
        except Exception as err:
            checks.append(Check(f"{part}", False, f"health check failed: {type(err).__name__}: {err}"))
    return checks


def _doctor(args: argparse.Namespace) -> int:
    env = environment()
    checks = feature_checks(env)
    if args.json:
        print(json.dumps({"environment": env, "features": [asdict(c) for c in checks]}, indent=2))
        return 0
    print("tirl doctor")
    for k, v in env.items():
        if k == "gpus":
            v = ", ".join(v) if v else "none"
        print(f"  {k:<14} {v if v is not None else 'not installed'}")
    print("features")
    for c in checks:
        mark = "ok " if c.ok else "-- "
        print(f"  [{mark}] {c.feature}: {c.detail}")
    sys.stdout.flush()
    return 0

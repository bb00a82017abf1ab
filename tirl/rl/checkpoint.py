"""Checkpoints of a training run: model + tokenizer (a Hugging Face directory that
`tirl serve` and `tirl eval` load), optimizer, trainer position and every RNG.

``checkpoints/<name>/`` holds ``model.safetensors`` (+ config, tokenizer files) and
``trainer_state.pt`` (:class:`TrainerState`, optimizer state, RNG states, the data RNG);
``checkpoints/latest`` names the newest. A checkpoint is written to ``<name>.tmp`` and
renamed, so a crash never leaves a half-written one under a real name.

What it does not do: sharded checkpoints (one rank writes the whole state).
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tirl.config import ConfigError


@dataclass
class TrainerState:
    global_step: int = 0  # RL steps done (all stages)
    stage_idx: int = 0
    stage_step: int = 0  # steps done in the current stage
    sft_done: bool = False
    cursor: int = 0  # position in the current stage's problem order
    epoch: int = 0
    filtered_ids: list[str] | None = None  # stage problems left after the difficulty filter
    evals: list[dict] = field(default_factory=list)  # held-out accuracy records

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class CheckpointError(ConfigError):
    """A checkpoint that cannot be read; the message names the file and what to do
    (a :class:`~tirl.config.ConfigError`: the fix is a setting, ``run.resume_from``)."""


def rng_state(engine: Any) -> dict:
    st = {"python": random.getstate(), "torch": torch.get_rng_state()}
    gen = getattr(engine, "generator", None)
    if gen is not None:
        st["engine"] = gen.get_state()
    return st


def set_rng_state(st: dict, engine: Any) -> None:
    random.setstate(st["python"])
    torch.set_rng_state(st["torch"])
    gen = getattr(engine, "generator", None)
    if gen is not None and "engine" in st:
        gen.set_state(st["engine"])


def save_checkpoint(path: Path, model, tokenizer, optimizer, state: TrainerState, engine: Any,
                    data_rng: random.Random) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    torch.save({
        "state": state.to_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "rng": rng_state(engine),
        "data_rng": data_rng.getstate(),
    }, tmp / "trainer_state.pt")
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    (path.parent / "latest").write_text(path.name + "\n")


def latest_checkpoint(checkpoints: Path) -> Path | None:
    f = checkpoints / "latest"
    if not f.exists():
        return None
    p = checkpoints / f.read_text().strip()
    return p if (p / "trainer_state.pt").exists() else None


def previous_checkpoints(checkpoints: Path, before: Path) -> list[str]:
    """Names of other complete checkpoints, newest first (to suggest one to resume from)."""
    cands = [p for p in checkpoints.iterdir() if p.is_dir() and p != before and not p.name.endswith(".tmp")
             and (p / "trainer_state.pt").exists()] if checkpoints.is_dir() else []
    return [p.name for p in sorted(cands, key=lambda p: p.stat().st_mtime, reverse=True)]


def load_trainer_state(ckpt: Path) -> dict:
    """``trainer_state.pt`` of a checkpoint, or a :class:`CheckpointError` naming the file."""
    f = ckpt / "trainer_state.pt"
    try:
        return torch.load(f, weights_only=False)
    except Exception as err:  # noqa: BLE001 - torn or corrupt file: say which and what to do
        raise CheckpointError(_corrupt(f, err, ckpt)) from None


def load_checkpoint_model(ckpt: Path, dtype=torch.float32):
    """(model, tokenizer) of a checkpoint directory, or a :class:`CheckpointError` naming it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(ckpt)
        model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype)
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(_corrupt(ckpt / "model.safetensors", err, ckpt)) from None
    return model, tok


def _corrupt(f: Path, err: Exception, ckpt: Path) -> str:
    others = previous_checkpoints(ckpt.parent, ckpt)
    hint = (f"resume from an earlier one with run.resume_from={others[0]!r}" if others
            else "start over with run.resume=false (or another run.name)")
    return (f"checkpoint file {f} cannot be read ({type(err).__name__}: {str(err)[:160]}); "
            f"it may be truncated. {hint}")

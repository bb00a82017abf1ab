"""Checkpoints of a training run: sharded model + optimizer (``torch.distributed.checkpoint``),
every rank's own RNGs and data position, and a Hugging Face export for `tirl serve`/`tirl eval`.

``checkpoints/<name>/`` holds::

    dcp/                   model + AdamW state (fp32 master), one file per rank + .metadata
    rank_00000.pt ...      per rank: data cursor and epoch, Python/torch/engine RNGs, the data RNG
    trainer_state.pt       shared: TrainerState (step, stage, evals), strategy, world size
    model.safetensors ...  the full model in model.dtype + config + tokenizer (written by rank 0)

One format for every strategy (single included): a checkpoint is written by all ranks
together and restored by all ranks together; model and optimizer go through
``get_state_dict``/``set_state_dict`` so FSDP shards, DDP replicas and a single module
save the same keys. ``checkpoints/latest`` names the newest. A checkpoint is written to
``<name>.tmp`` and renamed by rank 0 after every rank finished, so a crash never leaves a
half-written one under a real name. The directory must be shared by all ranks (one machine,
or a shared file system).

What it does not do: resume with another number of ranks (the per-rank data positions and
RNG streams belong to their rank; the error says which world size to launch), or read the
single-file checkpoints of earlier tirl versions (their Hugging Face directory still loads
as ``model.path``).
"""

from __future__ import annotations

import contextlib
import random
import shutil
import warnings
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


FORMAT = 2  # trainer_state.pt "format": DCP + per-rank files


def rng_state(engine: Any) -> dict:
    st = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    gen = getattr(engine, "generator", None)
    if gen is not None:
        st["engine"] = gen.get_state()
    return st


def set_rng_state(st: dict, engine: Any) -> None:
    random.setstate(st["python"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])
    gen = getattr(engine, "generator", None)
    if gen is not None and "engine" in st:
        gen.set_state(st["engine"])


def rank_file(ckpt: Path, rank: int) -> Path:
    return ckpt / f"rank_{rank:05d}.pt"


def export_hf(path: Path, model, tokenizer, state_dict: dict, dtype: torch.dtype) -> None:
    """Write ``state_dict`` (full, CPU) as a Hugging Face directory in ``dtype`` with the
    model's config and the tokenizer (what ``from_pretrained`` and `tirl serve` load)."""
    cast: dict[int, torch.Tensor] = {}  # one cast per tensor: tied weights stay shared
    sd = {k: cast.setdefault(id(v), v.to(dtype)) for k, v in state_dict.items()}
    model.save_pretrained(path, state_dict=sd, safe_serialization=True)
    tokenizer.save_pretrained(path)


@contextlib.contextmanager
def _single_process_quiet():
    """DCP warns on every call without a process group; one process is a supported case here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def save_checkpoint(path: Path, par, tokenizer, optimizer, state: TrainerState, engine: Any,
                    data_rng: random.Random, *, export_dtype: torch.dtype = torch.float32) -> None:
    """Write checkpoint ``path`` (see the module docstring). Every rank calls it."""
    import torch.distributed.checkpoint as dcp

    from tirl.rl import distributed as D

    rank, world = D.rank_world()
    # first: writing (DCP, save_pretrained) may draw from the global RNGs, which a run that
    # does not checkpoint here would not do
    mine = {"rank": rank, "world": world, "cursor": state.cursor, "epoch": state.epoch,
            "rng": rng_state(engine), "data_rng": data_rng.getstate()}
    tmp = path.with_name(path.name + ".tmp")
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    D.barrier()
    model_sd, optim_sd = par.state_dicts(optimizer)
    with _single_process_quiet():
        dcp.save({"model": model_sd} if optim_sd is None else {"model": model_sd, "optim": optim_sd},
                 checkpoint_id=str(tmp / "dcp"), no_dist=D.dist() is None)
    torch.save(mine, rank_file(tmp, rank))
    full = par.full_state_dict()  # collective under fsdp; rank 0 gets the tensors
    if rank == 0:
        export_hf(tmp, par.model, tokenizer, full, export_dtype)
        torch.save({"format": FORMAT, "state": state.to_dict(), "world": world, "strategy": par.strategy,
                    "optimizer": optimizer is not None}, tmp / "trainer_state.pt")
    del full
    D.barrier()
    if rank == 0:
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
        (path.parent / "latest").write_text(path.name + "\n")
    D.barrier()


def load_sharded(ckpt: Path, par, optimizer) -> None:
    """Fill ``par``'s model (and ``optimizer``, when given) from ``ckpt/dcp`` in place."""
    import torch.distributed.checkpoint as dcp

    from tirl.rl import distributed as D

    model_sd, optim_sd = par.state_dicts(optimizer)
    sd = {"model": model_sd} if optim_sd is None else {"model": model_sd, "optim": optim_sd}
    try:
        with _single_process_quiet():
            dcp.load(sd, checkpoint_id=str(ckpt / "dcp"), no_dist=D.dist() is None)
    except Exception as err:  # noqa: BLE001 - a torn or missing shard: say which and what to do
        raise CheckpointError(_corrupt(ckpt / "dcp", err, ckpt)) from None
    par.load_state_dicts(optimizer, sd["model"], sd.get("optim"))


def load_rank_state(ckpt: Path, rank: int, world: int, ts: dict) -> dict:
    """This rank's file of a checkpoint (cursor, epoch, RNGs), checking the world size."""
    if ts.get("world", 1) != world:
        raise CheckpointError(
            f"checkpoint {ckpt} was written by {ts.get('world')} rank(s) and this run has {world}: each "
            f"rank resumes its own data position and RNGs. Launch with torchrun --nproc_per_node "
            f"{ts.get('world')} (or start over with run.resume=false / another run.name)")
    f = rank_file(ckpt, rank)
    try:
        return torch.load(f, weights_only=False)
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(_corrupt(f, err, ckpt)) from None


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
        ts = torch.load(f, weights_only=False)
    except Exception as err:  # noqa: BLE001 - torn or corrupt file: say which and what to do
        raise CheckpointError(_corrupt(f, err, ckpt)) from None
    if ts.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {ckpt} is in the single-file format of an earlier tirl version, which this "
            "version does not resume; start over with run.resume=false (or another run.name). Its "
            f"model still loads for eval/serve or as model.path={str(ckpt)!r}")
    return ts


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


# settings that may change between a run and its resume (everything else is refused)
RESUMABLE_CHANGES = ("run.resume", "run.resume_from", "run.allow_config_change", "run.threads", "run.trackers",
                     "rl.checkpoint_every", "rl.plot_every", "rl.save_trajectories", "stages.*.steps")


def config_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts (list entries by index)."""
    out = []
    for k in sorted(set(old) | set(new)):
        key = f"{prefix}{k}"
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, key + ".")
        elif isinstance(a, list) and isinstance(b, list) and a and isinstance(a[0], dict) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                out += config_changes(x, y, f"{key}.{i}.")
        elif a != b:
            out.append(key)
    return out


def _allowed(key: str) -> bool:
    import fnmatch

    return any(fnmatch.fnmatch(key, pat) for pat in RESUMABLE_CHANGES)


def check_resume_config(root: Path, cfg, *, record: bool = True) -> list[str]:
    """Refuse a resume whose config changed beyond :data:`RESUMABLE_CHANGES` (unless
    ``run.allow_config_change``); record what changed in ``config_changes.jsonl``."""
    import json
    import time
    import tomllib

    path = root / "config.toml"
    if not path.exists():
        return []
    changed = config_changes(tomllib.loads(path.read_text()), cfg.model_dump(mode="json", exclude_none=True))
    refused = [k for k in changed if not _allowed(k)]
    if refused and not cfg.run.allow_config_change:
        raise ConfigError(
            f"{root} was started with another config; changed: {', '.join(refused)}. "
            "Resuming would mix two runs: use another run.name, or pass "
            "run.allow_config_change=true (--force) to resume anyway (the change is recorded)."
        )
    if changed and record:
        with (root / "config_changes.jsonl").open("a") as f:
            f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                "changed": changed}) + "\n")
    return changed


def model_to_train(cfg, run, texts, *, main: bool) -> tuple[Any, Any, Path | None, dict | None]:
    """(model, tokenizer, checkpoint or None, its trainer state or None): the checkpoint to
    resume (``run.resume_from`` or the latest, after :func:`check_resume_config`) or the
    initial model of ``[model]`` (``texts()`` builds a scratch tokenizer's text). Rank 0
    writes the run's ``config.toml``. The model is always fp32: its parameters become the
    master weights, and buffers such as the rotary frequencies keep fp32 values (a bf16 load
    rounds them for good, and a resume, which rebuilds them, would then differ)."""
    from tirl.config import config_to_toml

    ckpt = None
    if cfg.run.resume:
        ckpt = (run.checkpoints / cfg.run.resume_from) if cfg.run.resume_from else latest_checkpoint(run.checkpoints)
        if cfg.run.resume_from and not (ckpt / "trainer_state.pt").exists():
            raise ConfigError(f"run.resume_from = {cfg.run.resume_from!r}: no checkpoint at {ckpt}")
    if ckpt is not None:
        check_resume_config(run.root, cfg, record=main)
    if main:
        run.write_config(config_to_toml(cfg))
    if ckpt is not None:
        ts = load_trainer_state(ckpt)
        # architecture and tokenizer from the export; the fp32 weights come from dcp/
        model, tok = load_checkpoint_model(ckpt)
        if cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        return model, tok, ckpt, ts
    from tirl.engines.models import load_model

    torch.manual_seed(cfg.run.seed)
    model, tok = load_model(cfg.model.model_copy(update={"dtype": "float32"}),
                            texts=texts() if cfg.model.path == "scratch" else None)
    return model, tok, None, None

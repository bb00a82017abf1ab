"""The GRPO-RoC trainer and the multi-stage recipe: ``train(cfg)`` runs a whole config.

One RL step (§2.2.3), top to bottom in :meth:`Trainer.rl_step`::

    problems ─► rollouts through the stack's agent loop (oversample·G each, real sandbox)
      ─► grade (infra failures dropped, never rewarded 0) ─► drop all-equal groups, refill
      ─► resample_on_correct (2G → G)            (tirl.rl.rollouts)
      ─► advantages, token-level clipped loss over micro-batches, AdamW step  (tirl.rl.update)
      ─► metrics / trajectories / plots / checkpoint

The recipe (``[sft]`` then ``[[stages]]``): SFT on format material, then each stage with its
own sampling settings, steps and tasks; an optional offline difficulty filter before a stage
(sample k per problem, drop the ones solved k/k) and an optional optimizer reset. Held-out
accuracy is measured after SFT and after every stage with the evaluation's sampling.

Resume is exact (:mod:`tirl.rl.checkpoint`) and refuses a changed config unless the change
is to step counts, logging or checkpoint cadence (``run.allow_config_change`` overrides).
Rollouts are seeded: each call passes the agent loop a base seed derived from ``run.seed``
and the step (and refill round), so a trajectory's random numbers do not depend on
scheduling (see docs/rl.md, "Determinism").

Under torchrun each rank rolls out its share of problems; the policy is trained by the
``train.strategy`` wrapper (:mod:`tirl.rl.parallel`: single, DDP or FSDP2, fp32 master
weights under bf16 compute). Under FSDP the rollouts run inside
:meth:`~tirl.rl.parallel.ParallelPolicy.generation_weights` (full parameters), and the
in-process engine is built inside it too (its KV cache takes the compute dtype).

Rollouts on inference servers (``[dispatch] engines``, docs/disagg.md): after every update
(``rollout.sync_every``) rank 0 pushes the weights to every server
(:mod:`tirl.engines.weight_sync`) and, synchronously (``rollout.max_staleness = 0``), waits
for each to confirm the new version before the next rollouts; a server that fails to load
is taken out of the dispatcher's rotation. With ``max_staleness = k > 0`` the next step's
rollouts run while the update runs (in a thread), trajectories more than k versions old are
dropped and the loss is corrected by truncated importance sampling (:mod:`tirl.rl.staleness`).

What it does not do: tensor or pipeline parallelism.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from pathlib import Path
from typing import Any

import torch

from tirl.config import Config, ConfigError, resolve_sampling
from tirl.data.problems import load_problem_sets
from tirl.data.sft import tokenizer_texts
from tirl.rl import distributed as D
from tirl.rl.checkpoint import (TrainerState, latest_checkpoint, load_rank_state, load_sharded, model_to_train,
                                save_checkpoint, set_rng_state)
from tirl.rl.metrics import step_metrics, trajectory_record
from tirl.rl.parallel import compute_dtype_for, resolve_strategy, wrap_policy
from tirl.rl.rollouts import ProblemOrder, Timings, collect_groups, rollout_and_grade
from tirl.rl.servers import ServerWeights
from tirl.rl.staleness import drop_stale, staleness_histogram
from tirl.rl.update import make_optimizer, policy_update
from tirl.runs import RunDir, progress_bar, truncate_metrics
from tirl.stack import device_for, open_stack, rollout_urls

# rich (the progress bars) draws from the global `random` once, when first imported; importing
# it here, before any seeding, keeps that draw out of every run's RNG stream (exact resume)
with contextlib.suppress(ImportError):
    import rich.style  # noqa: F401


class _Stopped(Exception):
    """``stop_after`` steps were done (a checkpoint was written; resume continues)."""


class Trainer:
    """The model, optimizer and stack of one run; see the module docstring."""

    def __init__(self, cfg: Config, *, progress: bool = True, engine_factory=None, tools_factory=None,
                 stop_after: int | None = None):
        self.cfg = cfg
        self.stop_after = stop_after
        self.progress = progress
        self.rank, self.world = D.rank_world()
        self.main = self.rank == 0
        root = Path(cfg.run.output_dir) / cfg.run.name
        if latest_checkpoint(root / "checkpoints") is None:  # start-up inputs, before any directory
            from tirl.engines.models import check_model_source

            try:
                check_model_source(cfg.model)
            except FileNotFoundError as err:
                raise ConfigError(str(err)) from None
        self.run = RunDir(root)
        self.engine_factory, self.tools_factory = engine_factory, tools_factory
        self.state = TrainerState()
        self.device = D.local_device(device_for(cfg))
        self.strategy = resolve_strategy(cfg.train.strategy, self.world, D.dist() is not None)
        if cfg.model.dtype == "float16":
            raise ConfigError("model.dtype = 'float16' cannot be trained (no loss scaling); use "
                              "bfloat16 (bf16 compute, fp32 master weights) or float32")
        self.par = None
        self._ckpt: Path | None = None
        self._rank_state: dict | None = None
        self.metrics = None
        # RoC's sampling RNG: one stream per rank (rank 0 keeps the single-process stream)
        self.data_rng = random.Random(f"tirl-data-{cfg.run.seed}" + (f"-rank{self.rank}" if self.rank else ""))
        self.optimizer = None
        self.stack = None
        self._bar = None
        self._status = ""
        self._traj_done = 0
        # rollouts on inference servers (tirl.rl.servers) and the step prefetched while updating
        self.servers: ServerWeights | None = None
        self._version = 0  # of the trainer's weights: optimizer updates applied (tirl.rl.servers)
        self._prefetch: asyncio.Task | None = None
        self._prefetch_from: tuple[int, int] | None = None  # (cursor, epoch) before the prefetch
        self._rollouts_end: float | None = None
        self._rollout_idle = 0.0

    # ---------------------------------------------------------------- setup

    def _build_model(self, train: list[dict]) -> dict | None:
        """Load the checkpoint to resume (returns its trainer state) or build the initial model."""
        texts = (lambda: tokenizer_texts(self.cfg.sft, self.cfg.agent, train, self.cfg.run.seed))
        self.model, self.tokenizer, self._ckpt, ts = model_to_train(self.cfg, self.run, texts, main=self.main)
        return ts

    def _restore(self, ts: dict) -> None:
        """Model + optimizer from the checkpoint's shards, the shared position, and this
        rank's own data cursor, epoch and data RNG (its other RNGs once the engine exists)."""
        self.state = TrainerState(**ts["state"])
        if ts["optimizer"]:
            self.optimizer = make_optimizer(self.par.root, self.cfg.rl)
        load_sharded(self._ckpt, self.par, self.optimizer)
        mine = load_rank_state(self._ckpt, self.rank, self.world, ts)
        self.state.cursor, self.state.epoch = mine["cursor"], mine["epoch"]
        self.data_rng.setstate(mine["data_rng"])
        self._rank_state = mine
        if self.main:
            # SFT is not checkpointed mid-way: a restarted SFT starts over, so its old lines go
            truncate_metrics(self.run.metrics_path, self.state.global_step if self.state.sft_done else -1)

    # ---------------------------------------------------------------- main

    async def arun(self) -> dict:
        cfg = self.cfg
        random.seed(cfg.run.seed)
        torch.manual_seed(cfg.run.seed)
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        train, held = load_problem_sets(cfg.data, cfg.run.seed)
        ts = self._build_model(train)
        self.par = wrap_policy(self.model, self.strategy, compute_dtype=compute_dtype_for(cfg.model.dtype),
                               device=self.device)
        self.par.root.eval()
        if ts is not None:
            self._restore(ts)
        elif self.main:
            truncate_metrics(self.run.metrics_path, -1)  # a fresh start: no stale lines
        self._version = self.state.global_step
        self.metrics = self.run.metrics(cfg.run.trackers, run_name=cfg.run.name,
                                        config=cfg.model_dump(mode="json")) if self.main else None
        tools = await self.tools_factory() if self.tools_factory else None
        t_start = time.perf_counter()
        try:
            async with contextlib.AsyncExitStack() as es:
                with self.par.generation_weights():  # the engine sees the parameters it generates with
                    engine = self.engine_factory(self.model, self.tokenizer) if self.engine_factory else None
                    self.stack = await es.enter_async_context(open_stack(
                        cfg, "train", model=self.model, tokenizer=self.tokenizer, engine=engine, tools=tools))
                if self._rank_state is not None:
                    set_rng_state(self._rank_state["rng"], self.stack.engine)
                if engine is None and rollout_urls(cfg):
                    self.servers = ServerWeights(cfg, rollout_urls(cfg), self.run.root, self.stack.engine,
                                                 main=self.main)
                await self._run_recipe(train, held)
        finally:
            if self._prefetch is not None:
                self._prefetch.cancel()
                await asyncio.gather(self._prefetch, return_exceptions=True)
                self._prefetch = None
            if self.servers is not None:
                await self.servers.aclose()
            if tools is not None:
                await tools.close()
            if self.metrics:
                self.metrics.close()
        result = {"evals": self.state.evals, "global_step": self.state.global_step,
                  "seconds": time.perf_counter() - t_start, "rank": self.rank}
        if self.main:
            from tirl.rl.report import write_report

            write_report(self.run, cfg)
        return result

    async def _run_recipe(self, train: list[dict], held: list[dict]) -> None:
        cfg = self.cfg
        if not self.state.sft_done:
            if cfg.sft.enabled:
                self.do_sft()
            await self.evaluate(held, "sft" if cfg.sft.enabled else "init")
            self.state.sft_done = True
            if cfg.sft.enabled:
                self.checkpoint("sft")
        total = sum(s.steps for s in cfg.stages)
        with progress_bar(total, "GRPO-RoC" if cfg.rl.algorithm == "grpo_roc" else "GRPO",
                          enabled=self.progress and self.main) as bar:
            self._bar = bar
            bar.advance(self.state.global_step)
            try:
                while self.state.stage_idx < len(cfg.stages):
                    await self.run_stage(train, held)
            except _Stopped:
                pass
            finally:
                self._bar = None

    def do_sft(self) -> None:
        from tirl.rl.sft import sft_stage

        sft_stage(self.cfg, self.par, self.tokenizer, self.metrics, progress=self.progress and self.main)

    # ---------------------------------------------------------------- rollouts

    def _seed(self, *parts) -> int:
        from tirl.agent.loop import derive_seed

        return derive_seed("tirl-rollout", self.cfg.run.seed, *parts)

    async def _rollouts(self, problems, n, sampling, seed, timings=None, on_done=None, sync=True) -> list[list]:
        if sync and self.servers is not None:
            await self.servers.push(self.model, self._version, self.state.global_step, self._generating)
        return await rollout_and_grade(self.stack.loop(sampling), self.stack.grader, problems, n,
                                       scorer=self.cfg.reward.scorer, sampling=sampling, seed=seed,
                                       on_done=on_done, timings=timings)

    def _generating(self):
        """Full parameters for the rollout engine (collective under fsdp: every rank enters)."""
        return self.par.generation_weights()

    async def evaluate(self, held: list[dict], label: str) -> dict:
        """Held-out accuracy (avg@k with the evaluation's sampling) with the real tool."""
        if not held:
            return {}
        with self._generating():
            groups = await self._rollouts(held[self.rank::self.world], self.cfg.eval.k,
                                          resolve_sampling(self.cfg, "eval"), self._seed("eval", label))
        trajs = [t for g in groups for t in g]
        correct, total, tool_pos, infra = D.all_sum([
            sum(1 for t in trajs if t.reward == 1.0), float(sum(1 for t in trajs if t.reward is not None)),
            float(sum(1 for t in trajs if t.num_tool_calls > 0 and t.reward is not None)),
            float(sum(1 for t in trajs if t.reward is None))])
        rec = {"phase": "eval", "label": label, "step": self.state.global_step,
               "held_out_acc": correct / max(1.0, total), "held_out_n": int(total),
               "held_out_tool_use": tool_pos / max(1.0, total), "held_out_infra_dropped": int(infra)}
        if self.main:
            self._save_trajectories(f"eval_{label}.jsonl", trajs[:50], label)
        self.state.evals.append(rec)
        if self.metrics:
            self.metrics.write(rec)
        return rec

    async def difficulty_filter(self, pool: list[dict], k: int, stage_idx: int) -> list[dict]:
        """Offline filter before a stage: sample k per problem, drop those solved k/k."""
        stage = self.cfg.stages[stage_idx]
        with self._generating():
            groups = await self._rollouts(pool[self.rank::self.world], k, resolve_sampling(self.cfg, "train", stage),
                                          self._seed("filter", stage_idx, stage.name))
        solved_local = [g[0].problem_id for g in groups if g and all(t.reward == 1.0 for t in g)]
        solved = {i for part in D.all_gather_objects(solved_local) for i in part}
        return [p for p in pool if str(p["id"]) not in solved]

    # ---------------------------------------------------------------- stages and steps

    async def run_stage(self, train: list[dict], held: list[dict]) -> None:
        cfg, st = self.cfg, self.state
        stage = cfg.stages[st.stage_idx]
        pool = load_problem_sets(cfg.data, cfg.run.seed, stage.tasks)[0] if stage.tasks else train
        if st.stage_step == 0 and st.filtered_ids is None:
            if stage.reset_optimizer:
                self.optimizer = None
            if stage.difficulty_filter_k:
                kept = await self.difficulty_filter(pool, stage.difficulty_filter_k, st.stage_idx)
                if self.metrics:
                    self.metrics.write({"phase": "filter", "step": st.global_step, "stage": stage.name,
                                        "filter_before": len(pool), "filter_after": len(kept)})
                st.filtered_ids = [str(p["id"]) for p in kept] or [str(p["id"]) for p in pool]
        if st.filtered_ids is not None:
            ids = set(st.filtered_ids)
            pool = [p for p in pool if str(p["id"]) in ids]
        order = ProblemOrder(pool, cfg.run.seed, st.stage_idx, st)
        while st.stage_step < stage.steps:
            await self.rl_step(order, stage)
            if self.stop_after is not None and st.global_step >= self.stop_after and st.stage_step < stage.steps:
                self.checkpoint(f"step_{st.global_step:06d}")
                raise _Stopped()
        await self.evaluate(held, stage.name)
        st.stage_idx += 1
        st.stage_step = st.cursor = st.epoch = 0
        st.filtered_ids = None
        self.checkpoint(f"step_{st.global_step:06d}")

    async def _collect(self, order: ProblemOrder, stage, step: int, sync: bool = True):
        """The kept groups of step ``step`` and their timings. ``sync=False``: a prefetch
        (async mode) that must not push weights while the update runs; its RoC draws come
        from a per-step generator so a resume repeats them without the prefetch."""
        rl = self.cfg.rl
        sampling = resolve_sampling(self.cfg, "train", stage)
        timings = Timings()
        now = time.perf_counter()
        if self._rollouts_end is not None:
            self._rollout_idle += now - self._rollouts_end
            self._rollouts_end = None

        async def rollout(problems, n, index):
            return await self._rollouts(problems, n, sampling, self._seed("step", step, index),
                                        timings, self._on_traj_done, sync=False)

        rng = self.data_rng if self.cfg.rollout.max_staleness == 0 else random.Random(
            f"tirl-roc-{self.cfg.run.seed}-{step}")
        if sync and self.servers is not None:  # before the step's problems start, at once
            await self.servers.push(self.model, self._version, self.state.global_step, self._generating)
        try:
            with self._generating():
                collected = await collect_groups(
                    rollout, lambda k: order.take(k * self.world)[self.rank::self.world],
                    want=max(1, rl.problems_per_step // self.world), group_size=rl.group_size,
                    algorithm=rl.algorithm, oversample=rl.oversample, roc_mode=rl.roc_mode,
                    min_pos=rl.min_pos, min_neg=rl.min_neg, dynamic_sampling=rl.dynamic_sampling,
                    max_refill_rounds=rl.max_refill_rounds, rng=rng)
        finally:
            self._rollouts_end = time.perf_counter()
        return collected, timings

    async def rl_step(self, order: ProblemOrder, stage) -> dict:
        cfg, rl, st = self.cfg, self.cfg.rl, self.state
        k = cfg.rollout.max_staleness
        self._traj_done = 0
        t0 = time.perf_counter()
        if self._prefetch is not None:  # async: this step's rollouts started during the last update
            task, self._prefetch = self._prefetch, None
            collected, timings = await task
            self._prefetch_from = None
        else:
            collected, timings = await self._collect(order, stage, st.global_step)
        t1 = time.perf_counter()
        stale: dict[str, Any] = {}
        if self.servers is not None or k > 0:
            versions = [t.meta.get("policy_version") for t in collected.sampled if t.reward is not None]
            hist = staleness_histogram(versions, self._version)
            collected.groups, n_stale, g_stale = drop_stale(collected.groups, self._version, k)
            stale = {"staleness_hist": {str(d): c for d, c in hist.items()},
                     "staleness_max": max(hist, default=None), "stale_dropped": n_stale,
                     "stale_groups_dropped": g_stale}
        last = st.stage_step + 1 >= stage.steps or (self.stop_after is not None
                                                     and st.global_step + 1 >= self.stop_after)
        if k > 0 and not last:  # the next step's rollouts run on the servers during this update
            self._prefetch_from = (st.cursor, st.epoch)
            self._prefetch = asyncio.create_task(self._collect(order, stage, st.global_step + 1, sync=False))
        t2 = time.perf_counter()
        upd: dict[str, Any] = {}
        if D.all_sum([float(len(collected.groups))])[0] > 0:  # every rank joins the collectives
            if self.optimizer is None:
                self.optimizer = make_optimizer(self.par.root, rl)
            kw = dict(step=st.global_step, pad_id=self.tokenizer.pad_token_id or 0, device=self.device)
            if k > 0:  # in a thread: the event loop keeps serving the prefetched rollouts
                upd = await asyncio.to_thread(policy_update, self.par, self.optimizer, collected.groups, rl,
                                              is_cap=cfg.rollout.is_cap, **kw)
            else:
                upd = policy_update(self.par, self.optimizer, collected.groups, rl, **kw)
            self._version += 1
            if self.servers is not None:
                self.servers.dirty = True
        t_update = time.perf_counter() - t2
        st.global_step += 1
        st.stage_step += 1
        if self.servers is not None:  # push now: synchronous mode's next rollouts wait for it anyway
            await self.servers.push(self.model, self._version, st.global_step, self._generating)
        rec = step_metrics(collected, st.global_step, stage.name)
        rec.update(upd)
        rec.update(stale)
        rec.update({"time_generation": timings.generation, "time_tools": timings.tools,
                    "time_grading": timings.grading, "time_update": t_update,
                    "time_step": time.perf_counter() - t0, "time_trainer_idle": t1 - t0})
        if self.servers is not None:
            rec.update(self.servers.metrics())
            rec["time_rollout_idle"], self._rollout_idle = self._rollout_idle, 0.0
        gen_tokens = D.all_sum([float(sum(t.num_policy_tokens for t in collected.sampled))])[0]
        rec["tokens_per_s"] = gen_tokens / max(1e-9, timings.generation)
        if self.metrics:
            self.metrics.write(rec)
        if self.main and rl.save_trajectories:
            self._save_trajectories(f"step_{st.global_step:06d}.jsonl",
                                    collected.sampled[:rl.save_trajectories], stage.name)
        if self._bar is not None:
            self._status = (f"{stage.name} reward {rec.get('reward', 0):.2f} "
                            f"err+ {rec.get('tool_error_ratio_pos') or 0:.2f} len {rec.get('response_len_mean', 0):.0f}")
            self._bar.status(self._status)
            self._bar.advance(1)
        if self.main and st.global_step % rl.plot_every == 0:
            from tirl.rl.report import write_plots

            write_plots(self.run)
        if st.global_step % rl.checkpoint_every == 0 and st.stage_step < stage.steps:
            self.checkpoint(f"step_{st.global_step:06d}")
        return rec

    def _on_traj_done(self, traj) -> None:
        self._traj_done += 1
        if self._bar is not None and self._traj_done % 16 == 0:
            self._bar.status(f"{self._status} · rollouts {self._traj_done}")

    def _save_trajectories(self, name: str, trajs: list, stage: str) -> None:
        with (self.run.trajectories / name).open("w") as f:
            for t in trajs:
                f.write(json.dumps(trajectory_record(t, self.state.global_step, stage)) + "\n")

    def checkpoint(self, name: str) -> None:
        """Every rank writes its shard and its own position/RNGs; rank 0 the HF export."""
        st = self.state
        pos = (st.cursor, st.epoch)
        if self._prefetch_from is not None:  # the prefetched step is not consumed: a resume redoes it
            st.cursor, st.epoch = self._prefetch_from
        try:
            save_checkpoint(self.run.checkpoints / name, self.par, self.tokenizer, self.optimizer,
                            self.state, self.stack.engine, self.data_rng,
                            export_dtype=compute_dtype_for(self.cfg.model.dtype))
        finally:
            st.cursor, st.epoch = pos


def train(cfg: Config, *, progress: bool = True, engine_factory=None, tools_factory=None,
          stop_after: int | None = None) -> dict:
    """Run ``cfg``'s recipe (SFT, then the GRPO-RoC stages); returns evals and timing.

    ``engine_factory(model, tokenizer)`` / ``tools_factory()`` (async) replace the local
    engine and the sandbox (tests); ``stop_after`` stops after that many RL steps with a
    checkpoint, as an interruption would (a later call with ``run.resume`` continues).
    """
    started = D.maybe_init_distributed()  # joins torchrun; a group made by the caller is kept
    try:
        return asyncio.run(Trainer(cfg, progress=progress, engine_factory=engine_factory,
                                   tools_factory=tools_factory, stop_after=stop_after).arun())
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()

"""The GRPO-RoC trainer and the multi-stage recipe: ``train(cfg)`` runs a whole config.

One RL step (§2.2.3)::

    problems ─► AgentLoop rollouts (oversample·G each, real sandbox) ─► grade (Grader)
      ─► drop infra_error trajectories ─► drop all-equal groups, refill with new problems
      ─► resample_on_correct (2G → G) ─► group_advantages ─► recompute old logprobs
      ─► policy_loss over token-budget micro-batches, gradients accumulated (all-reduced
         under torchrun) ─► AdamW step (warm-up, clip 1.0) ─► metrics / plots / checkpoint

The recipe (``[sft]`` then ``[[stages]]``): SFT on format material, then each stage with its
own response budget, turn limit, steps and tasks; an optional offline difficulty filter
before a stage (sample k per problem, drop the ones solved k/k) and an optional optimizer
reset. Held-out accuracy is measured after SFT and after every stage.

Resume is exact: a checkpoint holds the model and tokenizer (``save_pretrained``), the
optimizer, every RNG (python, torch, the engine's sampler), the data position, the stage and
step. Trajectories hit by an infrastructure failure are dropped — never rewarded 0, never
counted as tool errors.

What it does not do: asynchronous (off-policy) rollouts, FSDP or tensor parallelism — under
torchrun each rank rolls out its share of problems and gradients are all-reduced (data
parallel). Rollouts are seeded: every call passes the agent loop a base seed derived from
``run.seed`` and the step (and refill round), and each turn's request carries its own seed
(``tirl.agent.loop.derive_seed``), so which random numbers a trajectory gets does not depend
on scheduling. With ``[agent] tool_response_timing = false`` the tool text does not depend
on the sandbox's speed either; see docs/rl.md "Limits" for what can still differ.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tirl.config import Config
from tirl.rl.grpo import group_advantages, policy_loss, resample_on_correct, roc_penalty
from tirl.runs import RunDir, plot_series, progress_bar, read_metrics, truncate_metrics

# ---------------------------------------------------------------------------------------
# distributed helpers


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _rank_world() -> tuple[int, int]:
    d = _dist()
    return (d.get_rank(), d.get_world_size()) if d else (0, 1)


def _maybe_init_distributed() -> bool:
    """Join the torchrun process group when launched by torchrun (gloo on CPU)."""
    import torch.distributed as dist

    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        return True
    return False


def _all_sum(values: list[float]) -> list[float]:
    d = _dist()
    if not d:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    d.all_reduce(t)
    return t.tolist()


def _all_gather_objects(obj: Any) -> list[Any]:
    d = _dist()
    if not d:
        return [obj]
    out: list[Any] = [None] * d.get_world_size()
    d.all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------------------------------
# data


def load_problem_sets(cfg: Config) -> tuple[list[dict], list[dict]]:
    """(training problems, held-out problems) named by ``[data]``."""
    d = cfg.data
    if d.source == "procedural":
        from tirl.data.procedural import train_and_held_out

        return train_and_held_out(d.tasks, d.size, d.held_out_size, cfg.run.seed)
    if d.source in ("file", "benchmark"):
        from tirl.data.benchmarks import load_problems

        if not d.path:
            raise ValueError(f"data.source = {d.source!r} needs data.path (a file or benchmark name)")
        rows = load_problems(d.path, data_dir=d.data_dir, problem_field=d.problem_field,
                             answer_field=d.answer_field)
        if d.integer_answers_only:
            rows = [r for r in rows if str(r["answer"]).strip().lstrip("-").isdigit()]
        rng = random.Random(f"tirl-split-{cfg.run.seed}")
        rows = list(rows)
        rng.shuffle(rows)
        held = rows[:d.held_out_size]
        return rows[d.held_out_size:d.held_out_size + d.size], held
    if d.source == "reasoning_gym":
        from tirl.data.gym import reasoning_gym_problems

        return reasoning_gym_problems(d.tasks, d.size, d.held_out_size, cfg.run.seed)
    raise ValueError(f"data.source = {d.source!r} is not supported by the trainer")


def stage_problems(cfg: Config, stage_idx: int, base: list[dict]) -> list[dict]:
    """The stage's training problems: ``stages[i].tasks`` overrides ``data.tasks``."""
    st = cfg.stages[stage_idx]
    if st.tasks and cfg.data.source == "procedural" and list(st.tasks) != list(cfg.data.tasks):
        from tirl.data.procedural import train_and_held_out

        train, _ = train_and_held_out(st.tasks, cfg.data.size, cfg.data.held_out_size, cfg.run.seed)
        return train
    return base


# ---------------------------------------------------------------------------------------
# trainer state


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


def _rng_state(engine) -> dict:
    st = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if engine is not None and hasattr(engine, "generator"):
        st["engine"] = engine.generator.get_state()
    return st


def _set_rng_state(st: dict, engine) -> None:
    random.setstate(st["python"])
    torch.set_rng_state(st["torch"])
    if engine is not None and "engine" in st and hasattr(engine, "generator"):
        engine.generator.set_state(st["engine"])


def save_checkpoint(path: Path, model, tokenizer, optimizer, state: TrainerState, engine,
                    data_rng: random.Random) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    torch.save({
        "state": state.to_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "rng": _rng_state(engine),
        "data_rng": data_rng.getstate(),
    }, tmp / "trainer_state.pt")
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    (path.parent / "latest").write_text(path.name + "\n")


def latest_checkpoint(run: RunDir) -> Path | None:
    f = run.checkpoints / "latest"
    if not f.exists():
        return None
    p = run.checkpoints / f.read_text().strip()
    return p if (p / "trainer_state.pt").exists() else None


# ---------------------------------------------------------------------------------------
# per-trajectory facts


def assistant_text(traj) -> str:
    return "".join(t.text for t in traj.turns)


def trajectory_penalty(traj) -> float:
    """RoC penalty from typed tool outcomes and exact counts (Eq. 5–6)."""
    n_answers = sum(t.text.count("<answer>") for t in traj.turns)
    return roc_penalty(traj.num_tool_calls, traj.num_tool_errors, n_answers, max(1, len(traj.turns)))


def format_penalty(traj) -> float:
    n_answers = sum(t.text.count("<answer>") for t in traj.turns)
    return 1.0 if n_answers == 0 else min(1.0, (n_answers - 1) / max(1, len(traj.turns)))


# ---------------------------------------------------------------------------------------
# the trainer


class _Stopped(Exception):
    """``stop_after`` steps were done (a checkpoint was written; resume continues)."""


class Trainer:
    """Holds the model, optimizer, engine, tools and grader of one run; see the module doc."""

    def __init__(self, cfg: Config, *, progress: bool = True, engine_factory=None,
                 tools_factory=None, stop_after: int | None = None):
        self.cfg = cfg
        self.stop_after = stop_after
        self.progress = progress
        self.rank, self.world = _rank_world()
        self.main = self.rank == 0
        self.run = RunDir(Path(cfg.run.output_dir) / cfg.run.name)
        if self.main:
            self.run.write_config(cfg)
        self.engine_factory = engine_factory
        self.tools_factory = tools_factory
        self.state = TrainerState()
        self.device = torch.device("cuda" if cfg.run.device == "cuda" or (
            cfg.run.device == "auto" and torch.cuda.is_available()) else "cpu")
        self.metrics = self.run.metrics() if self.main else None
        self.data_rng = random.Random(f"tirl-data-{cfg.run.seed}")
        self.optimizer = None
        self.engine = None
        self.tools = None
        self.grader = None

    # ---------------------------------------------------------------- setup

    def _tokenizer_texts(self, train: list[dict], held: list[dict]) -> list[str]:
        from tirl.agent import format as fmt
        from tirl.data.sft import example_texts, load_sft_examples
        from tirl.sandbox.types import ExecResult

        texts: list[str] = []
        sys = self.cfg.agent.system_prompt
        if self.cfg.sft.enabled:
            exs = load_sft_examples(self.cfg.sft.data, min(self.cfg.sft.size, 500), self.cfg.run.seed)
            if self.cfg.agent.tool_response_timing:
                texts += [example_texts(e, sys) for e in exs]
            else:
                texts += [p + "".join(t for t, _ in segs) for p, segs in map(self._sft_text_untimed, exs)]
        for p in train[:500]:
            texts.append(fmt.render_prompt_text(None, p["problem"], "rstar2", system=sys))
        for r in (ExecResult(status="ok", stdout="1\n"), ExecResult(status="error", stderr="Traceback\nError"),
                  ExecResult(status="timeout")):
            texts.append(fmt.format_tool_response(r, timing=self.cfg.agent.tool_response_timing))
        return texts

    def build_model(self, train: list[dict], held: list[dict]):
        ckpt = latest_checkpoint(self.run) if self.cfg.run.resume else None
        if ckpt is not None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tok = AutoTokenizer.from_pretrained(ckpt)
            model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
            return model, tok, ckpt
        from tirl.engines.models import load_model

        texts = self._tokenizer_texts(train, held) if self.cfg.model.path == "scratch" else None
        torch.manual_seed(self.cfg.run.seed)
        model, tok = load_model(self.cfg.model, texts=texts)
        return model, tok, None

    def make_optimizer(self):
        rl = self.cfg.rl
        return torch.optim.AdamW(self.model.parameters(), lr=rl.lr, weight_decay=rl.weight_decay,
                                 betas=(0.9, 0.999))

    async def _start_services(self):
        from tirl.reward import Grader

        if self.engine_factory is not None:
            self.engine = self.engine_factory(self.model, self.tokenizer)
        else:
            from tirl.engines.local import LocalEngine

            self.engine = LocalEngine(self.model, self.tokenizer, max_batch=self.cfg.rl.rollout_batch,
                                      seed=self.cfg.run.seed * 1000 + self.rank)
        if self.tools_factory is not None:
            self.tools = await self.tools_factory()
        else:
            from tirl.sandbox import make_executor

            self.tools = await make_executor(self.cfg.sandbox)
        # started lazily: integer answers are decided on the fast path without worker processes
        self.grader = Grader(workers=self.cfg.reward.workers or 1, timeout_s=self.cfg.reward.timeout_s)

    async def _stop_services(self):
        if self.engine is not None and hasattr(self.engine, "aclose"):
            await self.engine.aclose()
        elif self.engine is not None and hasattr(self.engine, "close"):
            self.engine.close()
        if self.tools is not None and hasattr(self.tools, "close"):
            await self.tools.close()
        if self.grader is not None:
            self.grader.close()

    def _loop(self, max_turns: int, max_tokens: int):
        from tirl.agent.loop import AgentLoop

        acfg = self.cfg.agent.model_copy(update={"max_turns": max_turns, "max_tokens": max_tokens})
        return AgentLoop(self.engine, self.tokenizer, self.tools, acfg,
                         tool_timeout_s=self.cfg.sandbox.timeout_s)

    # ---------------------------------------------------------------- rollouts and grading

    def _seed(self, *parts) -> int:
        from tirl.agent.loop import derive_seed

        return derive_seed("tirl-rollout", self.cfg.run.seed, *parts)

    async def rollout_and_grade(self, problems: list[dict], n: int, max_turns: int, max_tokens: int,
                                temperature: float | None = None, on_done=None,
                                seed: int | None = None) -> list[list]:
        """``n`` graded trajectories per problem (``traj.reward``; None for infra errors).
        ``seed``: the agent loop's base seed (per problem id, sample and turn below it).
        Each problem is judged by ``scorer_for(problem, [reward] scorer)``."""
        from tirl.reward.scorers import scorer_for

        loop = self._loop(max_turns, max_tokens)
        t0 = time.perf_counter()
        trajs = await loop.run_many(problems, n=n, on_done=on_done, temperature=temperature, seed=seed)
        self._t_gen += time.perf_counter() - t0
        self._t_tools += sum(t.tool_ms for tr in trajs for t in tr.turns) / 1000.0
        t1 = time.perf_counter()
        to_grade = [i for i, t in enumerate(trajs) if not t.has_infra_error and not t.truncated]
        mode = self.cfg.reward.scorer
        judges = [scorer_for(p, mode) for p in problems]  # one per problem; trajs are grouped by problem
        grades = await self.grader.grade_batch([(assistant_text(trajs[i]), trajs[i].gold or "") for i in to_grade],
                                               scorers=[judges[i // n] for i in to_grade])
        for t in trajs:
            if t.has_infra_error:
                t.reward, t.grade_status = None, "infra_error"
            elif t.truncated:
                t.reward, t.grade_status = 0.0, "truncated"
        for i, g in zip(to_grade, grades):
            trajs[i].reward, trajs[i].grade_status = g.reward, g.status
        self._t_grade += time.perf_counter() - t1
        return [trajs[i * n:(i + 1) * n] for i in range(len(problems))]

    def _next_problems(self, pool: list[dict], k: int) -> list[dict]:
        out = []
        for _ in range(k):
            if self.state.cursor >= len(self._order):
                self.state.epoch += 1
                self.state.cursor = 0
                self._order = self._make_order(pool)
            out.append(pool[self._order[self.state.cursor]])
            self.state.cursor += 1
        return out

    def _make_order(self, pool: list[dict]) -> list[int]:
        order = list(range(len(pool)))
        random.Random(f"tirl-order-{self.cfg.run.seed}-{self.state.stage_idx}-{self.state.epoch}").shuffle(order)
        return order

    async def collect_batch(self, pool: list[dict], stage) -> tuple[list[list], dict]:
        """Groups with signal for one step: dynamic sampling with refill, then RoC."""
        rl = self.cfg.rl
        G = rl.group_size
        n = G * (rl.oversample if rl.algorithm == "grpo_roc" else 1)
        want = max(1, rl.problems_per_step // self.world)
        kept: list[list] = []
        sampled: list = []
        stats = {"groups_sampled": 0, "groups_dropped": 0, "infra_dropped": 0, "refill_rounds": 0}
        rounds = 0
        while len(kept) < want:
            need = want - len(kept)
            # every rank walks the same problem order; rank r takes its own slice
            batch = self._next_problems(pool, need * self.world)[self.rank::self.world]
            groups = await self.rollout_and_grade(batch, n, stage.max_turns, stage.max_tokens,
                                                  on_done=self._on_traj_done,
                                                  seed=self._seed("step", self.state.global_step, rounds))
            for g in groups:
                stats["groups_sampled"] += 1
                sampled.extend(g)
                valid = [t for t in g if t.reward is not None]
                stats["infra_dropped"] += len(g) - len(valid)
                rewards = [t.reward for t in valid]
                if len(valid) < 2 or len(set(rewards)) == 1:
                    stats["groups_dropped"] += 1
                    continue
                if rl.algorithm == "grpo_roc":
                    pens = [trajectory_penalty(t) for t in valid]
                    idx = resample_on_correct(rewards, pens, G, mode=rl.roc_mode, min_pos=rl.min_pos,
                                              min_neg=rl.min_neg, rng=self.data_rng)
                    valid = [valid[i] for i in idx]
                kept.append(valid)
                if len(kept) >= want:
                    break
            rounds += 1
            if not rl.dynamic_sampling or rounds > rl.max_refill_rounds:
                break
        stats["refill_rounds"] = rounds - 1
        stats["sampled"] = sampled
        return kept, stats

    def _on_traj_done(self, traj) -> None:
        self._traj_done += 1
        if self._bar is not None and self._traj_done % 16 == 0:
            self._bar.status(f"{self._status} · rollouts {self._traj_done}")

    # ---------------------------------------------------------------- update

    def _sequence_logprobs(self, ids: torch.Tensor, attn: torch.Tensor, need_entropy: bool):
        logits = self.model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
        logp = F.log_softmax(logits, dim=-1)
        tok_lp = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        ent = None
        if need_entropy:
            ent = -(logp.exp() * logp).sum(-1)
        return tok_lp, ent

    def _pack(self, items: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded (ids, attention, response mask over targets, advantages per row)."""
        pad = self.tokenizer.pad_token_id or 0
        T = max(len(s) for s, _, _ in items)
        ids = torch.full((len(items), T), pad, dtype=torch.long)
        attn = torch.zeros((len(items), T), dtype=torch.long)
        mask = torch.zeros((len(items), T - 1), dtype=torch.float32)
        adv = torch.zeros(len(items))
        for r, (seq, m, a) in enumerate(items):
            ids[r, :len(seq)] = torch.tensor(seq)
            attn[r, :len(seq)] = 1
            mask[r, :len(m)] = torch.tensor(m, dtype=torch.float32)
            adv[r] = a
        return ids.to(self.device), attn.to(self.device), mask.to(self.device), adv.to(self.device)

    def _micro_batches(self, items: list[tuple]) -> list[list[tuple]]:
        """Group sequences (sorted by length) so padded tokens stay within the budget."""
        budget = self.cfg.rl.micro_batch_tokens
        order = sorted(range(len(items)), key=lambda i: len(items[i][0]))
        out: list[list[tuple]] = []
        cur: list[tuple] = []
        for i in order:
            L = len(items[i][0])
            if cur and (len(cur) + 1) * max(L, max(len(c[0]) for c in cur)) > budget:
                out.append(cur)
                cur = []
            cur.append(items[i])
        if cur:
            out.append(cur)
        return out

    def update(self, groups: list[list]) -> dict:
        rl = self.cfg.rl
        items = []
        for g in groups:
            adv = group_advantages([t.reward for t in g], mode=rl.advantage)
            for t, a in zip(g, adv.tolist()):
                seq = t.prompt_ids + t.response_ids
                # target position j predicts seq[j+1]; response token k sits at len(prompt)+k
                m = [0] * (len(t.prompt_ids) - 1) + list(t.response_mask)
                items.append((seq, m, a))
        local_tokens = float(sum(sum(m) for _, m, _ in items))
        total_tokens = _all_sum([local_tokens])[0]
        mbs = self._micro_batches(items) if items else []
        # old logprobs: recomputed with the current weights before any update (on-policy)
        with torch.no_grad():
            old = []
            for mb in mbs:
                ids, attn, mask, adv = self._pack(mb)
                lp, _ = self._sequence_logprobs(ids, attn, False)
                old.append(lp)
        self.model.train()
        sums = {"tokens": 0.0, "clipped": 0.0, "dual": 0.0, "entropy": 0.0, "loss": 0.0}
        if self.optimizer is None:
            self.optimizer = self.make_optimizer()
        self.optimizer.zero_grad(set_to_none=True)
        need_ent = True
        for mb, old_lp in zip(mbs, old):
            ids, attn, mask, adv = self._pack(mb)
            lp, ent = self._sequence_logprobs(ids, attn, need_ent)
            loss, st = policy_loss(lp, old_lp, adv, mask, clip_low=rl.clip_low, clip_high=rl.clip_high,
                                   dual_clip=rl.dual_clip, num_tokens=total_tokens, entropy=ent,
                                   entropy_coef=rl.entropy_coef)
            loss.backward()
            sums["tokens"] += st.tokens
            sums["clipped"] += st.clipped
            sums["dual"] += st.dual_clipped
            sums["entropy"] += st.entropy_sum
            sums["loss"] += float(loss.item())
        d = _dist()
        if d:
            for p in self.model.parameters():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                d.all_reduce(p.grad)
        step = self.state.global_step
        warm = rl.warmup_steps
        scale = min(1.0, (step + 1) / warm) if warm else 1.0
        for g in self.optimizer.param_groups:
            g["lr"] = rl.lr * scale
        if rl.grad_clip:
            gnorm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), rl.grad_clip))
        else:
            gnorm = float(torch.norm(torch.stack([p.grad.norm() for p in self.model.parameters()
                                                  if p.grad is not None])))
        self.optimizer.step()
        self.model.eval()
        tok, clipped, dual, ent, loss = _all_sum([sums["tokens"], sums["clipped"], sums["dual"],
                                                  sums["entropy"], sums["loss"]])
        return {"loss": loss, "clip_frac": clipped / max(1.0, tok), "dual_clip_frac": dual / max(1.0, tok),
                "entropy": ent / max(1.0, tok), "grad_norm": gnorm, "lr": rl.lr * scale,
                "policy_tokens": tok, "micro_batches": len(mbs)}

    # ---------------------------------------------------------------- evaluation

    async def evaluate(self, held: list[dict], label: str) -> dict:
        """Held-out accuracy (avg@k at the eval temperature) with the real tool."""
        if not held:
            return {}
        ev = self.cfg.eval
        mine = held[self.rank::self.world]
        self._t_gen = self._t_tools = self._t_grade = 0.0
        groups = await self.rollout_and_grade(mine, ev.k, ev.max_turns, ev.max_tokens,
                                              temperature=ev.temperature, seed=self._seed("eval", label))
        trajs = [t for g in groups for t in g]
        correct, total, tool_pos, calls = _all_sum([
            sum(1 for t in trajs if t.reward == 1.0), float(len(trajs)),
            float(sum(1 for t in trajs if t.num_tool_calls > 0)),
            float(sum(t.num_tool_calls for t in trajs))])
        rec = {"phase": "eval", "label": label, "step": self.state.global_step,
               "held_out_acc": correct / max(1.0, total), "held_out_n": int(total),
               "held_out_tool_use": tool_pos / max(1.0, total)}
        if self.main:
            from tirl.agent.trajectory import save_trajectories

            save_trajectories(self.run.trajectories / f"eval_{label}.jsonl", trajs[:50], append=False)
        self.state.evals.append(rec)
        if self.metrics:
            self.metrics.write(rec)
        return rec

    async def difficulty_filter(self, pool: list[dict], k: int, stage) -> list[dict]:
        """Offline filter before a stage: sample k per problem, drop those solved k/k."""
        mine = pool[self.rank::self.world]
        self._t_gen = self._t_tools = self._t_grade = 0.0
        groups = await self.rollout_and_grade(mine, k, stage.max_turns, stage.max_tokens,
                                              seed=self._seed("filter", self.state.stage_idx, stage.name))
        solved_local = [p["id"] for p, g in zip(mine, groups) if all(t.reward == 1.0 for t in g)]
        solved = {i for part in _all_gather_objects(solved_local) for i in part}
        return [p for p in pool if p["id"] not in solved]

    # ---------------------------------------------------------------- main

    async def arun(self) -> dict:
        cfg = self.cfg
        random.seed(cfg.run.seed)
        torch.manual_seed(cfg.run.seed)
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        train, held = load_problem_sets(cfg)
        self.model, self.tokenizer, ckpt = self.build_model(train, held)
        self.model.to(self.device)
        self.model.eval()
        ts = None
        if ckpt is not None:
            ts = torch.load(ckpt / "trainer_state.pt", weights_only=False)
            self.state = TrainerState(**ts["state"])
            if ts["optimizer"] is not None:
                self.optimizer = self.make_optimizer()
                self.optimizer.load_state_dict(ts["optimizer"])
            self.data_rng.setstate(ts["data_rng"])
            if self.main:
                truncate_metrics(self.run.metrics_path, self.state.global_step)
                self._drop_evals_after_checkpoint()
        await self._start_services()
        if ts is not None:
            _set_rng_state(ts["rng"], self.engine)
        self._bar = None
        self._status = ""
        self._traj_done = 0
        t_start = time.perf_counter()
        try:
            if cfg.sft.enabled and not self.state.sft_done:
                self.do_sft()
                await self.evaluate(held, "sft")
                self.state.sft_done = True
                self.checkpoint("sft")
            elif not cfg.sft.enabled and not self.state.sft_done:
                await self.evaluate(held, "init")
                self.state.sft_done = True
            total_steps = sum(s.steps for s in cfg.stages)
            with progress_bar(total_steps, "GRPO-RoC" if cfg.rl.algorithm == "grpo_roc" else "GRPO",
                              enabled=self.progress and self.main) as bar:
                self._bar = bar
                bar.advance(self.state.global_step)
                try:
                    while self.state.stage_idx < len(cfg.stages):
                        await self.run_stage(train, held)
                except _Stopped:
                    pass
            self._bar = None
        finally:
            await self._stop_services()
        result = {"evals": self.state.evals, "global_step": self.state.global_step,
                  "seconds": time.perf_counter() - t_start}
        if self.main:
            from tirl.rl.report import write_report

            write_report(self.run, cfg)
        return result

    def _drop_evals_after_checkpoint(self) -> None:
        pass  # evals live in TrainerState, restored with it

    def do_sft(self) -> None:
        from tirl.data.sft import load_sft_examples, tokenize_example
        from tirl.rl.sft import run_sft

        s = self.cfg.sft
        exs = load_sft_examples(s.data, s.size, self.cfg.run.seed)
        if self.cfg.agent.tool_response_timing:
            toks = [tokenize_example(self.tokenizer, e, self.cfg.agent.system_prompt, s.max_length) for e in exs]
        else:  # SFT shows the tool responses the rollouts will show: without the run time
            toks = [self._tokenize_untimed(e, s.max_length) for e in exs]
        steps_total = math.ceil(len(toks) / s.batch_size) * s.epochs
        with progress_bar(steps_total, "SFT", enabled=self.progress and self.main) as bar:
            def on_step(step, total, loss):
                bar.advance(1)
                bar.status(f"loss {loss:.3f}")
                if self.metrics and (step % 10 == 0 or step == total):
                    self.metrics.write({"phase": "sft", "sft_step": step, "sft_loss": loss, "step": 0})

            res = run_sft(self.model, toks, epochs=s.epochs, lr=s.lr, batch_size=s.batch_size,
                          pad_id=self.tokenizer.pad_token_id or 0, seed=self.cfg.run.seed,
                          warmup_steps=s.warmup_steps, on_step=on_step)
        if self.metrics:
            self.metrics.write({"phase": "sft_done", "step": 0, "sft_final_loss": res.final_loss,
                                "sft_seconds": res.seconds, "sft_examples": len(toks)})

    def _sft_text_untimed(self, example: dict) -> tuple[str, list[tuple[str, bool]]]:
        """``tirl.data.sft.render_example_text`` with ``[agent] tool_response_timing = false``."""
        from tirl.agent.format import render_sft_example
        from tirl.data.sft import _result

        turns = [(text, [_result(r) for r in results]) for text, results in example["turns"]]
        return render_sft_example(example["problem"], turns, system=self.cfg.agent.system_prompt,
                                  timing=False)

    def _tokenize_untimed(self, example: dict, max_length: int | None) -> tuple[list[int], list[int]]:
        prompt, segs = self._sft_text_untimed(example)
        ids = list(self.tokenizer.encode(prompt, add_special_tokens=False))
        mask = [0] * len(ids)
        for text, trained in segs:
            seg = list(self.tokenizer.encode(text, add_special_tokens=False))
            ids += seg
            mask += [1 if trained else 0] * len(seg)
        if max_length is not None:
            ids, mask = ids[:max_length], mask[:max_length]
        return ids, mask

    async def run_stage(self, train: list[dict], held: list[dict]) -> None:
        cfg = self.cfg
        st = self.state
        stage = cfg.stages[st.stage_idx]
        pool = stage_problems(cfg, st.stage_idx, train)
        if st.stage_step == 0 and st.filtered_ids is None:
            if stage.reset_optimizer:
                self.optimizer = None
            if stage.difficulty_filter_k:
                kept = await self.difficulty_filter(pool, stage.difficulty_filter_k, stage)
                if self.metrics:
                    self.metrics.write({"phase": "filter", "step": st.global_step, "stage": stage.name,
                                        "filter_before": len(pool), "filter_after": len(kept)})
                st.filtered_ids = [p["id"] for p in kept] or [p["id"] for p in pool]
        if st.filtered_ids is not None:
            ids = set(st.filtered_ids)
            pool = [p for p in pool if p["id"] in ids]
        self._order = self._make_order(pool)
        while st.stage_step < stage.steps:
            await self.rl_step(pool, stage)
            if self.stop_after is not None and st.global_step >= self.stop_after \
                    and st.stage_step < stage.steps:
                self.checkpoint(f"step_{st.global_step:06d}")
                raise _Stopped()
        await self.evaluate(held, stage.name)
        st.stage_idx += 1
        st.stage_step = 0
        st.cursor = 0
        st.epoch = 0
        st.filtered_ids = None
        self.checkpoint(f"step_{st.global_step:06d}")

    async def rl_step(self, pool: list[dict], stage) -> dict:
        st = self.state
        self._t_gen = self._t_tools = self._t_grade = 0.0
        self._traj_done = 0
        t0 = time.perf_counter()
        groups, stats = await self.collect_batch(pool, stage)
        t1 = time.perf_counter()
        # every rank must join the update's collectives when any rank has groups
        any_groups = _all_sum([float(len(groups))])[0] > 0
        upd = self.update(groups) if any_groups else {}
        t_update = time.perf_counter() - t1
        st.global_step += 1
        st.stage_step += 1
        rec = self._step_metrics(groups, stats, upd, stage)
        rec.update({"time_generation": self._t_gen, "time_tools": self._t_tools,
                    "time_grading": self._t_grade, "time_update": t_update,
                    "time_step": time.perf_counter() - t0})
        gen_tokens = _all_sum([float(sum(t.num_policy_tokens for t in stats["sampled"]))])[0]
        rec["tokens_per_s"] = gen_tokens / max(1e-9, self._t_gen)
        if self.metrics:
            self.metrics.write(rec)
        if self._bar is not None:
            self._status = (f"{stage.name} reward {rec.get('reward', 0):.2f} "
                            f"err+ {rec.get('tool_error_ratio_pos') or 0:.2f} len {rec.get('response_len_mean', 0):.0f}")
            self._bar.status(self._status)
            self._bar.advance(1)
        if self.main and st.global_step % self.cfg.rl.plot_every == 0:
            from tirl.rl.report import write_plots

            write_plots(self.run)
        if st.global_step % self.cfg.rl.checkpoint_every == 0 and st.stage_step < stage.steps:
            self.checkpoint(f"step_{st.global_step:06d}")
        return rec

    def _step_metrics(self, groups, stats, upd, stage) -> dict:
        sampled = [t for t in stats["sampled"] if t.reward is not None]
        kept = [t for g in groups for t in g]
        pos = [t for t in kept if t.reward == 1.0]
        sampled_pos = [t for t in sampled if t.reward == 1.0]
        vals = _all_sum([
            float(len(sampled)), float(sum(t.reward for t in sampled)),
            float(sum(len(t.response_ids) for t in sampled)),
            float(sum(t.num_tool_calls for t in sampled)), float(sum(t.num_tool_errors for t in sampled)),
            float(sum(t.num_tool_calls for t in pos)), float(sum(t.num_tool_errors for t in pos)),
            float(sum(t.num_tool_calls for t in sampled_pos)), float(sum(t.num_tool_errors for t in sampled_pos)),
            float(sum(format_penalty(t) for t in sampled)),
            float(stats["groups_sampled"]), float(stats["groups_dropped"]), float(len(groups)),
            float(stats["infra_dropped"]), float(len(kept)),
            float(sum(len(t.response_ids) for t in pos)), float(len(pos)),
            float(sum(1 for t in sampled if t.truncated)),
        ])
        (n, rsum, lsum, calls, errs, pcalls, perrs, spcalls, sperrs, fpen, gs, gd, gk, infra, nk,
         plen, npos, trunc) = vals
        lmax = max(_all_gather_objects(max((len(t.response_ids) for t in sampled), default=0)))
        # pass rate: share of sampled groups with at least one correct rollout
        rec = {
            "phase": "rl", "step": self.state.global_step, "stage": stage.name,
            "reward": rsum / max(1.0, n), "pass_rate": None,
            "groups_sampled": int(gs), "groups_dropped": int(gd), "groups_kept": int(gk),
            "refill_rounds": stats["refill_rounds"], "infra_dropped": int(infra),
            "response_len_mean": lsum / max(1.0, n), "response_len_max": lmax,
            "response_len_pos": plen / npos if npos else None,
            "tool_calls_per_traj": calls / max(1.0, n),
            "tool_error_ratio": errs / calls if calls else None,
            "tool_error_ratio_pos": perrs / pcalls if pcalls else None,
            "tool_error_ratio_pos_sampled": sperrs / spcalls if spcalls else None,
            "format_penalty": fpen / max(1.0, n), "truncated_frac": trunc / max(1.0, n),
            "trajectories_kept": int(nk),
        }
        by_group: dict[str, list] = {}
        for t in stats["sampled"]:
            if t.reward is not None:
                by_group.setdefault(t.problem_id, []).append(t.reward)
        p_local = [float(sum(1 for r in by_group.values() if max(r) > 0)), float(len(by_group))]
        p_pass, p_n = _all_sum(p_local)
        rec["pass_rate"] = p_pass / max(1.0, p_n)
        rec.update(upd)
        return rec

    def checkpoint(self, name: str) -> None:
        if self.main:
            save_checkpoint(self.run.checkpoints / name, self.model, self.tokenizer, self.optimizer,
                            self.state, self.engine, self.data_rng)
        d = _dist()
        if d:
            d.barrier()


def train(cfg: Config, *, progress: bool = True, engine_factory=None, tools_factory=None,
          stop_after: int | None = None) -> dict:
    """Run ``cfg``'s recipe (SFT, then the GRPO-RoC stages); returns evals and timing.

    ``engine_factory(model, tokenizer)`` / ``tools_factory()`` (async) replace the local
    engine and the sandbox (tests); ``stop_after`` stops after that many RL steps with a
    checkpoint, as an interruption would (a later call with ``run.resume`` continues).
    """
    started = _maybe_init_distributed()  # joins torchrun; a group made by the caller is kept
    try:
        trainer = Trainer(cfg, progress=progress, engine_factory=engine_factory, tools_factory=tools_factory,
                          stop_after=stop_after)
        return asyncio.run(trainer.arun())
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()

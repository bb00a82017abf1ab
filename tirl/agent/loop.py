"""The multi-turn tool-integrated rollout loop (rStar2-Agent §2.1; docs/architecture.md).

:class:`AgentLoop` runs many trajectories concurrently on asyncio. Each trajectory is
independent: the moment one turn ends, its tool calls go to the sandbox, and the next turn
is generated when *its* results are back — no lockstep across the batch, so a slow tool call
holds up only its own trajectory.

Token-exact by construction: the prompt is tokenized once; every turn is generated from
``prompt_ids + response_ids``; the model's tokens are kept as the engine returned them
(mask 1, with their logprobs) and the tool-response / template tokens are appended (mask 0).
Nothing is decoded and re-encoded; the prefix is checked before every turn and a mismatch
raises :class:`PrefixMismatch` (a bug, never a silent drift).

Stops: a turn without a tool call (``answer``); the turn limit (``max_turns``; calls in the
last turn are recorded but not executed); the token budget shared by generated and tool tokens
(``max_tokens``; a tool response that would not leave room for another generated token ends
the trajectory without it); the engine's context limit (``engine_stop``); the engine or
sandbox failing (``infra_error``, never the policy's fault): an exception, or a turn the
engine ended with a finish reason other than ``stop``/``length`` (``abort``: a lost
connection, a server error, a cancelled request). Whether a ``max_turns`` trajectory is
graded is decided by :attr:`Trajectory.truncated` (a complete final answer in the last turn).

What it does not do: grade answers (``tirl.reward``), pick engines (``tirl.dispatch``), or
retry failed engines.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import time
import uuid
from typing import Any, Callable, Iterable, Sequence

from tirl.agent import format as fmt
from tirl.agent.config import AgentConfig, SamplingConfig
from tirl.agent.trajectory import ToolCall, Trajectory, Turn
from tirl.sandbox.types import ExecResult


class PrefixMismatch(AssertionError):
    """The context of a turn does not start with the previous turn's context (a bug)."""


Callback = Callable[..., Any]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from ``parts`` (stable across processes and Python versions, unlike hash())."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


async def _maybe_await(x: Any) -> None:
    if inspect.isawaitable(x):
        await x


class AgentLoop:
    """Multi-turn rollouts of one policy with one tool executor.

    ``engine``: anything with ``async generate(prompt_ids, max_new_tokens, temperature, stop,
    *, top_p, top_k) -> Completion``; if it also has ``lease(key, reserve_tokens, group=None)``
    (the dispatcher), one lease is taken per trajectory and every turn runs on the leased
    engine. Given a base ``seed`` (``run``/``run_many``/``rollout``), every turn is generated
with ``seed=derive_seed(seed, problem id, sample index, turn)``, so a trajectory's random
numbers do not depend on scheduling; without one, ``generate`` gets no seed. ``tools``: anything with ``async run(code, stdin="", timeout_s=None,
    session_id=None) -> ExecResult`` (and ``close_session(id)`` for the stateful tool), or
    None (every call is then answered with an ``infra_error``). ``cfg.open_with_reason``: in
    the rstar2 format the template opens every assistant turn with ``<reason>`` (the prompt
    and every tool-response turn end with it, as the release does); False leaves it to the model.
    """

    def __init__(self, engine: Any, tokenizer: Any, tools: Any, cfg: AgentConfig | None = None, *,
                 sampling: SamplingConfig | None = None, on_turn: Callback | None = None,
                 tool_timeout_s: float | None = None):
        self.engine = engine
        self.tokenizer = tokenizer
        self.tools = tools
        self.cfg = cfg or AgentConfig()
        self.sampling = sampling or SamplingConfig()
        self.on_turn = on_turn
        self.tool_timeout_s = tool_timeout_s
        self.open_with_reason = self.cfg.open_with_reason
        self.stop_ids = fmt.end_of_turn_ids(tokenizer)
        if not self.stop_ids:
            raise ValueError(
                "the tokenizer has neither <|im_end|> nor an eos token, so turns cannot end; "
                "use a tokenizer with ChatML special tokens (tirl.engines.tokenizer.build_tokenizer)"
            )
        self.prefix_checks = 0
        self.prefix_mismatches = 0
        self._sem: asyncio.Semaphore | None = None

    # ---------------------------------------------------------------- public API

    def render_prompt(self, problem: str) -> list[int]:
        return fmt.render_prompt(self.tokenizer, problem, self.cfg.format, stateful=self.cfg.stateful_tool,
                                 system=self.cfg.system_prompt, open_with_reason=self.open_with_reason)

    async def run(self, problem: str, *, n: int = 1, problem_id: str | None = None,
                  gold: str | None = None, sampling: SamplingConfig | None = None,
                  on_done: Callback | None = None, seed: int | None = None) -> list[Trajectory]:
        """``n`` trajectories of one problem, generated concurrently. With ``seed``, sample
        ``i`` is seeded from (seed, problem_id, i): give a ``problem_id`` for repeatable runs."""
        prompt_ids = self.render_prompt(problem)
        group = problem_id if problem_id is not None else uuid.uuid4().hex[:12]

        async def one(i: int) -> Trajectory:
            t = await self.rollout(prompt_ids, problem_id=problem_id, gold=gold, sampling=sampling,
                                   key=f"{group}/{i}", group=group, sample_index=i,
                                   seed=None if seed is None else derive_seed(seed, group, i))
            if on_done is not None:
                await _maybe_await(on_done(t))
            return t

        return list(await asyncio.gather(*(one(i) for i in range(n))))

    async def run_many(self, items: Iterable[dict], n: int = 1, on_done: Callback | None = None,
                       **overrides: Any) -> list[Trajectory]:
        """All trajectories of ``items`` (dicts with ``problem``, ``answer``, ``id``), grouped
        by problem in input order; ``on_done(traj)`` is called as each one finishes.
        ``seed=`` (with the other ``run`` keywords) seeds every trajectory by its problem id."""
        items = list(items)
        groups = await asyncio.gather(*(
            self.run(it["problem"], n=n, problem_id=str(it["id"]) if it.get("id") is not None else None,
                     gold=None if it.get("answer") is None else str(it["answer"]),
                     on_done=on_done, **overrides)
            for it in items
        ))
        return [t for g in groups for t in g]

    async def rollout(self, prompt_ids: Sequence[int], *, problem_id: str | None = None,
                      gold: str | None = None, sampling: SamplingConfig | None = None,
                      key: str | None = None, group: str | None = None, sample_index: int = 0,
                      on_turn: Callback | None = None, seed: int | None = None) -> Trajectory:
        """One trajectory from a rendered prompt (the loop's unit of work); with ``seed``,
        turn ``k`` is generated with ``seed=derive_seed(seed, k)``."""
        traj = Trajectory(prompt_ids=list(prompt_ids), problem_id=problem_id, gold=gold,
                          meta={"sample_index": sample_index})
        sp = sampling or self.sampling
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.cfg.concurrency)
        session_id = f"tirl-{uuid.uuid4().hex}" if self.cfg.stateful_tool else None
        t0 = time.perf_counter()
        async with self._sem:
            try:
                if hasattr(self.engine, "lease"):
                    async with self.engine.lease(key or uuid.uuid4().hex,
                                                 len(traj.prompt_ids) + sp.max_tokens,
                                                 group=group) as eng:
                        await self._turns(eng, traj, sp, session_id, on_turn, seed)
                else:
                    await self._turns(self.engine, traj, sp, session_id, on_turn, seed)
            except PrefixMismatch:
                raise
            except asyncio.CancelledError:
                raise
            except Exception as err:  # engine / dispatcher failure: typed, not the policy's fault
                traj.finish_reason = "infra_error"
                traj.meta["error"] = f"{type(err).__name__}: {err}"
            finally:
                if session_id is not None and self.tools is not None and hasattr(self.tools, "close_session"):
                    try:
                        await self.tools.close_session(session_id)
                    except Exception:  # noqa: BLE001 - a session that is already gone is fine
                        pass
        traj.text = self.tokenizer.decode(traj.response_ids, skip_special_tokens=False)
        traj.meta["wall_ms"] = (time.perf_counter() - t0) * 1000.0
        return traj

    # ---------------------------------------------------------------- internals

    def _check_prefix(self, traj: Trajectory, context: list[int], previous: list[int]) -> None:
        self.prefix_checks += 1
        n = len(traj.prompt_ids)
        if context[:n] != traj.prompt_ids or context[:len(previous)] != previous:
            self.prefix_mismatches += 1
            raise PrefixMismatch(
                f"turn {len(traj.turns)} of trajectory {traj.problem_id!r}: the context no longer "
                "starts with the previous turn's context"
            )

    async def _turns(self, eng: Any, traj: Trajectory, sp: SamplingConfig, session_id: str | None,
                     on_turn: Callback | None, seed: int | None = None) -> None:
        cfg = self.cfg
        max_turns, max_tokens = sp.max_turns, sp.max_tokens
        previous: list[int] = list(traj.prompt_ids)
        for turn_idx in range(max_turns):
            remaining = max_tokens - len(traj.response_ids)
            if remaining <= 0:
                traj.finish_reason = "max_tokens"
                return
            max_new = min(remaining, sp.max_tokens_per_turn) if sp.max_tokens_per_turn else remaining
            context = traj.prompt_ids + traj.response_ids
            self._check_prefix(traj, context, previous)
            previous = context
            t0 = time.perf_counter()
            extra = {} if seed is None else {"seed": derive_seed(seed, turn_idx)}
            comp = await eng.generate(list(context), max_new, sp.temperature, list(self.stop_ids) + sp.stop,
                                      top_p=sp.top_p, top_k=sp.top_k, **extra)
            gen_ms = (time.perf_counter() - t0) * 1000.0
            ids = list(comp.token_ids)[:max_new]
            if comp.logprobs is None:
                lps = [0.0] * len(ids)
                traj.meta["logprobs_missing"] = True
            else:
                lps = [float(x) for x in comp.logprobs[:len(ids)]]
            traj.response_ids.extend(ids)
            traj.response_mask.extend([1] * len(ids))
            traj.logprobs.extend(lps)
            # keep special tokens other than the end of turn: some tokenizers make <tool_call> special
            text = self.tokenizer.decode([t for t in ids if t not in self.stop_ids], skip_special_tokens=False)
            turn = Turn(text=text, gen_ms=gen_ms, n_generated=len(ids), finish=comp.finish_reason,
                        weight_version=comp.meta.get("weight_version_start", comp.meta.get("weight_version")))
            traj.turns.append(turn)
            closed = bool(ids) and ids[-1] in self.stop_ids
            if comp.finish_reason not in ("stop", "length"):  # abort, lost connection, server error
                traj.finish_reason = "infra_error"
                said = comp.meta.get("server_finish_reason", comp.finish_reason)
                traj.meta["error"] = (f"the engine ended turn {turn_idx} with finish reason "
                                      f"{comp.finish_reason!r} (server: {said!r}); not the policy's fault")
                await self._notify(on_turn, traj, turn)
                return
            if not closed and (comp.finish_reason == "length" or len(ids) >= remaining):
                traj.finish_reason = "engine_stop" if comp.meta.get("context_limit") else "max_tokens"
                turn.tool_calls = fmt.parse_tool_calls(text)
                await self._notify(on_turn, traj, turn)
                return
            calls = fmt.parse_tool_calls(text)
            turn.tool_calls = calls
            if not calls:
                traj.finish_reason = "answer"
                await self._notify(on_turn, traj, turn)
                return
            if turn_idx == max_turns - 1:
                traj.finish_reason = "max_turns"  # calls recorded, not executed (result None)
                await self._notify(on_turn, traj, turn)
                return
            t1 = time.perf_counter()
            await asyncio.gather(*(self._execute(c, session_id) for c in calls))
            turn.tool_ms = (time.perf_counter() - t1) * 1000.0
            if any(c.infra_failed for c in calls):
                traj.finish_reason = "infra_error"
                await self._notify(on_turn, traj, turn)
                return
            bodies = [fmt.parse_error_message(c) if c.result is None else c.result for c in calls]
            resp = fmt.render_tool_responses(self.tokenizer, bodies, cfg.format,
                                             max_chars=cfg.tool_response_max_chars, turn_closed=closed,
                                             timing=cfg.tool_response_timing,
                                             open_with_reason=self.open_with_reason)
            if len(traj.response_ids) + len(resp) >= max_tokens:
                traj.finish_reason = "max_tokens"  # the response would leave no room: not appended
                traj.meta["dropped_tool_tokens"] = len(resp)
                await self._notify(on_turn, traj, turn)
                return
            traj.response_ids.extend(resp)
            traj.response_mask.extend([0] * len(resp))
            traj.logprobs.extend([0.0] * len(resp))
            turn.n_tool_tokens = len(resp)
            await self._notify(on_turn, traj, turn)
        traj.finish_reason = traj.finish_reason or "max_turns"

    async def _notify(self, on_turn: Callback | None, traj: Trajectory, turn: Turn) -> None:
        for cb in (on_turn, self.on_turn):
            if cb is not None:
                await _maybe_await(cb(traj, turn))

    async def _execute(self, call: ToolCall, session_id: str | None) -> None:
        if call.parse_error is not None:
            return
        t0 = time.perf_counter()
        if self.tools is None:
            call.result = ExecResult(status="infra_error", reason="no tool executor configured")
        else:
            args = call.arguments or {}
            try:
                call.result = await self.tools.run(args["code"], stdin=args.get("input", ""),
                                                   timeout_s=self.tool_timeout_s, session_id=session_id)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - the service failed: typed infra_error
                call.result = ExecResult(status="infra_error", reason=f"{type(err).__name__}: {err}")
        call.tool_ms = (time.perf_counter() - t0) * 1000.0


def summarize(trajs: Sequence[Trajectory]) -> dict[str, Any]:
    """Counts over trajectories: finish reasons, tool calls (answered ones; those recorded at the
    turn limit but never run apart), tool errors by kind, tokens."""
    finish: dict[str, int] = {}
    errors: dict[str, int] = {}
    for t in trajs:
        finish[str(t.finish_reason)] = finish.get(str(t.finish_reason), 0) + 1
        for k, v in t.tool_errors_by_kind.items():
            errors[k] = errors.get(k, 0) + v
    n = max(1, len(trajs))
    return {
        "trajectories": len(trajs),
        "finish_reasons": finish,
        "tool_calls": sum(t.num_tool_calls for t in trajs),
        "tool_errors": sum(t.num_tool_errors for t in trajs),
        "tool_calls_unexecuted": sum(t.num_unexecuted_calls for t in trajs),
        "tool_errors_by_kind": errors,
        "mean_turns": sum(len(t.turns) for t in trajs) / n,
        "mean_response_tokens": sum(len(t.response_ids) for t in trajs) / n,
        "mean_policy_tokens": sum(t.num_policy_tokens for t in trajs) / n,
    }


__all__ = ["AgentLoop", "PrefixMismatch", "derive_seed", "summarize"]

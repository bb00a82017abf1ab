"""Batch grading in worker processes: ``Grader``.

Each item is graded in two stages. In the caller's process: extract the answer
(``tirl.reward.extract``) and try the exact fast path (``tirl.reward.normalize``) — integers,
fractions and terminating decimals, the bulk of an RL batch, never pay for a process hop.
Everything else (symbolic math-verify checks, reasoning-gym and custom scorers) goes to a
pebble process pool with a per-item limit of ``timeout_s`` counted from when a worker picks
the item up:

- inside the worker, a ``setitimer`` signal stops Python-level work at 0.8 × ``timeout_s``
  (the worker survives, no respawn cost);
- at ``timeout_s`` pebble kills the worker (a long C call, a scorer that ignores signals) and
  starts a new one.

Both give ``Grade(status="timeout")`` (reward 0) with the reason in ``detail``: never
counted correct, never blocking the batch. A worker that dies under a check before its time
is up (``ProcessExpired``: a segfault, the OOM killer, ``os._exit``) or any other pool
failure is the grader's fault, not the answer's: the item is retried once (pebble has
replaced the worker); a second failure gives ``Grade(status="infra_error")``, whose
``reward`` is ``None`` — callers drop the item, never reward it 0.

From asyncio, ``await grader.grade_batch(...)`` waits on futures and yields to the event
loop between chunks of fast-path work, so it never blocks the loop. Workers are forked
from a forkserver that has sympy and math-verify imported, so a replaced worker is ready in
milliseconds and the parent's threads (torch, asyncio) are never forked.

What it does not do: retry timed-out items (a slow check stays slow), or grade in other
machines (the trainer runs one ``Grader`` per process).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from tirl.reward.config import RewardConfig
from tirl.reward.answer import select_answer
from tirl.reward.normalize import fast_equal
from tirl.reward.scorers import MATH, Scorer, answer_for_source, as_scorer, source_score
from tirl.reward.symbolic import CheckTimeout, symbolic_equal, time_limit, warm_up
from tirl.reward.types import Grade

SOFT_FRACTION = 0.8
_PRELOAD = ["sympy", "math_verify", "tirl.reward.grader"]
# reasoning-gym takes seconds to import: in the forkserver, once, not inside a check's limit
_OPTIONAL_PRELOAD = ["reasoning_gym"]
_CHUNK = 128


def default_workers() -> int:
    """Half the CPUs (at least 1, at most 8): grading shares the machine with rollouts."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def _init_worker() -> None:
    warm_up()


def make_pool(workers: int):
    """A pebble ``ProcessPool`` of ``workers`` warmed-up grading workers (forkserver)."""
    from pebble import ProcessPool

    import importlib.util

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(
        _PRELOAD + [m for m in _OPTIONAL_PRELOAD if importlib.util.find_spec(m) is not None])
    return ProcessPool(max_workers=workers, initializer=_init_worker, context=ctx)


def worker_check(kind: str, pred: str | None, gold: str, entry: Any, timeout_s: float,
                 fn: Any = None) -> tuple[str, str]:
    """Runs in a worker: ``(status, detail)`` for one item. ``kind`` is ``math``,
    ``reasoning_gym:<dataset>`` or ``custom``."""
    soft = timeout_s * SOFT_FRACTION
    try:
        if kind == "math":
            ok = symbolic_equal(pred or "", gold, soft)
            return ("correct" if ok else "incorrect"), ""
        with time_limit(soft):
            if fn is not None:
                score = float(fn(pred, gold, entry))
            else:
                score = source_score(kind.split(":", 1)[1], pred or "",
                                     entry if entry is not None else {"answer": gold})
        return ("correct" if score >= 1.0 - 1e-9 else "incorrect"), f"score={score:.4g}"
    except CheckTimeout as err:
        return "timeout", f"soft limit: {err}"
    except Exception as err:  # a scorer that raises has not judged the answer correct
        return "incorrect", f"scorer error: {type(err).__name__}: {str(err)[:200]}"


class Grader:
    """Grades responses against reference answers, in worker processes with a per-item limit.

    ``Grader(workers=0, timeout_s=2.0)``; use as ``with``/``async with``, or call ``close()``.
    ``await grade(text, gold)``, ``await grade_batch([(text, gold), ...], scorers=None)``;
    ``grade_batch_sync`` for scripts without an event loop. ``counts`` tallies how items
    were decided (``fast``, ``symbolic``, ``timeout``, ``hedge``, ``crash``, ``retry``,
    ``infra_error``, ...).
    """

    def __init__(self, workers: int = 0, timeout_s: float = 2.0):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if workers < 0:
            raise ValueError(f"workers must be >= 0 (0 = from the CPU count), got {workers!r}")
        self.workers = workers or default_workers()
        self.timeout_s = float(timeout_s)
        self.counts: Counter[str] = Counter()
        self._pool = None
        self._closed = False
        self._pending: set = set()  # pebble futures in flight, cancelled by close()

    @classmethod
    def from_config(cls, cfg: RewardConfig) -> Grader:
        return cls(workers=cfg.workers, timeout_s=cfg.timeout_s)

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> Grader:
        """Start the worker pool now (otherwise it starts on the first symbolic check)."""
        if self._closed:
            raise RuntimeError("this Grader is closed; make a new one")
        if self._pool is None:
            self._pool = make_pool(self.workers)
        return self

    def close(self) -> None:
        """Stop the workers (pending checks are cancelled)."""
        self._closed = True
        pool, self._pool = self._pool, None
        for fut in list(self._pending):
            fut.cancel()  # pebble's stop() leaves running futures unresolved
        if pool is not None:
            pool.stop()
            pool.join(timeout=10)

    def __enter__(self) -> Grader:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Grader:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the workers without blocking the event loop."""
        await asyncio.to_thread(self.close)

    # -- grading -----------------------------------------------------------------------
    async def grade(self, response_text: str, gold: str,
                    scorer: str | Scorer | dict | None = None) -> Grade:
        """Grade one response (see ``grade_batch``)."""
        return (await self.grade_batch([(response_text, gold)], [scorer]))[0]

    async def grade_batch(self, items: Sequence[tuple[str, str]],
                          scorers: Sequence[str | Scorer | dict | None] | None = None
                          ) -> list[Grade]:
        """Grades of ``items`` (``(response_text, gold)`` pairs), in order. ``scorers``, one
        per item, picks each item's judge (``None``/``"math"``,
        ``"reasoning_gym:<dataset>"``, a ``Scorer``); default: math equivalence."""
        if scorers is not None and len(scorers) != len(items):
            raise ValueError(f"scorers has {len(scorers)} entries for {len(items)} items; "
                             "pass one scorer (or None) per item")
        specs = [as_scorer(s) for s in scorers] if scorers is not None else None  # fail early
        out: list[Grade | None] = [None] * len(items)
        waits = []
        for i, item in enumerate(items):
            if i and i % _CHUNK == 0:
                await asyncio.sleep(0)  # let the event loop breathe between chunks
            text, gold = item
            scorer = specs[i] if specs is not None else MATH
            t0 = time.perf_counter()
            done, job = self._prepare(text, str(gold), scorer, t0)
            if done is not None:
                out[i] = done
            else:
                if self._pool is None:
                    await asyncio.to_thread(self.start)
                waits.append((i, self._finish(job, t0)))
        if waits:
            results = await asyncio.gather(*(w for _, w in waits))
            for (i, _), g in zip(waits, results):
                out[i] = g
        return out  # type: ignore[return-value]

    def grade_batch_sync(self, items: Sequence[tuple[str, str]],
                         scorers: Sequence[str | Scorer | dict | None] | None = None
                         ) -> list[Grade]:
        """``grade_batch`` for code without a running event loop."""
        return asyncio.run(self.grade_batch(items, scorers))

    def _prepare(self, text: str, gold: str, scorer: Scorer, t0: float
                 ) -> tuple[Grade | None, tuple]:
        if scorer.name == "math" and scorer.fn is None:
            pred, hedge = select_answer(text, gold)
            if pred is None:
                self.counts["hedge" if hedge else "no_answer"] += 1
                return Grade("incorrect" if hedge else "no_answer", None, gold, _ms(t0),
                             method="extract", detail=hedge), ()
            if not gold.strip():
                self.counts["no_reference"] += 1
                return Grade("incorrect", pred, gold, _ms(t0), method="fast",
                             detail="empty reference answer: nothing can equal it"), ()
            fast = fast_equal(pred, gold)
            if fast is not None:
                self.counts["fast"] += 1
                return Grade("correct" if fast else "incorrect", pred, gold, _ms(t0),
                             method="fast"), ()
            return None, ("math", pred, gold, None, None, "symbolic")
        pred = answer_for_source(text)
        if pred is None:
            self.counts["no_answer"] += 1
            return Grade("no_answer", None, gold, _ms(t0), method="extract"), ()
        kind = "custom" if scorer.fn is not None else scorer.name
        method = kind if scorer.fn is None else f"custom:{getattr(scorer.fn, '__name__', '?')}"
        return None, (kind, pred, gold, scorer.entry, scorer.fn, method)

    async def _finish(self, job: tuple, t0: float) -> Grade:
        kind, pred, gold, entry, fn, method = job
        first = await self._run(job, t0)
        if isinstance(first, Grade):
            return first
        if self._closed:  # close() stopped the pool under it: not a crash to retry
            return Grade("timeout", pred, gold, _ms(t0), method=method,
                         detail="grader closed before the check finished")
        # the worker died (or the pool failed) under a check that was not out of time: that
        # is the grader's fault, not the answer's. Once more, in a fresh worker.
        self.counts["retry"] += 1
        second = await self._run(job, t0)
        if isinstance(second, Grade):
            return second
        self.counts["infra_error"] += 1
        return Grade("infra_error", pred, gold, _ms(t0), method=method,
                     detail=f"grader worker failed twice: {first}; then {second}")

    async def _run(self, job: tuple, t0: float) -> Grade | str:
        """One attempt: a Grade, or a string saying how the worker failed (crash)."""
        from pebble import ProcessExpired

        kind, pred, gold, entry, fn, method = job
        if self._pool is None:
            raise RuntimeError("this Grader is closed; make a new one")
        fut = self._pool.schedule(worker_check, args=(kind, pred, gold, entry, self.timeout_s, fn),
                                  timeout=self.timeout_s)
        self._pending.add(fut)
        fut.add_done_callback(self._pending.discard)
        try:
            status, detail = await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closed and task is not None and not task.cancelling():
                # the pool was stopped under a pending check (close() mid-batch)
                return Grade("timeout", pred, gold, _ms(t0), method=method,
                             detail="grader closed before the check finished")
            raise
        except FutureTimeout:
            status, detail = "timeout", f"killed after {self.timeout_s:g}s"
        except ProcessExpired as err:
            self.counts["crash"] += 1
            return f"worker crashed (exit code {err.exitcode})"
        except Exception as err:  # a broken pool: not the answer's fault
            if "pickle" in str(err).lower():  # the caller's mistake, not the grader's
                raise ValueError(f"{method}: the judge cannot be sent to a worker process ({err}); "
                                 "pass a module-level function as Scorer(fn=...)") from err
            self.counts["crash"] += 1
            return f"worker failed: {type(err).__name__}: {str(err)[:200]}"
        self.counts["timeout" if status == "timeout" else method.split(":")[0]] += 1
        return Grade(status, pred, gold, _ms(t0), method=method, detail=detail)  # type: ignore[arg-type]


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3

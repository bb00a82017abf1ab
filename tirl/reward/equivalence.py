"""In-process answer checking: ``is_equivalent`` and ``grade`` (synchronous).

``is_equivalent(pred, gold)`` tries the exact fast path (``tirl.reward.normalize``) and, when
that cannot decide, math-verify (``tirl.reward.symbolic``) under ``timeout_s``. In the main
thread the limit is a ``setitimer`` signal; in any other thread (where signals cannot be
used) the symbolic check runs in a shared one-worker process pool that kills it at the
limit. A timed-out check is "not equivalent"; a worker that crashes is retried once, and a
second crash is ``infra_error`` (no reward: drop the item).

``grade(response_text, gold)`` picks the answer (``tirl.reward.answer.select_answer``: the
last box, one box per part of a multi-part reference, or a hedge) and returns a ``Grade``.

These are for scripts, tests and evaluation of a handful of answers. Inside asyncio code,
or for batches, use ``tirl.reward.Grader``: it never blocks the event loop and kills hung
checks in worker processes (a signal cannot interrupt a long C call).
"""

from __future__ import annotations

import atexit
import threading
import time

from tirl.reward.answer import select_answer
from tirl.reward.normalize import fast_equal
from tirl.reward.symbolic import CheckTimeout, symbolic_equal
from tirl.reward.types import Grade

_pool = None
_pool_lock = threading.Lock()


def _thread_pool():
    """A one-worker process pool for symbolic checks requested off the main thread."""
    global _pool
    with _pool_lock:
        if _pool is None:
            from tirl.reward.grader import make_pool

            _pool = make_pool(1)
            atexit.register(_pool.stop)
        return _pool


def check(pred: str, gold: str, timeout_s: float = 2.0) -> tuple[str, str]:
    """``(status, method)``: status is ``correct``/``incorrect``/``timeout``, or
    ``infra_error`` when the worker (off the main thread) crashed twice; method says what
    decided it (``fast``, ``symbolic``)."""
    fast = fast_equal(pred, gold)
    if fast is not None:
        return ("correct" if fast else "incorrect"), "fast"
    if threading.current_thread() is threading.main_thread():
        try:
            ok = symbolic_equal(pred, gold, timeout_s)
        except CheckTimeout:
            return "timeout", "symbolic"
        return ("correct" if ok else "incorrect"), "symbolic"
    from concurrent.futures import TimeoutError as FutureTimeout

    from pebble import ProcessExpired

    from tirl.reward.grader import worker_check

    for _attempt in range(2):  # a crashed worker is retried once in a fresh one
        fut = _thread_pool().schedule(worker_check, args=("math", pred, gold, None, timeout_s),
                                      timeout=timeout_s)
        try:
            status, _ = fut.result()
        except FutureTimeout:
            return "timeout", "symbolic"
        except ProcessExpired:
            continue
        return status, "symbolic"
    return "infra_error", "symbolic"


def is_equivalent(pred: str, gold: str, timeout_s: float = 2.0) -> bool:
    """Whether the answer ``pred`` equals the reference ``gold`` (both bare answers, e.g. the
    contents of ``\\boxed{}``). A check that runs past ``timeout_s`` counts as False."""
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
    return check(pred, gold, timeout_s)[0] == "correct"


def grade(response_text: str, gold: str, timeout_s: float = 2.0) -> Grade:
    """Grade one response in-process: extract the boxed answer and compare it with ``gold``."""
    t0 = time.perf_counter()
    pred, hedge = select_answer(response_text, gold)
    if pred is None:
        return Grade("incorrect" if hedge else "no_answer", None, gold,
                     (time.perf_counter() - t0) * 1e3, method="extract", detail=hedge)
    status, method = check(pred, gold, timeout_s)
    ms = (time.perf_counter() - t0) * 1e3
    return Grade(status, pred, gold, ms, method=method)  # type: ignore[arg-type]

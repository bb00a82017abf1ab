"""tirl.dispatch: KV-cache-aware assignment of trajectories to inference engines, and a simulator.

* :class:`Dispatcher` — ``lease(key, reserve_tokens, group=None)`` / ``generate(...)`` over
  several engines with a policy (``static``, ``round_robin``, ``least_requests``, ``kv``).
* :mod:`tirl.dispatch.policy` — the policies as pure functions.
* :mod:`tirl.dispatch.metrics` — parsers of vLLM / SGLang / llama.cpp / ``tirl serve`` load.
* :mod:`tirl.dispatch.sim` — a discrete-event simulator comparing the policies.
"""

from tirl.dispatch.dispatcher import (
    Dispatcher,
    DispatchStats,
    EngineStartError,
    EngineStatus,
    EngineUnavailable,
    LeasedEngine,
    NoEngineAvailable,
    dispatcher_for,
    is_engine_failure,
)
from tirl.dispatch.policy import EngineLoad, choose_engine

__all__ = [
    "DispatchStats",
    "Dispatcher",
    "EngineLoad",
    "EngineStartError",
    "EngineStatus",
    "EngineUnavailable",
    "LeasedEngine",
    "NoEngineAvailable",
    "choose_engine",
    "dispatcher_for",
    "is_engine_failure",
]

"""tirl.sandbox: a fast, isolated, stateful service that runs model-written Python.

- :class:`Sandbox` — the in-process pool (zygote + fork per call, limits, sessions).
- :class:`SandboxClient` — the same four methods over HTTP (``tirl sandbox serve``).
- :func:`make_executor` — the tool executor a config asks for (HTTP when ``cfg.url`` is set).
- :class:`RetryingExecutor` — wraps an executor: a wait budget per call, and retries of
  ``queue_timeout``/``worker_lost`` within it.
- :class:`ExecResult`, :class:`ExecRequest` — the typed request/result.

See docs/sandbox.md for the isolation it provides and what it does not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tirl.sandbox.types import ExecRequest, ExecResult

if TYPE_CHECKING:
    from tirl.sandbox.client import SandboxClient
    from tirl.sandbox.config import SandboxConfig
    from tirl.sandbox.pool import Sandbox
    from tirl.sandbox.retry import RetryingExecutor

__all__ = ["Sandbox", "SandboxClient", "SandboxConfig", "ExecRequest", "ExecResult",
           "RetryingExecutor", "make_executor"]


def __getattr__(name: str):
    # lazy: the zygote imports this package and must stay small (no pydantic, no aiohttp)
    if name == "SandboxConfig":
        from tirl.sandbox.config import SandboxConfig

        return SandboxConfig
    if name == "Sandbox":
        from tirl.sandbox.pool import Sandbox

        return Sandbox
    if name == "SandboxClient":
        from tirl.sandbox.client import SandboxClient

        return SandboxClient
    if name == "RetryingExecutor":
        from tirl.sandbox.retry import RetryingExecutor

        return RetryingExecutor
    raise AttributeError(f"module 'tirl.sandbox' has no attribute {name!r}")


async def make_executor(cfg: "SandboxConfig | None" = None):
    """A started tool executor: ``SandboxClient(cfg.url)`` when ``cfg.url`` is set, else an
    in-process :class:`Sandbox`. Close it with ``await ex.close()`` (or ``async with``)."""
    from tirl.sandbox.config import SandboxConfig

    cfg = cfg or SandboxConfig()
    if cfg.url:
        from tirl.sandbox.client import SandboxClient

        client = SandboxClient(cfg.url)
        await client.start()
        return client
    from tirl.sandbox.pool import Sandbox

    sb = Sandbox(cfg)
    await sb.start()
    return sb

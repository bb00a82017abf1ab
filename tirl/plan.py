"""Capacity planner: per-GPU memory of GRPO training plus colocated rollouts, from a model shape.

:func:`plan_memory` is a pure function of a :class:`ModelShape` (hidden, layers, heads, KV
heads, intermediate, vocabulary) and the run's layout (dtype, ``single``/``ddp``/``fsdp``,
GPUs, GPU memory, micro-batch tokens, activation checkpointing, optimizer offload, the
rollouts' KV-cache need); it returns a :class:`MemoryPlan` whose byte counts are per GPU,
and :func:`format_plan` prints it as a table with a verdict.

The accounting (bytes; ``b`` = bytes of the parameter/compute dtype, ``P`` = parameters,
``S`` = shards: GPUs under ``fsdp``, else 1):

* parameters ``P·b/S``; gradients ``P·b/S``; fp32 master weights ``4·P/S`` when ``b < 4``;
  AdamW state (``m``, ``v`` in fp32) ``8·P/S`` — 16 bytes/param in mixed precision, on GPU
  unless ``offload_optimizer`` (then master and state live in host memory).
* ``fsdp`` working set: the largest wrapped unit (a decoder layer, or the embedding /
  ``lm_head``) gathered unsharded in ``b`` for compute plus one prefetched, and its gradient
  before the reduce-scatter: ``3·unit·b``.
* activations per token per decoder layer (HF Llama/Qwen layer, flash/SDPA attention, no
  ``T×T`` scores kept): ``b·(4·I + 5·H + 4·kv) + 24·H + 4·heads`` (+ ``12·(H + kv)`` with
  q/k norms) — SwiGLU's four ``I``-wide tensors, the q/k/v/rotary/attention outputs, the
  RMSNorms' fp32 intermediates, the attention log-sum-exp. With checkpointing each layer
  keeps only its input ``H·b`` per token and one layer is recomputed at a time. During the
  decoder's backward the activation gradients of one layer are alive too (``b·(2·I + 2·H)``
  per token). The loss runs before the decoder's backward, so the peak is
  ``state + saved activations + max(loss, decoder-backward working set) + reserve``.
* the loss (:mod:`tirl.rl.logprobs`): the final hidden states ``H·b`` per token, one
  ``[chunk × vocab]`` chunk's temporaries (``8`` bytes per entry in fp32, ``2·b + 8`` below),
  and, for ``b < 4``, the fp32 gradient accumulator of ``lm_head`` (``4·V·H``). ``loss="naive"``
  plans the full-logits path instead: six fp32 ``[tokens × vocab]`` tensors with entropy
  (measured by ``benchmarks/loss_memory_bench.py``), four without.
* rollouts colocated with training: the engine's own copy of the weights (``P·2 / rollout_tp``,
  bf16; none when it shares the training weights) and the KV cache ``2·layers·kv·head_dim·2`` bytes per token (bf16) for
  ``rollout_kv_tokens`` tokens per GPU. During rollouts the activations, gradients and loss
  temporaries are freed; parameters, master weights and optimizer state stay (unless offloaded).
* ``reserve_gib`` for the CUDA/ROCm context, communication buffers and allocator fragmentation.

What it does not do: it does not model tensor/pipeline/sequence parallelism for training,
the T×T attention scores of eager attention, CPU-offloaded parameters, or allocator
behaviour beyond the flat reserve; it plans, it does not measure. ``tests/test_plan.py``
checks the accounting against a measured CPU run of a tiny Llama (within 15%).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from tirl.rl.logprobs import default_chunk_size

GIB = 1 << 30

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

Strategy = Literal["single", "ddp", "fsdp"]


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer (Llama/Qwen family: RMSNorm, GQA attention, SwiGLU MLP)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    head_dim: int | None = None  # default hidden // heads
    tied_embeddings: bool = False
    qk_norm: bool = False  # Qwen3's per-head RMSNorm on q and k
    attention_bias: bool = False  # Qwen2's q/k/v biases

    def __post_init__(self) -> None:
        for name in ("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab"):
            if getattr(self, name) < 1:
                raise ValueError(f"model shape: {name}={getattr(self, name)} must be ≥ 1")
        if self.heads % self.kv_heads:
            raise ValueError(f"model shape: heads={self.heads} must be a multiple of kv_heads={self.kv_heads}")
        if self.head_dim is None and self.hidden % self.heads:
            raise ValueError(f"model shape: hidden={self.hidden} is not divisible by heads={self.heads}; "
                             "give head_dim explicitly")

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def q_dim(self) -> int:
        return self.heads * self.hd

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.hd

    def layer_params(self) -> int:
        h = self.hidden
        attn = h * self.q_dim + 2 * h * self.kv_dim + self.q_dim * h
        if self.attention_bias:
            attn += self.q_dim + 2 * self.kv_dim
        if self.qk_norm:
            attn += 2 * self.hd
        return attn + 3 * h * self.intermediate + 2 * h

    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    def params(self) -> int:
        head = 0 if self.tied_embeddings else self.vocab * self.hidden
        return self.embedding_params() + head + self.layers * self.layer_params() + self.hidden

    @classmethod
    def from_hf_config(cls, cfg) -> "ModelShape":
        """From a ``transformers`` config (``LlamaConfig``, ``Qwen2Config``, ``Qwen3Config`` …)."""
        kind = getattr(cfg, "model_type", "")
        return cls(
            hidden=cfg.hidden_size, layers=cfg.num_hidden_layers, heads=cfg.num_attention_heads,
            kv_heads=getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
            intermediate=cfg.intermediate_size, vocab=cfg.vocab_size,
            head_dim=getattr(cfg, "head_dim", None), tied_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
            qk_norm=kind.startswith("qwen3"), attention_bias=bool(getattr(cfg, "attention_bias", kind == "qwen2")),
        )


#: Qwen3-14B (hidden 5120, 40 layers, 40 heads, 8 KV heads, intermediate 17408, vocab 151,936).
QWEN3_14B = ModelShape(hidden=5120, layers=40, heads=40, kv_heads=8, intermediate=17408, vocab=151_936,
                       head_dim=128, tied_embeddings=False, qk_norm=True)


def activation_bytes_per_token_layer(shape: ModelShape, b: int) -> int:
    """Bytes one decoder layer keeps for backward per token (no checkpointing)."""
    h, kv = shape.hidden, shape.kv_dim
    n = b * (4 * shape.intermediate + 5 * h + 4 * kv) + 24 * h + 4 * shape.heads
    if shape.qk_norm:
        n += 12 * (shape.q_dim + kv)
    return n


def kv_cache_bytes_per_token(shape: ModelShape, kv_bytes: int = 2) -> int:
    return 2 * shape.layers * shape.kv_dim * kv_bytes


@dataclass(frozen=True)
class MemoryPlan:
    """Per-GPU bytes of one plan (see the module docstring for each term)."""

    shape: ModelShape
    strategy: str
    gpus: int
    gpu_mem_gib: float
    dtype: str
    micro_batch_tokens: int
    activation_checkpointing: bool
    offload_optimizer: bool
    loss: str
    loss_chunk_tokens: int
    params_total: int
    parameters: int
    gradients: int
    master_weights: int
    optimizer_state: int
    fsdp_working: int
    activations: int  # kept for backward through the whole pass
    activations_working: int  # decoder backward only: one layer's gradients (+ its recomputation)
    activations_without_checkpointing: int  # saved + working, for comparison

    activations_with_checkpointing: int
    loss_memory: int
    reserve: int
    host_offload: int  # host memory per GPU taken by offloaded master + optimizer state
    rollout_weights: int
    kv_cache_needed: int
    kv_bytes_per_token: int
    notes: list[str] = field(default_factory=list)

    @property
    def training_peak(self) -> int:
        """State + saved activations + the larger of the loss phase and the decoder-backward
        phase (the loss's chunk temporaries are freed before the decoder's backward starts)."""
        return (self.parameters + self.gradients + self.master_weights + self.optimizer_state
                + self.fsdp_working + self.activations + max(self.loss_memory, self.activations_working)
                + self.reserve)

    @property
    def resident_during_rollout(self) -> int:
        return self.parameters + self.master_weights + self.optimizer_state + self.reserve

    @property
    def kv_cache_free(self) -> int:
        """KV-cache bytes left for colocated rollouts (may be negative)."""
        return int(self.gpu_mem_gib * GIB) - self.resident_during_rollout - self.rollout_weights

    @property
    def kv_tokens_free(self) -> int:
        return max(0, self.kv_cache_free) // self.kv_bytes_per_token

    @property
    def training_fits(self) -> bool:
        return self.training_peak <= self.gpu_mem_gib * GIB

    @property
    def rollout_fits(self) -> bool:
        return self.kv_cache_free >= self.kv_cache_needed

    @property
    def fits(self) -> bool:
        return self.training_fits and self.rollout_fits

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(training_peak=self.training_peak, kv_cache_free=self.kv_cache_free,
                 kv_tokens_free=self.kv_tokens_free, fits=self.fits, training_fits=self.training_fits,
                 rollout_fits=self.rollout_fits)
        return d


def plan_memory(
    shape: ModelShape,
    *,
    dtype: str = "bfloat16",
    strategy: Strategy = "fsdp",
    gpus: int = 1,
    gpu_mem_gib: float = 80.0,
    micro_batch_tokens: int = 16384,
    activation_checkpointing: bool = True,
    offload_optimizer: bool = False,
    rollout_kv_tokens: int = 0,
    rollout_tp: int = 1,
    rollout_shares_weights: bool = False,
    loss: Literal["chunked", "naive"] = "chunked",
    loss_chunk_tokens: int | None = None,
    with_entropy: bool = False,
    reserve_gib: float = 3.0,
) -> MemoryPlan:
    """Per-GPU memory of training ``shape`` (and colocated rollouts) laid out as given.

    ``dtype`` is the parameter/compute dtype (``float32`` trains without master weights);
    ``rollout_kv_tokens`` the KV-cache tokens the rollouts on one GPU need (concurrent
    sequences × their length); ``rollout_tp`` the rollout engine's tensor-parallel degree;
    ``rollout_shares_weights`` when the engine decodes with the training weights themselves
    (tirl's in-process ``LocalEngine``) rather than its own bf16 copy (vLLM/SGLang colocated).
    """
    if dtype not in _DTYPE_BYTES:
        raise ValueError(f"dtype={dtype!r}: use one of {sorted(_DTYPE_BYTES)}")
    if strategy not in ("single", "ddp", "fsdp"):
        raise ValueError(f"strategy={strategy!r}: use 'single', 'ddp' or 'fsdp'")
    if gpus < 1 or (strategy == "single" and gpus != 1):
        raise ValueError(f"gpus={gpus}: strategy 'single' needs gpus=1; ddp/fsdp need gpus ≥ 1")
    if gpu_mem_gib <= 0 or micro_batch_tokens < 1 or rollout_kv_tokens < 0 or rollout_tp < 1 or reserve_gib < 0:
        raise ValueError(
            f"gpu_mem_gib={gpu_mem_gib}, micro_batch_tokens={micro_batch_tokens}, rollout_kv_tokens="
            f"{rollout_kv_tokens}, rollout_tp={rollout_tp}, reserve_gib={reserve_gib}: all must be positive "
            "(rollout_kv_tokens and reserve_gib may be 0)"
        )
    if loss not in ("chunked", "naive"):
        raise ValueError(f"loss={loss!r}: use 'chunked' (tirl.rl.logprobs) or 'naive' (full logits)")
    b = _DTYPE_BYTES[dtype]
    P = shape.params()
    S = gpus if strategy == "fsdp" else 1
    notes: list[str] = []

    parameters = P * b // S
    gradients = P * b // S
    master = (4 * P // S) if b < 4 else 0
    optim = 8 * P // S
    host = 0
    if offload_optimizer:
        host = master + optim
        master, optim = 0, 0
        notes.append(f"optimizer offload: {host / GIB:.1f} GiB of host memory per GPU (master + AdamW state)")
    fsdp_working = 0
    if strategy == "fsdp" and gpus > 1:
        unit = max(shape.layer_params(), shape.embedding_params())
        fsdp_working = 3 * unit * b

    N = micro_batch_tokens
    per_layer = activation_bytes_per_token_layer(shape, b)
    act_grad = b * (2 * shape.intermediate + 2 * shape.hidden)  # one layer's activation gradients
    embed_out = N * shape.hidden * b
    full = N * shape.layers * per_layer + embed_out  # kept for backward, no checkpointing
    ckpt = N * shape.layers * shape.hidden * b + embed_out  # layer inputs only
    saved = ckpt if activation_checkpointing else full
    # decoder backward: the activation gradients of one layer, plus (checkpointing) that layer recomputed
    working = N * (act_grad + (per_layer if activation_checkpointing else 0))

    chunk = loss_chunk_tokens or default_chunk_size(shape.vocab)
    chunk = min(chunk, N)
    final_hidden = N * shape.hidden * b + 3 * N * 4  # final hidden states, logprobs/lse/entropy
    if loss == "chunked":
        per_entry = 8 if b == 4 else 2 * b + 8
        loss_mem = final_hidden + chunk * shape.vocab * per_entry
        if b < 4:
            loss_mem += 4 * shape.vocab * shape.hidden
    else:
        tensors = 6 if with_entropy else 4
        loss_mem = final_hidden + N * shape.vocab * (4 * tensors + (b if b < 4 else 0))
        chunk = N

    rollout_weights = 0 if rollout_shares_weights else P * 2 // rollout_tp
    kv_per_tok = kv_cache_bytes_per_token(shape)
    plan = MemoryPlan(
        shape=shape, strategy=strategy, gpus=gpus, gpu_mem_gib=gpu_mem_gib, dtype=dtype,
        micro_batch_tokens=N, activation_checkpointing=activation_checkpointing,
        offload_optimizer=offload_optimizer, loss=loss, loss_chunk_tokens=chunk, params_total=P,
        parameters=parameters, gradients=gradients, master_weights=master, optimizer_state=optim,
        fsdp_working=fsdp_working, activations=saved, activations_working=working,
        activations_without_checkpointing=full + N * act_grad,
        activations_with_checkpointing=ckpt + N * (act_grad + per_layer), loss_memory=loss_mem, reserve=int(reserve_gib * GIB),
        host_offload=host, rollout_weights=rollout_weights, kv_cache_needed=rollout_kv_tokens * kv_per_tok,
        kv_bytes_per_token=kv_per_tok, notes=notes,
    )
    if not plan.training_fits:
        over = (plan.training_peak - gpu_mem_gib * GIB) / GIB
        hint = []
        if not activation_checkpointing:
            hint.append(f"activation checkpointing (activations {plan.activations_without_checkpointing / GIB:.1f}"
                        f" → {plan.activations_with_checkpointing / GIB:.1f} GiB)")
        if loss == "naive":
            hint.append("the chunked loss")
        if strategy != "fsdp" or gpus == 1:
            hint.append("fsdp over more GPUs")
        if not offload_optimizer and b < 4:
            hint.append("optimizer offload")
        hint.append("a smaller micro_batch_tokens")
        notes.append(f"training is {over:.1f} GiB over; try " + ", ".join(hint))
    if rollout_kv_tokens and not plan.rollout_fits:
        notes.append(
            f"rollouts need {plan.kv_cache_needed / GIB:.1f} GiB of KV cache but {plan.kv_cache_free / GIB:.1f} "
            f"GiB are free ({plan.kv_tokens_free:,} tokens); "
            + ("raise rollout_tp, " if plan.rollout_weights else "")
            + "offload the optimizer, or run fewer concurrent rollouts per GPU"
        )
    return plan


def _g(n: int) -> str:
    return f"{n / GIB:9.2f}"


def format_plan(plan: MemoryPlan) -> str:
    """A human-readable table (GiB per GPU) with the verdict."""
    s = plan.shape
    size = f"{plan.params_total / 1e9:.2f}B" if plan.params_total >= 1e9 else f"{plan.params_total / 1e6:.1f}M"
    lines = [
        f"model: {size} params (hidden {s.hidden}, {s.layers} layers, {s.heads} heads, "
        f"{s.kv_heads} kv heads, intermediate {s.intermediate}, vocab {s.vocab:,})",
        f"layout: {plan.strategy} × {plan.gpus} GPUs of {plan.gpu_mem_gib:g} GiB, {plan.dtype}, micro-batch "
        f"{plan.micro_batch_tokens:,} tokens, checkpointing {'on' if plan.activation_checkpointing else 'off'}, "
        f"optimizer offload {'on' if plan.offload_optimizer else 'off'}, loss {plan.loss} "
        f"(chunk {plan.loss_chunk_tokens:,} tokens)",
        "",
        "per GPU, training                      GiB",
        f"  parameters                     {_g(plan.parameters)}",
        f"  gradients                      {_g(plan.gradients)}",
        f"  fp32 master weights            {_g(plan.master_weights)}",
        f"  optimizer state (AdamW)        {_g(plan.optimizer_state)}",
        f"  fsdp gathered units            {_g(plan.fsdp_working)}",
        f"  activations saved              {_g(plan.activations)}",
        f"  decoder backward working       {_g(plan.activations_working)}",
        f"  {'loss (' + plan.loss + ')':<31}{_g(plan.loss_memory)}",
        f"  reserve (context, buffers)     {_g(plan.reserve)}",
        f"  = training peak                {_g(plan.training_peak)}   "
        f"{'fits' if plan.training_fits else 'DOES NOT FIT'} in {plan.gpu_mem_gib:g}"
        "  (state + saved + max(loss, backward working) + reserve)",
        f"  activations, checkpointing on {plan.activations_with_checkpointing / GIB:.2f} / off "
        f"{plan.activations_without_checkpointing / GIB:.2f} GiB",
        "",
        "per GPU, colocated rollouts",
        f"  resident training state        {_g(plan.resident_during_rollout)}",
        f"  rollout weights (bf16)         {_g(plan.rollout_weights)}",
        f"  KV cache free                  {_g(plan.kv_cache_free)}   = {plan.kv_tokens_free:,} tokens at "
        f"{plan.kv_bytes_per_token / 1024:.0f} KiB/token",
        f"  KV cache needed                {_g(plan.kv_cache_needed)}   "
        f"{'fits' if plan.rollout_fits else 'DOES NOT FIT'}",
        "",
        f"verdict: {'fits' if plan.fits else 'does not fit'}",
    ]
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# From a tirl config (the library side of `tirl plan CONFIG --gpus N --gpu-mem GiB`)

#: Shapes of hub models named in configs, so planning needs no download.
KNOWN_SHAPES: dict[str, ModelShape] = {
    "Qwen/Qwen3-14B-Base": QWEN3_14B,
    "Qwen/Qwen3-14B": QWEN3_14B,
}


def shape_from_model_config(model_cfg) -> ModelShape:
    """The :class:`ModelShape` of a ``[model]`` section: the scratch architecture, a known hub
    name (:data:`KNOWN_SHAPES`), or a local directory's ``config.json``."""
    if model_cfg.path == "scratch":
        # tirl.engines.models.build_scratch_model: Llama, MHA, intermediate 4·hidden, tied
        # embeddings; its vocabulary is the locally built tokenizer's (model.vocab_size targets it)
        return ModelShape(hidden=model_cfg.hidden_size, layers=model_cfg.num_layers, heads=model_cfg.num_heads,
                          kv_heads=model_cfg.num_heads, intermediate=4 * model_cfg.hidden_size,
                          vocab=model_cfg.vocab_size, tied_embeddings=True)
    if model_cfg.path in KNOWN_SHAPES:
        return KNOWN_SHAPES[model_cfg.path]
    from pathlib import Path

    if (Path(model_cfg.path) / "config.json").is_file():
        from transformers import AutoConfig

        return ModelShape.from_hf_config(AutoConfig.from_pretrained(model_cfg.path))
    raise ValueError(
        f"model.path = {model_cfg.path!r}: no config.json there and not a known shape "
        f"({', '.join(KNOWN_SHAPES)}); point model.path at a local model directory to plan it"
    )


def plan_from_config(
    cfg,
    *,
    gpus: int,
    gpu_mem_gib: float,
    strategy: Strategy | None = None,
    activation_checkpointing: bool | None = None,
    offload_optimizer: bool = False,
    rollout_kv_tokens: int | None = None,
    rollout_tp: int = 1,
    rollout_shares_weights: bool = True,
    reserve_gib: float = 3.0,
) -> MemoryPlan:
    """Plan a tirl run's config on ``gpus`` GPUs of ``gpu_mem_gib`` GiB.

    Reads the model shape and ``model.dtype`` (:func:`shape_from_model_config`),
    ``rl.micro_batch_tokens``, ``model.gradient_checkpointing`` (unless
    ``activation_checkpointing`` is given); the chunked loss computes entropy (the trainer logs
    it). ``strategy`` defaults to ``single`` on one GPU, else ``fsdp``.
    Rollouts: with ``model.base_url`` they run on a server and are not planned here;
    otherwise the in-process engine decodes ``rl.rollout_batch`` sequences with the training
    weights, each up to the largest stage ``max_tokens`` (prompt tokens not counted) — unless
    ``rollout_kv_tokens`` is given; ``rollout_shares_weights=False`` plans a colocated engine
    with its own bf16 weights (vLLM/SGLang) sharded ``rollout_tp`` ways.
    """
    from tirl.config import resolve_sampling

    shape = shape_from_model_config(cfg.model)
    remote = bool(cfg.model.base_url or cfg.dispatch.engines)
    if rollout_kv_tokens is None:
        if remote:
            rollout_kv_tokens = 0
        else:
            budgets = [resolve_sampling(cfg, "train", s).max_tokens for s in cfg.stages] or [cfg.sampling.max_tokens]
            rollout_kv_tokens = cfg.rl.rollout_batch * max(budgets)
    plan = plan_memory(
        shape, dtype=cfg.model.dtype, strategy=strategy or ("single" if gpus == 1 else "fsdp"), gpus=gpus,
        gpu_mem_gib=gpu_mem_gib, micro_batch_tokens=cfg.rl.micro_batch_tokens,
        activation_checkpointing=(cfg.model.gradient_checkpointing if activation_checkpointing is None
                                  else activation_checkpointing),
        offload_optimizer=offload_optimizer, rollout_kv_tokens=rollout_kv_tokens, rollout_tp=rollout_tp,
        rollout_shares_weights=remote or rollout_shares_weights, with_entropy=True,  # the trainer logs it
        reserve_gib=reserve_gib,
    )
    if remote:
        plan.notes.append("rollouts run on inference servers (model.base_url / dispatch.engines): their "
                          "memory is not planned here")
    return plan


def run_plan(cfg, *, gpus: int, gpu_mem_gib: float, as_json: bool = False, out=None, **options) -> int:
    """Print the plan of ``cfg`` (table, or JSON with ``as_json``); 0 when it fits, else 1.

    ``options`` go to :func:`plan_from_config` (strategy, activation_checkpointing,
    offload_optimizer, rollout_kv_tokens, rollout_tp, reserve_gib).
    """
    import json
    import sys

    plan = plan_from_config(cfg, gpus=gpus, gpu_mem_gib=gpu_mem_gib, **options)
    stream = out or sys.stdout
    if as_json:
        d = plan.to_dict()
        d["shape"] = asdict(plan.shape)
        stream.write(json.dumps(d) + "\n")
    else:
        stream.write(format_plan(plan) + "\n")
    return 0 if plan.fits else 1

"""The policy wrapped for a training strategy — one process, DDP or FSDP2 — with fp32 master
weights under bf16 compute.

:func:`wrap_policy` turns the trainer's Hugging Face causal LM into a :class:`ParallelPolicy`:

* ``root`` is the module every training forward goes through: :class:`PolicyRoot`, a thin
  module over the HF model whose forward is either the HF forward (SFT) or the sampled
  tokens' log-probs (:func:`tirl.rl.logprobs.token_logprobs`, chunked; RL). Going through one
  root is what lets DDP and FSDP see every forward: the loss reads ``lm_head.weight``
  directly, which under FSDP is only a full tensor while the root's forward runs.

  - ``single``: ``PolicyRoot`` itself.
  - ``ddp``: ``DistributedDataParallel(PolicyRoot)``; micro-batches accumulate under
    ``no_sync`` except the last (:meth:`ParallelPolicy.micro_batch`).
  - ``fsdp``: FSDP2 — ``fully_shard`` on each decoder layer, then on the root (embeddings,
    final norm and the output head stay with the root; tied embeddings are one parameter).
    Parameters, gradients and AdamW state are sharded over the ranks.

* Mixed precision: the parameters AdamW updates are always fp32 (a model loaded in bf16
  is cast up before wrapping). With ``compute_dtype = bfloat16``, single and ddp run the
  forward under ``torch.autocast(bf16)``; fsdp uses ``MixedPrecisionPolicy(param_dtype=bf16,
  reduce_dtype=fp32)``: parameters are all-gathered in bf16, gradients reduce-scattered in
  fp32 into fp32 shards. Either way a 1e-6 update is not rounded away.
* Gradient reduction is a **sum** over ranks for RL (the loss is normalised by the policy
  tokens of all ranks, so the sum is the whole batch's gradient) and a **mean** for SFT
  (every rank computes the same batches): :meth:`ParallelPolicy.set_reduction` (a DDP comm
  hook / the FSDP gradient divide factor).
* :meth:`ParallelPolicy.generation_weights`: while it is open, ``model`` holds full
  parameters (FSDP: every FSDP module unsharded, in the compute dtype) so the in-process
  rollout engine can run its own forward over the modules; a no-op for single and ddp.
* State dicts for :mod:`torch.distributed.checkpoint` and the full state dict (rank 0)
  for the Hugging Face export (:mod:`tirl.rl.checkpoint`).

What it does not do: tensor or pipeline parallelism, CPU offload, or meta-device
initialisation — every rank loads the whole model on CPU before it is sharded.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Literal

import torch
from torch import nn

from tirl.config import ConfigError

STRATEGIES = ("single", "ddp", "fsdp")


def resolve_strategy(strategy: str, world: int, distributed: bool) -> str:
    """The concrete strategy for ``train.strategy`` (``auto`` → ddp under torchrun with more
    than one rank, else single); a :class:`ConfigError` for a combination that cannot run."""
    if strategy == "auto":
        return "ddp" if world > 1 else "single"
    if strategy not in STRATEGIES:
        raise ConfigError(f"train.strategy = {strategy!r}: expected one of auto, {', '.join(STRATEGIES)}")
    if strategy == "single" and world > 1:
        raise ConfigError(f"train.strategy = 'single' but torchrun started {world} ranks; use "
                          "train.strategy=ddp or fsdp, or launch one process")
    if strategy != "single" and not distributed:
        raise ConfigError(f"train.strategy = {strategy!r} needs a process group: launch with torchrun "
                          f"(torchrun --nproc_per_node N -m tirl.cli train CONFIG; N = 1 works), "
                          "or use train.strategy=single")
    return strategy


class PolicyRoot(nn.Module):
    """The root of every training forward (see the module docstring).

    ``forward(input_ids, attention_mask)`` is the HF forward; with ``logprobs=True`` it
    returns ``(logprobs [B, T-1], entropy or None)`` of ``input_ids[:, 1:]`` from the chunked
    :func:`tirl.rl.logprobs.token_logprobs` (where ``loss_mask`` is 1). With
    ``autocast_dtype`` the forward runs under ``torch.autocast`` in that dtype.
    """

    def __init__(self, policy: nn.Module, autocast_dtype: torch.dtype | None = None):
        super().__init__()
        self.policy = policy
        self.autocast_dtype = autocast_dtype

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                logprobs: bool = False, loss_mask: torch.Tensor | None = None, chunk_size: int | None = None,
                with_entropy: bool = False):
        ctx = (torch.autocast(input_ids.device.type, dtype=self.autocast_dtype)
               if self.autocast_dtype is not None else contextlib.nullcontext())
        with ctx:
            if not logprobs:
                return self.policy(input_ids=input_ids, attention_mask=attention_mask)
            from tirl.rl.logprobs import token_logprobs

            return token_logprobs(self.policy, input_ids, attention_mask, loss_mask=loss_mask,
                                  chunk_size=chunk_size, with_entropy=with_entropy)


class _Reduction:
    """State of the DDP comm hook: gradients are divided by ``divide`` and summed."""

    def __init__(self) -> None:
        self.divide = 1.0


def _sum_hook(state: _Reduction, bucket):  # no return annotation: DDP checks it literally
    import torch.distributed as dist

    buf = bucket.buffer()
    if state.divide != 1.0:
        buf.div_(state.divide)
    return dist.all_reduce(buf, async_op=True).get_future().then(lambda f: f.value()[0])


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of an HF causal LM (``model.model.layers`` in the Llama family)."""
    base = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise ConfigError(f"train.strategy = 'fsdp' shards each decoder layer, but {type(model).__name__} has "
                          "no decoder with .layers (Llama/Qwen/Mistral family); use train.strategy=ddp")
    return list(layers)


@dataclass
class ParallelPolicy:
    """The wrapped policy; ``model`` is the HF model (rollouts, export), ``root`` the module
    training forwards go through (see the module docstring)."""

    model: nn.Module
    root: nn.Module
    strategy: Literal["single", "ddp", "fsdp"]
    compute_dtype: torch.dtype
    world: int = 1
    _reduction: _Reduction | None = None
    _fsdp_modules: list = field(default_factory=list)

    # ------------------------------------------------------------------ training

    def logprobs(self, ids: torch.Tensor, attn: torch.Tensor, mask: torch.Tensor | None = None, *,
                 chunk_size: int | None = None, with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs (and entropy if asked) of ``ids[:, 1:]`` where ``mask`` is 1, through the
        root, chunked (never a full ``[tokens × vocab]`` tensor; ``chunk_size`` None = default)."""
        return self.root(ids, attn, logprobs=True, loss_mask=mask, chunk_size=chunk_size,
                         with_entropy=with_entropy)

    def parameters(self) -> list[nn.Parameter]:
        """The trained (fp32 master) parameters, as the optimizer sees them."""
        return [p for p in self.root.parameters() if p.requires_grad]

    @contextlib.contextmanager
    def micro_batch(self, last: bool) -> Iterator[None]:
        """Wrap one micro-batch's forward and backward: under ddp, gradients are only
        all-reduced on the ``last`` one (``no_sync`` before). FSDP reduce-scatters every
        micro-batch into the sharded gradients (no full-size unsharded gradient is kept)."""
        if self.strategy == "ddp" and not last:
            with self.root.no_sync():
                yield
        else:
            yield

    def set_reduction(self, mode: Literal["sum", "mean"]) -> None:
        """How gradients combine over ranks: ``sum`` (RL) or ``mean`` (SFT; same data per rank)."""
        if mode not in ("sum", "mean"):
            raise ValueError(f"reduction {mode!r}: expected 'sum' or 'mean'")
        factor = 1.0 if mode == "sum" else float(self.world)
        if self._reduction is not None:
            self._reduction.divide = factor
        for m in self._fsdp_modules:
            m.set_gradient_divide_factor(factor)

    def clip_grad_norm(self, max_norm: float) -> float:
        """The global gradient 2-norm (over all ranks' shards); gradients are scaled by
        ``max_norm / (norm + 1e-6)`` when that is below 1 (``max_norm = 0``: norm only)."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return 0.0
        norm = torch.nn.utils.get_total_norm(grads, 2.0)
        if hasattr(norm, "full_tensor"):  # a DTensor: partial norms of the shards
            norm = norm.full_tensor()
        n = float(norm)
        if max_norm:
            coef = max_norm / (n + 1e-6)
            if coef < 1.0:
                for g in grads:
                    g.mul_(coef)
        return n

    def reshard(self) -> None:
        """Free every FSDP module's full parameters (a forward under ``no_grad`` leaves the
        root's unsharded): the next forward all-gathers the weights the optimizer just wrote."""
        for m in self._fsdp_modules:
            m.reshard()

    # ------------------------------------------------------------------ rollouts

    @contextlib.contextmanager
    def generation_weights(self) -> Iterator[None]:
        """Full parameters in ``model`` while open (fsdp: unshard every FSDP module, in the
        compute dtype; reshard on exit). Collective under fsdp: every rank enters together."""
        if not self._fsdp_modules:
            yield
            return
        for m in self._fsdp_modules:
            m.unshard()
        try:
            yield
        finally:
            for m in self._fsdp_modules:
                m.reshard()

    # ------------------------------------------------------------------ state

    def state_dicts(self, optimizer: torch.optim.Optimizer | None) -> tuple[dict, dict | None]:
        """(model, optimizer) state dicts keyed by parameter name, sharded under fsdp: what
        :func:`torch.distributed.checkpoint.save` writes and ``load`` fills in place."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

        if optimizer is None:
            return get_model_state_dict(self.root), None
        return get_state_dict(self.root, optimizer)

    def load_state_dicts(self, optimizer: torch.optim.Optimizer | None, model_sd: dict,
                         optim_sd: dict | None) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

        if optimizer is None:
            set_model_state_dict(self.root, model_sd)
        else:
            set_state_dict(self.root, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The HF model's full state dict on CPU, on rank 0 (other ranks get ``{}``).
        Collective under fsdp."""
        if self.strategy != "fsdp":
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
                return {}
            return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(self.root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        sd = {k[len("policy."):]: v for k, v in sd.items() if k.startswith("policy.")}
        if sd:  # tied parameters (embeddings = output head) stay one tensor, as in the model
            names: dict[int, list[str]] = {}
            for n, p in self.model.named_parameters(remove_duplicate=False):
                names.setdefault(id(p), []).append(n)
            for group in names.values():
                for n in group[1:]:
                    if group[0] in sd:
                        sd[n] = sd[group[0]]
        return sd


def wrap_policy(model: nn.Module, strategy: str, *, compute_dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu") -> ParallelPolicy:
    """Wrap an HF causal LM for ``strategy`` (resolved: single, ddp or fsdp); see the module
    docstring. The model is cast to fp32 (the master weights) and moved to ``device``."""
    device = torch.device(device)
    checkpointing = getattr(model, "is_activation_checkpointing", None)
    if checkpointing is None:  # transformers < 5
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    if checkpointing:
        # non-reentrant: the only form that composes with DDP and FSDP2's hooks
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    low = compute_dtype != torch.float32
    if strategy == "single":
        model.float().to(device)
        return ParallelPolicy(model, PolicyRoot(model, compute_dtype if low else None), "single", compute_dtype)
    import torch.distributed as dist

    world = dist.get_world_size()
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        model.float().to(device)
        root = PolicyRoot(model, compute_dtype if low else None)
        ddp = DDP(root, device_ids=[device.index] if device.type == "cuda" else None,
                  broadcast_buffers=False)  # buffers (rotary tables) are constants: no per-forward broadcast
        red = _Reduction()
        ddp.register_comm_hook(red, _sum_hook)
        return ParallelPolicy(model, ddp, "ddp", compute_dtype, world, _reduction=red)
    if strategy != "fsdp":
        raise ConfigError(f"train.strategy = {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world,))
    mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32) if low else MixedPrecisionPolicy()
    mods = []
    for layer in decoder_layers(model):
        layer.float()  # layer by layer: the fp32 copy of the whole model never exists at once
        fully_shard(layer, mesh=mesh, mp_policy=mp)
        mods.append(layer)
    model.float()
    root = PolicyRoot(model)
    fully_shard(root, mesh=mesh, mp_policy=mp)
    mods.append(root)
    if device.type == "cpu":  # gloo has no PREMUL_SUM: plain sums, divided before/after
        for m in mods:
            m.set_force_sum_reduction_for_comms(True)
    par = ParallelPolicy(model, root, "fsdp", compute_dtype, world, _fsdp_modules=mods)
    par.set_reduction("sum")
    return par


def compute_dtype_for(name: str) -> torch.dtype:
    """The compute dtype of ``model.dtype`` (float32, bfloat16 or float16)."""
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


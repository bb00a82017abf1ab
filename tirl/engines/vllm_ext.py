"""A vLLM worker extension that makes reloading weights from disk correct for tied LM heads.

vLLM 0.32 reloads weights in place (``Worker.reload_weights`` →
``model_loader.reload.inplace.reload_weights``), layer by layer: each layer that receives
weights from the checkpoint is re-processed (``process_weights_after_loading``). A layer that
receives none keeps its old kernel tensors. A tied LM head (``tie_word_embeddings``, e.g.
SmolLM2, Qwen2.5-0.5B/1.5B) receives none — its weight *is* the embedding, which does get the
new values — but on CPU its GEMM runs on a copy packed once at start-up
(``dispatch_cpu_unquantized_gemm``: a oneDNN handle or an SGL packed weight). So after a plain
reload the server embeds tokens with the new weights and scores them with the old head.
(Measured on vLLM 0.32 CPU: the server's log-probs equal "new embedding + old head" to 1e-5.)

:class:`TirlWorkerExtension` adds one worker method, ``tirl_reload_weights(weights_path)``:
vLLM's own reload, then ``process_weights_after_loading`` again for every layer whose weight is
shared with another layer, which rebuilds the packed copy from the new values. Start vLLM with

    PYTHONPATH=/path/to/tirl python -m vllm.entrypoints.openai.api_server ... \\
        --worker-extension-cls tirl.engines.vllm_ext.TirlWorkerExtension

(``VLLM_SERVER_DEV_MODE=1`` too); ``tirl.engines.vllm_weights.reload_from_disk`` calls it through
``POST /collective_rpc``. This module runs inside vLLM's process and imports nothing from tirl
(only torch, which vLLM has), so a checkout on ``PYTHONPATH`` is enough — no install in vLLM's
environment. On GPUs the extra step is a no-op for unquantised heads (they use the weight as is).

What it does not do: anything for quantised or sharded-vocabulary heads beyond re-running their
own ``process_weights_after_loading``.
"""

from __future__ import annotations

from typing import Any


def tied_module_names(model: Any) -> list[str]:
    """Names of the modules that hold a parameter shared with another module (tied weights)."""
    owners: dict[tuple[int, int], set[str]] = {}
    for name, module in model.named_modules():
        for param in module.parameters(recurse=False):
            if param.numel() == 0:
                continue
            owners.setdefault((param.data_ptr(), param.numel()), set()).add(name)
    return sorted({n for names in owners.values() if len(names) > 1 for n in names})


def reprocess_tied(model: Any) -> list[str]:
    """Re-run ``quant_method.process_weights_after_loading`` on every tied module; their names."""
    done = []
    for name in tied_module_names(model):
        module = model.get_submodule(name)
        method = getattr(module, "quant_method", None)
        if method is not None and hasattr(method, "process_weights_after_loading"):
            method.process_weights_after_loading(module)
            done.append(name)
    return done


class TirlWorkerExtension:
    """Mixed into vLLM's worker class by ``--worker-extension-cls``; see the module docstring."""

    def tirl_reload_weights(self, weights_path: str) -> dict:
        self.reload_weights(weights_path=weights_path)  # type: ignore[attr-defined]
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        return {"weights_path": weights_path, "reprocessed": reprocess_tied(model)}

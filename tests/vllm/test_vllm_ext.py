"""The worker extension's tied-layer re-processing, on a small torch model standing in for vLLM's
(a tied head whose 'packed copy' is made by process_weights_after_loading, as on vLLM's CPU path)."""

import torch

from tirl.engines.vllm_ext import TirlWorkerExtension, reprocess_tied, tied_module_names


class PackOnLoad:
    """Like vLLM's UnquantizedEmbeddingMethod on CPU: keeps a copy of the weight for its GEMM."""

    def process_weights_after_loading(self, layer):
        layer.packed = layer.weight.detach().clone()


class Head(torch.nn.Module):
    def __init__(self, weight):
        super().__init__()
        self.weight = weight  # the embedding's Parameter: tied
        self.quant_method = PackOnLoad()
        self.quant_method.process_weights_after_loading(self)


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(5, 3)
        self.body = torch.nn.Linear(3, 3)
        self.head = Head(self.embed.weight)


def test_tied_modules_are_found_and_repacked_from_the_new_values():
    model = Tiny()
    assert tied_module_names(model) == ["embed", "head"]
    with torch.no_grad():
        model.embed.weight.mul_(2.0)  # what vLLM's in-place reload does to the embedding
    assert not torch.equal(model.head.packed, model.embed.weight)  # the stale copy: the bug
    assert reprocess_tied(model) == ["head"]  # the embedding has no quant_method here
    assert torch.equal(model.head.packed, model.embed.weight)


def test_the_extension_reloads_then_repacks():
    calls = []

    class Worker(TirlWorkerExtension):
        def __init__(self):
            self.model_runner = self
            self.model = Tiny()

        def get_model(self):
            return self.model

        def reload_weights(self, weights_path):
            calls.append(weights_path)
            with torch.no_grad():
                self.model.embed.weight.add_(1.0)

    w = Worker()
    out = w.tirl_reload_weights("/shared/v2")
    assert calls == ["/shared/v2"] and out == {"weights_path": "/shared/v2", "reprocessed": ["head"]}
    assert torch.equal(w.model.head.packed, w.model.embed.weight)

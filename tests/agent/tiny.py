"""Tiny tokenizer and random-init models built inside the tests (no downloads)."""

from __future__ import annotations

import functools

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TAGS = ["<reason>", "</reason>", "<answer>", "</answer>", "<tool_call>", "</tool_call>",
        "<tool_response>", "</tool_response>", "<tools>", "</tools>"]

CORPUS = [
    "Execution succeeded in 0.01s. stdout: 42 stderr: Traceback (most recent call last): error",
    '{"name": "execute_python_code_with_standard_io", "arguments": {"code": "print(6*7)", "input": ""}}',
    "<reason> Let me compute this with Python. </reason> <answer> The answer is \\boxed{42} </answer>",
    "system user assistant What is 6 times 7? Tool call error: invalid JSON in the tool call",
] * 20


@functools.lru_cache(maxsize=None)
def tiny_tokenizer(vocab_size: int = 400):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAGS])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL + TAGS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAGS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", additional_special_tokens=["<|im_start|>"],
                                   clean_up_tokenization_spaces=False)


def tiny_model(tokenizer, arch: str = "llama", hidden: int = 64, layers: int = 2, heads: int = 4,
               kv_heads: int = 2, max_pos: int = 512, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    common = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                  num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                  max_position_embeddings=max_pos, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id, bos_token_id=None, tie_word_embeddings=True)
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    return model.eval()

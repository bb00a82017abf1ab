from transformers import AutoTokenizer

from tirl.engines.tokenizer import FORMAT_TAGS, build_tokenizer

TEXT = ("<|im_start|>user\nWhat is 1234 times 5678?<|im_end|>\n<|im_start|>assistant\n"
        "<reason>compute</reason><tool_call>{\"code\": \"print(1234*5678)\"}</tool_call><|im_end|>")


def test_tokenizer_roundtrip_tags_digits_and_save(tmp_path):
    tok = build_tokenizer([TEXT] * 20, vocab_size=400)
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT
    toks = tok.convert_ids_to_tokens(ids)
    for tag in ["<|im_start|>", "<|im_end|>", "<reason>", "<tool_call>", "</tool_call>"]:
        assert tag in toks
    assert [t for t in toks if t.isdigit()][:4] == ["1", "2", "3", "4"]  # one digit per token
    # format tags survive skip_special_tokens; ChatML markers do not
    plain = tok.decode(ids, skip_special_tokens=True)
    assert "<tool_call>" in plain and "<|im_start|>" not in plain
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert len(tok) <= 400 and all(tok.convert_tokens_to_ids(t) is not None for t in FORMAT_TAGS)
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.encode(TEXT) == ids


def test_tokenizer_rejects_tiny_vocab():
    import pytest
    with pytest.raises(ValueError, match="vocab_size=100"):
        build_tokenizer(["x"], vocab_size=100)


def test_number_chunks_are_single_tokens_everywhere():
    tok = build_tokenizer([TEXT] * 20, vocab_size=2048)  # digit_group 3 by default here
    for text in ["print(790*227)", "What is 790 times 227?", "<tool_response>179330\n</tool_response>"]:
        toks = tok.convert_ids_to_tokens(tok.encode(text))
        assert tok.decode(tok.encode(text)) == text
        nums = [t for t in toks if t.isdigit()]
        assert nums in (["790", "227"], ["179", "330"]), toks
    assert tok.convert_ids_to_tokens(tok.encode("1234567")) == ["123", "456", "7"]

import pytest

from tirl.data.procedural import UNKNOWN_WORDS, generate, train_and_held_out
from tirl.data.sft import load_sft_examples, tokenize_example, tool_format_examples
from tirl.engines.tokenizer import build_tokenizer


def test_procedural_is_deterministic_disjoint_and_correct():
    tr, held = train_and_held_out(["multiply", "mod"], 200, 30, seed=5)
    tr2, held2 = train_and_held_out(["multiply", "mod"], 200, 30, seed=5)
    assert tr == tr2 and held == held2 and len(tr) == 200 and len(held) == 30
    assert not {p["problem"] for p in tr} & {p["problem"] for p in held}
    for p in tr[:50]:
        code = p["code"]
        assert str(eval(code[len("print("):-1])) == p["answer"]  # the reference code is right
    assert generate(["multiply"], 5, seed=1) != generate(["multiply"], 5, seed=2)
    with pytest.raises(ValueError, match="unknown procedural task"):
        generate(["nope"], 1, 0)


def test_sft_material_never_shows_the_rl_operation():
    exs = tool_format_examples(400, seed=0)
    texts = [e["problem"] for e in exs]
    assert not any("times" in t for t in texts)
    codes = [e["turns"][0][0] for e in exs if e["turns"][0][1]]
    assert codes and all("*" not in c or "square" in p or "twice" in p or "area" in p or any(w in p for w in UNKNOWN_WORDS)
                         for c, p in zip(codes, [e["problem"] for e in exs if e["turns"][0][1]]))
    with pytest.raises(ValueError, match="tool_format"):
        load_sft_examples("missing.txt", 1, 0)


def test_sft_mask_covers_assistant_text_only():
    ex = tool_format_examples(20, seed=1)
    from tirl.data.sft import example_texts

    tok = build_tokenizer([example_texts(e) for e in ex], 2048)
    e = next(x for x in ex if x["turns"][0][1])
    ids, mask = tokenize_example(tok, e)
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    assert "<tool_call>" in trained and "<answer>" in trained
    assert "<tool_response>" not in trained and "What is" not in trained and "stdout" not in trained
    assert trained.endswith("<|im_end|>")

import pytest

from tirl.data.procedural import UNKNOWN_WORDS, generate, train_and_held_out
from tirl.data.sft import REASON_ANSWER, load_sft_examples, tokenize_example, tool_format_examples
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


def test_recovery_tasks_reference_code_runs_and_needs_its_import_or_stdin():
    from tirl.data.procedural import RL_RECOVERY_TASKS, SFT_RECOVERY_TASKS
    from tirl.data.sft import run_like_sandbox

    tr, held = train_and_held_out(list(RL_RECOVERY_TASKS), 300, 30, seed=3)
    assert not {p["problem"] for p in tr} & {p["problem"] for p in held}
    for p in tr[:30] + generate(list(SFT_RECOVERY_TASKS), 30, seed=4):
        res = run_like_sandbox(p["code"], p.get("input", ""))
        assert res["status"] == "ok" and res["stdout"].strip() == p["answer"], p
        needs = "import" in p["code"] or "input()" in p["code"]
        assert needs or p["source"] in ("procedural:add", "procedural:subtract", "procedural:unknown_op")
    assert {p["source"] for p in tr} == {f"procedural:{t}" for t in RL_RECOVERY_TASKS}
    # the answers are beyond a tiny model's mental arithmetic
    digits = sorted(len(p["answer"].replace("/", "").replace("-", "")) for p in tr)
    assert digits[0] >= 2 and digits[len(digits) // 2] >= 4
    with pytest.raises(ValueError, match="distinct problems"):
        generate(["choose"], 300, seed=0)  # only 207 (n, k) pairs


def test_mistakes_fail_like_the_sandbox_and_the_fix_works():
    from tirl.data.sft import make_mistake, mistake_kinds, run_like_sandbox

    code = "import math\nprint(math.comb(23, 4))"
    assert mistake_kinds(code) == ["missing_import", "misspelled_name", "not_printed"]
    bad, _ = make_mistake(code, "", "missing_import")
    r = run_like_sandbox(bad)
    assert r["status"] == "error" and r["stderr"].strip().endswith("NameError: name 'math' is not defined")
    assert r["stderr"].startswith('Traceback (most recent call last):\n  File "<cell>", line 1')
    r = run_like_sandbox(make_mistake(code, "", "misspelled_name")[0])
    assert "AttributeError: module 'math' has no attribute 'cmob'" in r["stderr"]
    r = run_like_sandbox(make_mistake(code, "", "not_printed")[0])
    assert r == {"status": "ok", "stdout": "", "stderr": ""}
    stdin_code = "a, b = map(int, input().split())\nprint(a * b)"
    assert mistake_kinds(stdin_code, "12 34") == ["misspelled_name", "not_printed", "stdin_parse", "stdin_missing"]
    assert "ValueError: invalid literal" in run_like_sandbox(*make_mistake(stdin_code, "12 34", "stdin_parse"))["stderr"]
    assert "EOFError" in run_like_sandbox(*make_mistake(stdin_code, "12 34", "stdin_missing"))["stderr"]
    assert run_like_sandbox(stdin_code, "12 34")["stdout"] == "408\n"
    with pytest.raises(ValueError, match="does not apply"):
        make_mistake("print(1+2)", "", "missing_import")


def test_tool_recovery_material_has_30_to_50_percent_first_mistakes_that_get_fixed():
    from tirl.data.sft import FIX_REASONS, example_texts, tool_recovery_examples

    exs = tool_recovery_examples(600, seed=0)
    assert exs == tool_recovery_examples(600, seed=0)
    tool = [e for e in exs if len(e["turns"]) > 1]
    mistakes = [e for e in tool if "mistake" in e]
    assert 0.3 <= len(mistakes) / len(tool) <= 0.5
    assert {e["mistake"] for e in mistakes} == set(FIX_REASONS)
    # SFT never shows the RL tasks' wording: "chosen" (comb), fraction "plus", "multiply" (stdin)
    import re

    assert not any(re.search(r"chosen|multiply|/\d+ plus", e["problem"]) for e in exs)
    assert any("math.comb" in t for e in exs for t, _ in e["turns"])  # in the repertoire, behind made-up words
    for e in mistakes[:40]:
        (t1, r1), (t2, r2), (t3, r3) = e["turns"]
        assert t2.startswith(FIX_REASONS[e["mistake"]]) and not r3
        assert r1[0]["status"] == "error" or r1[0]["stdout"] == ""  # failed, or printed nothing
        assert r2[0]["status"] == "ok" and t3 == f"{REASON_ANSWER}<answer>\\boxed{{{r2[0]['stdout'].strip()}}}</answer>"
    text = example_texts(mistakes[0], "short")
    assert "Traceback" in text or "(no output)" in text
    assert load_sft_examples("tool_recovery", 10, 0) == tool_recovery_examples(10, 0)
    with pytest.raises(ValueError, match="mistake_fraction"):
        tool_recovery_examples(1, 0, mistake_fraction=1.5)

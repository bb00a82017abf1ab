"""GPQA-Diamond: loading a synthetic fixture in the GPQA schema, the per-sample shuffle,
the documented prompt, grading by letter, and the error when the data is missing."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tirl.data.benchmarks import (BenchmarkError, gpqa_permutation, gpqa_prompt, gpqa_sample_variant,
                                  load_gpqa_diamond, load_problems)
from tirl.reward.extract import extract_answer
from tirl.reward.normalize import fast_equal

FIXTURES = Path(__file__).parent / "fixtures"


def test_prompt_format_is_the_documented_one():
    assert gpqa_prompt("What is x?\n", ["a", " b", "c", "d "]) == (
        "What is x?\n\nA) a\nB) b\nC) c\nD) d\n\n"
        "Answer with the letter of the correct option in \\boxed{}, for example \\boxed{A}."
    )


def test_permutation_is_deterministic_and_varies_by_sample_seed_and_problem():
    p = gpqa_permutation("rec-1", 0, seed=0)
    assert sorted(p) == [0, 1, 2, 3]
    assert gpqa_permutation("rec-1", 0, seed=0) == p
    orders = {tuple(gpqa_permutation("rec-1", i)) for i in range(16)}
    assert len(orders) > 4  # the k samples of one problem see different orders
    assert any(gpqa_permutation("rec-1", i, seed=1) != gpqa_permutation("rec-1", i, seed=0) for i in range(4))
    assert any(gpqa_permutation(f"rec-{j}", 0) != p for j in range(2, 6))


def test_gold_letters_spread_over_all_four():
    golds = Counter("ABCD"[gpqa_permutation(f"q{j}", 0).index(0)] for j in range(400))
    assert set(golds) == set("ABCD")
    assert min(golds.values()) > 60  # about 100 each


def test_loads_fixture_by_name_from_the_data_dir():
    probs = load_problems("gpqa_diamond", data_dir=FIXTURES, hub=False)
    assert [p["id"] for p in probs] == [f"rec-syn-00{i}" for i in range(1, 6)]
    p = probs[0]
    assert p["choices"] == ["9 J", "6 J", "18 J", "3 J"]
    assert p["subject"] == "Physics" and p["source"] == "gpqa_diamond"
    prompt, gold = gpqa_sample_variant(p, 0)
    assert (p["problem"], p["answer"]) == (prompt, gold)
    # the gold letter labels the correct option's text in the prompt
    assert f"\n{gold}) 9 J\n" in p["problem"]
    assert p["problem"].startswith("In the synthetic fixture, a frictionless puck")
    # commas, quotes and newlines in cells survive the CSV round trip
    assert 'with commas, in "quotes"?' in probs[2]["problem"]
    assert "a lipid, of course" in probs[2]["problem"]
    assert "25 C?\nAssume ideal behaviour." in probs[4]["problem"]
    assert len(load_problems("gpqa_diamond", data_dir=FIXTURES, hub=False, limit=2)) == 2


def test_each_sample_gets_its_own_order_and_gold():
    (p,) = [q for q in load_gpqa_diamond(FIXTURES, hub=False) if q["id"] == "rec-syn-002"]
    variants = [gpqa_sample_variant(p, i, seed=7) for i in range(8)]
    assert len({prompt for prompt, _ in variants}) > 1
    for prompt, gold in variants:
        assert f"\n{gold}) 4\n" in prompt  # the letter always points at the correct text
        for wrong in ("2", "6", "8"):
            assert f") {wrong}\n" in prompt


@pytest.mark.parametrize("reply,ok", [
    ("so the answer is \\boxed{GOLD}", True),
    ("\\boxed{(GOLD)}", True),
    ("\\boxed{GOLD.}", True),
    ("\\boxed{OTHER}", False),
])
def test_graded_by_letter_with_the_multiple_choice_rule(reply, ok):
    p = load_gpqa_diamond(FIXTURES, hub=False)[0]
    gold = p["answer"]
    other = next(c for c in "ABCD" if c != gold)
    pred = extract_answer(reply.replace("GOLD", gold).replace("OTHER", other))
    assert fast_equal(pred, gold) is ok


def test_jsonl_in_the_same_schema(tmp_path):
    rows = [{"Record ID": "r1", "Question": "Q?", "Correct Answer": "yes",
             "Incorrect Answer 1": "no", "Incorrect Answer 2": "maybe", "Incorrect Answer 3": "never"}]
    (tmp_path / "gpqa_diamond.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (p,) = load_problems("gpqa_diamond", data_dir=tmp_path, hub=False)
    assert p["choices"] == ["yes", "no", "maybe", "never"] and "subject" not in p


def test_row_missing_a_column_names_it(tmp_path):
    (tmp_path / "gpqa_diamond.jsonl").write_text(json.dumps({"Question": "Q?", "Correct Answer": "y"}) + "\n")
    with pytest.raises(BenchmarkError, match="row 1 lacks 'Incorrect Answer 1'"):
        load_problems("gpqa_diamond", data_dir=tmp_path, hub=False)


def test_missing_data_says_what_is_needed(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BenchmarkError) as err:
        load_problems("gpqa_diamond", data_dir=tmp_path)
    msg = str(err.value)
    assert "gated" in msg and "HF_TOKEN" in msg and "Idavidrein/gpqa" in msg
    assert "gpqa_diamond.csv" in msg and str(tmp_path / "gpqa_diamond.csv") in msg
    assert "'Correct Answer'" in msg


def test_problem_for_sample():
    from tirl.data.benchmarks import problem_for_sample

    p = load_gpqa_diamond(FIXTURES, hub=False)[1]
    assert problem_for_sample(p, 0) == (p["problem"], p["answer"])
    assert problem_for_sample(p, 5, seed=3) == gpqa_sample_variant(p, 5, seed=3)
    math = {"id": "m1", "problem": "1+1?", "answer": "2"}
    assert problem_for_sample(math, 7) == ("1+1?", "2")


def test_field_overrides_do_not_apply_and_say_so():
    with pytest.raises(BenchmarkError, match="problem_field='Question'.*do not apply"):
        load_problems("gpqa_diamond", data_dir=FIXTURES, hub=False, problem_field="Question")

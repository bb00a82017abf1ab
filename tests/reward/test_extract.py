"""extract_answer: tags, nesting, several boxes, tool responses, truncation."""

import pytest

from tirl.reward.extract import boxed_contents, extract_answer, model_text

CASES = [
    # (response, expected answer)
    (r"<reason>so</reason><answer>The answer is \boxed{42}.</answer>", "42"),
    (r"<answer>\boxed{\frac{1}{2}}</answer>", r"\frac{1}{2}"),
    (r"<answer>\boxed{\frac{\sqrt{3}}{2}}</answer>", r"\frac{\sqrt{3}}{2}"),
    (r"<answer>\boxed{\left\{1,2\right\}}</answer>", r"\left\{1,2\right\}"),
    (r"<answer>\boxed{\{1, 2\}}</answer>", r"\{1, 2\}"),
    (r"\fbox{7}", "7"),
    (r"The result is \boxed 5 today", "5"),
    (r"\boxed{ 12 }", "12"),
    # the last box inside the final answer block wins over boxes in the reasoning
    (r"<reason>maybe \boxed{3}</reason><answer>\boxed{4}</answer>", "4"),
    (r"<answer>\boxed{1}</answer> wait <answer>first \boxed{2} then \boxed{5}</answer>", "5"),
    # an answer block without a box: fall back to the last box in the model's text
    (r"<reason>\boxed{8}</reason><answer>eight</answer>", "8"),
    # no answer block: the last box anywhere
    (r"first \boxed{1}, finally \boxed{2}", "2"),
    # tool responses never supply the answer
    (r"<tool_call>{}</tool_call><tool_response>\boxed{99}</tool_response>", None),
    (r"\boxed{3}<tool_response>output: \boxed{99}</tool_response>", "3"),
    (r"<answer>\boxed{6}</answer><tool_response>\boxed{99}", "6"),
    (r"<tool_response><answer>\boxed{99}</answer></tool_response><answer>\boxed{6}</answer>", "6"),
    # tool-call code is not an answer either
    (r'<tool_call>{"code": "print(\"\\boxed{1}\")"}</tool_call>', None),
    # truncated box is ignored, an earlier whole one is used
    (r"\boxed{2} and then \boxed{\frac{1}{", "2"),
    # unterminated final answer block (truncated response) still counts
    (r"<answer>\boxed{10}", "10"),
    (r"\boxed{}", None),
    ("no box at all: 42", None),
    ("", None),
    (r"\boxedx{3}", None),
    # a box inside a box belongs to the outer one
    (r"\boxed{\boxed{4}}", r"\boxed{4}"),
    # escaped braces do not count as nesting
    (r"\boxed{\{1\}} and text }", r"\{1\}"),
]


@pytest.mark.parametrize("text,expected", CASES)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_none_text():
    assert extract_answer(None) is None


def test_boxed_contents_in_order():
    assert boxed_contents(r"\boxed{a} \fbox{b{c}} \boxed{d") == ["a", "b{c}"]


def test_model_text_cuts_tool_blocks():
    t = "a<tool_call>x</tool_call>b<tool_response>y</tool_response>c<tool_response>z"
    assert model_text(t).replace(" ", "") == "abc"


def test_long_response_is_fast_enough_to_run_inline():
    # a 40 KB response with many tool turns: extraction is linear and regex-driven
    body = ("<tool_call>{}</tool_call><tool_response>" + "x" * 500 + r"\boxed{0}</tool_response>") * 60
    text = body + r"<answer>\boxed{123}</answer>"
    assert extract_answer(text) == "123"

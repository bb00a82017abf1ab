import json

from tirl.agent import format as fmt
from tirl.sandbox.types import ExecResult

from tests.agent.tiny import tiny_tokenizer


def test_format_tool_call_round_trips_through_parser():
    text = "<reason>use python</reason>" + fmt.format_tool_call('print("a\\nb")', input="5\n")
    [call] = fmt.parse_tool_calls(text)
    assert call.parse_error is None and call.error_kind is None
    assert call.name == fmt.TOOL_NAME
    assert call.arguments == {"code": 'print("a\\nb")', "input": "5\n"}


def test_parse_errors_are_typed_and_never_raise():
    good = fmt.format_tool_call("1+1")
    text = (good + "<tool_call>{not json}</tool_call>"
            + '<tool_call>{"name": "other", "arguments": {}}</tool_call>'
            + '<tool_call>{"arguments": {"code": "1"}}</tool_call>'
            + f'<tool_call>{{"name": "{fmt.TOOL_NAME}", "arguments": {{"input": ""}}}}</tool_call>'
            + f'<tool_call>{{"name": "{fmt.TOOL_NAME}", "arguments": {{"code": "1"}}}}</tool_call>'
            + "<tool_call>[1, 2]</tool_call>"
            + "<tool_call>{\"name\": ")
    calls = fmt.parse_tool_calls(text)
    kinds = [c.error_kind for c in calls]
    assert kinds == [None, "parse_error", "unknown_tool", "missing_field", "missing_field", None,
                     "parse_error", "parse_error"]
    assert calls[5].arguments == {"code": "1", "input": ""}  # input defaults to ""
    assert "not closed" in calls[-1].parse_error
    assert all(c.parse_error for c in calls if c.error_kind)
    assert fmt.parse_tool_calls("no calls here <answer>\\boxed{3}</answer>") == []


def test_tool_response_formats_outcomes_and_cuts_head_and_tail():
    ok = fmt.format_tool_response(ExecResult(status="ok", stdout="42\n", exec_ms=120))
    assert ok.startswith("<tool_response>\n") and ok.endswith("\n</tool_response>")
    assert "succeeded" in ok and "0.12s" in ok and "stdout:\n42" in ok
    err = fmt.tool_result_body(ExecResult(status="error", stderr="ZeroDivisionError", exit_code=1))
    assert "failed" in err and "ZeroDivisionError" in err
    assert "timed out" in fmt.tool_result_body(ExecResult(status="timeout", exec_ms=5000))
    long = "".join(f"{i:05d}" for i in range(2000))
    body = fmt.tool_result_body(ExecResult(status="ok", stdout=long), max_chars=200)
    assert long[:100] in body and long[-100:] in body and "characters cut" in body
    assert len(body) < 400


def test_prompt_and_tool_turn_render_chatml():
    tok = tiny_tokenizer()
    text = fmt.render_prompt_text(tok, "What is 2+2?")
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n<reason>")
    assert json.dumps(fmt.TOOL_SCHEMA) in text and "<reason>" in text and "\\boxed{}" in text
    assert tok.decode(fmt.render_prompt(tok, "What is 2+2?"), skip_special_tokens=False) == text
    short = fmt.render_prompt_text(tok, "q", system="short")
    assert fmt.TOOL_NAME in short and len(short) < len(text) / 2
    closed = fmt.tool_turn_text(tok, ["a", "b"], turn_closed=True)
    assert closed == ("\n<|im_start|>user\n<tool_response>\na\n</tool_response>\n<tool_response>\nb\n"
                      "</tool_response><|im_end|>\n<|im_start|>assistant\n<reason>")
    assert fmt.tool_turn_text(tok, ["a"], turn_closed=False).startswith("<|im_end|>\n<|im_start|>user")


def test_chat_template_format_uses_the_tokenizers_template():
    tok = tiny_tokenizer()
    tmpl = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tok2 = tok.__class__(tokenizer_object=tok.backend_tokenizer, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>")
    tok2.chat_template = tmpl
    text = fmt.render_prompt_text(tok2, "q", "chat_template")
    assert fmt.TOOL_NAME in text  # tools ignored by the template: taught in the system turn
    suffix = fmt.tool_turn_text(tok2, ["out"], "chat_template", turn_closed=True)
    assert suffix == "\n<|im_start|>tool\n<tool_response>\nout\n</tool_response><|im_end|>\n<|im_start|>assistant\n"


def test_sft_segments_match_rollout_text():
    prompt, segs = fmt.render_sft_example("q", [(fmt.format_tool_call("1+1"), [ExecResult(status="ok", stdout="2")]),
                                                ("<answer>\\boxed{2}</answer>", [])])
    assert [t for _, t in segs] == [True, False, True]
    assert segs[1][0] == fmt.tool_turn_text(None, [fmt.tool_result_body(ExecResult(status="ok", stdout="2"))])


def test_tool_response_timing_off_leaves_the_time_out():
    from tirl.sandbox.types import ExecResult

    fast = ExecResult(status="ok", stdout="42\n", exec_ms=10.0)
    slow = ExecResult(status="ok", stdout="42\n", exec_ms=130.0)
    assert fmt.tool_result_body(fast) != fmt.tool_result_body(slow)  # the paper's default shows it
    assert "in 0.01s" in fmt.tool_result_body(fast)
    off = fmt.tool_result_body(fast, timing=False)
    assert off == fmt.tool_result_body(slow, timing=False) == "Execution succeeded.\nstdout:\n42"
    err = ExecResult(status="error", stderr="Traceback\nValueError", exit_code=2, exec_ms=55.0)
    assert fmt.tool_result_body(err, timing=False).startswith("Execution failed with an error (exit code 2).")
    timeout = ExecResult(status="timeout", exec_ms=5000.0)
    assert fmt.tool_result_body(timeout, timing=False) == "Execution timed out."


# ---- the <reason> opener (issue #12): the template opens every assistant turn


def test_prompt_and_tool_turns_open_with_reason_by_default():
    tok = tiny_tokenizer()
    text = fmt.render_prompt_text(tok, "q")
    assert text.endswith("<|im_start|>assistant\n<reason>")
    assert fmt.render_prompt_text(tok, "q", open_with_reason=False).endswith("<|im_start|>assistant\n")
    assert fmt.tool_turn_text(tok, ["a"]).endswith("</tool_response><|im_end|>\n<|im_start|>assistant\n<reason>")
    assert fmt.tool_turn_text(tok, ["a"], open_with_reason=False).endswith("<|im_start|>assistant\n")
    assert fmt.user_turn_text("hi").endswith("<|im_start|>assistant\n<reason>")
    assert tok.decode(fmt.render_tool_responses(tok, ["x"]), skip_special_tokens=False).endswith("<reason>")


def test_sft_example_supplies_the_opener_and_does_not_train_on_it():
    turns = [("<reason>use python</reason>" + fmt.format_tool_call("1+1"), [ExecResult(status="ok", stdout="2")]),
             ("<reason>it is 2</reason><answer>\\boxed{2}</answer>", [])]
    prompt, segs = fmt.render_sft_example("q", turns)
    assert prompt.endswith("<|im_start|>assistant\n<reason>")
    assert segs[0] == ("use python</reason>" + fmt.format_tool_call("1+1") + "<|im_end|>", True)
    assert segs[1][0].endswith("<|im_start|>assistant\n<reason>") and not segs[1][1]
    assert segs[2] == ("it is 2</reason><answer>\\boxed{2}</answer><|im_end|>", True)
    # a turn written without the opener follows it as is (the stream the rollout would see)
    _, segs = fmt.render_sft_example("q", [("<answer>\\boxed{2}</answer>", [])])
    assert segs == [("<answer>\\boxed{2}</answer><|im_end|>", True)]
    # turned off: the old rendering, the model writes <reason> itself and is trained on it
    prompt, segs = fmt.render_sft_example("q", turns, open_with_reason=False)
    assert prompt.endswith("<|im_start|>assistant\n") and segs[0][0].startswith("<reason>use python")


def test_chat_template_format_has_no_opener():
    assert fmt.assistant_opener("chat_template") == "" and fmt.assistant_opener("rstar2") == "<reason>"
    assert fmt.assistant_opener("rstar2", open_with_reason=False) == ""

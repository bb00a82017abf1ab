"""The rollout's text format: prompts, tool calls and tool responses (rStar2-Agent §2.1; docs/architecture.md).

Two formats, chosen by ``[agent] format``:

* ``rstar2`` (default): the paper's ChatML chat. The system prompt asks for reasoning in
  ``<reason>…</reason>`` and the answer in ``<answer>…</answer>`` with ``\\boxed{}``, lists the
  one tool's JSON schema inside ``<tools>`` and asks for hermes-style calls
  ``<tool_call>{"name": …, "arguments": {…}}</tool_call>``. Tool results come back as a user
  turn of ``<tool_response>…</tool_response>`` blocks, one per call, in call order. Every
  assistant turn is opened with ``<reason>`` by the template (:data:`REASON_OPENER`, as the
  release does; ``open_with_reason=False`` leaves the turn to the model): the prompt ends
  ``<|im_start|>assistant\n<reason>`` and so does every tool-response turn.
* ``chat_template``: the tokenizer's own chat template, given the tool schema (Qwen-style
  templates render it); when the template ignores tools, the rStar2 tool instructions are put
  into the system message so the model still learns the call syntax.

This module also holds the strings the SFT data uses (:func:`format_tool_call`,
:func:`format_tool_response`, :func:`render_sft_example`), so SFT examples and rollouts share
exactly one text — the opener included, as template text the model is not trained on — and the
parser of tool calls (:func:`parse_tool_calls`), which never raises: a malformed call becomes
a :class:`~tirl.agent.trajectory.ToolCall` with ``parse_error`` and an ``error_kind``.

What it does not do: run tools (the loop does) or tokenize the model's own turns — the
model's tokens are kept as ids and never re-encoded; only the text inserted *between* model
turns (template and tool responses) is encoded here.
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

from tirl.agent.trajectory import ToolCall
from tirl.engines.chatml import IM_END, IM_START, end_of_turn_ids, has_chat_template  # noqa: F401 - re-exported
from tirl.sandbox.types import ExecResult

TOOL_NAME = "execute_python_code_with_standard_io"

TOOL_SCHEMA: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": (
            "Execute Python code with standard input and return standard output and standard "
            "error. Each call runs in a fresh interpreter; if the last statement is an "
            "expression, its value is printed."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "description": "The Python code to execute."},
                "input": {"type": "string", "description": "Text passed to the code as stdin."},
            },
            "required": ["code", "input"],
        },
    },
}

STATEFUL_NOTE = (
    "Variables, functions and imports persist across calls within one solution, as in a notebook."
)

SYSTEM_PROMPT_TEMPLATE = """You are a helpful assistant that solves math problems by reasoning step by step and running Python code when it helps.
Reason inside <reason> </reason>. Then give the final answer inside <answer> </answer>, with the final result in \\boxed{{}}.

# Tools

You may call a function to help you. Its signature is inside <tools></tools>:
<tools>
{tools}
</tools>

For a call, write a JSON object with the function name and arguments inside <tool_call></tool_call>:
<tool_call>
{{"name": "{name}", "arguments": {{"code": "print(1 + 1)", "input": ""}}}}
</tool_call>
The result comes back inside <tool_response></tool_response>.{extra}"""

SHORT_SYSTEM_PROMPT = (
    "Reason in <reason></reason>, answer in <answer></answer> with \\boxed{}. "
    f'Run Python with <tool_call>{{"name": "{TOOL_NAME}", "arguments": {{"code": ..., "input": ""}}}}</tool_call>.'
)

REASON_OPENER = "<reason>"  # what the template writes at the start of every assistant turn (rstar2)

_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def system_prompt(stateful: bool = False, which: str | None = None) -> str:
    """The rStar2 system prompt with the tool schema (and the stateful note when asked).

    ``which``: None = the full prompt; ``"short"`` = :data:`SHORT_SYSTEM_PROMPT`; any other
    string is returned as is (``[agent] system_prompt``).
    """
    if which == "short":
        return SHORT_SYSTEM_PROMPT + ((" " + STATEFUL_NOTE) if stateful else "")
    if which is not None:
        return which
    return SYSTEM_PROMPT_TEMPLATE.format(
        tools=json.dumps(TOOL_SCHEMA), name=TOOL_NAME,
        extra=("\n" + STATEFUL_NOTE) if stateful else "",
    )


# ---------------------------------------------------------------------------------------
# strings shared with SFT


def format_tool_call(code: str, input: str = "") -> str:  # noqa: A002 - the paper's argument name
    """One hermes tool call, exactly as the model should write it."""
    args = {"name": TOOL_NAME, "arguments": {"code": code, "input": input}}
    return "<tool_call>\n" + json.dumps(args, ensure_ascii=False) + "\n</tool_call>"


def truncate_middle(text: str, max_chars: int) -> str:
    """``text`` cut to about ``max_chars`` keeping head and tail, with a marker of what went."""
    if len(text) <= max_chars:
        return text
    head = max_chars // 2
    tail = max_chars - head
    cut = len(text) - head - tail
    return f"{text[:head]}\n...[{cut} characters cut]...\n{text[-tail:]}"


def tool_result_body(result: ExecResult | str, max_chars: int = 2048, timing: bool = True) -> str:
    """The body of one tool response (without the tags), like the paper's outcomes.

    A string is a parse error (or any message for the model) and is returned as is. An
    :class:`ExecResult` becomes a status line (success / error / timeout / …, with the time)
    followed by stdout and stderr, each cut to ``max_chars`` keeping head and tail.
    ``timing=False`` (``[agent] tool_response_timing = false``) leaves the measured time out
    of the status line, so the text depends only on what the code did.
    """
    if isinstance(result, str):
        return truncate_middle(result, max_chars)
    secs = result.exec_ms / 1000.0
    t_in = f" in {secs:.2f}s" if timing else ""
    t_after = f" after {secs:.2f}s" if timing else ""
    if result.status == "ok":
        head = f"Execution succeeded{t_in}."
    elif result.status == "error":
        code = f" (exit code {result.exit_code})" if result.exit_code not in (None, 1) else ""
        head = f"Execution failed with an error{code}{t_after}."
    elif result.status == "timeout":
        head = f"Execution timed out{t_after}."
    elif result.status == "memory":
        head = f"Execution ran out of memory{t_after}."
    elif result.status == "output_limit":
        head = f"Execution stopped: output too long{t_after}."
    elif result.status == "killed":
        head = f"Execution was killed{t_after}."
    else:
        head = "The code execution service failed; this is not a problem with the code."
    parts = [head]
    stdout = result.stdout
    if stdout:
        parts.append("stdout:\n" + truncate_middle(stdout.rstrip("\n"), max_chars))
    if result.stderr:
        parts.append("stderr:\n" + truncate_middle(result.stderr.rstrip("\n"), max_chars))
    if not stdout and not result.stderr and result.status == "ok":
        parts.append("(no output)")
    return "\n".join(parts)


def format_tool_response(result: ExecResult | str, max_chars: int = 2048, timing: bool = True) -> str:
    """One ``<tool_response>`` block, exactly as the rollout inserts it."""
    return "<tool_response>\n" + tool_result_body(result, max_chars, timing) + "\n</tool_response>"


def tool_responses_text(bodies: Sequence[str]) -> str:
    """The user turn's content for the responses of one assistant turn (rstar2 format)."""
    return "\n".join("<tool_response>\n" + b + "\n</tool_response>" for b in bodies)


# ---------------------------------------------------------------------------------------
# parsing


def parse_tool_calls(text: str) -> list[ToolCall]:
    """Every ``<tool_call>`` of an assistant turn, in order, parsed or with a parse error.

    Never raises. ``error_kind`` is ``parse_error`` (invalid JSON or an unclosed tag),
    ``missing_field`` (no ``name``/``arguments``/``code``, or wrong types) or
    ``unknown_tool``. ``input`` defaults to ``""``.
    """
    calls = [_parse_one(m.group(1)) for m in _CALL_RE.finditer(text)]
    last_close = text.rfind("</tool_call>")
    tail_start = last_close + len("</tool_call>") if last_close >= 0 else 0
    tail = text[tail_start:]
    if "<tool_call>" in tail:
        raw = tail.split("<tool_call>", 1)[1]
        calls.append(ToolCall(
            raw=raw, parse_error="the tool call was not closed with </tool_call>",
            error_kind="parse_error",
        ))
    return calls


def _parse_one(raw: str) -> ToolCall:
    s = raw.strip()
    try:
        obj = json.loads(s)
    except json.JSONDecodeError as err:
        return ToolCall(raw=raw, parse_error=f"invalid JSON in the tool call: {err}",
                        error_kind="parse_error")
    if not isinstance(obj, dict):
        return ToolCall(raw=raw, parse_error=f"the tool call must be a JSON object, got {type(obj).__name__}",
                        error_kind="parse_error")
    name = obj.get("name")
    if not isinstance(name, str):
        return ToolCall(raw=raw, parse_error='the tool call has no "name" string',
                        error_kind="missing_field")
    args = obj.get("arguments")
    if name != TOOL_NAME:
        return ToolCall(raw=raw, name=name, arguments=args if isinstance(args, dict) else None,
                        parse_error=f"unknown tool {name!r}; the only tool is {TOOL_NAME!r}",
                        error_kind="unknown_tool")
    if not isinstance(args, dict):
        return ToolCall(raw=raw, name=name,
                        parse_error='the tool call has no "arguments" object',
                        error_kind="missing_field")
    code = args.get("code")
    if not isinstance(code, str):
        return ToolCall(raw=raw, name=name, arguments=args,
                        parse_error='the arguments have no "code" string', error_kind="missing_field")
    stdin = args.get("input", "")
    if stdin is None:
        stdin = ""
    if not isinstance(stdin, str):
        return ToolCall(raw=raw, name=name, arguments=args,
                        parse_error='the "input" argument must be a string', error_kind="missing_field")
    return ToolCall(raw=raw, name=name, arguments={"code": code, "input": stdin})


def parse_error_message(call: ToolCall) -> str:
    """What the model reads when its call could not be parsed (so it learns the format)."""
    return (
        f"Tool call error: {call.parse_error}. Write calls as "
        f'<tool_call>{{"name": "{TOOL_NAME}", "arguments": {{"code": "...", "input": ""}}}}</tool_call>'
    )


# ---------------------------------------------------------------------------------------
# rendering with a tokenizer


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def assistant_opener(fmt: str = "rstar2", open_with_reason: bool = True) -> str:
    """The text the template puts after every assistant header: ``<reason>`` in the rstar2
    format when ``open_with_reason`` (the default, as the release), else nothing."""
    return REASON_OPENER if fmt == "rstar2" and open_with_reason else ""


def render_prompt_text(tokenizer, problem: str, fmt: str = "rstar2", *, stateful: bool = False,
                       system: str | None = None, open_with_reason: bool = True) -> str:
    """The prompt as text, ending with the assistant header the model continues from (and,
    in the rstar2 format, the ``<reason>`` opener unless ``open_with_reason=False``)."""
    if fmt == "rstar2" or not has_chat_template(tokenizer):
        if fmt == "chat_template":
            raise ValueError(
                "agent.format = 'chat_template' but the tokenizer has no chat template; "
                "use agent.format = 'rstar2'"
            )
        sys_text = system_prompt(stateful, system)
        return (f"{IM_START}system\n{sys_text}{IM_END}\n{IM_START}user\n{problem}{IM_END}\n"
                f"{IM_START}assistant\n{assistant_opener(fmt, open_with_reason)}")
    if fmt != "chat_template":
        raise ValueError(f"unknown agent.format {fmt!r}; use 'rstar2' or 'chat_template'")
    msgs = [{"role": "user", "content": problem}]
    text = tokenizer.apply_chat_template(msgs, tools=[TOOL_SCHEMA], tokenize=False,
                                         add_generation_prompt=True)
    if TOOL_NAME not in text:  # the template ignores tools: teach the call syntax in the system turn
        sys_msg = {"role": "system", "content": system_prompt(stateful, system)}
        text = tokenizer.apply_chat_template([sys_msg] + msgs, tokenize=False,
                                             add_generation_prompt=True)
    elif system is not None:
        text = tokenizer.apply_chat_template([{"role": "system", "content": system_prompt(stateful, system)}] + msgs,
                                             tools=[TOOL_SCHEMA], tokenize=False,
                                             add_generation_prompt=True)
    return text


def render_prompt(tokenizer, problem: str, fmt: str = "rstar2", *, stateful: bool = False,
                  system: str | None = None, open_with_reason: bool = True) -> list[int]:
    """Token ids of the prompt for ``problem`` (the fixed prefix of every turn)."""
    return _encode(tokenizer, render_prompt_text(tokenizer, problem, fmt, stateful=stateful, system=system,
                                                 open_with_reason=open_with_reason))


def _template_tool_suffix(tokenizer, bodies: Sequence[str]) -> str:
    """Text the chat template puts after an assistant turn that made tool calls."""
    marker = "\x00TIRL_TURN\x00"
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}]
    msgs += [{"role": "tool", "content": b} for b in bodies]
    text = tokenizer.apply_chat_template(msgs, tools=[TOOL_SCHEMA], tokenize=False,
                                         add_generation_prompt=True)
    if marker not in text:
        raise ValueError("the chat template dropped the assistant turn; use agent.format = 'rstar2'")
    suffix = text.split(marker, 1)[1]
    if "<tool_response>" not in suffix:  # template shows tool turns bare: add the tags ourselves
        msgs = msgs[:2] + [{"role": "tool", "content": "<tool_response>\n" + b + "\n</tool_response>"}
                           for b in bodies]
        text = tokenizer.apply_chat_template(msgs, tools=[TOOL_SCHEMA], tokenize=False,
                                             add_generation_prompt=True)
        suffix = text.split(marker, 1)[1]
    return suffix


def tool_turn_text(tokenizer, bodies: Sequence[str], fmt: str = "rstar2",
                   turn_closed: bool = True, *, open_with_reason: bool = True) -> str:
    """The text inserted after an assistant turn with tool calls, up to the next assistant
    header and its opener (:func:`assistant_opener`).

    ``turn_closed`` says whether the model already emitted the end-of-turn token; if not,
    the end-of-turn marker is inserted first (as a template token, mask 0).
    """
    if fmt == "rstar2" or not has_chat_template(tokenizer):
        text = (f"{IM_END}\n{IM_START}user\n{tool_responses_text(bodies)}{IM_END}\n{IM_START}assistant\n"
                f"{assistant_opener(fmt, open_with_reason)}")
    else:
        text = _template_tool_suffix(tokenizer, bodies)
    if turn_closed and text.startswith(IM_END):
        text = text[len(IM_END):]
    elif turn_closed:
        eos = getattr(tokenizer, "eos_token", None)
        if eos and text.startswith(eos):
            text = text[len(eos):]
    return text


def render_tool_responses(tokenizer, results: Sequence[ExecResult | str], fmt: str = "rstar2", *,
                          max_chars: int = 2048, turn_closed: bool = True,
                          timing: bool = True, open_with_reason: bool = True) -> list[int]:
    """Token ids of the tool-response turn for ``results`` (strings are parse errors)."""
    bodies = [tool_result_body(r, max_chars, timing) for r in results]
    return _encode(tokenizer, tool_turn_text(tokenizer, bodies, fmt, turn_closed,
                                             open_with_reason=open_with_reason))


def user_turn_text(message: str, turn_closed: bool = True, *, open_with_reason: bool = True) -> str:
    """A follow-up user message after a finished assistant turn (chat), ChatML, ending with
    the next assistant header and its opener (rstar2)."""
    start = "" if turn_closed else IM_END
    return (f"{start}\n{IM_START}user\n{message}{IM_END}\n{IM_START}assistant\n"
            f"{assistant_opener('rstar2', open_with_reason)}")


def render_sft_example(problem: str, turns: Sequence[tuple[str, Sequence[ExecResult | str]]], *,
                       stateful: bool = False, max_chars: int = 2048,
                       system: str | None = None, timing: bool = True,
                       open_with_reason: bool = True) -> tuple[str, list[tuple[str, bool]]]:
    """An rstar2-format SFT example as text segments ``(text, trained)``.

    ``turns`` is a list of (assistant text, tool results of that turn); the last turn should
    have no results. Returns the prompt text and the list of segments after it; segments with
    ``trained=True`` are the model's (mask 1), the others template/tool text (mask 0) — the
    same split the rollout makes.

    With ``open_with_reason`` (the default) the prompt and every tool-response turn end with
    the ``<reason>`` opener, exactly as the rollout supplies it: an assistant text that starts
    with ``<reason>`` has it removed from its trained segment (the template wrote it), and
    one that does not is rendered after the opener as is — the stream the rollout would see.
    """
    opener = assistant_opener("rstar2", open_with_reason)
    prompt = (f"{IM_START}system\n{system_prompt(stateful, system)}{IM_END}\n{IM_START}user\n{problem}{IM_END}\n"
              f"{IM_START}assistant\n{opener}")
    segs: list[tuple[str, bool]] = []
    for text, results in turns:
        if opener and text.startswith(opener):
            text = text[len(opener):]
        segs.append((text + IM_END, True))
        if results:
            bodies = [tool_result_body(r, max_chars, timing) for r in results]
            segs.append((tool_turn_text(None, bodies, "rstar2", turn_closed=True,
                                        open_with_reason=open_with_reason), False))
    return prompt, segs


def tokenizer_sample_texts() -> list[str]:
    """Text a scratch tokenizer is trained on when a run gives none: the rollout format."""
    texts = [system_prompt(), system_prompt(which="short"), system_prompt(True)]
    for a in range(0, 100, 7):
        for b in range(3, 60, 11):
            texts.append(f"What is {a} * {b}? <reason>compute it</reason>"
                         + format_tool_call(f"print({a} * {b})")
                         + format_tool_response(ExecResult(status="ok", stdout=f"{a * b}\n"))
                         + f"<answer>\\boxed{{{a * b}}}</answer>")
    return texts

"""Find the model's final answer in a response: the last ``\\boxed{}`` it wrote.

Rules (docs/architecture.md, Reward; rStar2-Agent §2.1–2.2.1):

1. Text inside ``<tool_response>…</tool_response>`` is not the model's: it never supplies the
   answer (a printed ``\\boxed{5}`` in tool output is not an answer). Tool *calls*
   (``<tool_call>…</tool_call>``) hold code, not answers, and are skipped too.
2. If there is an ``<answer>…</answer>`` block, the last ``\\boxed{}`` (or ``\\fbox{}``) inside
   the final such block is the answer. An unterminated final ``<answer>`` (truncated
   response) runs to the end of the text. (Several *different* boxes in that block are
   judged against the reference by ``tirl.reward.answer``: one box per part of a multi-part
   reference, otherwise a hedge.)
3. Otherwise (no answer block, or one without a box) the last ``\\boxed{}`` in the model's
   own text is the answer.
4. Braces nest (``\\boxed{\\frac{1}{2}}``); a box whose braces never close (truncated) is
   ignored; ``\\boxed 5`` (no braces) is accepted; an empty box is no answer.

What this does not do: judge the answer (see ``tirl.reward.equivalence``) or accept an
unboxed final sentence ("the answer is 5") — the rollout format asks for a box, and
guessing at prose invites reward hacking.

The scan is regex-driven (C speed) with a brace walk only from each box, so a 40 KB response
costs well under a millisecond.
"""

from __future__ import annotations

import re

_TOOL_BLOCK = re.compile(
    r"<(tool_response|tool_call)>.*?(?:</\1>|\Z)", re.DOTALL)
_ANSWER_CLOSE = re.compile(r"</answer>")
_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])(\s*)")
_TOKEN = re.compile(r"[^\s${}\\]+")


def model_text(text: str) -> str:
    """The response with tool responses and tool calls cut out (an unterminated one runs to
    the end of the text)."""
    if "<tool_" not in text:
        return text
    return _TOOL_BLOCK.sub(" ", text)


def _closing_brace(text: str, open_at: int) -> int:
    """Index of the ``}`` matching the ``{`` at ``open_at``; -1 if it never closes.
    ``\\{`` and ``\\}`` are escaped literal braces and do not count."""
    depth = 0
    i = open_at
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def boxed_contents(text: str) -> list[str]:
    """The contents of every well-formed ``\\boxed{}``/``\\fbox{}`` in ``text``, in order
    (outermost boxes only; a box inside a box belongs to its parent)."""
    out: list[str] = []
    pos = 0
    n = len(text)
    while True:
        m = _BOX.search(text, pos)
        if m is None:
            return out
        at = m.end()
        if at < n and text[at] == "{":
            close = _closing_brace(text, at)
            if close < 0:  # truncated box: skip it, later boxes may still be whole
                pos = at + 1
                continue
            out.append(text[at + 1:close])
            pos = close + 1
            continue
        tok = _TOKEN.match(text, at) if m.group(1) else None  # "\boxed 5", as TeX reads it
        if tok is not None:
            out.append(tok.group(0))
            pos = tok.end()
        else:
            pos = at


def _last_box(text: str) -> str | None:
    if "box" not in text:
        return None
    boxes = boxed_contents(text)
    if not boxes:
        return None
    return boxes[-1].strip() or None  # an empty last box is no answer


def final_answer_block(text: str) -> str | None:
    """Contents of the final ``<answer>`` block of the model's own text (None if none)."""
    return _answer_block(model_text(text))


def _answer_block(own: str) -> str | None:
    start = own.rfind("<answer>")
    if start < 0:
        return None
    start += len("<answer>")
    close = _ANSWER_CLOSE.search(own, start)
    return own[start:close.start() if close else len(own)]


def extract_answer(text: str | None) -> str | None:
    """The model's final answer: the last ``\\boxed{}`` in the final ``<answer>`` block, else
    the last ``\\boxed{}`` in the model's own text; ``None`` when there is none."""
    if not text:
        return None
    own = model_text(text)
    block = _answer_block(own)
    if block is not None:
        found = _last_box(block)
        if found is not None:
            return found
    return _last_box(own)

"""The terminal chat behind `tirl chat`: a conversation in which the model runs Python.

:func:`chat_session` drives an :class:`~tirl.agent.loop.AgentLoop` over user messages. Each
message continues the same token sequence (the earlier prompt and response ids are kept and
the new user turn is appended), so the conversation is token-exact like a rollout. Each
assistant turn is shown as it ends: its text, every tool call's code, and the tool's result.

What it does not do: stream tokens as they are generated, or keep history across runs.
"""

from __future__ import annotations

from typing import Any, AsyncIterable, Callable, Iterable

from tirl.agent import format as fmt
from tirl.agent.loop import AgentLoop
from tirl.agent.trajectory import Trajectory, Turn

Printer = Callable[[str, str], None]  # (kind, text): kind in assistant, tool_call, tool_result, info


def describe_turn(turn: Turn, max_chars: int = 2048) -> list[tuple[str, str]]:
    """What to show for one finished assistant turn, as (kind, text) pairs in order."""
    out: list[tuple[str, str]] = []
    text = turn.text
    if turn.tool_calls:
        text = fmt._CALL_RE.sub("", text).strip()
    if text:
        out.append(("assistant", text))
    for c in turn.tool_calls:
        if c.parse_error is not None:
            out.append(("tool_call", c.raw.strip()))
            out.append(("tool_result", fmt.parse_error_message(c)))
            continue
        args = c.arguments or {}
        code = args.get("code", "")
        stdin = args.get("input") or ""
        out.append(("tool_call", code + (f"\n[stdin] {stdin}" if stdin else "")))
        if c.result is None:
            out.append(("tool_result", "(not run: turn limit reached)"))
        else:
            out.append(("tool_result", fmt.tool_result_body(c.result, max_chars)))
    return out


async def _aiter(messages: Iterable[str] | AsyncIterable[str]):
    if hasattr(messages, "__aiter__"):
        async for m in messages:  # type: ignore[union-attr]
            yield m
    else:
        for m in messages:  # type: ignore[union-attr]
            yield m


async def chat_session(loop: AgentLoop, messages: Iterable[str] | AsyncIterable[str],
                       show: Printer) -> list[Trajectory]:
    """Answer each message in turn, continuing one conversation; returns each exchange's
    trajectory (sampled with the loop's sampling settings).

    A message ``/reset`` starts a new conversation; ``/exit`` ends the session.
    """
    tok = loop.tokenizer
    history: Trajectory | None = None
    done: list[Trajectory] = []

    def on_turn(traj: Trajectory, turn: Turn) -> None:
        for kind, text in describe_turn(turn, loop.cfg.tool_response_max_chars):
            show(kind, text)

    async for msg in _aiter(messages):
        msg = msg.strip()
        if not msg:
            continue
        if msg == "/exit":
            break
        if msg == "/reset":
            history = None
            show("info", "(new conversation)")
            continue
        if history is None:
            prompt = loop.render_prompt(msg)
        else:
            ids = history.response_ids
            closed = bool(ids) and ids[-1] in loop.stop_ids
            prompt = history.prompt_ids + ids + list(
                tok.encode(fmt.user_turn_text(msg, closed, open_with_reason=loop.open_with_reason),
                           add_special_tokens=False))
        traj = await loop.rollout(prompt, on_turn=on_turn)
        if traj.finish_reason != "answer":
            why = traj.meta.get("error") or traj.finish_reason
            show("info", f"(stopped: {why})")
        done.append(traj)
        history = traj
    return done


def rich_printer(console: Any) -> Printer:
    styles = {"assistant": ("bold cyan", "assistant"), "tool_call": ("yellow", "python"),
              "tool_result": ("green", "result"), "info": ("dim", "")}

    def show(kind: str, text: str) -> None:
        style, label = styles.get(kind, ("", kind))
        if label:
            console.print(f"[{style}]{label}>[/{style}]", end=" ")
        console.print(text, style=style if kind == "info" else None, markup=False, highlight=False)

    return show

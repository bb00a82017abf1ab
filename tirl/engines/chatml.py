"""ChatML markers and end-of-turn detection: the few format facts an engine must know.

Engines sit below the agent: they generate tokens and must stop at the end of a turn, and
`tirl serve` renders plain chat messages, but they know nothing of tools, ``<reason>`` or
``<answer>`` (that is :mod:`tirl.agent.format`, which builds on these names).
"""

from __future__ import annotations

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"


def has_chat_template(tokenizer) -> bool:
    """Whether the tokenizer carries its own chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def end_of_turn_ids(tokenizer) -> list[int]:
    """Token ids that end an assistant turn (``<|im_end|>`` and the eos token)."""
    ids = []
    for tok in (IM_END, getattr(tokenizer, "eos_token", None)):
        if tok is None:
            continue
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid >= 0 and tid != getattr(tokenizer, "unk_token_id", None) \
                and tid not in ids:
            ids.append(tid)
    return ids

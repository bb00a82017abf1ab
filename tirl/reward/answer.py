"""Which answer a response gives for a reference: one box, one box per part, or a hedge.

``extract_answer`` (``tirl.reward.extract``) finds the last box. When the final
``<answer>`` block holds several boxes, the reference decides what they mean
(``select_answer(text, gold)``):

1. all the boxes agree (the same spelling after ``clean``, or equal on the exact fast path:
   ``\\boxed{5} = \\boxed{5.0}``): the answer is the last box, as with one box;
2. the reference has ``k ≥ 2`` parts (a bare comma list, ``3, 5``; a tuple, set or interval
   is one object, and ``1,000`` is one number) and the block holds exactly ``k`` boxes:
   the answer is the boxes joined by ``", "`` and is judged against the whole reference by
   the usual rules (a bare list is order-free);
3. otherwise the boxes are a hedge (``\\boxed{3} or \\boxed{5}`` for ``5``): no answer is
   chosen, and the grade is ``incorrect``.

Boxes outside the final answer block (drafts in the reasoning, or a response without an
answer block) keep the old rule: the last box. What this module does not do: judge the
chosen answer against the reference (``tirl.reward.equivalence``, ``tirl.reward.grader``).
"""

from __future__ import annotations

from tirl.reward.extract import _answer_block, boxed_contents, extract_answer, model_text
from tirl.reward.normalize import _split_top, clean, fast_equal, parse_number


def answer_boxes(text: str | None) -> list[str]:
    """The non-empty boxes inside the final ``<answer>`` block of the model's own text, in
    order ([] when there is no such block or it has no box)."""
    if not text or "box" not in text:
        return []
    block = _answer_block(model_text(text))
    if block is None:
        return []
    return [b.strip() for b in boxed_contents(block) if b.strip()]


def gold_parts(gold: str) -> int:
    """How many parts a reference answer has: the items of a bare top-level comma list
    (``3, 5`` → 2), else 1 (a tuple, set, interval, matrix or number such as ``1,000``)."""
    g = clean(gold)
    if not g or "," not in g or parse_number(g) is not None:
        return 1
    return len(_split_top(g))  # commas inside brackets or braces do not split


def select_answer(text: str | None, gold: str) -> tuple[str | None, str]:
    """``(answer, why_none)``: the answer the response gives for ``gold`` (see the module
    doc), or ``None`` with the reason — ``""`` when there is no box, a sentence when
    several different boxes hedge."""
    boxes = answer_boxes(text)
    if len(boxes) < 2:
        return extract_answer(text), ""
    last = boxes[-1]
    if all(b == last or clean(b) == clean(last) or fast_equal(b, last) is True for b in boxes[:-1]):
        return last, ""
    k = gold_parts(gold)
    if k >= 2 and len(boxes) == k:
        return ", ".join(boxes), ""
    return None, (f"{len(boxes)} different boxed answers in the final answer block "
                  f"(the reference has {k} part{'s' if k > 1 else ''}): a hedge, not an answer")

"""Forking and reflection tokens among the highest-entropy tokens (paper §5).

The paper looks at the top 20% highest-entropy tokens of the policy's own output and finds
two kinds: *forking tokens*, in the model's own reasoning where it chooses a path, and
*reflection tokens*, right after a tool response, where it reacts to the tool's feedback
(diagnosing an error, deciding to check again). Here a token is a **reflection** token when
it is among the first ``reflection_window`` policy tokens after a tool response (a run of
mask-0 tokens inserted by the loop), and a **forking** token otherwise.

Pure functions over :class:`TokenSeq` (decoded tokens, entropies, mask); the threshold is
taken over all policy tokens of all sequences together, as a corpus statistic.

What it does not do: compute entropies (:mod:`tirl.analysis.entropy`) or decide what a token
*means* — the split is positional, as in the paper's definition.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence


@dataclass
class TokenSeq:
    """One trajectory's response: decoded tokens, their entropies (None: unknown) and mask
    (1 = the policy's token, 0 = inserted tool/template text)."""

    tokens: list[str]
    entropies: list[float | None]
    mask: list[int]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not len(self.tokens) == len(self.entropies) == len(self.mask):
            raise ValueError(f"tokens ({len(self.tokens)}), entropies ({len(self.entropies)}) and mask "
                             f"({len(self.mask)}) must have one entry per response token")


@dataclass
class HighEntropyToken:
    seq: int  # index of the sequence
    pos: int  # index in the response
    token: str
    entropy: float
    kind: str  # "forking" | "reflection"
    context: str  # the text around it, the token marked [[like this]]


@dataclass
class EntropySplit:
    threshold: float  # the smallest entropy among the selected tokens
    n_policy_tokens: int  # policy tokens with a known entropy
    n_in_reflection_windows: int  # of those, how many lie in a window after a tool response
    tokens: list[HighEntropyToken]

    def of_kind(self, kind: str) -> list[HighEntropyToken]:
        return [t for t in self.tokens if t.kind == kind]

    def most_common(self, kind: str, n: int = 15) -> list[tuple[str, int]]:
        return Counter(t.token for t in self.of_kind(kind)).most_common(n)

    @property
    def reflection_share(self) -> float:
        """Share of the high-entropy tokens that are reflection tokens."""
        return len(self.of_kind("reflection")) / len(self.tokens) if self.tokens else float("nan")

    @property
    def reflection_base_rate(self) -> float:
        """Share of all policy tokens in reflection windows (what the share would be by chance)."""
        return self.n_in_reflection_windows / self.n_policy_tokens if self.n_policy_tokens else float("nan")


def steps_after_tool(mask: Sequence[int]) -> list[int | None]:
    """For each position: how many policy tokens precede it since the last tool response
    (0 = the first token the model writes after one); None for inserted tokens and for the
    policy tokens of the first turn (no tool response before them)."""
    out: list[int | None] = []
    since: int | None = None
    seen_tool = False
    for m in mask:
        if not m:
            seen_tool = True
            since = None
            out.append(None)
            continue
        if seen_tool and since is None:
            since = 0
        elif since is not None:
            since += 1
        out.append(since)
    return out


def _context(tokens: list[str], pos: int, width: int) -> str:
    left = "".join(tokens[max(0, pos - width):pos])
    right = "".join(tokens[pos + 1:pos + 1 + width])
    return (left + "[[" + tokens[pos] + "]]" + right).replace("\n", "⏎")


def split_high_entropy(seqs: Sequence[TokenSeq], top_frac: float = 0.2, reflection_window: int = 16,
                       context: int = 8) -> EntropySplit:
    """The top ``top_frac`` highest-entropy policy tokens over all ``seqs``, each labelled
    ``reflection`` (within the first ``reflection_window`` policy tokens after a tool
    response) or ``forking``. Ties are broken by order (sequence, then position)."""
    if not 0.0 < top_frac <= 1.0:
        raise ValueError(f"top_frac = {top_frac}: use a fraction in (0, 1]")
    if reflection_window < 0:
        raise ValueError(f"reflection_window = {reflection_window}: use 0 or more tokens")
    cands: list[tuple[float, int, int, bool]] = []
    in_window = 0
    for si, s in enumerate(seqs):
        after = steps_after_tool(s.mask)
        for p, (m, h) in enumerate(zip(s.mask, s.entropies)):
            if not m or h is None or math.isnan(h):
                continue
            refl = after[p] is not None and after[p] < reflection_window
            in_window += refl
            cands.append((h, si, p, refl))
    if not cands:
        return EntropySplit(float("nan"), 0, 0, [])
    cands.sort(key=lambda c: (-c[0], c[1], c[2]))
    n_top = max(1, math.ceil(top_frac * len(cands) - 1e-9))
    chosen = cands[:n_top]
    toks = [HighEntropyToken(si, p, seqs[si].tokens[p], h, "reflection" if refl else "forking",
                             _context(seqs[si].tokens, p, context))
            for h, si, p, refl in chosen]
    return EntropySplit(chosen[-1][0], len(cands), in_window, toks)

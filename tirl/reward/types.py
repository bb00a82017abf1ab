"""The grader's result type (docs/architecture.md, Reward).

``Grade.reward`` is 1.0 for ``correct``, 0.0 for ``incorrect``, ``no_answer`` and
``timeout`` (an answer too slow to check is not rewarded), and ``None`` for
``infra_error``: the grader itself failed (a worker crashed twice), so nothing is known
about the answer. Callers must drop such items (no reward, no advantage, not in pass@k),
never reward them 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

GradeStatus = Literal["correct", "incorrect", "no_answer", "timeout", "infra_error"]


@dataclass(frozen=True)
class Grade:
    status: GradeStatus
    extracted: str | None = None
    gold: str | None = None
    ms: float = 0.0
    method: str = ""
    """What decided it: ``fast`` (exact, in the caller's process), ``symbolic`` (math-verify),
    ``reasoning_gym:<dataset>`` (the generator's own scorer), ``extract`` (no answer)."""
    detail: str = ""
    """Why, when it is not obvious: the timeout, the crashes, a hedge, a scorer's partial score."""

    @property
    def correct(self) -> bool:
        return self.status == "correct"

    @property
    def reward(self) -> float | None:
        """1.0 correct, 0.0 wrong/no answer/timeout, None for ``infra_error`` (drop the item)."""
        if self.status == "infra_error":
            return None
        return 1.0 if self.status == "correct" else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

"""The grader's result type (architecture.md, Reward)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

GradeStatus = Literal["correct", "incorrect", "no_answer", "timeout"]


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
    """Why, when it is not obvious: the timeout or crash, a scorer's partial score."""

    @property
    def correct(self) -> bool:
        return self.status == "correct"

    @property
    def reward(self) -> float:
        return 1.0 if self.status == "correct" else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

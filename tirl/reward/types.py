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

    @property
    def correct(self) -> bool:
        return self.status == "correct"

    @property
    def reward(self) -> float:
        return 1.0 if self.status == "correct" else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

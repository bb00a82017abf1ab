"""Configuration of answer grading (section ``[reward]``)."""

from typing import Literal

from pydantic import Field

from tirl.schema import Section


class RewardConfig(Section):
    timeout_s: float = Field(2.0, gt=0, le=600, description="Per-answer equivalence-check limit (seconds).")
    workers: int = Field(0, ge=0, le=256, description="Grader worker processes; 0 = from the CPU count.")
    scorer: Literal["math", "source"] = Field(
        "math",
        description="math = extract \\boxed{} and check equivalence; source = let the problem's "
        "generator score it (reasoning-gym's score_answer) where it has a scorer.",
    )

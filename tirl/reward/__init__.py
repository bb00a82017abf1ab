"""tirl.reward: the binary reward — is the model's final boxed answer right?

- ``extract_answer(text)``: the answer the model gave (``tirl.reward.extract``).
- ``is_equivalent(pred, gold, timeout_s=2.0)``, ``grade(text, gold)``: in-process checks
  (``tirl.reward.equivalence``), for scripts and tests.
- ``Grader``: batch grading in worker processes with a per-item limit, safe to await from
  asyncio (``tirl.reward.grader``); per-item scorers (``tirl.reward.scorers``) let
  reasoning-gym problems be judged by their own generator.
"""

from tirl.reward.equivalence import grade, is_equivalent
from tirl.reward.extract import extract_answer
from tirl.reward.grader import Grader
from tirl.reward.scorers import Scorer, scorer_for
from tirl.reward.types import Grade

__all__ = ["Grade", "Grader", "Scorer", "extract_answer", "grade", "is_equivalent", "scorer_for"]

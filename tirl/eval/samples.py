"""Per-sample results of an evaluation: the record type and the append-only JSONL store.

Every finished sample is one line of ``<run>/samples/<benchmark>.jsonl``, flushed as it is
written, so an interrupted run loses at most the samples in flight. On a rerun the store
is read back and every finished sample — keyed by ``(problem_id, sample)`` — is reused;
samples that ended in an infrastructure failure, or whose reference answer changed, are
run again. The file is read as bytes (:func:`tirl.runs.iter_jsonl`): a torn last line (a
crash mid-write, even inside a multi-byte character) is dropped with a one-line warning
naming the file, and cut off the file before the next append; a bad line anywhere else is
an error naming the file and line.

What it does not do: decide whether the saved samples were produced with the same
settings (``tirl.eval.harness`` checks the run's ``eval_settings.json`` for that).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Literal

from tirl.runs import JsonlError, iter_jsonl

SampleStatus = Literal["correct", "incorrect", "no_answer", "timeout", "truncated", "infra_error"]
VOTING_STATUSES = ("correct", "incorrect", "timeout")  # a final answer that takes part in maj@k


@dataclass
class SampleRecord:
    """One graded sample of one problem."""

    benchmark: str
    problem_id: str
    sample: int  # 0 … k-1
    gold: str
    status: SampleStatus
    correct: bool
    answer: str | None = None  # the extracted final answer, if any
    finish_reason: str | None = None  # the trajectory's (answer, max_turns, max_tokens, ...)
    response_tokens: int = 0  # all response tokens: generated + tool/template tokens
    generated_tokens: int = 0  # tokens sampled by the model (mask 1)
    turns: int = 0
    tool_calls: int = 0
    tool_errors: int = 0  # failed calls (parse error, exception, timeout), excluding infra
    infra_tool_errors: int = 0  # calls the sandbox service failed (never the model's fault)
    unexecuted_tool_calls: int = 0  # calls of a last turn cut by the turn limit (never run)
    wall_s: float = 0.0
    error: str | None = None  # an exception's text when the sample could not be produced
    text: str | None = None  # the response text (None when not kept)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int]:
        return (self.problem_id, self.sample)

    @property
    def vote(self) -> str | None:
        """The answer this sample casts in maj@k (None: it does not vote)."""
        return self.answer if self.status in VOTING_STATUSES else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SampleRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class SampleStore:
    """Append-only JSONL of :class:`SampleRecord`; ``load`` keeps the last record per key."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._f = None

    def load(self, *, repair: bool = False) -> dict[tuple[str, int], SampleRecord]:
        """The last record per key. A torn last line is dropped (and, with ``repair``, cut
        off the file, as a resuming run does); a bad line before it raises
        :class:`tirl.runs.JsonlError` naming the file and line."""
        out: dict[tuple[str, int], SampleRecord] = {}
        for lineno, obj in iter_jsonl(self.path, truncate_torn_tail=repair):
            try:
                if not isinstance(obj, dict):
                    raise TypeError(f"expected a JSON object, got {type(obj).__name__}")
                rec = SampleRecord.from_dict(obj)
            except TypeError as err:
                raise JsonlError(f"{self.path}:{lineno}: not a sample record ({err}); fix or "
                                 "delete this line and run again") from None
            out[rec.key] = rec
        return out

    def append(self, rec: SampleRecord) -> None:
        if self._f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # a torn last line would glue onto our first record: cut it off first
            if self.path.exists() and self.path.stat().st_size and not self._ends_with_newline():
                for _ in iter_jsonl(self.path, truncate_torn_tail=True):
                    pass
            self._f = self.path.open("a", encoding="utf-8", buffering=1)
        self._f.write(json.dumps(rec.to_dict(), ensure_ascii=False) + "\n")
        self._f.flush()

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as f:
            f.seek(-1, 2)
            return f.read(1) == b"\n"

    def rewrite(self, records: Iterable[SampleRecord]) -> None:
        """Replace the file with exactly these records (compaction after a resume)."""
        self.close()
        tmp = self.path.with_suffix(".jsonl.tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
        tmp.replace(self.path)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> SampleStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def reusable(rec: SampleRecord, gold: str) -> bool:
    """A saved sample counts as finished unless infrastructure failed it or the gold changed."""
    return rec.status != "infra_error" and rec.gold == gold


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")

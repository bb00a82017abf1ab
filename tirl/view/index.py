"""Lazy access to big JSONL files of trajectories or eval samples: a byte-offset index,
compact per-record summaries for filtering, and raw-byte text search.

:class:`JsonlIndex` finds where each complete line starts (numpy over 8 MiB chunks, no
JSON parsing), so a file of 100,000 trajectories opens in well under a second and any
record is one ``seek`` + ``json.loads`` away. :class:`Summaries` holds what the filters
need (step, problem, correct, finish reason, tool-error kinds, kept by RoC, ...) as numpy
columns — a few dozen bytes a record — filled by :meth:`Summaries.add_range`, which the
server calls chunk by chunk off the event loop. Appended lines (a live run) are picked up
by :meth:`JsonlIndex.refresh`; a torn last line is ignored until its newline arrives.

Two record shapes are understood (anything else is shown as raw JSON): a trajectory
(``tirl.agent.trajectory.Trajectory.to_dict``, plus the trainer's ``step``, ``stage``,
``kept``, ``advantage``, ``roc_penalty``, ``policy_version``, ``entropy``) and an eval
sample (``tirl.eval.samples.SampleRecord``).

What it does not do: keep records in memory, write anything next to the data, or parse
JSON that is not asked for (search confirms raw-byte hits by parsing only those lines).
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

CHUNK = 8 << 20
UNKNOWN = -1  # in int8 columns: correct / kept not recorded


def line_spans(path: str | Path, start: int = 0, chunk: int = CHUNK,
               stop: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """``(starts, ends, scanned_to)`` of the complete lines from byte ``start`` (to ``stop``).

    ``ends`` excludes the newline; blank lines are skipped; a last line without its
    newline (in the file or before ``stop``) is not counted and ``scanned_to`` stops
    before it (scan again from there).
    """
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    with open(path, "rb") as f:
        f.seek(start)
        base = start
        line_start = start
        while True:
            want = chunk if stop is None else min(chunk, stop - base)
            buf = f.read(want) if want > 0 else b""
            if not buf:
                break
            nl = np.flatnonzero(np.frombuffer(buf, dtype=np.uint8) == 10) + base
            if len(nl):
                s = np.empty(len(nl), dtype=np.int64)
                s[0] = line_start
                s[1:] = nl[:-1] + 1
                keep = nl > s  # drop empty lines
                starts.append(s[keep])
                ends.append(nl[keep].astype(np.int64))
                line_start = int(nl[-1]) + 1
            base += len(buf)
    if not starts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), line_start
    return np.concatenate(starts), np.concatenate(ends), line_start


class JsonlIndex:
    """Byte offsets of the lines of one JSONL file; records are read on demand."""

    def __init__(self, path: str | Path, max_bytes: int | None = None):
        """Index the file (only its first ``max_bytes`` when given: ``refresh`` continues)."""
        self.path = Path(path)
        self.starts = np.zeros(0, np.int64)
        self.ends = np.zeros(0, np.int64)
        self._scanned = 0
        self.size = 0
        self.at_end = False
        self.generation = 0  # bumped when the file was rewritten and indexed from scratch
        self._lock = threading.Lock()
        self.refresh(max_bytes)

    def refresh(self, max_bytes: int | None = None) -> int:
        """Index lines appended since the last call (at most ``max_bytes`` of the file this
        call); returns how many were added. ``at_end`` says whether the scan reached the end.

        A file that shrank (rewritten, truncated on resume) is indexed again from the start.
        """
        with self._lock:
            size = self.path.stat().st_size
            self.size = size
            if size < self._scanned:
                self.starts, self.ends, self._scanned = np.zeros(0, np.int64), np.zeros(0, np.int64), 0
                self.generation += 1
            stop = size if max_bytes is None else min(size, self._scanned + max_bytes)
            self.at_end = stop >= size
            if stop <= self._scanned:
                return 0
            s, e, to = line_spans(self.path, self._scanned, stop=stop)
            self.starts = np.concatenate([self.starts, s])
            self.ends = np.concatenate([self.ends, e])
            self._scanned = to
            return len(s)

    @property
    def scanned_bytes(self) -> int:
        return self._scanned

    def __len__(self) -> int:
        return len(self.starts)

    def raw(self, i: int) -> bytes:
        if not 0 <= i < len(self.starts):
            raise IndexError(f"record {i} out of range (the file has {len(self.starts)})")
        with open(self.path, "rb") as f:
            f.seek(int(self.starts[i]))
            return f.read(int(self.ends[i] - self.starts[i]))

    def read(self, i: int) -> dict[str, Any]:
        """Record ``i`` as a dict (a line that is not a JSON object gives ``{"_invalid": text}``)."""
        return parse_line(self.raw(i))

    def read_many(self, ids: Iterable[int]) -> list[dict[str, Any]]:
        out = []
        with open(self.path, "rb") as f:
            for i in ids:
                f.seek(int(self.starts[i]))
                out.append(parse_line(f.read(int(self.ends[i] - self.starts[i]))))
        return out

    def iter_raw(self, ids: Sequence[int]) -> Iterable[tuple[int, bytes]]:
        with open(self.path, "rb") as f:
            for i in ids:
                f.seek(int(self.starts[i]))
                yield int(i), f.read(int(self.ends[i] - self.starts[i]))


def parse_line(raw: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"_invalid": raw[:2000].decode("utf-8", "replace")}
    return obj if isinstance(obj, dict) else {"_invalid": raw[:2000].decode("utf-8", "replace")}


# ---------------------------------------------------------------------------------------
# summaries


def record_kind(rec: dict[str, Any]) -> str:
    """``trajectory`` (has turns / response ids), ``sample`` (an eval SampleRecord) or ``other``."""
    if isinstance(rec.get("turns"), list) or "response_ids" in rec:
        return "trajectory"
    if "status" in rec and "benchmark" in rec:
        return "sample"
    return "other"


def _turns(rec: dict[str, Any]) -> list[dict[str, Any]]:
    turns = rec.get("turns")
    return [t for t in turns if isinstance(t, dict)] if isinstance(turns, list) else []


def tool_error_kinds(rec: dict[str, Any]) -> list[str]:
    """Failed tool calls' kinds in a trajectory record, as ``ToolCall.failure_kind`` names them."""
    out = []
    for turn in _turns(rec):
        for call in turn.get("tool_calls") or []:
            kind = call.get("error_kind")
            if kind is None:
                res = call.get("result")
                if res is None:
                    kind = "not_executed"
                elif res.get("status") != "ok":
                    kind = res.get("status") or "error"
            if kind is not None:
                out.append(str(kind))
    return out


def is_correct(rec: dict[str, Any]) -> bool | None:
    """True/False from ``correct``, ``grade_status`` or ``reward``; None when none is recorded."""
    if isinstance(rec.get("correct"), bool):
        return rec["correct"]
    gs = rec.get("grade_status")
    if gs == "correct":
        return True
    if isinstance(gs, str) and gs:
        return False
    r = rec.get("reward")
    if isinstance(r, (int, float)) and not isinstance(r, bool):
        return r > 0
    return None


def summarize(rec: dict[str, Any]) -> dict[str, Any]:
    """The fields the browser filters and lists on, from one record of either shape."""
    kind = record_kind(rec)
    meta = rec.get("meta") or {}
    sample = rec.get("sample", meta.get("sample", meta.get("sample_index")))
    kept = rec.get("kept")
    if kind == "sample":
        finish = rec.get("finish_reason") or rec.get("status")
        errors: list[str] = ["tool_error"] * int(rec.get("tool_errors") or 0)
        turns = int(rec.get("turns") or 0)
        tokens = int(rec.get("response_tokens") or 0)
    else:
        finish = rec.get("finish_reason")
        errors = tool_error_kinds(rec)
        turns = len(_turns(rec))
        tokens = len(rec.get("response_ids") or [])
    step = rec.get("step")
    reward = rec.get("reward")
    return {
        "kind": kind,
        "step": step if isinstance(step, int) and not isinstance(step, bool) else None,
        "stage": rec.get("stage"),
        "problem_id": None if rec.get("problem_id") is None else str(rec.get("problem_id")),
        "sample": sample if isinstance(sample, int) and not isinstance(sample, bool) else None,
        "correct": is_correct(rec),
        "reward": float(reward) if isinstance(reward, (int, float)) and not isinstance(reward, bool) else None,
        "finish": None if finish is None else str(finish),
        "errors": sorted(set(errors)),
        "n_errors": len(errors),
        "kept": kept if isinstance(kept, bool) else None,
        "turns": turns,
        "tokens": tokens,
    }


# the per-token arrays: large, numeric, never needed for a summary
_TOKEN_ARRAYS = re.compile(rb'"(prompt_ids|response_ids|response_mask|logprobs|entropy)":\s*\[[^\[\]"]*\]')


def summarize_raw(raw: bytes) -> dict[str, Any]:
    """:func:`summarize` of one JSONL line, without parsing its per-token arrays.

    The arrays are cut out of the bytes before ``json.loads`` (a quote inside a JSON string
    is escaped, so the pattern cannot match text); the response length is counted from
    the commas of ``response_ids``. Several times faster than parsing the whole line.
    """
    n_tokens: list[int] = []

    def cut(m: re.Match) -> bytes:
        if m.group(1) == b"response_ids":
            body = m.group(0)[m.group(0).index(b"[") + 1:-1].strip()
            n_tokens.append(body.count(b",") + 1 if body else 0)
        return b'"' + m.group(1) + b'": []'

    s = summarize(parse_line(_TOKEN_ARRAYS.sub(cut, raw)))
    if n_tokens and s["kind"] == "trajectory":
        s["tokens"] = n_tokens[0]
    return s


ROW_KEYS = ("step", "stage", "problem_id", "sample", "correct", "reward", "finish", "errors", "n_errors",
            "kept", "turns", "tokens")


def summary_row(i: int, s: dict[str, Any]) -> dict[str, Any]:
    """A :func:`summarize` result as the browser lists it (the same keys as ``Summaries.row``)."""
    row = {"i": int(i), **{k: s[k] for k in ROW_KEYS}}
    if row["reward"] is not None:
        row["reward"] = round(float(np.float32(row["reward"])), 6)
    if row["stage"] is not None:
        row["stage"] = str(row["stage"])
    return row


class _Vocab:
    """Strings to small integer codes (problem ids, finish reasons, error kinds)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.codes: dict[str, int] = {}

    def code(self, name: str | None) -> int:
        if name is None:
            return -1
        c = self.codes.get(name)
        if c is None:
            c = self.codes[name] = len(self.names)
            self.names.append(name)
        return c


@dataclass
class Filter:
    """What the browser asks for; None means any. ``errors``: records with that tool-error kind
    (``"any"``: at least one failed call; ``"none"``: no failed call)."""

    step: int | None = None
    problem: str | None = None
    correct: bool | None = None
    finish: str | None = None
    error: str | None = None
    kept: bool | None = None
    stage: str | None = None


class Summaries:
    """Numpy columns of :func:`summarize` for records ``0 .. done-1`` of an index."""

    COLUMNS = {"step": np.int64, "problem": np.int32, "sample": np.int32, "correct": np.int8,
               "reward": np.float32, "finish": np.int16, "errors": np.int64, "n_errors": np.int32,
               "kept": np.int8, "turns": np.int32, "tokens": np.int32, "stage": np.int16}

    def __init__(self) -> None:
        self.problems, self.finishes, self.kinds, self.stages = _Vocab(), _Vocab(), _Vocab(), _Vocab()
        self.cols = {k: np.zeros(0, t) for k, t in self.COLUMNS.items()}
        self.done = 0
        self.record_kinds: dict[str, int] = {}
        self._lock = threading.Lock()

    def add_range(self, index: JsonlIndex, start: int, stop: int) -> None:
        """Summarize records ``start .. stop-1`` (must continue from ``done``)."""
        if start != self.done:
            raise ValueError(f"summaries continue at record {self.done}, not {start}")
        rows = [summarize_raw(raw) for _, raw in index.iter_raw(range(start, stop))]
        new = {k: np.empty(len(rows), t) for k, t in self.COLUMNS.items()}
        for j, s in enumerate(rows):
            self.record_kinds[s["kind"]] = self.record_kinds.get(s["kind"], 0) + 1
            new["step"][j] = -1 if s["step"] is None else s["step"]
            new["problem"][j] = self.problems.code(s["problem_id"])
            new["sample"][j] = -1 if s["sample"] is None else s["sample"]
            new["correct"][j] = UNKNOWN if s["correct"] is None else int(s["correct"])
            new["reward"][j] = np.nan if s["reward"] is None else s["reward"]
            new["finish"][j] = self.finishes.code(s["finish"])
            mask = 0
            for k in s["errors"]:
                c = self.kinds.code(k)
                if c < 63:  # more than 63 distinct kinds: the rest are not filterable by kind
                    mask |= 1 << c
            new["errors"][j] = mask
            new["n_errors"][j] = s["n_errors"]
            new["kept"][j] = UNKNOWN if s["kept"] is None else int(s["kept"])
            new["turns"][j] = s["turns"]
            new["tokens"][j] = s["tokens"]
            new["stage"][j] = self.stages.code(None if s["stage"] is None else str(s["stage"]))
        with self._lock:
            self.cols = {k: np.concatenate([self.cols[k], new[k]]) for k in self.COLUMNS}
            self.done = stop

    def select(self, flt: Filter) -> np.ndarray:
        """Indices of summarized records matching every set field of ``flt`` (in file order)."""
        with self._lock:
            cols, n = self.cols, self.done
        m = np.ones(n, dtype=bool)
        if flt.step is not None:
            m &= cols["step"] == flt.step
        if flt.problem is not None:
            m &= cols["problem"] == self.problems.codes.get(flt.problem, -2)
        if flt.correct is not None:
            m &= cols["correct"] == int(flt.correct)
        if flt.finish is not None:
            m &= cols["finish"] == self.finishes.codes.get(flt.finish, -2)
        if flt.kept is not None:
            m &= cols["kept"] == int(flt.kept)
        if flt.stage is not None:
            m &= cols["stage"] == self.stages.codes.get(flt.stage, -2)
        if flt.error == "any":
            m &= cols["n_errors"] > 0
        elif flt.error == "none":
            m &= cols["n_errors"] == 0
        elif flt.error is not None:
            c = self.kinds.codes.get(flt.error)
            m &= (cols["errors"] & (1 << c)) != 0 if c is not None and c < 63 else False
        return np.flatnonzero(m)

    def row(self, i: int) -> dict[str, Any]:
        """The summary of record ``i`` as the browser lists it."""
        c = self.cols

        def name(vocab: _Vocab, code: int) -> str | None:
            return vocab.names[code] if code >= 0 else None

        mask = int(c["errors"][i])
        reward = float(c["reward"][i])
        return {
            "i": int(i),
            "step": None if c["step"][i] < 0 else int(c["step"][i]),
            "stage": name(self.stages, int(c["stage"][i])),
            "problem_id": name(self.problems, int(c["problem"][i])),
            "sample": None if c["sample"][i] < 0 else int(c["sample"][i]),
            "correct": None if c["correct"][i] == UNKNOWN else bool(c["correct"][i]),
            "reward": None if np.isnan(reward) else round(reward, 6),
            "finish": name(self.finishes, int(c["finish"][i])),
            "errors": [k for j, k in enumerate(self.kinds.names[:63]) if mask >> j & 1],
            "n_errors": int(c["n_errors"][i]),
            "kept": None if c["kept"][i] == UNKNOWN else bool(c["kept"][i]),
            "turns": int(c["turns"][i]),
            "tokens": int(c["tokens"][i]),
        }

    def rows(self, index: JsonlIndex, ids: Iterable[int]) -> list[dict[str, Any]]:
        """Rows of records ``ids``: from the columns where summarized, else read and summarized now."""
        ids = list(ids)
        done = self.done
        todo = [i for i in ids if i >= done]
        fresh = {i: summarize_raw(raw) for i, raw in index.iter_raw(todo)} if todo else {}
        return [self.row(i) if i < done else summary_row(i, fresh[i]) for i in ids]

    def facets(self) -> dict[str, Any]:
        """The values each filter can take (for the browser's drop-downs)."""
        with self._lock:
            steps = self.cols["step"]
        uniq = np.unique(steps[steps >= 0])
        return {"steps": [int(s) for s in uniq[:5000]], "finish": list(self.finishes.names),
                "errors": list(self.kinds.names), "stages": list(self.stages.names),
                "problems": len(self.problems.names),
                "has_kept": bool((self.cols["kept"] != UNKNOWN).any()),
                "kinds": dict(self.record_kinds)}


# ---------------------------------------------------------------------------------------
# text search

SEARCH_FIELDS = ("text", "problem_id", "gold", "answer", "problem", "error")


def searchable_text(rec: dict[str, Any]) -> str:
    """The human-readable text of a record: response text, turns, tool output, ids, gold."""
    parts = [str(rec[f]) for f in SEARCH_FIELDS if rec.get(f) is not None]
    for turn in _turns(rec):
        parts.append(str(turn.get("text") or ""))
        for call in turn.get("tool_calls") or []:
            parts.append(str(call.get("raw") or ""))
            args = call.get("arguments")
            if isinstance(args, dict):
                parts.extend(str(v) for v in args.values() if isinstance(v, str))
            res = call.get("result") or {}
            parts.append(str(res.get("stdout") or ""))
            parts.append(str(res.get("stderr") or ""))
    meta = rec.get("meta") or {}
    if isinstance(meta.get("problem"), str):
        parts.append(meta["problem"])
    return "\n".join(parts)


def search(index: JsonlIndex, candidates: np.ndarray, query: str, after: int = -1, limit: int = 50,
           max_scan_bytes: int = 256 << 20) -> tuple[list[int], int | None]:
    """Up to ``limit`` candidates after record ``after`` whose text contains ``query``
    (case-insensitive), and where to continue (None: the candidates are exhausted).

    Raw bytes are checked first (the query as JSON would escape it), and only hits are
    parsed to confirm the match is in the text and not in token ids or numbers. At most
    ``max_scan_bytes`` are read per call, so one request stays short on a huge file.
    """
    q = query.lower()
    needle = json.dumps(q, ensure_ascii=True)[1:-1].encode()
    needle_utf8 = json.dumps(q, ensure_ascii=False)[1:-1].encode()
    cand = candidates[candidates > after]
    hits: list[int] = []
    scanned = 0
    for i, raw in index.iter_raw(cand):
        low = raw.lower()
        if needle in low or needle_utf8 in low:
            if q in searchable_text(parse_line(raw)).lower():
                hits.append(i)
                if len(hits) >= limit:
                    return hits, i
        scanned += len(raw)
        if scanned >= max_scan_bytes:
            return hits, i
    return hits, None

"""Finding and reading saved trajectories for ``tirl analyze``.

Accepts a training run directory (``runs/<name>/`` with ``trajectories/*.jsonl``), an eval
output directory (``trajectories/`` when it saved them, else ``samples/``), a directory of
JSONL files, or one JSONL file. Every record is returned as a dict with two keys added:
``_label`` (the file's stem, e.g. ``eval_sft`` or ``math500``) and ``_kind``
(``trajectory`` when it carries token ids, ``sample`` for an eval sample record). A torn
last line (an interrupted write) is skipped.

What it does not do: interpret records (:mod:`tirl.analysis.tooluse`) or load models.
"""

from __future__ import annotations

import json
from pathlib import Path


def find_files(path: str | Path) -> list[Path]:
    """The JSONL files ``path`` names, sorted (raises ``FileNotFoundError`` with advice)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such file or directory; give a run directory (runs/NAME), "
                                "an eval output directory or a .jsonl file of trajectories or samples")
    for sub in ("trajectories", "samples"):
        files = sorted((p / sub).glob("*.jsonl")) if (p / sub).is_dir() else []
        if files:
            return files
    files = sorted(p.glob("*.jsonl"))
    if files:
        return files
    raise FileNotFoundError(f"{p} holds no trajectories/*.jsonl, samples/*.jsonl or *.jsonl files; "
                            "a training run writes trajectories/, `tirl eval` writes samples/ "
                            "(and trajectories/ with --save-trajectories)")


def read_records(files: list[Path]) -> list[dict]:
    """Every record of ``files`` in order, with ``_label`` and ``_kind`` added."""
    out: list[dict] = []
    for f in files:
        with f.open(encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn line from an interrupted write
                if not isinstance(rec, dict):
                    continue
                rec["_label"] = f.stem
                rec["_kind"] = "trajectory" if "response_ids" in rec else "sample"
                out.append(rec)
    return out


def attach_eval_grades(records: list[dict], run_dir: str | Path) -> int:
    """Eval trajectories are saved before grading: fill a missing ``reward`` from the eval's
    ``samples/<benchmark>.jsonl`` (matched on benchmark, problem id and sample index).
    Returns how many records got one."""
    sdir = Path(run_dir) / "samples"
    if not sdir.is_dir():
        return 0
    grades = {(r["_label"], str(r.get("problem_id")), r.get("sample")): r.get("correct")
              for r in read_records(sorted(sdir.glob("*.jsonl")))}
    n = 0
    for rec in records:
        if rec["_kind"] != "trajectory" or rec.get("reward") is not None:
            continue
        key = (rec["_label"], str(rec.get("problem_id")), (rec.get("meta") or {}).get("sample"))
        if grades.get(key) is not None:
            rec["reward"] = 1.0 if grades[key] else 0.0
            n += 1
    return n


def latest_checkpoint_dir(run_dir: str | Path) -> Path | None:
    """``runs/NAME/checkpoints/<latest>`` when ``path`` is a training run with checkpoints."""
    ck = Path(run_dir) / "checkpoints"
    latest = ck / "latest"
    if latest.is_file():
        d = ck / latest.read_text().strip()
        if d.is_dir():
            return d
    return None

"""What ``tirl view`` shows of a directory: a training run or an eval output, and safe paths.

A training run (``runs/<name>/``) has ``metrics.jsonl``, ``config.toml``, ``report.md``,
``plots/*.png`` and ``trajectories/*.jsonl``; an eval output has ``samples/<bench>.jsonl``,
optionally ``trajectories/<bench>.jsonl``, ``report.md`` and ``eval_settings.json``.
:func:`describe` lists what is there; :func:`safe_path` is the only way the server turns a
request into a file path, and it refuses anything that resolves outside the directory
(``..``, absolute paths, symlinks that point out).

What it does not do: read the JSONL records themselves (``tirl.view.index``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SOURCE_DIRS = ("trajectories", "samples")
TEXT_LIMIT = 2 << 20  # config/report larger than this are cut (said in the page)


class ViewError(ValueError):
    """A directory ``tirl view`` cannot show; the message says what it expected."""


class UnsafePath(ValueError):
    """A requested path that is outside the served directory (or malformed)."""


def check_root(path: str | Path) -> Path:
    """The resolved directory, if it looks like a run or an eval output."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ViewError(f"{str(path)!r} is not a directory; give a run directory (runs/<name>) "
                        "or an eval output directory")
    root = root.resolve()
    markers = [root / "metrics.jsonl", root / "samples", root / "trajectories", root / "report.md"]
    if not any(m.exists() for m in markers):
        raise ViewError(f"{root} holds none of metrics.jsonl, samples/, trajectories/, report.md: "
                        "it is neither a training run nor an eval output")
    return root


def safe_path(root: Path, rel: str) -> Path:
    """``root / rel`` resolved, or :class:`UnsafePath` when it would leave ``root``.

    ``rel`` is the already-decoded request path; symlinks are followed before the check,
    so a link inside the directory that points outside is refused too.
    """
    if "\x00" in rel:
        raise UnsafePath("NUL byte in path")
    if rel.startswith(("/", "\\")) or (len(rel) > 1 and rel[1] == ":"):
        raise UnsafePath(f"absolute path {rel!r}")
    p = (root / rel).resolve()
    if p != root and not p.is_relative_to(root):
        raise UnsafePath(f"{rel!r} is outside the served directory")
    return p


def list_sources(root: Path) -> list[dict[str, Any]]:
    """The JSONL files of records under ``trajectories/`` and ``samples/`` (relative paths)."""
    out = []
    for d in SOURCE_DIRS:
        base = root / d
        if not base.is_dir():
            continue
        for p in sorted(base.glob("*.jsonl")):
            try:
                rp = safe_path(root, str(p.relative_to(root)))
            except UnsafePath:
                continue  # a symlink out of the run is not served
            if rp.is_file():
                out.append({"path": str(p.relative_to(root)), "bytes": rp.stat().st_size, "dir": d})
    return out


def _text(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    size = path.stat().st_size
    with path.open("rb") as f:
        data = f.read(TEXT_LIMIT)
    return {"text": data.decode("utf-8", "replace"), "truncated": size > TEXT_LIMIT}


def describe(root: Path) -> dict[str, Any]:
    """What the overview shows: the kind, the config, the report, plots and record files."""
    kind = "train" if (root / "metrics.jsonl").exists() else "eval"
    settings = None
    if (root / "eval_settings.json").is_file():
        try:
            settings = json.loads((root / "eval_settings.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            settings = None
    plots = []
    if (root / "plots").is_dir():
        for p in sorted((root / "plots").glob("*.png")):
            try:
                safe_path(root, str(p.relative_to(root)))
            except UnsafePath:
                continue
            plots.append(str(p.relative_to(root)))
    return {
        "name": root.name,
        "kind": kind,
        "config": _text(root / "config.toml"),
        "report": _text(root / "report.md"),
        "eval_settings": settings,
        "plots": plots,
        "sources": list_sources(root),
        "has_metrics": (root / "metrics.jsonl").is_file(),
    }


def read_metrics_records(path: Path) -> list[dict[str, Any]]:
    """The metrics file's complete records (a torn last line is skipped)."""
    out = []
    if not path.is_file():
        return out
    with path.open("rb") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out

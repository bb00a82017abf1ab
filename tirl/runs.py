"""Run directories, metrics, plots and progress: the small helpers every long job uses.

A run writes ``<output_dir>/<name>/``::

    config.toml      the resolved configuration (what produced this run)
    metrics.jsonl    one JSON object per step, flushed as written (safe to tail or plot live)
    plots/           PNG pictures refreshed during the run
    checkpoints/     resumable state
    trajectories/    JSONL of sampled trajectories

Nothing here knows about RL; trainers, the evaluator and benchmarks share it.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence



class RunDir:
    """The directory of one run, created on construction (existing content is kept)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        for sub in ("plots", "checkpoints", "trajectories"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)


    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def trajectories(self) -> Path:
        return self.root / "trajectories"

    def write_config(self, toml_text: str) -> Path:
        """Write the run's resolved config (TOML text, e.g. ``tirl.config.config_to_toml``)."""
        path = self.root / "config.toml"
        path.write_text(toml_text)
        return path

    def metrics(self, trackers: Sequence[str] = (), run_name: str | None = None,
                config: Mapping[str, Any] | None = None) -> MetricsWriter:
        """The run's metrics writer; ``trackers`` (names, see ``tirl.trackers``) mirror it."""
        sinks: list[Any] = []
        if trackers:
            from tirl.trackers import make_trackers

            sinks = make_trackers(trackers, self.root, run_name or self.root.name, config)
        return MetricsWriter(self.metrics_path, trackers=sinks)


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN/inf; a missing value is honest
    if hasattr(v, "item") and callable(v.item):  # numpy / torch scalars
        return _jsonable(v.item())
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


class MetricsWriter:
    """Appends one JSON object per line and flushes it (fsync optional) as it is written.

    ``trackers`` (``tirl.trackers`` sinks) receive each record's numeric values after the
    line is written: the JSONL file stays the source of truth.
    """

    def __init__(self, path: str | Path, fsync: bool = False, trackers: Sequence[Any] = ()):
        from tirl.trackers import TrackerFanout

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self.path.open("a", buffering=1)
        self._fsync = fsync
        self._trackers = TrackerFanout(trackers)

    def write(self, record: Mapping[str, Any]) -> None:
        rec = {"time": round(time.time(), 3), **_jsonable(dict(record))}
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()
        if self._fsync:
            os.fsync(self._f.fileno())
        self._trackers.log_record(rec)

    def close(self) -> None:
        self._f.close()
        self._trackers.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a metrics file (a torn last line from a crash is skipped with a
    warning; damage in the middle raises :class:`JsonlError` naming file and line)."""
    return read_jsonl(path)


def truncate_metrics(path: str | Path, keep_until_step: int) -> None:
    """Drop records with ``step > keep_until_step`` (used on resume, so no step is doubled)."""
    p = Path(path)
    if not p.exists():
        return
    kept = [r for r in read_metrics(p) if r.get("step", -1) <= keep_until_step]
    p.write_text("".join(json.dumps(r) + "\n" for r in kept))


def fmt_cell(v: Any) -> str:
    """A metric as a report table cell: "–" for missing, 3 decimals for floats."""
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def plot_series(
    records: Sequence[Mapping[str, Any]],
    keys: Iterable[str],
    path: str | Path,
    x: str = "step",
    title: str | None = None,
) -> Path | None:
    """One PNG with a small panel per key (records lacking a key are skipped for it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if any(r.get(k) is not None for r in records)]
    if not keys:
        return None
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        pts = [(r.get(x), r[key]) for r in records if r.get(key) is not None and r.get(x) is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, ms=3)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel(x, fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


@contextmanager
def progress_bar(total: int | None, description: str, enabled: bool = True) -> Iterator[Any]:
    """A rich progress bar; ``bar.advance(n)`` and ``bar.status(text)`` update it.

    Without a terminal (CI logs) rich prints nothing live, so a line is logged at each
    10% of the total instead: long jobs always show progress somewhere.
    """
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    console = Console(stderr=True)
    live = enabled and console.is_terminal
    prog = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
        console=console, disable=not live,
    )

    class _Bar:
        def __init__(self) -> None:
            self.task = prog.add_task(description, total=total, status="")
            self.done = 0
            self._next_log = 0.1
            self._status = ""

        def advance(self, n: int = 1) -> None:
            self.done += n
            prog.advance(self.task, n)
            if enabled and not live and total:
                frac = self.done / total
                if frac >= self._next_log or self.done == total:
                    console.print(f"{description}: {self.done}/{total} {self._status}")
                    while self._next_log <= frac:
                        self._next_log += 0.1

        def status(self, text: str) -> None:
            self._status = text
            prog.update(self.task, status=text)

    with prog:
        yield _Bar()


class JsonlError(ValueError):
    """A line in the middle of a JSONL file is not a JSON record (names the file and line)."""


def iter_jsonl(path: str | Path, *, truncate_torn_tail: bool = False) -> Iterator[tuple[int, Any]]:
    """``(line number, record)`` for every record of an append-only JSONL file, read as bytes.

    A crash mid-write leaves a *torn last line*: bytes after the last newline that are not
    one whole UTF-8 JSON value (cut anywhere, also inside a multi-byte character). It is
    skipped with a one-line warning naming the file; with ``truncate_torn_tail`` it is also
    cut off the file (and a complete last record that only lacks its newline gets one), so
    that later appends start on a clean line. Any other bad line is an error: it raises
    :class:`JsonlError` naming the file and the line, because dropping records silently
    from the middle of a file hides damage. Blank lines are skipped. A missing file yields
    nothing. The file is truncated only when the iteration reaches its end.
    """
    import logging

    p = Path(path)
    if not p.exists():
        return
    pos = 0  # byte offset of the current line's start
    lineno = 0
    tail: tuple[int, bytes, Exception | None] | None = None  # an unterminated last line
    with p.open("rb") as f:
        for raw in f:
            lineno += 1
            terminated = raw.endswith(b"\n")
            if raw.strip():
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except ValueError as err:  # UnicodeDecodeError is a ValueError too
                    if terminated:
                        raise JsonlError(
                            f"{p}:{lineno}: not a JSON record ({type(err).__name__}: {err}); "
                            "only a torn last line is dropped automatically — fix or delete "
                            "this line and run again") from None
                    tail = (pos, raw, err)
                    break
                if not terminated:
                    tail = (pos, raw, None)
                yield lineno, obj
            pos += len(raw)
    if tail is None:
        return
    start, raw, err = tail
    if err is None:  # a whole record without its newline
        if truncate_torn_tail:
            with p.open("ab") as f:
                f.write(b"\n")
        return
    action = "truncated the file there" if truncate_torn_tail else "ignored it"
    logging.getLogger("tirl.runs").warning(
        "%s: line %d is torn (%d bytes after the last newline, %s: a crash mid-write); %s",
        p, lineno, len(raw), type(err).__name__, action)
    if truncate_torn_tail:
        with p.open("r+b") as f:
            f.truncate(start)


def read_jsonl(path: str | Path, *, truncate_torn_tail: bool = False) -> list[Any]:
    """Every record of a JSONL file, tolerating a torn last line (see :func:`iter_jsonl`)."""
    return [obj for _, obj in iter_jsonl(path, truncate_torn_tail=truncate_torn_tail)]

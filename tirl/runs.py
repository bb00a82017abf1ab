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

from tirl.config import Config, config_to_toml


class RunDir:
    """The directory of one run, created on construction (existing content is kept)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        for sub in ("plots", "checkpoints", "trajectories"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    @classmethod
    def for_config(cls, cfg: Config) -> RunDir:
        run = cls(Path(cfg.run.output_dir) / cfg.run.name)
        run.write_config(cfg)
        return run

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

    def write_config(self, cfg: Config) -> Path:
        path = self.root / "config.toml"
        path.write_text(config_to_toml(cfg))
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
    """Every complete record of a metrics file (a torn last line from a crash is skipped)."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def truncate_metrics(path: str | Path, keep_until_step: int) -> None:
    """Drop records with ``step > keep_until_step`` (used on resume, so no step is doubled)."""
    p = Path(path)
    if not p.exists():
        return
    kept = [r for r in read_metrics(p) if r.get("step", -1) <= keep_until_step]
    p.write_text("".join(json.dumps(r) + "\n" for r in kept))


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

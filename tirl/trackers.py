"""Experiment-tracker sinks: copy each metrics record to TensorBoard, W&B and/or MLflow.

``metrics.jsonl`` stays the source of truth (``tirl.runs.MetricsWriter`` writes it first);
a tracker only mirrors the numeric values of each record, keyed by the record's ``step``.
Select sinks by name with :func:`make_trackers` (``[run] trackers = ["tensorboard",
"wandb", "mlflow"]``). Each sink writes inside the run directory:

- ``tensorboard``: event files in ``<run>/tensorboard/`` (``torch.utils.tensorboard``;
  needs the ``tensorboard`` package);
- ``wandb``: a Weights & Biases run under ``<run>/wandb/``; offline mode unless
  ``WANDB_API_KEY`` is set (or ``WANDB_MODE`` says otherwise); ``wandb sync`` uploads it later;
- ``mlflow``: an MLflow file store in ``<run>/mlruns/`` (``mlflow-skinny`` suffices; MLflow 3
  needs ``MLFLOW_ALLOW_FILE_STORE=true`` for it, which this module sets unless you set it);
  ``MLFLOW_TRACKING_URI`` points it at a server instead.

What it does not do: log artefacts, checkpoints or trajectories (``tirl view`` reads those
from the run directory), or retry a sink that failed: a sink that raises is reported once
on stderr and switched off, and training goes on with ``metrics.jsonl`` intact.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

TRACKER_NAMES = ("tensorboard", "wandb", "mlflow")
# what `pip install` needs for each sink
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow-skinny"}
# record keys that are not metrics
NON_METRIC_KEYS = frozenset({"step", "time"})


class TrackerError(ValueError):
    """An unknown tracker name or a missing optional package; the message says what to do."""


class Tracker(Protocol):
    name: str

    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def scalar_metrics(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numeric values of a record, nested mappings flattened with ``/``.

    ``step`` and ``time`` are not metrics; strings, lists, None and NaN are left out
    (bools count as 0/1).
    """
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if not prefix and key in NON_METRIC_KEYS:
            continue
        if isinstance(value, Mapping):
            out.update(scalar_metrics(value, prefix=f"{name}/"))
        elif isinstance(value, (bool, int, float)):
            v = float(value)
            if math.isfinite(v):
                out[name] = v
    return out


def _import(module: str, tracker: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise TrackerError(
            f"tracker {tracker!r} needs the {TRACKER_PACKAGES[tracker]!r} package ({err}); "
            f"install it with `pip install {TRACKER_PACKAGES[tracker]}` or remove {tracker!r} "
            "from [run] trackers"
        ) from None


class TensorBoardTracker:
    """Scalars to TensorBoard event files in ``log_dir`` (one tag per metric)."""

    name = "tensorboard"

    def __init__(self, log_dir: str | Path):
        _import("tensorboard", self.name)
        tb = _import("torch.utils.tensorboard", self.name)
        self.log_dir = Path(log_dir)
        self._writer = tb.SummaryWriter(log_dir=str(self.log_dir))

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self._writer.add_scalar(key, value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class WandbTracker:
    """A W&B run in ``<dir>/wandb/``; offline unless an API key (or ``WANDB_MODE``) is set."""

    name = "wandb"

    def __init__(self, dir: str | Path, run_name: str, project: str = "tirl",
                 config: Mapping[str, Any] | None = None, mode: str | None = None):
        wandb = _import("wandb", self.name)
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if mode is None:
            mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        self.mode = mode
        self._run = wandb.init(project=project, name=run_name, dir=str(self.dir), mode=mode,
                               config=dict(config or {}), reinit="create_new",
                               settings=wandb.Settings(console="off", quiet=True))

    @property
    def run_dir(self) -> Path:
        """The run's own folder (``wandb/offline-run-…``) holding the ``.wandb`` record file."""
        return Path(self._run.dir).parent

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self._run.log(dict(metrics), step=step)

    def close(self) -> None:
        self._run.finish()


class MLflowTracker:
    """An MLflow run in a local file store (``file:<run>/mlruns``) or ``MLFLOW_TRACKING_URI``."""

    name = "mlflow"

    def __init__(self, store_dir: str | Path, run_name: str, experiment: str = "tirl",
                 params: Mapping[str, Any] | None = None, tracking_uri: str | None = None):
        tracking = _import("mlflow.tracking", self.name)
        entities = _import("mlflow.entities", self.name)
        self._Metric = entities.Metric
        self._Param = entities.Param
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or Path(store_dir).resolve().as_uri()
        if uri.startswith("file:"):
            # MLflow 3 keeps the file store in "maintenance mode" behind this switch; it is the
            # only backend mlflow-skinny can write without a database (sqlalchemy) installed
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.tracking_uri = uri
        self._client = tracking.MlflowClient(tracking_uri=uri)
        exp = self._client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else self._client.create_experiment(experiment)
        self.run_id = self._client.create_run(exp_id, run_name=run_name).info.run_id
        if params:
            # MLflow caps a param value at 6000 characters
            ps = [self._Param(str(k)[:250], str(v)[:6000]) for k, v in params.items()]
            for i in range(0, len(ps), 100):
                self._client.log_batch(self.run_id, params=ps[i:i + 100])

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        ms = [self._Metric(key, value, ts, step) for key, value in metrics.items()]
        for i in range(0, len(ms), 1000):  # MLflow's per-batch limit
            self._client.log_batch(self.run_id, metrics=ms[i:i + 1000])

    def close(self) -> None:
        self._client.set_terminated(self.run_id)


def check_tracker_names(names: Sequence[str]) -> list[str]:
    """The names, de-duplicated; an unknown one raises :class:`TrackerError` naming the choices."""
    out: list[str] = []
    for n in names:
        if n not in TRACKER_NAMES:
            raise TrackerError(f"unknown tracker {n!r}; choose from {', '.join(TRACKER_NAMES)} "
                               "in [run] trackers")
        if n not in out:
            out.append(n)
    return out


def make_trackers(names: Sequence[str], run_dir: str | Path, run_name: str,
                  config: Mapping[str, Any] | None = None) -> list[Tracker]:
    """The sinks named in ``names``, writing under ``run_dir``.

    ``config`` (a flat or nested mapping, e.g. the resolved config) goes to W&B's config and
    MLflow's params (flattened with ``.``). A missing package raises :class:`TrackerError`
    before any sink is opened, naming what to ``pip install``.
    """
    names = check_tracker_names(names)
    for n in names:  # fail before opening anything
        _import({"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow.tracking"}[n], n)
    root = Path(run_dir)
    flat = flatten_config(config or {})
    out: list[Tracker] = []
    try:
        for n in names:
            if n == "tensorboard":
                out.append(TensorBoardTracker(root / "tensorboard"))
            elif n == "wandb":
                out.append(WandbTracker(root, run_name, config=config))
            else:
                out.append(MLflowTracker(root / "mlruns", run_name, params=flat))
    except BaseException:
        for t in out:
            t.close()
        raise
    return out


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"rl": {"lr": 1e-6}}`` -> ``{"rl.lr": 1e-6}`` (lists kept as values)."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, Mapping):
            out.update(flatten_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class TrackerFanout:
    """Sends each record to every sink; a sink that raises is reported once and dropped."""

    def __init__(self, trackers: Sequence[Tracker]):
        self.trackers = list(trackers)
        self._steps = 0

    def log_record(self, record: Mapping[str, Any]) -> None:
        if not self.trackers:
            return
        step = record.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            step = self._steps
        self._steps += 1
        metrics = scalar_metrics(record)
        if not metrics:
            return
        for t in list(self.trackers):
            try:
                t.log(metrics, step)
            except Exception as err:  # noqa: BLE001 — a sink must never stop training
                print(f"tirl: tracker {t.name!r} failed ({type(err).__name__}: {err}); it is switched "
                      "off for the rest of the run (metrics.jsonl keeps every record)", file=sys.stderr)
                self.trackers.remove(t)

    def close(self) -> None:
        for t in self.trackers:
            try:
                t.close()
            except Exception as err:  # noqa: BLE001
                print(f"tirl: closing tracker {t.name!r} failed ({type(err).__name__}: {err})",
                      file=sys.stderr)
        self.trackers = []

"""Tracker sinks: each one's output is read back with the tool's own reader."""

from __future__ import annotations

import json
import struct
import time
import sys
from pathlib import Path

import pytest

from tirl.runs import MetricsWriter, RunDir
from tirl.trackers import (TrackerError, TrackerFanout, check_tracker_names, flatten_config,
                           make_trackers, scalar_metrics)

RECORDS = [
    {"step": 1, "reward": 0.25, "time_split": {"gen": 2.0, "tool": 0.5}, "note": "text", "nan": None},
    {"step": 2, "reward": 0.75, "time_split": {"gen": 3.0, "tool": 1.5}, "done": True},
]


def test_scalar_metrics_flattens_and_drops_non_numbers():
    got = scalar_metrics({"step": 3, "time": 9.0, "a": 1, "b": {"c": 2.5, "d": "x"}, "e": None,
                          "f": float("nan"), "g": [1, 2], "h": False})
    assert got == {"a": 1.0, "b/c": 2.5, "h": 0.0}


def test_flatten_config():
    assert flatten_config({"rl": {"lr": 1e-6, "g": {"k": 2}}, "x": [1]}) == {"rl.lr": 1e-6, "rl.g.k": 2, "x": [1]}


def test_unknown_tracker_names_the_choices():
    with pytest.raises(TrackerError, match="unknown tracker 'tensorbored'.*tensorboard, wandb, mlflow"):
        check_tracker_names(["tensorbored"])
    assert check_tracker_names(["mlflow", "mlflow"]) == ["mlflow"]


def test_missing_package_names_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    with pytest.raises(TrackerError, match=r"pip install wandb"):
        make_trackers(["wandb"], tmp_path, "r")


class _Boom:
    name = "boom"

    def log(self, metrics, step):
        raise RuntimeError("disk full")

    def close(self):
        pass


class _Keep:
    name = "keep"

    def __init__(self):
        self.seen = []

    def log(self, metrics, step):
        self.seen.append((step, dict(metrics)))

    def close(self):
        pass


def test_failing_sink_is_dropped_and_jsonl_keeps_everything(tmp_path, capsys):
    keep = _Keep()
    w = MetricsWriter(tmp_path / "m.jsonl", trackers=[_Boom(), keep])
    for r in RECORDS:
        w.write(r)
    w.close()
    assert "tracker 'boom' failed (RuntimeError: disk full)" in capsys.readouterr().err
    assert [s for s, _ in keep.seen] == [1, 2]
    assert keep.seen[1][1] == {"reward": 0.75, "time_split/gen": 3.0, "time_split/tool": 1.5, "done": 1.0}
    lines = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [x["reward"] for x in lines] == [0.25, 0.75]


def test_fanout_counts_steps_when_a_record_has_none():
    keep = _Keep()
    f = TrackerFanout([keep])
    f.log_record({"loss": 1.0})
    f.log_record({"loss": 2.0})
    assert [s for s, _ in keep.seen] == [0, 1]


def _write_run(tmp_path: Path, name: str) -> Path:
    run = RunDir(tmp_path / "run")
    w = run.metrics([name], run_name="t", config={"rl": {"lr": 1e-6}})
    for r in RECORDS:
        w.write(r)
    w.close()
    return run.root


def test_tensorboard_event_files_read_back(tmp_path):
    pytest.importorskip("tensorboard", reason="pip install tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = _write_run(tmp_path, "tensorboard")
    acc = EventAccumulator(str(root / "tensorboard"))
    acc.Reload()
    assert {"reward", "time_split/gen", "time_split/tool", "done"} <= set(acc.Tags()["scalars"])
    assert [(e.step, e.value) for e in acc.Scalars("reward")] == [(1, 0.25), (2, 0.75)]
    assert [(e.step, e.value) for e in acc.Scalars("time_split/tool")] == [(1, 0.5), (2, 1.5)]


def test_mlflow_file_store_reads_back(tmp_path):
    pytest.importorskip("mlflow", reason="pip install mlflow-skinny")
    from mlflow.tracking import MlflowClient

    root = _write_run(tmp_path, "mlflow")
    client = MlflowClient(tracking_uri=(root / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name("tirl")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "t" and run.info.status == "FINISHED"
    assert run.data.params == {"rl.lr": "1e-06"}
    hist = client.get_metric_history(run.info.run_id, "reward")
    assert sorted((m.step, m.value) for m in hist) == [(1, 0.25), (2, 0.75)]
    hist = client.get_metric_history(run.info.run_id, "time_split/gen")
    assert sorted((m.step, m.value) for m in hist) == [(1, 2.0), (2, 3.0)]


def _wandb_records(path: Path):
    """The records of a ``.wandb`` file: a 7-byte header, then LevelDB-log style 32 KiB blocks
    of chunks (crc32, length, type) holding protobuf ``Record`` messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B record file"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:  # zero fill (a writer's padding): the next block
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        buf += chunk
        if kind in (1, 4):  # FULL or LAST
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def test_wandb_offline_run_reads_back(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="pip install wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    root = _write_run(tmp_path, "wandb")
    (run_dir,) = list((root / "wandb").glob("offline-run-*"))
    (rec_file,) = list(run_dir.glob("run-*.wandb"))
    for _ in range(100):  # wandb's service process writes the file; finish() returns at its exit record
        records = _wandb_records(rec_file)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        time.sleep(0.1)
    history = []
    for rec in records:
        if rec.WhichOneof("record_type") == "history":
            items = {it.key or "/".join(it.nested_key): json.loads(it.value_json) for it in rec.history.item}
            history.append(items)
    kinds = [r.WhichOneof("record_type") for r in records]
    assert [(h["_step"], h["reward"]) for h in history] == [(1, 0.25), (2, 0.75)], kinds
    assert history[1]["time_split/tool"] == 1.5

"""The `tirl` command: help, doctor, print-config, and honest 'not built' exits."""

import json
import subprocess
import sys

import pytest

from tirl.cli import main
from tirl.runs import MetricsWriter, RunDir, plot_series, read_metrics, truncate_metrics


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tirl.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_help_lists_every_subcommand():
    r = run_cli("--help")
    assert r.returncode == 0
    for name in ["demo", "train", "eval", "serve", "chat", "sandbox", "doctor"]:
        assert f"\n    {name} " in r.stdout, name
    r = run_cli("sandbox", "--help")
    assert "serve" in r.stdout and "worker" in r.stdout


def test_doctor_reports_versions_and_features():
    r = run_cli("doctor", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    env = info["environment"]
    assert env["python"].startswith("3.")
    assert env["cpu_count"] >= 1
    assert env["torch"] and "gpus" in env and "redis-server" in env
    assert any("GPU" in f["feature"] for f in info["features"])
    r = run_cli("doctor")
    assert "features" in r.stdout and "torch" in r.stdout


def test_print_config(capsys):
    assert main(["train", "demo", "rl.lr=0.125", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "lr = 0.125" in out and "[[stages]]" in out


def test_config_error_exits_2_with_message(capsys):
    assert main(["train", "demo", "rl.lrr=1", "--print-config"]) == 2
    assert "Did you mean 'lr'" in capsys.readouterr().err


def test_run_dir_and_metrics(tmp_path):
    from tirl.config import config_to_toml, load_config

    cfg = load_config("demo", [f"run.output_dir={tmp_path}", "run.name=r1"])
    run = RunDir(tmp_path / "r1")
    run.write_config(config_to_toml(cfg))
    for sub in ("plots", "checkpoints", "trajectories"):
        assert (run.root / sub).is_dir()
    assert load_config(run.root / "config.toml") == cfg
    with run.metrics() as m:
        for step in range(1, 4):
            m.write({"step": step, "reward": step / 10, "nan": float("nan")})
    recs = read_metrics(run.metrics_path)
    assert [r["step"] for r in recs] == [1, 2, 3] and recs[0]["nan"] is None
    with run.metrics_path.open("a") as f:
        f.write('{"step": 4, "rew')  # a torn line from a crash
    assert len(read_metrics(run.metrics_path)) == 3
    truncate_metrics(run.metrics_path, 2)
    assert [r["step"] for r in read_metrics(run.metrics_path)] == [1, 2]
    png = plot_series(read_metrics(run.metrics_path), ["reward"], run.plots / "r.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

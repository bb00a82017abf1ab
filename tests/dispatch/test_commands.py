"""`tirl dispatch simulate` from the command line."""

import json

from tirl.cli import main


def test_simulate_prints_json_for_every_policy(capsys, tmp_path):
    png = tmp_path / "cmp.png"
    rc = main(["dispatch", "simulate", "--scenario", "small", "--json", "--png", str(png),
               "engine.kv_capacity_tokens=40000", "n_engines=3"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["results"]) == {"static", "round_robin", "least_requests", "kv"}
    assert out["config"]["n_engines"] == 3 and out["config"]["engine"]["kv_capacity_tokens"] == 40000
    assert out["makespan_speedup_vs_static"]["static"] == 1.0
    assert png.stat().st_size > 1000


def test_simulate_table_and_bad_input(capsys):
    assert main(["dispatch", "simulate", "--scenario", "small", "--policies", "kv,static"]) == 0
    table = capsys.readouterr().out
    assert "makespan" in table and "kv" in table and "round_robin" not in table
    assert main(["dispatch", "simulate", "--scenario", "small", "n_engine=3"]) == 2
    assert "n_engine" in capsys.readouterr().err
    assert main(["dispatch", "simulate", "--policies", "fastest"]) == 2
    assert "fastest" in capsys.readouterr().err
    assert main(["dispatch", "simulate", "--scenario", "huge"]) == 2
    assert "huge" in capsys.readouterr().err


def test_doctor_checks_of_dispatch():
    from tirl.dispatch.health import checks

    got = {c.feature: c for c in checks()}
    assert got["dispatch: simulator"].ok and "128 rollouts" in got["dispatch: simulator"].detail

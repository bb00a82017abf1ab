"""launch_servers: a server that cannot start is reported with its log, nothing is left running."""

import pytest

from tirl.engines.launch import launch_servers


def test_a_server_that_exits_is_reported_with_its_log(tmp_path):
    with pytest.raises(RuntimeError) as err:
        launch_servers(tmp_path / "no-such-model", 2, tmp_path / "logs", start_timeout_s=120)
    msg = str(err.value)
    assert "exited with" in msg and "no-such-model" in msg  # the log's end names the bad path
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["serve0.log", "serve1.log"]


def test_zero_servers_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        launch_servers(tmp_path, 0, tmp_path)


def test_cores_outside_this_process_are_refused(tmp_path):
    import os

    outside = max(os.sched_getaffinity(0)) + 1
    with pytest.raises(ValueError, match="give cores of"):
        launch_servers(tmp_path, 1, tmp_path, cpus={outside})

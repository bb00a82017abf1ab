"""Commands fail fast and loudly on bad start-up inputs: a closed server port, a model path
that does not exist, an empty config — at start, with the value named, exit code != 0."""

import socket

import pytest

from tirl.cli import main


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def tokenizer_dir(tmp_path):
    from tests.agent.tiny import tiny_tokenizer

    tiny_tokenizer().save_pretrained(tmp_path / "tok")
    return str(tmp_path / "tok")


def test_eval_against_a_closed_port_fails_fast_and_says_so(tmp_path, tokenizer_dir, capsys):
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    rc = main(["eval", "-b", "aime24", "--limit", "1", "--k", "1", "--base-url", url, "--model", "m",
               "--tokenizer", tokenizer_dir, "-o", str(tmp_path / "out"), "--no-progress"])
    assert rc != 0
    assert url.rsplit("/v1", 1)[0] in capsys.readouterr().err


def test_chat_against_a_closed_port_fails_at_start(tokenizer_dir, capsys, monkeypatch):
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    monkeypatch.setattr("builtins.input", lambda _: (_ for _ in ()).throw(AssertionError("asked")))
    assert main(["chat", "--base-url", url, "--tokenizer", tokenizer_dir]) == 2  # at start, before any question
    assert "127.0.0.1" in capsys.readouterr().err


def test_eval_with_a_missing_model_path_names_it(tmp_path, capsys):
    rc = main(["eval", "-b", "aime24", "--model", str(tmp_path / "nope"), "-o", str(tmp_path / "o")])
    assert rc == 2 and str(tmp_path / "nope") in capsys.readouterr().err


def test_an_empty_config_is_refused(tmp_path, capsys):
    f = tmp_path / "empty.toml"
    f.write_text("")
    assert main(["train", str(f)]) == 2
    assert "is empty" in capsys.readouterr().err


def test_commands_take_config_and_overrides_the_same_way(capsys):
    for argv in (["train", "demo", "rl.lr=0.5"], ["eval", "demo", "rl.lr=0.5"],
                 ["serve", "demo", "rl.lr=0.5"], ["chat", "demo", "rl.lr=0.5"],
                 ["sandbox", "serve", "demo", "rl.lr=0.5"], ["demo", "rl.lr=0.5"]):
        assert main(argv + ["--print-config"]) == 0, argv
        out = capsys.readouterr().out
        assert "lr = 0.5" in out and "# AdamW learning rate" in out, argv
    assert main(["grade", "5", "5", "reward.timeout_s=3", "--print-config"]) == 0
    assert "timeout_s = 3" in capsys.readouterr().out

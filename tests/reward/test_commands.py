"""`tirl grade` (tirl/cli/grade.py), driven through its own argparse registration."""

import argparse
import json

import pytest

from tirl.cli import grade as commands


def run(argv):
    parser = argparse.ArgumentParser(prog="tirl")
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["grade", *argv])
    return args.func(args)


def test_grade_pair(capsys):
    assert run([r"2\sqrt{2}", r"\sqrt{8}"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "correct" and out["method"] == "fast"
    assert run(["0.333", r"\frac13"]) == 1
    assert json.loads(capsys.readouterr().out)["status"] == "incorrect"


def test_grade_response(capsys):
    assert run(["--response", r"<answer>\boxed{5}</answer>", "5"]) == 0
    assert run(["--response", "five", "5"]) == 1
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["status"] == "no_answer"


def test_grade_file(tmp_path, capsys):
    f = tmp_path / "s.jsonl"
    rows = [{"response": r"\boxed{4}", "answer": "4"}, {"response": r"\boxed{\ln 8}", "answer": r"3\ln 2"},
            {"response": "none", "answer": "1"}, {"response": r"\boxed{3}", "answer": "4"}]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "g.jsonl"
    assert run(["--file", str(f), "--out", str(out), "--workers", "1", "--timeout", "10"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == {"n": 4, "correct": 2, "incorrect": 1, "no_answer": 1, "timeout": 0, "accuracy": 0.5}
    assert [json.loads(x)["status"] for x in out.read_text().splitlines()] == [
        "correct", "correct", "no_answer", "incorrect"]


def test_missing_field_is_named(tmp_path, capsys):
    f = tmp_path / "s.jsonl"
    f.write_text(json.dumps({"text": "x", "answer": "1"}) + "\n")
    assert run(["--file", str(f)]) == 2
    assert "'response'" in capsys.readouterr().err


def test_needs_arguments(capsys):
    assert run([]) == 2
    assert "PRED and GOLD" in capsys.readouterr().err


def test_grade_file_tolerates_a_torn_last_line_and_names_a_bad_middle_one(tmp_path, capsys):
    f = tmp_path / "s.jsonl"
    good = json.dumps({"response": r"<answer>\boxed{5}</answer>", "answer": "5"}) + "\n"
    f.write_bytes(good.encode() + good.encode() + '{"response": "<answer>\\boxed{≥'.encode()[:-2])
    assert run(["--file", str(f), "--workers", "1"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["n"] == 2
    f.write_bytes(good.encode() + b"{not json\n" + good.encode())
    assert run(["--file", str(f)]) == 2
    err = capsys.readouterr().err
    assert str(f) in err and ":2" in err

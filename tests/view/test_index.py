"""The lazy JSONL index, summaries, filters, search and safe paths of ``tirl view``."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests.view.fixture import make_eval_dir, make_train_run
from tirl.view.index import (Filter, JsonlIndex, Summaries, line_spans, search, summarize,
                             tool_error_kinds)
from tirl.view.rundir import UnsafePath, ViewError, check_root, describe, safe_path


def test_line_spans_skips_blank_lines_and_a_torn_tail(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'{"a":1}\n\n{"b":22}\n{"torn"')
    for chunk in (1, 3, 5, 1 << 20):  # newlines on chunk borders behave the same
        s, e, to = line_spans(p, chunk=chunk)
        assert s.tolist() == [0, 9] and e.tolist() == [7, 17] and to == 18


def test_index_reads_records_and_picks_up_appends_and_rewrites(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"i": 0}\n{"i": 1}\n{"i": 2')
    idx = JsonlIndex(p)
    assert len(idx) == 2 and idx.read(1) == {"i": 1}
    with p.open("a") as f:
        f.write('}\n{"i": 3}\n')
    assert idx.refresh() == 2
    assert [r["i"] for r in idx.read_many(range(4))] == [0, 1, 2, 3]
    p.write_text('{"i": 9}\n')  # shorter: rewritten
    idx.refresh()
    assert len(idx) == 1 and idx.read(0) == {"i": 9}
    with pytest.raises(IndexError, match="record 5 out of range"):
        idx.raw(5)


def test_invalid_line_is_shown_not_fatal(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('not json\n[1, 2]\n')
    idx = JsonlIndex(p)
    assert idx.read(0) == {"_invalid": "not json"} and "_invalid" in idx.read(1)


def test_summarize_training_trajectory(tmp_path):
    from tests.view.fixture import train_trajectory

    s = summarize(train_trajectory(3, "p1", 2))
    assert s["kind"] == "trajectory" and s["step"] == 3 and s["problem_id"] == "p1" and s["sample"] == 2
    assert s["correct"] is True and s["kept"] is False and s["finish"] == "answer"
    assert s["errors"] == ["parse_error"] and s["turns"] == 2 and s["tokens"] == 16
    assert tool_error_kinds(train_trajectory(1, "p0", 3)) == ["timeout"]


def test_summarize_eval_sample_and_correct_fallbacks():
    s = summarize({"benchmark": "b", "problem_id": "q", "sample": 1, "status": "timeout", "correct": False,
                   "finish_reason": None, "tool_errors": 2, "turns": 3, "response_tokens": 50})
    assert (s["kind"], s["correct"], s["finish"], s["n_errors"], s["tokens"]) == ("sample", False, "timeout", 2, 50)
    assert summarize({"turns": [], "reward": 0.0})["correct"] is False
    assert summarize({"turns": [], "reward": 1.0})["correct"] is True
    assert summarize({"turns": []})["correct"] is None


@pytest.fixture
def train_index(tmp_path):
    root = make_train_run(tmp_path / "run")
    idx = JsonlIndex(root / "trajectories" / "train.jsonl")
    summ = Summaries()
    summ.add_range(idx, 0, 10)
    summ.add_range(idx, 10, len(idx))
    return idx, summ


def test_filters_count_what_the_fixture_holds(train_index):
    idx, summ = train_index
    assert len(idx) == 24 and summ.done == 24
    sel = lambda **kw: summ.select(Filter(**kw))  # noqa: E731
    assert len(sel()) == 24
    assert len(sel(step=2)) == 8
    assert len(sel(problem="p1")) == 12 and len(sel(problem="nope")) == 0
    assert len(sel(correct=True)) == 12 and len(sel(correct=False, step=1)) == 4
    assert len(sel(finish="max_tokens")) == 6
    assert len(sel(kept=True)) == 12 and len(sel(kept=False, correct=True)) == 6
    assert len(sel(error="error")) == 6 and len(sel(error="timeout")) == 6
    assert sel(error="parse_error").tolist() == [22]  # step 3, p1, sample 2
    assert len(sel(error="any")) == 13 and len(sel(error="none")) == 11
    assert len(sel(error="unknown_kind")) == 0
    assert len(sel(stage="s1")) == 24
    row = summ.row(22)
    assert row["errors"] == ["parse_error"] and row["step"] == 3 and row["kept"] is False
    f = summ.facets()
    assert f["steps"] == [1, 2, 3] and set(f["errors"]) == {"error", "timeout", "parse_error"} and f["has_kept"]


def test_summaries_must_continue_in_order(train_index):
    idx, _ = train_index
    with pytest.raises(ValueError, match="continue at record 0"):
        Summaries().add_range(idx, 5, 10)


def test_search_matches_text_not_token_ids(train_index):
    idx, summ = train_index
    everything = summ.select(Filter())
    hits, cursor = search(idx, everything, "UNIQUE-p1-s2-j3")  # case-insensitive
    assert cursor is None and [idx.read(i)["problem_id"] for i in hits] == ["p1"]
    assert search(idx, everything, "ZeroDivisionError")[0] == summ.select(Filter(error="error")).tolist()
    # 105 is a token id in every record but in no text
    assert search(idx, everything, "105") == ([], None)
    # quotes and newlines are matched as the text has them, not as JSON escapes them
    assert len(search(idx, everything, "x = 1 * 7\nprint")[0]) == 6
    first, cur = search(idx, everything, "Let me compute", limit=5)
    assert len(first) == 5 and cur == first[-1]
    rest, cur2 = search(idx, everything, "Let me compute", after=cur, limit=100)
    assert len(rest) == 19 and cur2 is None


def test_safe_path_refuses_everything_outside(tmp_path):
    root = (tmp_path / "run").resolve()
    (root / "plots").mkdir(parents=True)
    (root / "plots" / "a.png").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("s")
    os.symlink(tmp_path / "secret.txt", root / "plots" / "link.png")
    os.symlink(tmp_path, root / "up")
    assert safe_path(root, "plots/a.png") == root / "plots" / "a.png"
    for bad in ("../secret.txt", "plots/../../secret.txt", "/etc/passwd", "plots/link.png", "up/secret.txt",
                "a\x00b", "C:/x"):
        with pytest.raises(UnsafePath):
            safe_path(root, bad)


def test_check_root_and_describe(tmp_path):
    with pytest.raises(ViewError, match="not a directory"):
        check_root(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ViewError, match="neither a training run nor an eval output"):
        check_root(tmp_path / "empty")
    d = describe(check_root(make_train_run(tmp_path / "run")))
    assert d["kind"] == "train" and d["plots"] == ["plots/rl.png"] and "viewfixture" in d["config"]["text"]
    assert [s["path"] for s in d["sources"]] == ["trajectories/train.jsonl"]
    e = describe(check_root(make_eval_dir(tmp_path / "ev")))
    assert e["kind"] == "eval" and [s["path"] for s in e["sources"]] == ["samples/bench.jsonl"]
    assert e["report"]["text"].startswith("# Eval report")


def test_summaries_columns_are_compact(train_index):
    _, summ = train_index
    per_record = sum(np.dtype(t).itemsize for t in Summaries.COLUMNS.values())
    assert per_record <= 64  # 100,000 records: a few MB, never the records themselves
    assert json.dumps(summ.row(0))  # rows are plain JSON


def test_summarize_raw_equals_summarize_without_parsing_arrays():
    from tests.view.fixture import train_trajectory
    from tirl.view.index import summarize_raw

    for step, pid, j in ((1, "p0", 0), (3, "p1", 2), (2, "p0", 3)):
        rec = train_trajectory(step, pid, j)
        assert summarize_raw(json.dumps(rec).encode()) == summarize(rec)
    # an empty response and text that quotes an array key are handled
    rec = {"response_ids": [], "logprobs": [], "turns": [{"text": 'he wrote "logprobs": [1, 2]'}], "reward": 0.0}
    assert summarize_raw(json.dumps(rec).encode()) == summarize(rec)
    assert summarize_raw(json.dumps(rec).encode())["tokens"] == 0


def test_index_in_bounded_steps(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text("".join(json.dumps({"i": i}) + "\n" for i in range(100)))  # 9 to 11 bytes a line
    idx = JsonlIndex(p, max_bytes=25)
    assert len(idx) == 2 and not idx.at_end and idx.scanned_bytes == 18
    while not idx.at_end:
        idx.refresh(max_bytes=25)
    assert len(idx) == 100 and idx.read(99) == {"i": 99}
    assert line_spans(p, 0, chunk=7, stop=25)[2] == 18

"""tirl.data.benchmarks: files, named benchmarks, field names, CHAMP, the hub path (mocked)."""

from __future__ import annotations

import json

import pytest

from tirl.data import benchmarks as bm
from tirl.data.benchmarks import BenchmarkError, load_problems


@pytest.mark.parametrize("name,count,first_id,first_answer", [
    ("aime24", 30, "aime24-I-1", "204"),
    ("aime25", 30, "aime25-I-1", "70"),
    ("math500", 500, "test/precalculus/807.json", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("hmmt_feb25", 30, "hmmt_feb25-1", "103"),
    ("amc23", 40, "amc23-12A-1", "27"),
    ("gsm8k", 1319, "gsm8k-test-0", "18"),
])
def test_named_benchmarks_resolve_in_the_data_dir(data_dir, name, count, first_id, first_answer):
    probs = load_problems(name, data_dir=data_dir, hub=False)
    assert len(probs) == count
    assert probs[0]["id"] == first_id and probs[0]["answer"] == first_answer
    assert {"id", "problem", "answer", "source"} <= set(probs[0])
    assert len({p["id"] for p in probs}) == count


def test_math500_keeps_subject_and_level_and_limit(data_dir):
    probs = load_problems("math500", data_dir=data_dir, limit=5, hub=False)
    assert len(probs) == 5 and probs[0]["level"] == 2 and probs[0]["subject"] == "Precalculus"


def test_relative_data_dir_resolves_from_the_repo_root(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # "tirl/data/files" is not there from here
    rel = bm.resolve_data_dir("tirl/data/files")
    assert rel is not None and (rel / "aime24.jsonl").is_file()


def test_default_data_dir_is_the_repos_own_and_lists_offline_benchmarks(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    probs = bm.load_problems("aime24", hub=False)  # no data_dir: the shipped files
    assert len(probs) == 30
    listed = {b["name"]: b for b in bm.list_benchmarks()}
    assert listed["aime24"]["problems"] == 30 and listed["math500"]["problems"] == 500
    assert listed["gsm8k"]["problems"] > 1000 and listed["aime24"]["source"].endswith("aime24.jsonl")


def test_jsonl_and_parquet_files_with_custom_fields(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"question": "1+1?", "final": 2.0, "uid": "a"}, {"question": "2+2?", "final": 4.0, "uid": "b"}]
    jl = tmp_path / "mine.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mine.parquet")
    for f in (jl, tmp_path / "mine.parquet"):
        probs = load_problems(f, problem_field="question", answer_field="final")
        assert [p["problem"] for p in probs] == ["1+1?", "2+2?"]
        assert [p["answer"] for p in probs] == ["2", "4"]  # 2.0 -> "2"
        assert [p["id"] for p in probs] == ["mine-0", "mine-1"]  # no id field: source-index
        assert probs[0]["uid"] == "a" and probs[0]["source"] == "mine"
    # default field names fall back to common alternatives ("question")
    assert load_problems(jl, answer_field="final")[0]["problem"] == "1+1?"


def test_bad_files_say_what_to_do(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text(json.dumps({"q": "?", "a": "1"}) + "\n")
    with pytest.raises(BenchmarkError, match=r"no field 'problem' \(it has: a, q\).*--problem-field"):
        load_problems(f)
    with pytest.raises(BenchmarkError, match="--answer-field"):
        load_problems(f, problem_field="q", answer_field="ans")
    f.write_text('{"problem": "?", "answer": "1"}\nnot json\n')
    with pytest.raises(BenchmarkError, match="x.jsonl:2: not valid JSON"):
        load_problems(f)
    with pytest.raises(BenchmarkError, match="does not exist"):
        load_problems(tmp_path / "missing.jsonl")
    with pytest.raises(BenchmarkError, match="not found.*--data-dir"):
        load_problems("aime24", data_dir=tmp_path / "nowhere", hub=False)


def test_champ_from_the_package():
    probs = load_problems("champ", data_dir="/nonexistent", hub=False)
    assert len(probs) == 270
    assert probs[0]["id"] == "P_Combinatorics_1" and probs[0]["answer"] == "239"
    assert probs[0]["source"] == "champ" and "strings of length 6" in probs[0]["problem"]


def test_hub_download_is_normalised_like_a_file(tmp_path, monkeypatch):
    """The hub path with the download mocked (no network here): GSM8K's '#### 42' answers."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    snap = tmp_path / "snap" / "main"
    snap.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([
        {"question": "Q1", "answer": "work... #### 1,234"}, {"question": "Q2", "answer": "#### 7"}]),
        snap / "test-00000-of-00001.parquet")
    seen = {}

    def fake_snapshot_download(repo_id, repo_type, allow_patterns):
        seen.update(repo_id=repo_id, repo_type=repo_type)
        return str(tmp_path / "snap")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    probs = load_problems("gsm8k", data_dir=tmp_path / "empty", hub=True)
    assert seen == {"repo_id": "openai/gsm8k", "repo_type": "dataset"}
    assert [(p["problem"], p["answer"]) for p in probs] == [("Q1", "1234"), ("Q2", "7")]
    # offline: the hub is not tried and the error says where it looked
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BenchmarkError, match="disabled"):
        load_problems("gsm8k", data_dir=tmp_path / "empty")


def test_doctor_check_lists_offline_benchmarks(data_dir):
    if bm.resolve_data_dir(bm.DEFAULT_DATA_DIR) is None:
        pytest.skip("the default data dir is not beside this checkout")
    from tirl.eval.health import checks

    c = checks()[0]
    assert c.ok and "aime24 (30)" in c.detail and "champ (270)" in c.detail

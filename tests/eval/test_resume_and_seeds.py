"""Eval resume from torn sample files (read as bytes) and seeded, repeatable eval samples."""

from __future__ import annotations

import json
import logging

import pytest

from tests.eval.conftest import FakeGrader, FakeLoop
from tirl.eval.runner import run_benchmark, sample_seed
from tirl.eval.samples import SampleRecord, SampleStore
from tirl.runs import JsonlError, iter_jsonl, read_jsonl

PROBLEMS = [{"id": f"p{i}", "problem": f"What is {i}+{i}?", "answer": str(2 * i)} for i in range(3)]


def rec(pid: str, i: int, text: str = "≥ 7 — the answer") -> SampleRecord:
    return SampleRecord("b", pid, i, "42", "incorrect", False, answer="7", text=text)


def torn_inside_a_character(path) -> int:
    """Append a record cut inside the 3-byte UTF-8 of '≥' (e2 89 a5), as a crash would."""
    line = json.dumps(rec("p9", 0).to_dict(), ensure_ascii=False).encode()
    cut = line.index("≥".encode()) + 1
    with path.open("ab") as f:
        f.write(line[:cut])
    assert line[cut - 1] == 0xE2
    return path.stat().st_size


def test_read_jsonl_drops_a_torn_multibyte_tail_with_one_warning_naming_the_file(tmp_path, caplog):
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": "ü"}\n{"b": 2}\n', encoding="utf-8")
    good = path.stat().st_size
    path.open("ab").write('{"c": "≥'.encode()[:-2])  # ends on the lone byte 0xe2
    with caplog.at_level(logging.WARNING, logger="tirl.runs"):
        assert read_jsonl(path) == [{"a": "ü"}, {"b": 2}]
    assert path.stat().st_size > good  # read-only by default
    assert len(caplog.records) == 1 and str(path) in caplog.text and "line 3" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tirl.runs"):
        assert read_jsonl(path, truncate_torn_tail=True) == [{"a": "ü"}, {"b": 2}]
    assert path.stat().st_size == good and "truncated" in caplog.text
    caplog.clear()
    assert read_jsonl(path) == [{"a": "ü"}, {"b": 2}] and not caplog.records


@pytest.mark.parametrize("tail", [b'{"c": 1', b"\xff\xfe", b'{"c": "x\\', b"nul"])
def test_any_torn_tail_is_cut_off(tmp_path, tail):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"a": 1}\n' + tail)
    assert [r for _, r in iter_jsonl(path, truncate_torn_tail=True)] == [{"a": 1}]
    assert path.read_bytes() == b'{"a": 1}\n'


def test_a_bad_line_in_the_middle_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": \xe2\n{"b": 2}\n')
    with pytest.raises(JsonlError, match=rf"{path}:3: not a JSON record \(UnicodeDecodeError"):
        read_jsonl(path, truncate_torn_tail=True)
    assert path.read_bytes().endswith(b'{"b": 2}\n')  # nothing was cut


def test_a_whole_last_record_without_newline_is_kept_and_terminated(tmp_path, caplog):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}')
    with caplog.at_level(logging.WARNING, logger="tirl.runs"):
        assert read_jsonl(path, truncate_torn_tail=True) == [{"a": 1}, {"b": 2}]
    assert path.read_bytes() == b'{"a": 1}\n{"b": 2}\n' and not caplog.records
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_sample_store_resumes_from_a_line_torn_inside_a_utf8_character(tmp_path):
    path = tmp_path / "s.jsonl"
    with SampleStore(path) as store:
        store.append(rec("p1", 0))
        store.append(rec("p1", 1))
    good = path.stat().st_size
    torn_inside_a_character(path)
    with pytest.raises(UnicodeDecodeError):  # what resume used to do
        path.read_text(encoding="utf-8")
    assert set(SampleStore(path).load()) == {("p1", 0), ("p1", 1)}
    assert set(SampleStore(path).load(repair=True)) == {("p1", 0), ("p1", 1)}
    assert path.stat().st_size == good
    with SampleStore(path) as store:
        store.append(rec("p2", 0))
    assert set(SampleStore(path).load()) == {("p1", 0), ("p1", 1), ("p2", 0)}


def test_append_without_load_cuts_a_torn_tail_instead_of_burying_it(tmp_path):
    path = tmp_path / "s.jsonl"
    with SampleStore(path) as store:
        store.append(rec("p1", 0))
    torn_inside_a_character(path)
    with SampleStore(path) as store:
        store.append(rec("p1", 1))
    lines = path.read_bytes().splitlines()
    assert len(lines) == 2 and all(json.loads(x)["problem_id"] == "p1" for x in lines)


def test_sample_store_names_file_and_line_of_a_record_of_the_wrong_shape(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(rec("p1", 0).to_dict()) + '\n[1, 2]\n{"problem_id": "p2"}\n')
    with pytest.raises(JsonlError, match=rf"{path}:2: not a sample record"):
        SampleStore(path).load()
    path.write_text(json.dumps(rec("p1", 0).to_dict()) + '\n{"problem_id": "p2"}\n')
    with pytest.raises(JsonlError, match=rf"{path}:2: not a sample record .*missing"):
        SampleStore(path).load()


async def test_run_benchmark_resumes_from_a_torn_file_and_redoes_only_the_torn_sample(tmp_path):
    path = tmp_path / "samples" / "b.jsonl"
    store = SampleStore(path)
    first = await run_benchmark("b", PROBLEMS, FakeLoop(lambda pid, j: "0"), FakeGrader(), store, 2)
    assert first.new == 6
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]) + lines[-1][:40])  # the last record torn
    loop = FakeLoop(lambda pid, j: "0")
    again = await run_benchmark("b", PROBLEMS, loop, FakeGrader(), SampleStore(path), 2)
    assert (again.reused, again.new) == (5, 1) and len(loop.calls) == 1
    assert len(read_jsonl(path)) == 6  # the torn bytes were cut, not left in the middle


async def test_eval_samples_get_seeds_from_run_seed_benchmark_and_sample_index(tmp_path):
    runs = iter(range(100))

    async def seeds(seed, bench="b", concurrency=64):
        loop = FakeLoop(lambda pid, j: "0")
        store = SampleStore(tmp_path / str(next(runs)) / "s.jsonl")
        await run_benchmark(bench, PROBLEMS, loop, FakeGrader(), store, 3, seed=seed,
                            concurrency=concurrency)
        return sorted(loop.seeds.values(), key=str)

    a, b = await seeds(0), await seeds(0, concurrency=1)
    assert a == b  # scheduling does not matter
    # sample i of every problem gets the same base seed; the loop mixes in the problem id
    assert a == sorted((sample_seed(0, "b", i) for _ in PROBLEMS for i in range(3)), key=str)
    assert len(set(a)) == 3
    assert set(await seeds(1)).isdisjoint(a) and set(await seeds(0, "c")).isdisjoint(a)
    assert await seeds(None) == [None] * 9


async def test_the_same_seeded_eval_twice_gives_the_same_samples_with_the_in_process_engine(tmp_path):
    """The measured bug (344 of 480 samples differed): a real AgentLoop on the in-process
    engine with a tiny random model, sampled at temperature 1, run twice with one seed."""
    pytest.importorskip("torch")
    from tests.agent.fakes import FakeTools
    from tests.agent.tiny import tiny_model, tiny_tokenizer
    from tirl.agent.config import AgentConfig, SamplingConfig
    from tirl.agent.loop import AgentLoop
    from tirl.engines.local import LocalEngine

    tok = tiny_tokenizer()
    model = tiny_model(tok, max_pos=1024)

    async def texts(run: str, seed, engine_seed: int) -> list[str]:
        eng = LocalEngine(model, tok, max_batch=8, seed=engine_seed)
        loop = AgentLoop(eng, tok, FakeTools(), AgentConfig(system_prompt="short"),
                         sampling=SamplingConfig(max_tokens=24, max_turns=2, temperature=1.0))
        try:
            res = await run_benchmark("b", PROBLEMS, loop, FakeGrader(),
                                      SampleStore(tmp_path / run / "b.jsonl"), 2, seed=seed)
        finally:
            eng.close()
        return [r.text for r in res.records]

    a = await texts("a", 7, engine_seed=1)
    b = await texts("b", 7, engine_seed=2)  # the engine's own generator does not matter
    assert a == b and len(set(a)) > 1
    assert await texts("c", 8, engine_seed=1) != a

import json
import math

import pytest

from tirl.analysis import analyze
from tirl.analysis.entropy import exact_entropies, surprisal, topk_entropy
from tirl.analysis.tokens import TokenSeq, split_high_entropy, steps_after_tool
from tirl.analysis.tooluse import exception_kind, summarize, summarize_by_step, trajectory_stats


def _seqs():
    # A: first turn (4 tokens), a tool response (2 inserted tokens), second turn (4 tokens)
    a = TokenSeq(tokens=list("abcdTTefgh"), mask=[1, 1, 1, 1, 0, 0, 1, 1, 1, 1],
                 entropies=[0.1, 2.0, 0.2, 0.3, None, None, 3.0, 0.5, 0.1, 2.5])
    b = TokenSeq(tokens=list("xyz"), mask=[1, 1, 1], entropies=[1.0, 2.8, 0.0])
    return [a, b]


def test_steps_after_tool_counts_policy_tokens_since_the_last_response():
    assert steps_after_tool([1, 1, 0, 0, 1, 1, 1, 0, 1]) == [None, None, None, None, 0, 1, 2, None, 0]


def test_forking_reflection_split_on_known_entropies():
    split = split_high_entropy(_seqs(), top_frac=0.2, reflection_window=2, context=1)
    # 11 policy tokens -> ceil(2.2) = 3 chosen over both sequences: 3.0, 2.8, 2.5
    assert [(t.seq, t.pos, t.entropy, t.kind) for t in split.tokens] == [
        (0, 6, 3.0, "reflection"),  # the first token after the tool response
        (1, 1, 2.8, "forking"),
        (0, 9, 2.5, "forking"),  # 4th token after the response: outside a window of 2
    ]
    assert split.threshold == 2.5 and split.n_policy_tokens == 11
    assert split.n_in_reflection_windows == 2  # positions 6 and 7 of A
    assert split.reflection_share == pytest.approx(1 / 3)
    assert split.reflection_base_rate == pytest.approx(2 / 11)
    assert split.most_common("forking") == [("y", 1), ("h", 1)]
    assert split.of_kind("reflection")[0].context == "T[[e]]f"
    # a wider window turns the 2.5 token into a reflection token too
    wide = split_high_entropy(_seqs(), top_frac=0.2, reflection_window=4)
    assert [t.kind for t in wide.tokens] == ["reflection", "forking", "reflection"]
    with pytest.raises(ValueError, match="top_frac"):
        split_high_entropy(_seqs(), top_frac=0.0)
    with pytest.raises(ValueError, match="one entry per response token"):
        TokenSeq(tokens=["a"], entropies=[], mask=[1])


def test_topk_entropy_is_a_lower_bound_and_exact_when_complete():
    half = math.log(0.5)
    assert topk_entropy([half, half]) == pytest.approx(math.log(2))
    # top-1 of a uniform over 4: p=0.25 and the tail 0.75 as one outcome
    h = topk_entropy({"a": math.log(0.25)})
    assert h == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    assert h < math.log(4)
    assert topk_entropy(None) is None and surprisal(-1.5) == 1.5


def test_exact_entropies_chunked_match_the_full_softmax():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2,
                                         max_position_embeddings=64)).eval()
    ids = [int(x) for x in torch.randint(0, 50, (20,))]
    pos = [3, 4, 5, 9, 10, 19]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], -1)
    full = [float(-(logp[p - 1].exp() * logp[p - 1]).sum()) for p in pos]
    assert exact_entropies(model, ids, pos, chunk=4) == pytest.approx(full, abs=1e-5)
    assert exact_entropies(model, ids, pos, chunk=1) == pytest.approx(full, abs=1e-5)
    with pytest.raises(ValueError, match="positions"):
        exact_entropies(model, ids, [0])


def _call(status, stderr="", parse_error=None, error_kind=None):
    res = None if parse_error else {"status": status, "stdout": "", "stderr": stderr, "exec_ms": 1.0}
    return {"raw": "", "result": res, "parse_error": parse_error, "error_kind": error_kind}


NAME_ERR = "Traceback (most recent call last):\n  File \"<cell>\", line 1\nNameError: name 'math' is not defined\n"


def _traj(step, reward, calls_per_turn, lps=None):
    turns = [{"text": "", "tool_calls": c} for c in calls_per_turn] + [{"text": "<answer>", "tool_calls": []}]
    # response: 2 policy tokens, 1 inserted token per tool turn, 2 final policy tokens
    mask = []
    for _ in calls_per_turn:
        mask += [1, 1, 0]
    mask += [1, 1]
    return {"prompt_ids": [1, 2], "response_ids": list(range(3, 3 + len(mask))), "response_mask": mask,
            "logprobs": lps or [(-1.0 if m else 0.0) for m in mask], "turns": turns,
            "finish_reason": "answer", "reward": reward, "step": step}


def test_tool_stats_recovery_and_kinds_by_hand():
    recs = [
        _traj(1, 1.0, [[_call("error", NAME_ERR)], [_call("ok")]]),  # failed, fixed, correct
        _traj(1, 0.0, [[_call("error", NAME_ERR)], [_call("error", NAME_ERR)]]),  # never fixed
        _traj(1, 1.0, [[_call("ok")]]),  # clean
        _traj(2, 0.0, [[_call(None, parse_error="bad json", error_kind="parse_error")], [_call("ok")]]),
    ]
    st = [trajectory_stats(r) for r in recs]
    assert st[0].kinds == ["error:NameError"] and st[0].call_recovered and st[0].turns == 3
    assert not st[1].call_recovered and st[3].kinds == ["parse_error"] and st[3].call_recovered
    s = summarize(st)
    assert s["calls_per_traj"] == pytest.approx(7 / 4)
    assert s["tool_error_ratio"] == pytest.approx(4 / 7)
    assert s["tool_error_ratio_pos"] == pytest.approx(1 / 3)  # positives: 3 calls, 1 failed
    assert s["recovery_rate"] == pytest.approx(1 / 3)  # 3 with a failure, 1 correct
    assert s["call_recovery_rate"] == pytest.approx(2 / 3)
    assert s["error_kinds"] == {"error:NameError": 3, "parse_error": 1}
    assert [k for k, _ in summarize_by_step(st)] == [1, 2]
    assert exception_kind("x\nValueError: invalid literal") == "ValueError"
    # an eval sample: counts only, or outcomes read back from its text
    sample = {"problem_id": "p", "correct": True, "tool_calls": 2, "tool_errors": 1, "turns": 3,
              "finish_reason": "answer",
              "text": "<tool_response>\nExecution failed with an error.\nstderr:\nNameError: x\n</tool_response>"
                      "<tool_response>\nExecution succeeded.\nstdout:\n5\n</tool_response>"}
    ss = trajectory_stats(sample)
    assert ss.kinds == ["error:NameError"] and ss.call_recovered and ss.correct


def test_analyze_writes_report_and_pngs(tmp_path):
    run = tmp_path / "run"
    (run / "trajectories").mkdir(parents=True)
    recs = [_traj(1, 1.0, [[_call("error", NAME_ERR)], [_call("ok")]], lps=[-0.1, -0.2, 0, -3.0, -0.1, 0, -0.2, -0.1]),
            _traj(2, 1.0, [[_call("ok")]], lps=[-2.0, -0.1, 0, -0.1, -0.1])]
    with (run / "trajectories" / "train.jsonl").open("w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
        f.write('{"torn": ')  # an interrupted write is skipped
    rep = analyze(run, top_frac=0.2, reflection_window=1)
    text = rep.read_text()
    assert rep == run / "analysis" / "report.md"
    assert "surprisal" in text.lower() or "−log p" in text
    assert "Reflection tokens" in text and "Forking tokens" in text
    # 10 policy tokens -> top 2: 3.0 (the first token after the first response), 2.0 (first turn)
    assert "reflection tokens: 1 " in text and "forking tokens: 1" in text and "2 of 10" in text
    assert (run / "analysis" / "entropy.png").stat().st_size > 0
    assert (run / "analysis" / "tool_use_by_step.png").stat().st_size > 0
    assert "error:NameError" in text
    with pytest.raises(FileNotFoundError, match="run directory"):
        analyze(tmp_path / "nope")


def test_analyze_eval_samples_dir(tmp_path):
    d = tmp_path / "ev" / "samples"
    d.mkdir(parents=True)
    rows = [{"benchmark": "b", "problem_id": str(i), "sample": 0, "gold": "1", "status": "correct",
             "correct": i % 2 == 0, "tool_calls": 1 + i % 2, "tool_errors": i % 2, "turns": 2,
             "finish_reason": "answer"} for i in range(6)]
    (d / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = analyze(tmp_path / "ev", tmp_path / "out").read_text()
    assert "6 eval samples" in text and "--save-trajectories" in text
    assert "| b | 6 |" in text


def test_run_analyze_reports_a_bad_path_with_advice(tmp_path, capsys):
    from tirl.analysis import run_analyze

    assert run_analyze(tmp_path / "missing") == 2
    assert "no such file or directory" in capsys.readouterr().err
    (tmp_path / "empty.jsonl").write_text("\n")
    assert run_analyze(tmp_path / "empty.jsonl") == 2
    assert "no records" in capsys.readouterr().err


def test_eval_trajectories_get_their_grades_from_samples(tmp_path):
    ev = tmp_path / "ev"
    (ev / "trajectories").mkdir(parents=True)
    (ev / "samples").mkdir()
    trajs = []
    for i in range(4):
        t = _traj(None, None, [[_call("ok")]])
        t.pop("step")
        t.update(problem_id=f"p{i // 2}", meta={"sample": i % 2})
        trajs.append(t)
    (ev / "trajectories" / "b.jsonl").write_text("".join(json.dumps(t) + "\n" for t in trajs))
    samples = [{"benchmark": "b", "problem_id": f"p{i // 2}", "sample": i % 2, "gold": "1",
                "status": "correct", "correct": i == 3} for i in range(4)]
    (ev / "samples" / "b.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    text = analyze(ev).read_text()
    assert "| b | 4 |" in text and "0.250 |" in text.split("| b | 4 |")[1].splitlines()[0]

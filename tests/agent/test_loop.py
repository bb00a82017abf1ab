import asyncio
import contextlib

import pytest

from tirl.agent import format as fmt
from tirl.agent.config import AgentConfig, SamplingConfig
from tirl.agent.loop import AgentLoop, PrefixMismatch, summarize
from tirl.agent.trajectory import Trajectory, load_trajectories, save_trajectories
from tirl.engines.scripted import ScriptedEngine

from tests.agent.fakes import FakeTools
from tests.agent.tiny import tiny_tokenizer

ANSWER = "<reason>done</reason><answer>\\boxed{42}</answer>"


def call(code, input=""):
    return fmt.format_tool_call(code, input)


def make(script, tools=None, **cfg):
    tok = tiny_tokenizer()
    eng = ScriptedEngine(tok, script)
    sp = {k: cfg.pop(k) for k in list(cfg) if k in SamplingConfig.model_fields}
    loop = AgentLoop(eng, tok, tools if tools is not None else FakeTools(), AgentConfig(**cfg),
                     sampling=SamplingConfig(**sp))
    return tok, eng, loop


async def test_one_tool_turn_then_answer_is_token_exact():
    tools = FakeTools()
    tok, eng, loop = make([call("print(6*7)"), ANSWER], tools)
    [t] = await loop.run("What is 6*7?", problem_id="p1", gold="42")
    assert t.finish_reason == "answer" and len(t.turns) == 2
    assert t.prompt_ids == loop.render_prompt("What is 6*7?")
    # the engine saw prompt, then prompt + turn-1 tokens + tool tokens: the prefix never changed
    p0, p1 = eng.prompts
    assert p0 == t.prompt_ids
    assert p1 == t.prompt_ids + t.response_ids[:len(p1) - len(p0)]
    assert len(t.response_ids) == len(t.response_mask) == len(t.logprobs)
    n1 = t.turns[0].n_generated
    assert t.response_mask[:n1] == [1] * n1 and t.response_ids[n1 - 1] == tok.eos_token_id
    nt = t.turns[0].n_tool_tokens
    assert t.response_mask[n1:n1 + nt] == [0] * nt and t.logprobs[n1:n1 + nt] == [0.0] * nt
    assert all(lp == -0.5 for lp, m in zip(t.logprobs, t.response_mask) if m)
    assert tok.decode(t.response_ids[n1:n1 + nt], skip_special_tokens=False) == fmt.tool_turn_text(
        tok, [fmt.tool_result_body(t.turns[0].tool_calls[0].result)])
    [c] = t.turns[0].tool_calls
    assert c.result.status == "ok" and c.result.stdout == "6*7\n" and tools.calls[0][0] == "print(6*7)"
    assert "\\boxed{42}" in t.text and t.num_tool_calls == 1 and t.num_tool_errors == 0
    assert loop.prefix_checks == 2 and loop.prefix_mismatches == 0


async def test_every_call_of_a_turn_runs_concurrently_results_in_order():
    tools = FakeTools(latency_s=lambda code: 0.3 if "1" in code else 0.01)
    tok, eng, loop = make([call("print(1)") + call("print(2)") + call("print(3)"), ANSWER], tools)
    [t] = await loop.run("q")
    calls = t.turns[0].tool_calls
    assert [c.result.stdout for c in calls] == ["1\n", "2\n", "3\n"]
    assert tools.max_in_flight == 3
    resp = tok.decode(t.response_ids, skip_special_tokens=False)
    assert resp.index("1\n</tool_response>") < resp.index("2\n</tool_response>") < resp.index("3\n</tool_response>")


async def test_malformed_calls_are_answered_with_the_error_and_counted():
    tools = FakeTools()
    bad = "<tool_call>{oops</tool_call>" + '<tool_call>{"name": "bash", "arguments": {"cmd": "ls"}}</tool_call>'
    tok, eng, loop = make([bad + call("raise ValueError") + call("sleep(9)"), ANSWER], tools)
    [t] = await loop.run("q")
    assert t.finish_reason == "answer"
    assert len(tools.calls) == 2  # only the parseable calls ran
    assert t.num_tool_calls == 4 and t.num_tool_errors == 4
    assert t.tool_errors_by_kind == {"parse_error": 1, "unknown_tool": 1, "error": 1, "timeout": 1}
    text = tok.decode(t.response_ids, skip_special_tokens=False)
    assert "Tool call error: invalid JSON" in text and "unknown tool 'bash'" in text
    s = summarize([t])
    assert s["tool_errors_by_kind"]["parse_error"] == 1 and s["finish_reasons"] == {"answer": 1}


async def test_turn_limit_records_but_does_not_run_the_last_calls():
    tools = FakeTools()
    tok, eng, loop = make([call("print(1)")], tools, max_turns=3)
    [t] = await loop.run("q")
    assert t.finish_reason == "max_turns" and len(t.turns) == 3 and len(tools.calls) == 2
    assert t.turns[-1].tool_calls[0].result is None and t.truncated
    assert t.response_mask[-1] == 1  # nothing appended after the last turn


async def test_tool_response_that_would_overflow_ends_without_it():
    tok, eng, loop = make([call("print(1)"), ANSWER], max_tokens=200)
    [full] = await make([call("print(1)"), ANSWER])[2].run("q")
    n1 = full.turns[0].n_generated
    n_tool = full.turns[0].n_tool_tokens
    for budget, expect_len in ((n1 + n_tool, n1), (n1 + n_tool + 1, n1 + n_tool + 1)):
        _, _, loop = make([call("print(1)"), ANSWER], max_tokens=budget)
        [t] = await loop.run("q")
        assert t.finish_reason == "max_tokens"
        assert len(t.response_ids) == expect_len <= budget
    # the generated turn itself is cut by the budget
    _, _, loop = make([ANSWER * 50], max_tokens=20)
    [t] = await loop.run("q")
    assert t.finish_reason == "max_tokens" and len(t.response_ids) == 20 and t.turns[0].finish == "length"


async def test_trajectories_do_not_wait_for_each_others_tools():
    tools = FakeTools(latency_s=lambda code: 1.0 if "slow" in code else 0.01)
    tok = tiny_tokenizer()

    def script(prompt, turn):
        if turn > 0:
            return ANSWER
        return call("print('slow')") if "problem 0" in prompt else call("print(1)")

    loop = AgentLoop(ScriptedEngine(tok, script), tok, tools, AgentConfig())
    order = []
    items = [{"problem": f"problem {i}", "answer": "1", "id": i} for i in range(8)]
    trajs = await loop.run_many(items, n=2, on_done=lambda t: order.append(t.problem_id))
    assert [t.problem_id for t in trajs] == [str(i) for i in range(8) for _ in range(2)]
    assert order[-2:] == ["0", "0"] and set(order[:-2]) == {str(i) for i in range(1, 8)}
    assert tools.max_in_flight == 16  # every trajectory's call was out at once


async def test_stateful_tool_uses_one_session_per_trajectory_and_closes_it():
    tools = FakeTools()
    _, _, loop = make([call("x=1"), call("print(x)"), ANSWER], tools, stateful_tool=True)
    [a, b] = await loop.run("q", n=2)
    sessions = {s for _, _, s in tools.calls}
    assert len(sessions) == 2 and None not in sessions and sorted(tools.closed) == sorted(sessions)
    assert "persist" in loop.tokenizer.decode(a.prompt_ids)


async def test_sandbox_failure_is_an_infra_error():
    _, _, loop = make([call("print(1)"), ANSWER], FakeTools(fail_with=ConnectionError("down")))
    [t] = await loop.run("q")
    assert t.finish_reason == "infra_error" and t.has_infra_error
    assert t.turns[0].tool_calls[0].result.status == "infra_error"


async def test_engine_failure_is_an_infra_error():
    class Broken:
        async def generate(self, *a, **k):
            raise RuntimeError("engine gone")

    tok = tiny_tokenizer()
    [t] = await AgentLoop(Broken(), tok, FakeTools()).run("q")
    assert t.finish_reason == "infra_error" and "engine gone" in t.meta["error"]


async def test_lease_is_taken_once_per_trajectory():
    tok = tiny_tokenizer()
    inner = ScriptedEngine(tok, [call("print(1)"), ANSWER])

    class Dispatcher:
        def __init__(self):
            self.leases = []

        @contextlib.asynccontextmanager
        async def lease(self, key, reserve_tokens, group=None):
            self.leases.append((key, reserve_tokens, group))
            yield inner

        async def generate(self, *a, **k):
            raise AssertionError("must generate on the leased engine")

    d = Dispatcher()
    trajs = await AgentLoop(d, tok, FakeTools(), AgentConfig(),
                            sampling=SamplingConfig(max_tokens=300)).run("q", n=3, problem_id="g")
    assert all(t.finish_reason == "answer" for t in trajs)
    assert len(d.leases) == 3 and {g for _, _, g in d.leases} == {"g"}
    assert len({k for k, _, _ in d.leases}) == 3
    assert all(r == len(trajs[0].prompt_ids) + 300 for _, r, _ in d.leases)
    assert inner.calls == 6


async def test_engine_that_mutates_its_prompt_cannot_corrupt_the_prefix():
    tok = tiny_tokenizer()
    inner = ScriptedEngine(tok, [call("print(1)"), call("print(2)"), ANSWER])

    class Mutating:
        async def generate(self, prompt_ids, *a, **k):
            out = await inner.generate(list(prompt_ids), *a, **k)
            prompt_ids[:5] = [0] * 5
            return out

    loop = AgentLoop(Mutating(), tok, FakeTools())
    [t] = await loop.run("q")
    assert t.finish_reason == "answer" and loop.prefix_mismatches == 0
    for a, b in zip(inner.prompts, inner.prompts[1:]):
        assert b[:len(a)] == a


def test_prefix_check_raises_on_mismatch():
    tok = tiny_tokenizer()
    loop = AgentLoop(None, tok, None)
    t = Trajectory(prompt_ids=[1, 2, 3])
    loop._check_prefix(t, [1, 2, 3, 4], [1, 2, 3])
    with pytest.raises(PrefixMismatch):
        loop._check_prefix(t, [1, 2, 9, 4], [1, 2, 3])
    assert loop.prefix_mismatches == 1


async def test_trajectories_round_trip_through_jsonl(tmp_path):
    _, _, loop = make(["<tool_call>{bad</tool_call>", call("raise X"), ANSWER])
    trajs = await loop.run("q", n=2, problem_id="p", gold="42")
    path = tmp_path / "t.jsonl"
    save_trajectories(path, trajs, append=False)
    back = load_trajectories(path)
    assert [b.to_dict() for b in back] == [t.to_dict() for t in trajs]
    assert back[0].turns[1].tool_calls[0].result.status == "error"
    assert back[0].tool_errors_by_kind == {"parse_error": 1, "error": 1}


async def test_tool_calls_are_parsed_when_the_tags_are_special_tokens():
    from tokenizers import AddedToken

    tok = tiny_tokenizer()
    special = tok.__class__(tokenizer_object=tok.backend_tokenizer.__class__.from_str(tok.backend_tokenizer.to_str()),
                            eos_token="<|im_end|>", pad_token="<|endoftext|>")
    special.add_special_tokens({"additional_special_tokens": [AddedToken("<tool_call>", special=True),
                                                              AddedToken("</tool_call>", special=True)]})
    assert special.decode(special.encode("<tool_call>"), skip_special_tokens=True) == ""
    tools = FakeTools()
    loop = AgentLoop(ScriptedEngine(special, [call("print(5)"), ANSWER]), special, tools, AgentConfig())
    [t] = await loop.run("q")
    assert t.num_tool_calls == 1 and tools.calls[0][0] == "print(5)" and t.finish_reason == "answer"


async def test_tool_response_timing_false_reaches_the_rollout():
    from tirl.sandbox.types import ExecResult

    class TimedTools(FakeTools):
        def __init__(self, ms):
            super().__init__()
            self.ms = ms

        async def run(self, code, stdin="", timeout_s=None, session_id=None):
            return ExecResult(status="ok", stdout="42\n", exec_ms=self.ms)

    responses = {}
    for timing in (True, False):
        for ms in (10.0, 70.0):
            tok, eng, loop = make([call("print(6*7)"), ANSWER], TimedTools(ms), tool_response_timing=timing)
            [t] = await loop.run("What is 6*7?", problem_id="p1", gold="42")
            responses[timing, ms] = tok.decode(t.response_ids, skip_special_tokens=False)
    assert responses[True, 10.0] != responses[True, 70.0] and "in 0.07s" in responses[True, 70.0]
    assert responses[False, 10.0] == responses[False, 70.0]
    assert "Execution succeeded.\nstdout:\n42" in responses[False, 10.0]


async def test_turn_seeds_derive_from_the_base_seed_problem_sample_and_turn():
    from tirl.agent.loop import derive_seed

    items = [{"problem": "What is 6*7?", "answer": "42", "id": i} for i in range(3)]

    async def seeds_of(seed, order):
        tok, eng, loop = make(lambda text, turn: call("print(6*7)") if turn == 0 else ANSWER,
                              max_turns=2)
        await loop.run_many([items[i] for i in order], n=2, seed=seed)
        return sorted(eng.seeds)

    a = await seeds_of(5, [0, 1, 2])
    b = await seeds_of(5, [2, 0, 1])
    c = await seeds_of(6, [0, 1, 2])
    assert len(a) == 12 and len(set(a)) == 12  # 3 problems x 2 samples x 2 turns, all distinct
    assert a == b and a != c  # the input order does not matter, the base seed does
    want = sorted(derive_seed(derive_seed(5, str(i), s), k) for i in range(3) for s in range(2) for k in range(2))
    assert a == want
    tok, eng, loop = make([ANSWER])
    await loop.run("What is 6*7?", problem_id="p1")
    assert eng.seeds == [None]  # no base seed: the engine's own randomness


# ---- defects of issue #12: infra finishes, max_turns with an answer, unexecuted calls


class _FinishEngine:
    """Answers every turn with ``text`` and a given engine finish reason."""

    def __init__(self, tok, text, finish, meta=None):
        self.tok, self.text, self.finish, self.meta = tok, text, finish, meta or {}

    async def generate(self, prompt_ids, max_new_tokens, temperature=1.0, stop=None, **kw):
        from tirl.engines.base import Completion

        ids = list(self.tok.encode(self.text, add_special_tokens=False))
        return Completion(token_ids=ids, logprobs=[-0.1] * len(ids), finish_reason=self.finish,
                          meta=dict(self.meta))


async def test_engine_abort_is_an_infra_error_not_a_truncation():
    tok = tiny_tokenizer()
    eng = _FinishEngine(tok, "<reason>half a th", "abort", {"server_finish_reason": "abort"})
    [t] = await AgentLoop(eng, tok, FakeTools()).run("q")
    # before the fix: finish_reason "engine_stop", truncated, rewarded 0 by the trainer
    assert t.finish_reason == "infra_error" and t.has_infra_error and not t.truncated
    assert "abort" in t.meta["error"]
    assert summarize([t])["finish_reasons"] == {"infra_error": 1}


async def test_context_limit_is_still_an_engine_stop():
    tok = tiny_tokenizer()
    eng = _FinishEngine(tok, "<reason>long", "length", {"context_limit": True})
    [t] = await AgentLoop(eng, tok, FakeTools()).run("q")
    assert t.finish_reason == "engine_stop" and t.truncated and not t.has_infra_error


async def test_max_turns_on_a_turn_with_a_complete_answer_is_graded():
    tools = FakeTools()
    last = call("print(1)") + "<answer>\\boxed{1}</answer>"
    tok, eng, loop = make([call("print(1)"), last], tools, max_turns=2)
    [t] = await loop.run("q")
    assert t.finish_reason == "max_turns" and len(tools.calls) == 1
    assert not t.truncated  # a complete final <answer> with a box: graded like the release
    # the last call was recorded but never run: not a failure, not counted as answered
    assert t.turns[-1].tool_calls[0].result is None
    assert t.num_tool_calls == 1 and t.num_tool_errors == 0 and t.tool_errors_by_kind == {}
    assert t.num_unexecuted_calls == 1 and len(t.tool_calls) == 2


@pytest.mark.parametrize("last,truncated", [
    ("<answer>\\boxed{1}</answer>", False),
    ("<answer>\\boxed{1}</answer>" + "<tool_call>{}</tool_call>", False),
    ("<answer>\\boxed{1}", True),  # not closed
    ("<answer>1</answer>", True),  # no box
    ("<answer>\\boxed{1</answer>", True),  # the box never closes
    ("<tool_call><answer>\\boxed{1}</answer></tool_call>", True),  # inside code, not the model's answer
    ("<reason>no answer</reason>", True),
])
def test_truncated_at_max_turns_depends_on_a_complete_final_answer(last, truncated):
    from tirl.agent.trajectory import Turn

    t = Trajectory(prompt_ids=[1], turns=[Turn(text="<reason>x</reason>"), Turn(text=last)],
                   finish_reason="max_turns")
    assert t.truncated is truncated
    # other truncations stay truncated whatever the text
    assert Trajectory(prompt_ids=[1], turns=[Turn(text="<answer>\\boxed{1}</answer>")],
                      finish_reason="max_tokens").truncated


async def test_turn_limit_calls_that_never_ran_are_not_tool_errors():
    tools = FakeTools()
    tok, eng, loop = make([call("print(1)")], tools, max_turns=3)
    [t] = await loop.run("q")
    assert t.truncated and t.num_unexecuted_calls == 1
    assert t.num_tool_calls == 2 and t.num_tool_errors == 0  # before: 3 calls, 1 error
    assert summarize([t])["tool_errors"] == 0 and summarize([t])["tool_calls_unexecuted"] == 1


@pytest.mark.parametrize("open_with_reason", [True, False])
async def test_sft_example_is_token_exact_with_the_rollout(open_with_reason):
    """render_sft_example gives the very ids and mask a rollout of the same turns produces."""
    from tirl.sandbox.types import ExecResult

    tok = tiny_tokenizer()
    turns = [("<reason>use python</reason>" + call("print(6*7)"),
              [ExecResult(status="ok", stdout="6*7\n", exit_code=0, exec_ms=2.0)]),
             ("<reason>so</reason><answer>\\boxed{42}</answer>", [])]
    prompt, segs = fmt.render_sft_example("What is 6*7?", turns, open_with_reason=open_with_reason)
    ids = list(tok.encode(prompt, add_special_tokens=False))
    mask = [0] * len(ids)
    for text, trained in segs:
        seg = list(tok.encode(text, add_special_tokens=False))
        ids += seg
        mask += [int(trained)] * len(seg)
    # the model writes what the SFT example trains on (after the template's opener)
    opener = "<reason>" if open_with_reason else ""
    script = [t[len(opener):] for t, _ in turns]
    eng = ScriptedEngine(tok, script)
    loop = AgentLoop(eng, tok, FakeTools(), AgentConfig(open_with_reason=open_with_reason))
    [t] = await loop.run("What is 6*7?")
    assert t.finish_reason == "answer"
    assert t.prompt_ids + t.response_ids == ids
    assert [0] * len(t.prompt_ids) + t.response_mask == mask
    text = tok.decode(t.prompt_ids + t.response_ids, skip_special_tokens=False)
    assert text.count("<|im_start|>assistant\n<reason>") == 2  # the same text either way ...
    # ... but the opener is template text (mask 0) only when the template writes it
    assert tok.decode(t.prompt_ids, skip_special_tokens=False).endswith("<reason>") == open_with_reason

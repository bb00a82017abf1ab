"""The agent loop on a real Dispatcher over three engines: sticky turns, bookings released."""

import asyncio
import contextlib

from tirl.agent import format as fmt
from tirl.agent.config import AgentConfig, SamplingConfig
from tirl.agent.loop import AgentLoop
from tirl.engines.tokenizer import build_tokenizer
from tirl.dispatch import Dispatcher
from tirl.engines.scripted import ScriptedEngine
from tirl.sandbox.types import ExecResult

ANSWER = "<reason>done</reason><answer>\\boxed{42}</answer>"


class EchoTools:
    """A tool executor that 'runs' code instantly and prints 42."""

    def __init__(self):
        self.calls = 0

    async def run(self, code, stdin="", timeout_s=None, session_id=None):
        self.calls += 1
        await asyncio.sleep(0.001)
        return ExecResult(status="ok", stdout="42\n", stderr="", exit_code=0, exec_ms=1.0, queue_ms=0.0,
                          truncated=False, session_id=session_id)

    async def close_session(self, session_id):
        return True


class Tagged:
    """Records which trajectory prompts reached which engine."""

    def __init__(self, inner, idx, log):
        self.inner, self.idx, self.log = inner, idx, log

    async def generate(self, prompt_ids, *a, **k):
        self.log.append((tuple(prompt_ids[:64]), self.idx, len(prompt_ids)))
        await asyncio.sleep(0.002)
        return await self.inner.generate(prompt_ids, *a, **k)


class RecordingDispatcher(Dispatcher):
    """Records, per lease, the engine every generate call ran on."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.calls: dict[str, list[int]] = {}
        self.groups: dict[str, object] = {}

    @contextlib.asynccontextmanager
    async def lease(self, key, reserve_tokens, group=None):
        async with super().lease(key, reserve_tokens, group) as eng:
            self.groups[key] = group
            outer = self

            class Rec:
                async def generate(self, *a, **k):
                    outer.calls.setdefault(key, []).append(eng.engine_index)
                    return await eng.generate(*a, **k)

            yield Rec()


async def test_agent_loop_runs_every_turn_of_a_trajectory_on_one_engine():
    tok = build_tokenizer(["What is 6 times 7? " + ANSWER + fmt.format_tool_call("print(6*7)")] * 5, vocab_size=400)
    script = [fmt.format_tool_call("print(6*7)"), fmt.format_tool_call("print(1)"), ANSWER]
    log = []
    engines = [Tagged(ScriptedEngine(tok, script), i, log) for i in range(3)]
    budget = 600
    d = RecordingDispatcher(engines, "kv", capacity_tokens=4 * 2000)
    loop = AgentLoop(d, tok, EchoTools(), AgentConfig(), sampling=SamplingConfig(max_tokens=budget))
    items = [{"problem": f"What is {i} times 7?", "answer": str(7 * i), "id": f"p{i}"} for i in range(6)]
    groups = await loop.run_many(items, n=4)
    trajs = [t for g in groups for t in (g if isinstance(g, list) else [g])]
    assert len(trajs) == 24 and all(t.finish_reason == "answer" for t in trajs)
    assert len(log) == 24 * 3 and len(d.calls) == 24
    assert all(len(c) == 3 and len(set(c)) == 1 for c in d.calls.values())  # sticky
    assert len(set(d.groups.values())) == 6  # the loop passes the problem as the group
    assert d.stats.leases == 24 and d.stats.retries == 0
    assert sum(s.leases_total for s in d.snapshot()) == 24
    assert len({s.index for s in d.snapshot() if s.leases_total}) == 3  # all engines used
    assert all(ld.reserved_tokens == 0 and ld.active == 0 for ld in d.loads)

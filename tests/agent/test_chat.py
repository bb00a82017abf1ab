from tirl.agent import format as fmt
from tirl.agent.chat import chat_session, describe_turn
from tirl.agent.config import AgentConfig
from tirl.agent.loop import AgentLoop
from tirl.engines.scripted import ScriptedEngine

from tests.agent.fakes import FakeTools
from tests.agent.tiny import tiny_tokenizer


async def test_chat_shows_calls_and_results_and_continues_the_conversation():
    tok = tiny_tokenizer()
    answers = {1: fmt.format_tool_call("print(6*7)"), 2: "<answer>\\boxed{42}</answer>", 3: "You are welcome."}

    def script(prompt, turn):
        return answers[min(turn + 1, 3)] if "thanks" not in prompt else answers[3]

    eng = ScriptedEngine(tok, script)
    loop = AgentLoop(eng, tok, FakeTools(), AgentConfig(system_prompt="short"))
    shown = []
    trajs = await chat_session(loop, ["what is 6*7?", "", "thanks", "/exit", "never"],
                               lambda kind, text: shown.append((kind, text)))
    assert len(trajs) == 2
    kinds = [k for k, _ in shown]
    assert kinds == ["tool_call", "tool_result", "assistant", "assistant"]
    assert shown[0][1] == "print(6*7)" and "6*7" in shown[1][1] and "succeeded" in shown[1][1]
    # the second exchange continues the first token-exactly
    first, second = trajs
    assert second.prompt_ids[:len(first.prompt_ids) + len(first.response_ids)] == first.prompt_ids + first.response_ids
    assert tok.decode(second.prompt_ids, skip_special_tokens=False).endswith(
        "<|im_start|>user\nthanks<|im_end|>\n<|im_start|>assistant\n<reason>")


def test_describe_turn_shows_parse_errors():
    from tirl.agent.trajectory import Turn

    turn = Turn(text="hm <tool_call>{bad</tool_call>", tool_calls=fmt.parse_tool_calls("<tool_call>{bad</tool_call>"))
    out = describe_turn(turn)
    assert out[0] == ("assistant", "hm") and out[1][0] == "tool_call" and "invalid JSON" in out[2][1]

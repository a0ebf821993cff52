"""Tool-call parsing and running: good, malformed, unknown, several, slow; how tools are shown."""

import copy
import json
import time

from rlhfkit.envs.calculator import CALCULATOR
from rlhfkit.envs.episodes import ChatRenderer
from rlhfkit.envs.tools import (MAX_OUTPUT_CHARS, Tool, parse_tool_calls, run_tool_calls,
                                template_supports_tools, tool, with_tools)

CALC = '<tool_call>{"name": "calculator", "arguments": {"expression": "347 * 29"}}</tool_call>'


def test_good_call_with_surrounding_text():
    calls = parse_tool_calls(f"Let me compute it.\n{CALC}\nWaiting for the result.")
    assert len(calls) == 1
    assert (calls[0].name, calls[0].arguments, calls[0].error) == ("calculator", {"expression": "347 * 29"}, "")
    msgs, errors = run_tool_calls(calls, [CALCULATOR])
    assert msgs == [{"role": "tool", "name": "calculator", "content": "10063"}] and errors == 0


def test_no_call():
    assert parse_tool_calls("The answer is 12.") == []


def test_multiple_calls_in_order():
    text = CALC + ' and <tool_call>{"name": "calculator", "arguments": {"expression": "2 + 2"}}</tool_call>'
    calls = parse_tool_calls(text)
    assert [c.arguments["expression"] for c in calls] == ["347 * 29", "2 + 2"]
    msgs, errors = run_tool_calls(calls, {"calculator": CALCULATOR})
    assert [m["content"] for m in msgs] == ["10063", "4"] and errors == 0


def test_unclosed_call_at_the_end_counts():
    calls = parse_tool_calls('<tool_call>{"name": "calculator", "arguments": {"expression": "3*3"}}')
    assert calls[0].error == "" and calls[0].arguments == {"expression": "3*3"}


def test_arguments_as_a_json_string_are_accepted():
    calls = parse_tool_calls('<tool_call>{"name": "calculator", "arguments": "{\\"expression\\": \\"1+1\\"}"}</tool_call>')
    assert calls[0].arguments == {"expression": "1+1"}


def test_malformed_calls_become_error_messages():
    cases = {
        '<tool_call>{"name": "calculator", "arguments": {"expression": "1+1"}</tool_call>': "not valid JSON",
        "<tool_call>calculator(1+1)</tool_call>": "not valid JSON",
        '<tool_call>{"name": "calculator", "arguments": {}} please</tool_call>': "extra text after the JSON",
        '<tool_call>{"arguments": {"expression": "1"}}</tool_call>': 'string "name"',
        '<tool_call>["calculator"]</tool_call>': 'string "name"',
        '<tool_call>{"name": "calculator", "arguments": [1, 2]}</tool_call>': '"arguments" must be a JSON object',
        '<tool_call>{"name": "calculator", "arguments": {}, "id": 3}</tool_call>': "unexpected key(s) ['id']",
        "<tool_call></tool_call>": "not valid JSON",
    }
    for text, why in cases.items():
        calls = parse_tool_calls(text)
        assert len(calls) == 1 and why in calls[0].error, (text, calls)
        msgs, errors = run_tool_calls(calls, [CALCULATOR])
        assert errors == 1 and msgs[0]["role"] == "tool" and msgs[0]["content"].startswith("error: ")
        assert why in msgs[0]["content"]


def test_unknown_tool_and_bad_arguments():
    calls = parse_tool_calls('<tool_call>{"name": "search", "arguments": {"q": "x"}}</tool_call>'
                             '<tool_call>{"name": "calculator", "arguments": {"expr": "1"}}</tool_call>')
    msgs, errors = run_tool_calls(calls, [CALCULATOR])
    assert errors == 2
    assert msgs[0]["content"] == "error: unknown tool 'search'; available: calculator"
    assert "missing argument(s) expression" in msgs[1]["content"]


def test_at_most_max_calls_run():
    calls = parse_tool_calls(CALC * 3)
    msgs, errors = run_tool_calls(calls, [CALCULATOR], max_calls=2)
    assert [m["content"] for m in msgs[:2]] == ["10063", "10063"]
    assert errors == 1 and "at most 2 tool calls" in msgs[2]["content"]


def test_raising_slow_and_large_tools():
    schema = {"type": "object", "properties": {}}

    @tool("boom", "raises", schema)
    def boom():
        raise RuntimeError("broken")

    slow = Tool("slow", "sleeps", schema, lambda: time.sleep(3), timeout=0.2)
    big = Tool("big", "large output", schema, lambda: "x" * (MAX_OUTPUT_CHARS + 50))
    data = Tool("data", "a dict", schema, lambda: {"a": 1})
    t0 = time.perf_counter()
    msgs, errors = run_tool_calls([c for name in ("boom", "slow", "big", "data") for c in parse_tool_calls(
        f'<tool_call>{{"name": "{name}", "arguments": {{}}}}</tool_call>')], [boom, slow, big, data])
    assert time.perf_counter() - t0 < 2.0  # the slow call was abandoned at its time limit
    assert errors == 2
    assert msgs[0]["content"] == "error: boom: RuntimeError: broken"
    assert msgs[1]["content"] == "error: slow: timed out after 0.2 s"
    assert len(msgs[2]["content"]) == MAX_OUTPUT_CHARS + len(" ...[cut]")
    assert json.loads(msgs[3]["content"]) == {"a": 1}


def test_smollm2_template_has_no_tools_so_they_go_in_the_system_message(tok):
    assert not template_supports_tools(tok)
    msgs, kw = with_tools([{"role": "user", "content": "hi"}], [CALCULATOR], native=False)
    assert kw == {} and msgs[0]["role"] == "system" and msgs[1] == {"role": "user", "content": "hi"}
    assert '"name": "calculator"' in msgs[0]["content"] and "<tool_call>" in msgs[0]["content"]
    merged, _ = with_tools([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
                           [CALCULATOR], native=False)
    assert len(merged) == 2 and merged[0]["content"].startswith("Be brief.\n\nYou can call tools.")
    text = ChatRenderer(tok, [CALCULATOR]).text([{"role": "user", "content": "hi"}], True)
    assert text.startswith("<|im_start|>system\nYou can call tools.") and '"expression"' in text
    assert "You are a helpful AI assistant named SmolLM" not in text  # our system message replaces the default


def test_template_with_tools_gets_them_natively(tok):
    qtok = copy.deepcopy(tok)
    qtok.chat_template = ("{% if tools %}<|im_start|>system\nTOOLS {{ tools | tojson }}<|im_end|>\n{% endif %}"
                          "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    assert template_supports_tools(qtok)
    text = ChatRenderer(qtok, [CALCULATOR]).text([{"role": "user", "content": "hi"}], True)
    schema = json.loads(text.split("TOOLS ", 1)[1].split("<|im_end|>", 1)[0])
    assert schema == [CALCULATOR.schema()]
    assert "You can call tools" not in text

"""Tools the policy can call during an episode, the call format, and how tools are shown to it.

A :class:`Tool` is a Python callable with a JSON-schema description (``name``,
``description``, ``parameters``). The policy calls tools Hermes/Qwen style, one JSON object per
``<tool_call>`` block::

    <tool_call>{"name": "calculator", "arguments": {"expression": "347 * 29"}}</tool_call>

:func:`parse_tool_calls` finds every block of a response; a block whose content is not exactly
one JSON object with a string ``name`` and an object ``arguments`` becomes a call carrying an
error. :func:`run_tool_calls` runs the calls and returns one ``{"role": "tool", ...}`` message
per call: the tool's result, or an error text (malformed call, unknown tool, wrong arguments,
an exception, a time-out). Nothing the policy writes raises.

Each call runs in a daemon thread with a time limit (``Tool.timeout``); a call past it is
reported as timed out and abandoned (a thread cannot be stopped, so tools should bound their
own work, as the calculator does). Results are cut to ``MAX_OUTPUT_CHARS``.

Chat templates that know tools (Qwen, Llama 3.1: the template reads a ``tools`` variable) get
the schemas as ``tools=``; for other templates (SmolLM2's) :func:`tools_system_text` describes
the tools and the call format in the system message.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

MAX_OUTPUT_CHARS = 2000
"""Longest tool result (characters) put back into the conversation; longer ones are cut."""
MAX_CALLS_PER_TURN = 8
"""Tool calls run per policy turn; further calls of that turn get an error message."""

_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
_JSON_TYPES = {"string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
               "object": (dict,), "array": (list,), "null": (type(None),)}


class ToolError(Exception):
    """Raised by a tool to report a failure to the policy: its message becomes the tool's
    answer (``error: <tool>: <message>``), without the exception's type."""


@dataclass
class ToolResult:
    text: str
    error: bool = False


@dataclass
class Tool:
    """A callable ``fn(**arguments)`` the policy may call, described by a JSON schema."""

    name: str
    description: str
    parameters: dict
    """JSON schema of the arguments: ``{"type": "object", "properties": {...}, "required": [...]}``."""
    fn: Callable[..., Any]
    timeout: float = 5.0
    """Seconds a call may take before it is reported as timed out."""

    def schema(self) -> dict:
        """The OpenAI/HF function description passed to chat templates as ``tools=[...]``."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}

    def run(self, arguments: dict) -> ToolResult:
        """Call the tool; any failure comes back as an error text, never as an exception."""
        problem = check_arguments(self.parameters, arguments)
        if problem:
            return ToolResult(f"error: {self.name}: {problem}", True)
        ok, value = call_with_timeout(self.fn, arguments, self.timeout)
        if not ok:
            return ToolResult(f"error: {self.name}: {value}", True)
        text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (dict, list)) else str(value)
        if len(text) > MAX_OUTPUT_CHARS:
            text = text[:MAX_OUTPUT_CHARS] + " ...[cut]"
        return ToolResult(text)


def tool(name: str, description: str, parameters: dict, timeout: float = 5.0):
    """Decorator making a :class:`Tool` of a function: ``@tool("add", "Add two numbers", {...})``."""
    def wrap(fn: Callable[..., Any]) -> Tool:
        return Tool(name, description, parameters, fn, timeout)
    return wrap


def check_arguments(schema: dict, arguments: dict) -> str:
    """What is wrong with ``arguments`` against an object ``schema`` (required, unknown and
    top-level JSON types); empty when nothing is."""
    props = schema.get("properties", {}) or {}
    missing = [k for k in schema.get("required", []) or [] if k not in arguments]
    if missing:
        return f"missing argument(s) {', '.join(missing)}; expected {sorted(props)}"
    unknown = [k for k in arguments if props and k not in props]
    if unknown:
        return f"unknown argument(s) {', '.join(unknown)}; expected {sorted(props)}"
    for k, v in arguments.items():
        want = (props.get(k) or {}).get("type")
        types = _JSON_TYPES.get(want) if isinstance(want, str) else None
        if types and (not isinstance(v, types) or (isinstance(v, bool) and want in ("integer", "number"))):
            return f"argument '{k}' must be a JSON {want}, got {json.dumps(v)[:60]}"
    return ""


def call_with_timeout(fn: Callable[..., Any], arguments: dict, timeout: float) -> tuple[bool, Any]:
    """``(True, fn(**arguments))`` or ``(False, message)`` when it raised or took longer than
    ``timeout`` seconds (the call is then abandoned in its daemon thread)."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn(**arguments)
        except ToolError as e:
            box["error"] = str(e)
        except BaseException as e:  # noqa: BLE001 - every failure becomes a message
            box["error"] = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        return False, f"timed out after {timeout:g} s"
    if "error" in box:
        return False, box["error"]
    return True, box.get("value")


# --------------------------------------------------------------------------- parsing

@dataclass
class ToolCall:
    name: str
    arguments: dict = field(default_factory=dict)
    error: str = ""
    """Why the block is not a usable call (empty for a well-formed one)."""


def _parse_block(body: str) -> ToolCall:
    text = body.strip()
    try:
        obj, end = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError as e:
        return ToolCall("", error=f"the tool call is not valid JSON ({e.msg} at character {e.pos}); "
                        'write <tool_call>{"name": ..., "arguments": {...}}</tool_call>')
    if text[end:].strip():
        return ToolCall("", error=f"extra text after the JSON object in the tool call: {text[end:].strip()[:40]!r}")
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return ToolCall("", error='the tool call needs a JSON object with a string "name"')
    args = obj.get("arguments", {})
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            pass
    if not isinstance(args, dict):
        return ToolCall(obj["name"], error='"arguments" must be a JSON object of argument names to values')
    extra = sorted(set(obj) - {"name", "arguments"})
    if extra:
        return ToolCall(obj["name"], error=f"unexpected key(s) {extra} in the tool call; use only name and arguments")
    return ToolCall(obj["name"], args)


def parse_tool_calls(text: str) -> list[ToolCall]:
    """Every ``<tool_call>...</tool_call>`` block of ``text`` in order (an unclosed block at the
    end counts, as a stop string may have cut its closing tag); malformed ones carry ``error``."""
    return [_parse_block(m.group(1)) for m in _CALL.finditer(text)]


def has_tool_call(text: str) -> bool:
    return "<tool_call>" in text


def run_tool_calls(calls: list[ToolCall], tools: dict[str, Tool] | list[Tool],
                   max_calls: int = MAX_CALLS_PER_TURN) -> tuple[list[dict], int]:
    """One tool message per call (result or error text) and the number of failed calls."""
    table = tools if isinstance(tools, dict) else {t.name: t for t in tools}
    messages, errors = [], 0
    for i, call in enumerate(calls):
        if i >= max_calls:
            res = ToolResult(f"error: at most {max_calls} tool calls are run per turn", True)
        elif call.error:
            res = ToolResult(f"error: {call.error}", True)
        elif call.name not in table:
            res = ToolResult(f"error: unknown tool '{call.name}'; available: {', '.join(sorted(table)) or 'none'}", True)
        else:
            res = table[call.name].run(call.arguments)
        errors += res.error
        messages.append({"role": "tool", "name": call.name or "invalid", "content": res.text})
    return messages, errors


# --------------------------------------------------------------------------- showing tools

def template_supports_tools(tokenizer) -> bool:
    """Whether the tokenizer's chat template reads a ``tools`` variable (Qwen, Llama 3.1)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default", "")
    return bool(template) and re.search(r"\btools\b", str(template)) is not None


def tools_system_text(tools: list[Tool]) -> str:
    """The description of ``tools`` and the call format for a system message."""
    lines = "\n".join(json.dumps(t.schema()["function"]) for t in tools)
    return ("You can call tools. The available tools, as JSON schemas:\n<tools>\n" + lines + "\n</tools>\n"
            "To call a tool, write\n"
            '<tool_call>{"name": "<tool name>", "arguments": {<arguments as JSON>}}</tool_call>\n'
            "The result comes back in a tool message. When you are done, answer without a tool call.")


def with_tools(messages: list[dict], tools: list[Tool], native: bool) -> tuple[list[dict], dict]:
    """``(messages, template keyword arguments)`` showing ``tools`` to the policy: as
    ``tools=`` for a template that supports them, else in the (first) system message."""
    if not tools:
        return messages, {}
    if native:
        return messages, {"tools": [t.schema() for t in tools]}
    text = tools_system_text(tools)
    if messages and messages[0].get("role") == "system":
        first = dict(messages[0], content=f"{messages[0].get('content', '')}\n\n{text}")
        return [first] + list(messages[1:]), {}
    return [{"role": "system", "content": text}] + list(messages), {}

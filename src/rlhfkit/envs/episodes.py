"""The multi-turn driver: batched episodes of a policy in an environment, with exact token accounting.

:func:`run_episodes` expands the rows ``params.n`` times (episode ``k`` of row ``r`` is index
``r * n + k``, the group of row ``r``), resets one copy of the environment per episode, and
renders the starting messages with the chat template (generation prompt appended; the
environment's tools shown through ``tools=`` or the system message, :mod:`rlhfkit.envs.tools`).
Then, turn by turn, every live episode generates in **one** ``engine.generate`` call (``n=1``
each, the full token history as the prompt), the environment steps on each response, and an
episode that goes on gets its observation appended.

Token history. The history is built by appending token ids, never by re-tokenising the
conversation: the policy's sampled ids (its end-of-turn / EOS token included) are kept as
sampled, with ``loss_mask`` 1 and their sampler log-probs. Between turns only the *new* text is
rendered: the template's rendering of the observation after an assistant turn, taken from the
end of that turn on (the end-of-turn text the policy already sampled is not repeated; a turn
that stopped without it, at a stop string or at ``max_new_tokens``, gets it from the template)
up to and including the next generation prompt. Those tokens carry ``loss_mask`` 0 and
log-prob 0.0. ``prompt_ids + completion_ids`` is therefore exactly what the next turn's prompt
was (or would be), and, when the policy's tokens are the tokenizer's own encoding of its text,
the ids of the whole conversation re-rendered by the template. Text of the environment that
spells special tokens stays text (as in :mod:`rlhfkit.data.tokenize`), so a tool result cannot
forge a turn.

An episode ends when the environment says so (``done``, or an observation of None), at the
turn limit (``max_turns``, default the environment's), or at the token budget
(``max_total_tokens``: completion tokens, policy and environment together; a turn is cut to
what is left, and an observation that would leave no room for a policy token is not added).
``finished`` is True only for the first case when the last policy turn was complete (not cut
at ``max_new_tokens`` or the budget). A turn cut at ``max_new_tokens`` is still passed to the
environment, which may go on.

Sampling noise: every call passes ``row_offset`` (the global index of this process's first
episode under data parallel). The first turn's call covers every episode in index order, so
its samples are the engine's batch-invariant ones for rows ``row_offset + index``; later calls
hold only the live episodes, keyed by ``row_offset`` plus their position in the call.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

from ..data.tokenize import Renderer
from ..errors import ConfigError
from .base import StepResult, finite_reward, merge_info
from .tools import template_supports_tools, with_tools

_TURN = "RLHFKIT_POLICY_TURN_8d1f"
"""Stand-in content of the policy's turn when rendering what follows it."""


@dataclass
class Episode:
    prompt_ids: list[int]
    """The rendered starting messages (with the generation prompt)."""
    completion_ids: list[int]
    """Everything after the prompt: policy turns and environment tokens, in order."""
    loss_mask: list[int]
    """1 for tokens the policy sampled, 0 for tool / environment / template tokens."""
    sampler_logps: list[float]
    """The sampler's log-prob of each completion token (0.0 where loss_mask is 0)."""
    reward: float
    finished: bool
    """Ended by the environment (done) rather than by the turn limit / token budget."""
    turns: int
    info: dict
    """The step infos merged (:func:`rlhfkit.envs.base.merge_info`)."""
    text: str
    """The whole transcript after the prompt, decoded (special tokens kept)."""
    messages: list[dict] = field(default_factory=list)
    """The conversation: starting messages, then each response and observation."""


class ChatRenderer:
    """Renders an environment's conversation to token ids: the starting prompt, and the
    template tokens between a policy turn and the next one."""

    def __init__(self, tokenizer, tools=None):
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("multi-turn episodes need a tokenizer with a chat template; use a chat "
                              "(instruct) model or set tokenizer.chat_template")
        self.tok, self.tools = tokenizer, list(tools or [])
        self.native = template_supports_tools(tokenizer)
        self.renderer = Renderer(tokenizer)
        self.special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])

    def text(self, messages: list[dict], generation_prompt: bool) -> str:
        msgs, kw = with_tools(self.renderer.protect(messages), self.tools, self.native)
        try:
            return self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt, **kw)
        except Exception as e:  # a template that rejects the roles or order of the messages
            roles = [m.get("role") for m in msgs]
            raise ConfigError(f"the chat template cannot render a conversation with roles {roles} "
                              f"({type(e).__name__}: {e}); use a template that accepts the environment's "
                              "messages (e.g. 'tool' or consecutive user turns)") from None

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """Ids of the starting messages with the generation prompt (as training prompts are rendered)."""
        return self.renderer.encode(self.text(messages, True), True)

    def between_turns(self, start: list[dict], observation: list[dict], last_id: int | None) -> list[int]:
        """Ids from the end of a policy turn through the next generation prompt: the template's
        text after an assistant message when ``observation`` follows it, without the special token
        ``last_id`` the policy ended its turn with when that text begins with it."""
        full = self.text(start + [{"role": "assistant", "content": _TURN}] + observation, True)
        if full.count(_TURN) != 1:
            raise ConfigError("the chat template does not render an assistant message's content verbatim, "
                              "so the tokens between turns cannot be located; use a template that does")
        after = full.split(_TURN, 1)[1]
        if last_id is not None and last_id in self.special_ids:
            ended = self.tok.decode([last_id], skip_special_tokens=False)
            if ended and after.startswith(ended):
                after = after[len(ended):]
        return self.renderer.encode(after, False)


@dataclass
class _Live:
    env: object
    start: list[dict]
    messages: list[dict]
    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    reward: float = 0.0
    info: dict = field(default_factory=dict)
    turns: int = 0
    over: bool = False
    finished: bool = False

    def append(self, ids: list[int], mask: int, logps: list[float] | None = None) -> None:
        self.completion_ids += ids
        self.loss_mask += [mask] * len(ids)
        self.logps += list(map(float, logps)) if logps is not None else [0.0] * len(ids)


def _observation(obs, where: str) -> list[dict] | None:
    """The step's observation as a message list (a string = one user message)."""
    if obs is None:
        return None
    if isinstance(obs, str):
        return [{"role": "user", "content": obs}]
    if isinstance(obs, dict):
        obs = [obs]
    if not isinstance(obs, list) or not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                            and isinstance(m.get("content"), str) for m in obs):
        raise ConfigError(f"{where}: the observation must be None, a string or a list of "
                          f"{{'role': str, 'content': str}} messages, got {str(obs)[:80]!r}")
    return [dict(m) for m in obs]


def _check_step(result, where: str) -> StepResult:
    if not all(hasattr(result, k) for k in ("observation", "reward", "done")):
        raise ConfigError(f"{where}: step() must return a StepResult(observation, reward, done, info), "
                          f"got {type(result).__name__}")
    info = getattr(result, "info", None) or {}
    if not isinstance(info, dict):
        raise ConfigError(f"{where}: StepResult.info must be a dict, got {type(info).__name__}")
    return StepResult(_observation(result.observation, where), finite_reward(result.reward, where),
                      bool(result.done), info)


def _start(env, rows: list[dict], n: int, renderer: ChatRenderer) -> list[_Live]:
    live = []
    for r, row in enumerate(rows):
        for _ in range(n):
            e = copy.copy(env)
            start = e.reset(row)
            if not isinstance(start, list) or not start or not all(isinstance(m, dict) and "role" in m for m in start):
                raise ConfigError(f"environment {type(env).__name__}: reset() of row {r} must return a non-empty "
                                  f"list of chat messages, got {str(start)[:80]!r}")
            start = [dict(m) for m in start]
            live.append(_Live(e, start, list(start), renderer.prompt_ids(start)))
    return live


def _after_turn(ep: _Live, ids: list[int], logps: list[float], complete: bool, renderer: ChatRenderer,
                max_turns: int, budget: int | None, where: str) -> None:
    """Record one policy turn of ``ep``, step its environment, append the observation or end it."""
    ep.append(ids, 1, logps)
    ep.turns += 1
    text = renderer.tok.decode(ids, skip_special_tokens=True)
    res = _check_step(ep.env.step([dict(m) for m in ep.messages], text), where)
    ep.reward += res.reward
    merge_info(ep.info, res.info)
    ep.messages.append({"role": "assistant", "content": text})
    if res.done or res.observation is None:
        ep.over, ep.finished = True, complete
        return
    if ep.turns >= max_turns:
        ep.over = True
        return
    glue = renderer.between_turns(ep.start, res.observation, ids[-1] if ids and complete else None)
    if budget is not None and len(ep.completion_ids) + len(glue) >= budget:
        ep.over = True
        return
    ep.append(glue, 0)
    ep.messages += res.observation


def run_episodes(engine, tokenizer, env, rows: list[dict], params, max_turns: int | None = None,
                 max_total_tokens: int | None = None, row_offset: int = 0, generator=None) -> list[Episode]:
    """Run ``params.n`` episodes per row of ``env`` with the policy behind ``engine`` (see the module
    docstring); one :class:`Episode` per (row, copy), row-major. ``generator`` is passed to
    ``engine.generate`` (None = the global RNG)."""
    n = max(1, int(params.n))
    turns = int(max_turns if max_turns is not None else getattr(env, "max_turns", 1))
    if turns < 1:
        raise ConfigError(f"max_turns must be >= 1, got {turns}")
    if max_total_tokens is not None and max_total_tokens < 1:
        raise ConfigError(f"max_total_tokens must be >= 1 (or None for no budget), got {max_total_tokens}")
    renderer = ChatRenderer(tokenizer, getattr(env, "tools", None))
    eps = _start(env, rows, n, renderer)
    name = type(env).__name__
    for turn in range(turns):
        live = [(i, e) for i, e in enumerate(eps) if not e.over]
        if not live:
            break
        room = [None if max_total_tokens is None else max_total_tokens - len(e.completion_ids) for _, e in live]
        cap = params.max_new_tokens if max_total_tokens is None else min(params.max_new_tokens, max(room))
        call = dataclasses.replace(params, n=1, max_new_tokens=cap)
        out = engine.generate([e.prompt_ids + e.completion_ids for _, e in live], call, generator=generator,
                              row_offset=row_offset)
        if len(out.completion_ids) != len(live):
            raise RuntimeError(f"the engine returned {len(out.completion_ids)} samples for {len(live)} prompts")
        for (i, ep), left, ids, lps, fin in zip(live, room, out.completion_ids, out.logprobs, out.finished):
            ids, lps = list(ids), list(lps)
            complete = bool(fin)
            if left is not None and len(ids) > left:
                ids, lps, complete = ids[:left], lps[:left], False
            where = f"environment {name}, episode {i} (row {i // n}), turn {ep.turns + 1}"
            _after_turn(ep, ids, lps, complete, renderer, turns, max_total_tokens, where)
            if max_total_tokens is not None and len(ep.completion_ids) >= max_total_tokens:
                ep.over = True
    return [Episode(e.prompt_ids, e.completion_ids, e.loss_mask, e.logps, e.reward, e.finished, e.turns,
                    e.info, tokenizer.decode(e.completion_ids, skip_special_tokens=False), e.messages)
            for e in eps]

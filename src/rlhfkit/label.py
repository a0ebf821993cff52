"""``rlhfkit label``: AI feedback — turn responses into preference data with a judge.

Input: preference pairs (``prompt``/``chosen``/``rejected``, e.g. HH-RLHF, whose human
labels are then used to measure the judge) or prompts, for which ``policy`` samples
``num_responses`` responses each. Judges:

* ``lm`` — any causal LM (default the embedded instruct model) asked, with a rubric, which
  of two responses is better. It is asked twice with the responses in both orders, and the
  probability it gives the first-shown response (next token "A" vs "B") is averaged over
  the orders, which cancels position bias. A pair is kept only when both orders agree
  (otherwise *inconsistent*) and the averaged preference is at least ``tie_margin`` away
  from ½ (otherwise a *tie*); both are counted and dropped.
* ``reward`` — the configured reward sources (a reward model, a verifier, a function):
  the higher score wins, equal scores are ties.

Output: a preference JSONL (``prompt``, ``chosen``, ``rejected``, ``judge_prob``) that the
DPO / RM trainers read, plus ``label_stats.json`` (kept / tie / inconsistent counts and, when
the input had human labels, the judge's agreement with them).
"""

from __future__ import annotations

import dataclasses
import json
import os
import string

import torch

from .config import DataConfig, ModelConfig
from .data.pipeline import load_records
from .data.tokenize import Renderer
from .errors import ConfigError
from .models.loading import load_model
from .rewards.base import RewardConfig, build_rewards, reward_config_from

RUBRIC = ("You are comparing two replies of an AI assistant to the same conversation. Pick the "
          "reply that is more helpful, honest and harmless.\n\nConversation:\n{conversation}\n\n"
          "Reply A:\n{a}\n\nReply B:\n{b}\n\nWhich reply is better? Answer with the single letter "
          "A or B.")

RUBRIC_PLACEHOLDERS = ("conversation", "a", "b")
"""Placeholders a rubric may use; {a} and {b} (the two replies) are required. A literal brace
is written doubled: {{ and }}."""


def check_rubric(rubric: str, key: str = "rubric") -> None:
    """ConfigError unless ``rubric`` is a valid template whose placeholders are among
    ``RUBRIC_PLACEHOLDERS`` and include {a} and {b} (a judge must see both replies)."""
    allowed = ", ".join("{" + p + "}" for p in RUBRIC_PLACEHOLDERS)
    if not isinstance(rubric, str):
        raise ConfigError(f"{key} must be a string with {allowed}, got {type(rubric).__name__}")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(rubric) if f is not None]
    except ValueError as e:
        raise ConfigError(f"{key} is not a valid template ({e}); placeholders are {allowed}, and a "
                          "literal brace is written {{ or }}") from None
    for f in fields:
        if f == "" or f.isdigit():
            raise ConfigError(f"{key} has a positional placeholder {{{f}}}; use the named ones "
                              f"{allowed} (a literal brace is written {{{{ or }}}})")
        if f not in RUBRIC_PLACEHOLDERS:
            raise ConfigError(f"{key} has an unknown placeholder {{{f}}}; the allowed placeholders "
                              f"are {allowed} (a literal brace is written {{{{ or }}}})")
    missing = [p for p in ("a", "b") if p not in fields]
    if missing:
        raise ConfigError(f"{key} must contain {{a}} and {{b}}, where the two replies are shown to "
                          f"the judge (missing {', '.join('{' + p + '}' for p in missing)}); "
                          f"allowed placeholders: {allowed}")


@dataclasses.dataclass
class LabelConfig:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    """Pairs (judged; human labels measure agreement) or prompts (responses sampled)."""
    output: str = "runs/label/pairs.jsonl"
    judge: str = "lm"
    """lm (a causal LM with a rubric) | reward (the reward sources below)."""
    judge_model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    rubric: str = RUBRIC
    """Judge prompt with {conversation}, {a} and {b}."""
    tie_margin: float = 0.0
    """Drop a pair when the order-averaged preference is within this of ½."""
    consistency: str = "strict"
    """strict: keep a pair only when both orders pick the same reply | average: decide by the
    order-averaged probability alone (keeps pairs a position-biased judge flips)."""
    max_judge_tokens: int = 1024
    """Judge inputs are cut from the left (oldest turns first) to this many tokens."""
    rewards: list[RewardConfig] = dataclasses.field(default_factory=list)
    policy: str = ""
    """For prompt-only input: the model that samples the responses (default: judge_model's)."""
    num_responses: int = 2
    max_new_tokens: int = 64
    temperature: float = 1.0
    batch_size: int = 8
    threads: int = 0
    seed: int = 0

    def validate(self, prefix: str = "") -> None:
        """Checks that need no data or model (ConfigError naming the key)."""
        if self.consistency not in ("strict", "average"):
            raise ConfigError(f"{prefix}consistency must be strict|average, got '{self.consistency}'")
        if self.judge not in ("lm", "reward"):
            raise ConfigError(f"{prefix}judge must be lm|reward, got '{self.judge}'")
        if self.judge == "lm":
            check_rubric(self.rubric, prefix + "rubric")


def as_text(x) -> str:
    """A conversation (string or message list) as plain text for the judge."""
    if isinstance(x, str):
        return x.strip()
    return "\n".join(f"{m['role'].capitalize()}: {m['content'].strip()}" for m in x)


def reply_text(x) -> str:
    """A reply (string or assistant message list) as its plain text."""
    return x.strip() if isinstance(x, str) else "\n".join(m["content"].strip() for m in x)


class LMJudge:
    def __init__(self, model, tok, rubric: str, max_tokens: int, batch_size: int, log=None):
        self.model, self.tok, self.rubric = model.eval(), tok, rubric
        self.max_tokens, self.batch_size, self.log = max_tokens, batch_size, log
        self.seen: list[float] = []  # every P(first shown is better), to measure position bias
        ids = [tok.encode(t, add_special_tokens=False) for t in ("A", "B")]
        if any(len(i) != 1 for i in ids):
            raise ConfigError("the judge's tokenizer does not encode 'A' and 'B' as single tokens")
        self.a_id, self.b_id = ids[0][0], ids[1][0]
        self.renderer = Renderer(tok, "never", "judge")

    def _input(self, conv: str, a: str, b: str) -> list[int]:
        # the conversation and replies are data: special-token strings in them stay text, so a
        # reply cannot close the judge's turn and answer for it
        r = self.renderer
        text = self.rubric.format(conversation=r.protect(conv), a=r.protect(a), b=r.protect(b))
        if getattr(self.tok, "chat_template", None):
            text = self.tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                add_generation_prompt=True)
        ids = r.encode(text, first=False)
        return ids[-self.max_tokens:]

    @torch.no_grad()
    def prob_first(self, items: list[tuple[str, str, str]]) -> list[float]:
        """P(judge picks the reply shown as A) for each (conversation, A, B), from the
        next-token logits of "A" and "B"."""
        out, device = [], next(self.model.parameters()).device
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        for i in range(0, len(items), self.batch_size):
            seqs = [self._input(*it) for it in items[i:i + self.batch_size]]
            L = max(map(len, seqs))
            ids = torch.full((len(seqs), L), pad, dtype=torch.long)
            att = torch.zeros((len(seqs), L), dtype=torch.long)
            for j, s in enumerate(seqs):  # left padding: the last position is the answer slot
                ids[j, L - len(s):], att[j, L - len(s):] = torch.tensor(s), 1
            pos = (att.cumsum(-1) - 1).clamp(min=0)
            logits = self.model(input_ids=ids.to(device), attention_mask=att.to(device),
                                position_ids=pos.to(device), logits_to_keep=1).logits[:, -1].float()
            two = torch.stack([logits[:, self.a_id], logits[:, self.b_id]], -1)
            out += torch.softmax(two, -1)[:, 0].tolist()
            self.seen += out[-len(seqs):]
            if self.log is not None and (i // self.batch_size) % 10 == 9:
                self.log(f"[label] judged {len(out)}/{len(items)} in this order")
        return out


def judge_pairs(judge: LMJudge, convs: list[str], first: list[str], second: list[str], tie_margin: float,
                strict: bool = True):
    """Both orders; return per pair (verdict, p) with verdict 1 = first better, 0 = second,
    'tie' or 'inconsistent' (strict: the orders disagree), and p = order-averaged P(first better)."""
    p_ab = judge.prob_first(list(zip(convs, first, second)))
    p_ba = judge.prob_first(list(zip(convs, second, first)))
    res = []
    for x, y in zip(p_ab, p_ba):
        p = 0.5 * (x + (1 - y))
        if strict and (x > 0.5) != ((1 - y) > 0.5):
            res.append(("inconsistent", p))
        elif abs(p - 0.5) <= tie_margin:
            res.append(("tie", p))
        else:
            res.append((1 if p > 0.5 else 0, p))
    return res


def run(cfg: LabelConfig, log=print) -> dict:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    cfg.validate()
    if cfg.judge == "reward" and not cfg.rewards:
        raise ConfigError("judge=reward needs rewards (e.g. model:runs/rm/final, gsm8k)")
    if not cfg.data.path:
        raise ConfigError("label needs data.path: preference pairs or prompts")
    rewards = build_rewards([reward_config_from(r) for r in cfg.rewards]) if cfg.judge == "reward" else None
    recs = load_records(cfg.data.path, cfg.data.rows, cfg.data, ("preference", "prompt_only"), log)
    judge_model, tok = (None, None)
    if cfg.judge == "lm":
        judge_model, tok = load_model(cfg.judge_model)
    human = all(r["kind"] == "preference" for r in recs)
    if human:  # candidates are the given pair; the human's chosen is first
        cands = [(r, [r["chosen"], r["rejected"]]) for r in recs]
    else:
        cands = _sample(cfg, recs, log)
    stats = {"items": len(cands), "kept": 0, "tie": 0, "inconsistent": 0}
    agree, out = [], []
    convs = [as_text(r["prompt"]) for r, _ in cands]
    a = [reply_text(c[0]) for _, c in cands]
    b = [reply_text(c[1]) for _, c in cands]
    if cfg.judge == "lm":
        judge = LMJudge(judge_model, tok, cfg.rubric, cfg.max_judge_tokens, cfg.batch_size, log)
        verdicts = judge_pairs(judge, convs, a, b, cfg.tie_margin, strict=cfg.consistency == "strict")
        if judge.seen:  # position bias: 0.5 = none; 1 = always the reply shown first
            stats["judge_mean_p_first_shown"] = sum(judge.seen) / len(judge.seen)
            stats["judge_picks_first_shown_rate"] = sum(p > 0.5 for p in judge.seen) / len(judge.seen)
    else:
        extras = _extras(cfg, [r for r, _ in cands])
        sa = rewards.score([r["prompt"] for r, _ in cands], a, extras).total
        sb = rewards.score([r["prompt"] for r, _ in cands], b, extras).total
        verdicts = [((1 if x > y else 0) if x != y else "tie", 1.0 if x > y else 0.0 if x < y else 0.5)
                    for x, y in zip(sa, sb)]
        rewards.close()
    for (r, c), (v, p) in zip(cands, verdicts):
        if v in ("tie", "inconsistent"):
            stats[v] += 1
            continue
        stats["kept"] += 1
        win, lose = (c[0], c[1]) if v == 1 else (c[1], c[0])
        out.append({"prompt": r["prompt"], "chosen": win, "rejected": lose, "judge_prob": p})
        if human:
            agree.append(float(v == 1))
    if human and agree:
        stats["agreement_with_human"] = sum(agree) / len(agree)
    if human:  # every pair, decided by the order-averaged probability alone (½ for an exact tie)
        ps = [p for _, p in verdicts]
        stats["agreement_order_averaged"] = sum(1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0
                                                for p in ps) / max(len(ps), 1)
    stats.update({f"{k}_rate": stats[k] / max(stats["items"], 1) for k in ("kept", "tie", "inconsistent")})
    os.makedirs(os.path.dirname(os.path.abspath(cfg.output)), exist_ok=True)
    with open(cfg.output, "w") as f:
        for rec in out:
            f.write(json.dumps(rec) + "\n")
    with open(os.path.join(os.path.dirname(os.path.abspath(cfg.output)), "label_stats.json"), "w") as f:
        json.dump(stats, f, indent=1)
    log("[label] " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items()))
    log(f"[label] wrote {len(out)} pairs to {cfg.output}")
    return stats


def _sample(cfg: LabelConfig, recs: list[dict], log) -> list[tuple[dict, list]]:
    """Prompt-only input: sample two responses per prompt from the policy."""
    from .data.tokenize import tokenize_records
    from .rl.rollout import HFBackend, SamplingParams

    if cfg.num_responses != 2:
        raise ConfigError("label compares two responses per prompt; set num_responses=2")
    name = cfg.policy or cfg.judge_model.name
    policy, tok = load_model(dataclasses.replace(cfg.judge_model, name=name))
    exs = tokenize_records([dict(r, kind="prompt_only") for r in recs], tok, cfg.data, source=cfg.data.path, log=log)
    ro = HFBackend(policy, tok, 64).generate([e.prompt for e in exs], SamplingParams(
        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, n=2),
        generator=torch.Generator().manual_seed(cfg.seed))
    return [(dict(e.extra, kind="prompt_only", row=e.row), ro.texts[2 * i:2 * i + 2]) for i, e in enumerate(exs)]


def _extras(cfg: LabelConfig, recs: list[dict]) -> list[dict]:
    """The input rows' other fields (e.g. ``answer`` for a verifier), by source row number."""
    from .data.loading import load_rows

    raw = load_rows(cfg.data.path, split=cfg.data.split, rows=cfg.data.rows or None)
    by_row = dict(zip(raw.index, raw.rows))
    skip = ("prompt", "chosen", "rejected", "completion")
    return [{k: v for k, v in by_row.get(r["row"], r).items() if k not in skip} for r in recs]

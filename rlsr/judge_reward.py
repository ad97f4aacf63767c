"""The judge as a reward (`--reward judge`): an LLM grades each answer given the question and the reference answer,
reference-guided as MT-Bench's judge grades questions that have one (Zheng et al. 2023, arXiv 2306.05685).

    train_rlsr.py --reward judge --reward-judge-url http://localhost:8000/v1 --reward-judge-model Qwen/Qwen2.5-7B-Instruct \
        --reward-judge-key-env ''
    train_rlsr.py --reward cosine=0.5,judge=0.5 --reward-judge path/to/judge   # a local HF-layout checkpoint

The judge is one of rlsr/judge.py's backends: HTTPJudge (any OpenAI-compatible endpoint: concurrent requests,
`--reward-judge-workers`, each with a timeout and bounded retries of failed requests, so a call takes bounded time)
or LocalJudge (greedy, batched, by rlsr's own engine). Under torchrun each rank grades its own rows (and loads its
own local judge). In eval.py the column `judge` uses eval.py's own judge
(--judge / --judge-url) with this prompt, asked for by eval.py --judge-reward.

Prompt. The file `--judge-reward-prompt` (default rlsr/prompts/judge_reward.txt, read it and replace it) is one user
turn with the fields {question}, {reference} and {answer}, and nothing else in braces. The question is the last user
turn of the conversation the policy answered; a conversation with earlier turns is given whole, one "Role: text"
paragraph per turn.

Parsing is strict: the reply must hold a rating in double brackets, `[[7]]` (a number from 1 to 10, decimals
allowed as MT-Bench's parser allows them), and no other rating: two different ratings, `[7]`, `7/10`, 0 or 11 are
unparseable. The reward is (rating - 1) / 9, in [0, 1].

An unparseable reply is asked again (`--reward-judge-retries` times): the conversation goes on with the judge's
reply and a request for the rating alone in the required form, since asking a greedy judge the same question again
gets the same reply. A reply still unparseable after that is counted (`reward/judge_unparsed`, the fraction of the
call's replies; `reward/judge_retried`, the fraction that needed a second request) and takes the mean of the parsed
values of the same prompt's answers in the call (its group of G samples; in eval.py, where a prompt has one answer,
the mean of the call), so that the judge's term adds about nothing to its advantage: it neither rewards nor punishes
a sample the judge did not grade, and the group's other samples keep their ranking. Excluding it from the loss would be the exact treatment but
needs a mask through rollout, advantages and loss for one reward; a fixed value (0, or 0.5) would be a reward the
judge never gave. When more than `--reward-judge-max-unparsed` of a call's replies (default 0.1) stay unparseable,
the run stops with an error (its checkpoints intact): the judge is not grading, and a reward made of imputed values
would train on noise.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import string
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from tqdm import tqdm

from rlsr.assets import default_policy_path
from rlsr.judge import HTTPJudge, JudgeError, JudgeFn, LocalJudge

DEFAULT_PROMPT = Path(__file__).parent / "prompts" / "judge_reward.txt"
FIELDS = ("question", "reference", "answer")
REPAIR = ("Your reply did not give one rating in the required form. Reply with the rating only, as [[N]] with N "
          "from 1 to 10.")
_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")


@dataclass
class JudgeRewardConfig:
    """The grading judge of `--reward judge` (`add_judge_reward_args`); field x is the flag --reward-judge-x."""
    path: str | None = None              # --reward-judge: a local HF-layout judge checkpoint
    url: str | None = None               # --reward-judge-url: an OpenAI-compatible endpoint
    model: str = "gpt-4o-mini"           # --reward-judge-model: the model name sent to the endpoint
    key_env: str = "OPENAI_API_KEY"      # --reward-judge-key-env ('' = no key)
    workers: int = 8                     # --reward-judge-workers: concurrent requests
    timeout: float = 60.0                # --reward-judge-timeout: seconds per request
    max_tokens: int = 128                # --reward-judge-max-tokens: reply length (a justification, then the rating)
    retries: int = 2                     # --reward-judge-retries: requests for the rating alone after a bad reply
    max_unparsed: float = 0.1            # --reward-judge-max-unparsed: the fraction of a call that stops the run
    prompt: str | None = None            # --judge-reward-prompt: the template file (None: DEFAULT_PROMPT)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "JudgeRewardConfig":
        default = cls()
        flag = {f.name: "judge_reward_prompt" if f.name == "prompt" else
                "reward_judge" if f.name == "path" else f"reward_judge_{f.name}" for f in fields(cls)}
        return cls(**{f.name: getattr(args, flag[f.name], getattr(default, f.name)) for f in fields(cls)})

    def check(self):
        """ValueError naming the flag that is out of range."""
        for flag, ok in (("--reward-judge-workers", self.workers >= 1), ("--reward-judge-max-tokens", self.max_tokens >= 1),
                         ("--reward-judge-timeout", math.isfinite(self.timeout) and self.timeout > 0),
                         ("--reward-judge-retries", self.retries >= 0),
                         ("--reward-judge-max-unparsed", 0 <= self.max_unparsed < 1)):
            if not ok:
                raise ValueError(f"{flag} {getattr(self, flag.removeprefix('--reward-judge-').replace('-', '_'))} is "
                                 "out of range (workers, max tokens >= 1; timeout > 0; retries >= 0; max unparsed in "
                                 "[0, 1))")

    @property
    def given(self) -> bool:
        """Whether any flag differs from its default (they mean nothing without --reward judge)."""
        return self != JudgeRewardConfig()


def add_judge_reward_args(g: argparse._ArgumentGroup):
    g.add_argument("--reward-judge", metavar="CKPT", help="--reward judge: a local HF-layout judge checkpoint ('base': "
                   "the packaged default policy, a judge for tests only)")
    g.add_argument("--reward-judge-url", metavar="URL", help="--reward judge: an OpenAI-compatible endpoint, e.g. "
                   "http://localhost:8000/v1")
    g.add_argument("--reward-judge-model", default="gpt-4o-mini", help="model name sent to --reward-judge-url")
    g.add_argument("--reward-judge-key-env", default="OPENAI_API_KEY", help="environment variable holding the "
                   "endpoint's key ('' = none)")
    g.add_argument("--reward-judge-workers", type=int, default=8, help="concurrent requests to --reward-judge-url")
    g.add_argument("--reward-judge-timeout", type=float, default=60.0, help="seconds per request (failed requests "
                   "are retried 4 times with backoff, then the run stops)")
    g.add_argument("--reward-judge-max-tokens", type=int, default=128, help="judge reply length in tokens")
    g.add_argument("--reward-judge-retries", type=int, default=2, help="times an unparseable reply is followed by "
                   "a request for the rating alone")
    g.add_argument("--reward-judge-max-unparsed", type=float, default=0.1, metavar="F", help="stop the run when "
                   "more than this fraction of a step's replies stay unparseable (default 0.1)")
    g.add_argument("--judge-reward-prompt", metavar="FILE", help="the judge's prompt template, with {question}, "
                   "{reference} and {answer} (default rlsr/prompts/judge_reward.txt)")


def read_template(path: str | Path | None) -> str:
    """The prompt template; an error naming the file when its fields are not exactly question, reference, answer."""
    path = Path(path) if path else DEFAULT_PROMPT
    text = path.read_text()
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
    except ValueError as e:  # a lone brace
        raise ValueError(f"{path}: not a prompt template ({e}); write literal braces as {{{{ and }}}}") from None
    if sorted(set(names)) != sorted(FIELDS) or any(n != n.strip() or not n for n in names):
        raise ValueError(f"{path}: a judge prompt has the fields {{question}}, {{reference}} and {{answer}} and no "
                         f"others; this one has {sorted(set(names)) or 'none'}")
    return text


def parse_rating(reply: str) -> float | None:
    """A judge reply -> its rating in [1, 10], or None: no `[[N]]`, two different ones, or out of range."""
    found = {float(m) for m in _RATING.findall(reply)}
    if len(found) != 1:
        return None
    rating = found.pop()
    return rating if 1 <= rating <= 10 else None


def question_of(prompt: list[dict]) -> str:
    """The question a conversation asks: its last user turn alone, or every turn as "Role: text" paragraphs when
    there were earlier turns (a system prompt is left out)."""
    turns = [m for m in prompt if m["role"] != "system"]
    if len(turns) == 1:
        return turns[0]["content"].strip()
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content'].strip()}" for m in turns)


def make_backend(cfg: JudgeRewardConfig, device=None, dtype=None) -> JudgeFn:
    """The judge the flags name: a local checkpoint or an endpoint (exactly one)."""
    if bool(cfg.path) == bool(cfg.url):
        raise ValueError("--reward judge needs a judge: --reward-judge CKPT (a local checkpoint) or --reward-judge-url "
                         "URL, one of them")
    if cfg.url:
        return HTTPJudge(cfg.model, base_url=cfg.url, api_key_env=cfg.key_env or None, max_tokens=cfg.max_tokens,
                         timeout=cfg.timeout, workers=cfg.workers, system_prompt=None)
    path = default_policy_path() if cfg.path == "base" else cfg.path
    return LocalJudge.from_pretrained(path, dtype=dtype, device=device, max_new_tokens=cfg.max_tokens,
                                      system_prompt=None)


class JudgeReward:
    """A reward component: `JudgeReward(judge)(prompts, responses, references) -> (values [N] in [0, 1], stats)`.
    The module docstring gives the prompt, the parsing and what an unparseable reply gets."""

    def __init__(self, judge: JudgeFn, template: str, retries: int = 2, max_unparsed: float = 0.1):
        self.judge, self.template, self.retries, self.max_unparsed = judge, template, retries, max_unparsed

    def __call__(self, prompts: list[list[dict]], responses: list[str], references: list[str]
                 ) -> tuple[torch.Tensor, dict]:
        n = len(responses)
        asks = [[{"role": "user", "content": self.template.format(question=question_of(p), reference=r.strip(),
                                                                    answer=y.strip())}]
                for p, y, r in zip(prompts, responses, references)]
        ratings: list[float | None] = [None] * n
        retried, last_bad = set(), ""
        todo = list(range(n))
        for attempt in range(self.retries + 1):
            replies = self.judge([asks[i] for i in todo])                # one batched, concurrent call
            if len(replies) != len(todo):
                raise JudgeError(f"the judge returned {len(replies)} replies for {len(todo)} prompts")
            for i, reply in zip(todo, replies):
                ratings[i] = parse_rating(reply)
                last_bad = reply if ratings[i] is None else last_bad
                asks[i] = asks[i] + [{"role": "assistant", "content": reply}, {"role": "user", "content": REPAIR}]
            todo = [i for i in todo if ratings[i] is None]
            if not todo:
                break
            if attempt < self.retries:
                retried.update(todo)
        unparsed = len(todo)
        if n and unparsed / n > self.max_unparsed:
            raise JudgeError(f"the reward judge's replies to {unparsed} of {n} answers held no rating [[1]] .. [[10]] "
                             f"after {self.retries} requests for one, more than --reward-judge-max-unparsed "
                             f"{self.max_unparsed}; one of them: {last_bad[:200]!r}. Check the judge and its prompt")
        values = [None if s is None else (s - 1) / 9 for s in ratings]
        parsed = [v for v in values if v is not None]
        call_mean = sum(parsed) / len(parsed) if parsed else 0.0
        groups: dict[str, list[float]] = {}
        for p, r, v in zip(prompts, references, values):
            if v is not None:
                groups.setdefault(json.dumps([p, r]), []).append(v)
        for i in todo:  # the mean of the same prompt's graded answers: the judge's term is neutral
            same = groups.get(json.dumps([prompts[i], references[i]]))
            values[i] = sum(same) / len(same) if same else call_mean
        stats = {"reward/judge_unparsed": unparsed / max(n, 1), "reward/judge_retried": len(retried) / max(n, 1)}
        if unparsed:
            tqdm.write(f"note: the reward judge gave no rating for {unparsed} of {n} answers; each took its prompt's "
                       "mean")
        return torch.tensor(values, dtype=torch.float64), stats


def build(cfg: JudgeRewardConfig, judge: JudgeFn | None = None, device=None) -> JudgeReward:
    """The component the flags describe; `judge`: a backend to use instead of the flags' (eval.py's judge)."""
    cfg.check()
    template = read_template(cfg.prompt)
    if judge is None:
        judge = make_backend(cfg, device)
    return JudgeReward(judge, template, cfg.retries, cfg.max_unparsed)

"""Pairwise LLM judge in the style of AlpacaEval 2: is the model's output better than the reference output?

Prompt. The judge sees one instruction and two outputs labelled "Output (A)" and "Output (B)" and must reply with a
single letter. Every pair is judged in both orders (model as A, then model as B) because judges, small ones above
all, prefer one position; averaging the two orders cancels a constant position bias.

Scoring (per instruction i, per order o): 1 if the judge picked the model's output, 0 if it picked the reference,
0.5 if its reply could not be parsed (an abstention counts as a tie, as AlpacaEval counts ties). The instruction's
score is the mean over its two orders, so it is 0, 0.25, 0.5, 0.75 or 1; the win rate is the mean over instructions.
A judge that always answers "A" therefore scores every item 0.5. `consistency` is the fraction of instructions
whose two verdicts both parsed and named the same output; `unparseable` counts single replies (out of 2n).

Parsing (`parse_verdict`) reads the start of the reply only, after dropping markdown (* _ ` #) and quotes:
  - a lone letter "A"/"B", either case ("a" alone is not an article);
  - an upper-case A/B, optionally bracketed, followed by the end, a newline, punctuation or " is": "A.", "(B)",
    "A: ...", "B is better";
  - a label (any case) then the letter: "Output (A)", "Answer: B", "The better output is A", "response (b)";
    after a label a lower-case letter counts only bracketed or at the very end ("Answer: a good one" is not A).
A bare "A " followed by more words is rejected: "A good answer..." is an article, not a verdict.

The length-controlled win rate of these preferences is rlsr/lc_win_rate.py.

Backends are callables `judge(prompts) -> list[str]` (raw replies). A prompt is a string (one user turn, after the
backend's own system prompt) or a whole conversation, a list of {"role", "content"} sent as it is (Arena-Hard
brings its own system prompts, rlsr/arena_hard.py):
  - LocalJudge: an HF-layout checkpoint run greedily by rlsr's own engine.
  - HTTPJudge: any OpenAI-compatible server, e.g. HTTPJudge("gpt-4o-mini") or, for vLLM,
    HTTPJudge("Qwen/Qwen2.5-7B-Instruct", base_url="http://localhost:8000/v1", api_key_env=None).
    The key is read from the environment variable `api_key_env` (default OPENAI_API_KEY) and never logged.
"""
from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, Union

Prompt = Union[str, list]  # a user turn, or a whole conversation [{"role", "content"}, ...]
JudgeFn = Callable[[list[Prompt]], list[str]]

SYSTEM_PROMPT = "You are an impartial evaluator. You compare two outputs and reply with a single letter."
PROMPT_TEMPLATE = """Decide which output follows the instruction better: more helpful, accurate and complete, \
with no padding. Do not favour an output for its position or its length.

# Instruction
{instruction}

# Output (A)
{output_a}

# Output (B)
{output_b}

Which output is better? Reply with exactly one letter: A or B."""


def build_judge_prompt(instruction: str, output_a: str, output_b: str) -> str:
    return PROMPT_TEMPLATE.format(instruction=instruction.strip(), output_a=output_a.strip(),
                                  output_b=output_b.strip())


_DECOR = re.compile(r"[*_`#\"'“”‘’]")
# Case-insensitive label, then the letter: bracketed or at the end in either case, bare only upper-case
# ("Answer: a good one" is an article).
_LABELLED = re.compile(r"^(?i:(?:the\s+)?(?:(?:better|best|preferred|winning|final)\s+)?"
                       r"(?:output|response|answer|verdict|choice)\s*(?:is\s*)?[:=\-]?\s*)"
                       r"(?:\(([ABab])\)|\[([ABab])\]|([AB])\b|([ab])$)")
_BARE = re.compile(r"^[(\[]?([AB])[)\]]?(?:$|\n|[.,:;!?)\]]|\s+is\b)")


def parse_verdict(text: str) -> str | None:
    """Judge reply -> "A", "B" or None (unparseable). Rules in the module docstring."""
    s = _DECOR.sub(" ", text).strip()  # a space, not "", so that "A's" keeps a word boundary after the letter
    if s.upper() in ("A", "B"):
        return s.upper()
    m = _BARE.match(s) or _LABELLED.match(s)
    return next(g for g in m.groups() if g).upper() if m else None


# Unparseable replies count as ties, but a judge that fails on more than half of them (and more than this many) is
# an error: its win rate would be mostly made of ties it never gave.
MAX_UNPARSEABLE = 8


def pairwise_win_rate(judge: JudgeFn, instructions: Sequence[str], model_outputs: Sequence[str],
                      reference_outputs: Sequence[str]) -> dict:
    """Judge model vs reference on every instruction, in both orders, in one judge call.

    Returns win_rate (mean of per_item), per_item (scores in {0, .25, .5, .75, 1}, for bootstrap intervals),
    consistency, unparseable (count of replies), n, and per item the verdicts (model_as_A, model_as_B), each
    "model" / "reference" / None, and the raw replies.
    """
    n = len(instructions)
    if not (len(model_outputs) == len(reference_outputs) == n):
        raise ValueError(f"lengths differ: {n} instructions, {len(model_outputs)} model outputs, "
                         f"{len(reference_outputs)} reference outputs")
    if n == 0:
        raise ValueError("no instructions to judge")
    prompts = [build_judge_prompt(q, m, r) for q, m, r in zip(instructions, model_outputs, reference_outputs)]
    prompts += [build_judge_prompt(q, r, m) for q, m, r in zip(instructions, model_outputs, reference_outputs)]
    replies = judge(prompts)
    if len(replies) != 2 * n:
        raise ValueError(f"judge returned {len(replies)} replies for {2 * n} prompts")
    letters = [parse_verdict(r) for r in replies]
    failed = sum(x is None for x in letters)
    if failed > max(MAX_UNPARSEABLE, len(letters) // 2):
        raise JudgeError(f"{failed} of {len(letters)} judge replies are not verdicts (A or B), e.g. "
                         f"{next(r for r, x in zip(replies, letters) if x is None)[:100]!r}; scoring them as ties "
                         "would report a win rate of 0.5 that the judge never gave")
    # Order 0 shows the model as A, order 1 as B: map letters to which output was picked.
    picked = {0: {"A": "model", "B": "reference"}, 1: {"A": "reference", "B": "model"}}
    score = {"model": 1.0, "reference": 0.0, None: 0.5}
    verdicts, per_item = [], []
    for i in range(n):
        v = (picked[0].get(letters[i]), picked[1].get(letters[n + i]))
        verdicts.append(v)
        per_item.append((score[v[0]] + score[v[1]]) / 2)
    consistent = sum(v[0] is not None and v[0] == v[1] for v in verdicts)
    return {"win_rate": sum(per_item) / n, "per_item": per_item, "consistency": consistent / n,
            "unparseable": sum(x is None for x in letters), "n": n, "verdicts": verdicts,
            "replies": list(zip(replies[:n], replies[n:]))}


def conversation(prompt: Prompt, system_prompt: str | None) -> list[dict]:
    """A prompt as the messages a backend sends: a string becomes [system?, user]; a list is sent as it is."""
    if isinstance(prompt, str):
        return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + \
            [{"role": "user", "content": prompt}]
    return [dict(m) for m in prompt]


class LocalJudge:
    """A chat checkpoint run greedily by rlsr.sampling.generate; batches prompts of similar length together."""

    def __init__(self, model, tokenizer, max_new_tokens: int = 8, batch_size: int = 8,
                 system_prompt: str | None = SYSTEM_PROMPT):
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.batch_size, self.system_prompt = max_new_tokens, batch_size, system_prompt

    @classmethod
    def from_pretrained(cls, path, dtype=None, device=None, **kwargs) -> "LocalJudge":
        from rlsr.model import Transformer
        from rlsr.tokenizer import Tokenizer
        tok = Tokenizer.from_pretrained(path)
        return cls(Transformer.from_pretrained(path, dtype=dtype, device=device, output_vocab=tok.vocab_size), tok,
                   **kwargs)

    def __call__(self, prompts: list[Prompt]) -> list[str]:
        from rlsr.sampling import SamplingParams, complete
        ids = [self.tokenizer.apply_chat_template(conversation(p, self.system_prompt), add_generation_prompt=True)
               for p in prompts]
        tok = self.tokenizer
        return complete(self.model, tok, ids, SamplingParams(max_new_tokens=self.max_new_tokens, temperature=0.0),
                        batch_size=self.batch_size)[0]


class JudgeError(RuntimeError):
    pass


def probe(judge: JudgeFn):
    """Before any answer is generated: the judge must reply to one pairwise prompt with an obvious verdict, and the
    reply must parse, else JudgeError (a judge that never parses would score every prompt a tie)."""
    reply = judge([build_judge_prompt("Reply with the single word: yes.", "yes", "I will not answer that.")])[0]
    if parse_verdict(reply) is None:
        raise JudgeError(f"the judge's reply to a test prompt is not a verdict (A or B): {reply[:100]!r}; every "
                         "prompt would score a tie. Check the judge model and its chat template")


class HTTPJudge:
    """An OpenAI-compatible chat-completions endpoint (POST {base_url}/chat/completions), stdlib only.

    Retries 429, 5xx, timeouts and connection errors `retries` times with exponential backoff (or the server's
    Retry-After, at most 60 s); any other HTTP error fails at once. Errors name the URL and status, never the key.
    Bounds: each attempt ends after `timeout` seconds however the server trickles its reply, and a reply over
    MAX_REPLY_BYTES is an error; so one prompt fails within `bound_seconds` (~5 minutes by default), and the first
    prompt that fails cancels the prompts not yet sent.
    """
    MAX_REPLY_BYTES = 1 << 24

    def __init__(self, model: str, base_url: str = "https://api.openai.com/v1",
                 api_key_env: str | None = "OPENAI_API_KEY", max_tokens: int = 8, timeout: float = 60.0,
                 retries: int = 4, backoff: float = 1.0, workers: int = 4, system_prompt: str | None = SYSTEM_PROMPT):
        self.model, self.url = model, base_url.rstrip("/") + "/chat/completions"
        self.api_key_env = api_key_env
        if api_key_env is not None and not os.environ.get(api_key_env):
            raise JudgeError(f"environment variable {api_key_env} holding the API key for {self.url} is not set "
                             "(pass api_key_env=None for a server without authentication)")
        self.max_tokens, self.timeout, self.retries, self.backoff = max_tokens, timeout, retries, backoff
        self.workers, self.system_prompt = workers, system_prompt

    @property
    def bound_seconds(self) -> float:
        """The longest one prompt can take before it fails: every attempt's timeout and the waits between them."""
        return (self.retries + 1) * self.timeout + sum(min(self.backoff * 2 ** a, 60.0) for a in range(self.retries))

    def __call__(self, prompts: list[Prompt]) -> list[str]:
        pool = ThreadPoolExecutor(max_workers=max(1, self.workers))
        try:
            return list(pool.map(self.complete, prompts))
        finally:  # after a failure, the prompts not yet sent are not sent
            pool.shutdown(wait=False, cancel_futures=True)

    def _request(self, prompt: Prompt) -> urllib.request.Request:
        body = {"model": self.model, "messages": conversation(prompt, self.system_prompt),
                "temperature": 0, "max_tokens": self.max_tokens}
        headers = {"Content-Type": "application/json"}
        if self.api_key_env is not None:  # read at call time so the key lives in no attribute
            headers["Authorization"] = f"Bearer {os.environ.get(self.api_key_env, '')}"
        return urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")

    def complete(self, prompt: Prompt) -> str:
        """One judge prompt (a user turn or a conversation) -> the reply text."""
        last = ""
        for attempt in range(self.retries + 1):
            wait = min(self.backoff * 2 ** attempt, 60.0)
            try:
                deadline = time.monotonic() + self.timeout
                with urllib.request.urlopen(self._request(prompt), timeout=self.timeout) as resp:
                    return self._content(self._read(resp, deadline))
            except urllib.error.HTTPError as e:
                if e.code != 429 and e.code < 500:
                    # 401/403 bodies may echo part of the key, so only other statuses show the server's message.
                    detail = "check the key" if e.code in (401, 403) else e.read()[:300].decode(errors="replace")
                    key = os.environ.get(self.api_key_env or "", "")
                    detail = detail.replace(key, "***") if key else detail
                    raise JudgeError(f"POST {self.url}: HTTP {e.code} {e.reason}: {detail}") from None
                last = f"HTTP {e.code} {e.reason}"
                retry_after = e.headers.get("Retry-After", "") if e.headers else ""
                if retry_after.replace(".", "", 1).isdigit():
                    wait = min(float(retry_after), 60.0)
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            if attempt < self.retries:
                time.sleep(wait)
        raise JudgeError(f"POST {self.url}: failed after {self.retries + 1} attempts, last error {last}")

    def _read(self, resp, deadline: float) -> bytes:
        """The reply body, read in pieces until `deadline` (socket timeouts alone let a trickling server hold a
        request forever) and at most MAX_REPLY_BYTES."""
        body = bytearray()
        while piece := resp.read1(1 << 16):
            body += piece
            if len(body) > self.MAX_REPLY_BYTES:
                raise JudgeError(f"POST {self.url}: the reply is longer than {self.MAX_REPLY_BYTES} bytes")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the reply took more than {self.timeout:g} s")
        return bytes(body)

    def _content(self, raw: bytes) -> str:
        try:
            return json.loads(raw)["choices"][0]["message"]["content"] or ""  # content is null on refusals
        except (ValueError, KeyError, IndexError, TypeError):
            raise JudgeError(f"POST {self.url}: not an OpenAI chat-completions reply: {raw[:200]!r}") from None

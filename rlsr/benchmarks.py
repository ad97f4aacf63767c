"""The benchmarks eval.py runs, each a small unit: load its prompts -> answer them (greedy, every checkpoint the same
prompts) -> score the answers and write them in the benchmark's own format for its official tools.

    alpaca_eval   AlpacaEval-style prompts with reference answers (--data, --split; rlsr/data.py): every reward of
                  rlsr/reward.py as a column (`reward_columns`), length, terminated (ended by a stop token), distinct-2,
                  and with a judge the win rate against the reference and the length-controlled win rate
                  (rlsr/judge.py, rlsr/lc_win_rate.py)
    arena_hard    Arena-Hard v2.0's questions, judged against each category's baseline (rlsr/arena_hard.py)
    ifeval        IFEval's prompts, scored by Google's checkers (rlsr/ifeval.py)
    lm_eval       the paper's 18 lm-eval-harness tasks (rlsr/lm_tasks.py, rlsr/lm_score.py): documents, not chat
                  prompts, scored by log-likelihood or greedy exact match as lm-eval-harness's `--model hf` scores
                  them; its own `answer` and `score`

A new benchmark is a subclass of `Benchmark` in this file, named in BENCHMARKS: eval.py gives it its
--no-<name> and --<name>-limit flags (and those its `add_args` declares), the shared length filter
(`filter_prompts`, for chat prompts), the answers, the columns of results.md with their intervals and paired
differences, and --resume. Its `score` returns one value (or record, see rlsr.metrics.Statistic) per prompt for each
metric.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from rlsr import arena_hard, lm_tasks
from rlsr.assets import ENCODERS, POLICIES, default_policy_path, encoder_path
from rlsr.checkpoint import weights_digest
from rlsr.data import DataError, load_arena_hard, load_dataset, load_ifeval, prompt_key
from rlsr.encoder import Encoder
from rlsr.ifeval import METRICS as IFEVAL_METRICS
from rlsr.ifeval import score_ifeval, write_input_response_data
from rlsr.judge import SYSTEM_PROMPT, HTTPJudge, LocalJudge, pairwise_win_rate, probe
from rlsr.judge_reward import JudgeRewardConfig
from rlsr.lc_win_rate import LC_FOLDS, lc_win_rate
from rlsr.metrics import distinct_n
from rlsr.model import check_model_dir
from rlsr.reward import REWARDS, Build, Component, RewardConfig
from rlsr.sampling import SamplingParams, complete
from rlsr.tokenizer import Tokenizer, read_chat_template
from rlsr.training import splits


class EvalError(Exception):
    """A problem with the user's flags, checkpoints or data: printed as one line, exit status 2."""


@dataclass
class Prompts:
    """One benchmark's prompts: items (Examples / question dicts / IFEval records / lm-eval documents), their ids and
    their chat messages (chat prompts only)."""
    name: str
    items: list
    ids: list[str]
    messages: list[list[dict]]
    total: int = 0                          # prompts before the length filter (after --limit)
    left_out: list[str] = field(default_factory=list)


@dataclass
class Judges:
    pairwise: object      # AlpacaEval-2-style single-letter judge (rlsr/judge.py)
    arena_hard: object    # the same model answering Arena-Hard's conversations, with long replies
    name: str             # directory name of its arena-hard-auto judgments
    chunk: int            # prompts per call (a progress step); enough to keep every HTTP worker busy
    grading: object       # the same model grading one answer against the reference: the `judge` reward column


@dataclass
class Context:
    """What scoring needs besides the answers, the same for every checkpoint."""
    out: Path                                # --out-dir
    columns: dict[str, Component]            # the reward columns (`reward_columns`)
    judges: Judges | None


@dataclass
class Scores:
    """One checkpoint's results on one benchmark."""
    per_item: dict[str, object] = field(default_factory=dict)   # metric -> per-prompt values or records
    extra: dict[str, dict] = field(default_factory=dict)        # results.json fields beside the metrics
    notes: list[str] = field(default_factory=list)              # said, and kept in results.md
    seconds: dict[str, float] = field(default_factory=dict)     # time of each judging phase


class WithProgress:
    """A judge called in chunks, so that a progress bar (with ETA) advances as replies come back."""

    def __init__(self, judge, desc: str, chunk: int):
        self.judge, self.desc, self.chunk = judge, desc, chunk

    def __call__(self, prompts: list) -> list[str]:
        out = []
        with tqdm(total=len(prompts), desc=self.desc, unit="prompt", leave=False) as bar:
            for s in range(0, len(prompts), self.chunk):
                out += self.judge(prompts[s:s + self.chunk])
                bar.update(min(self.chunk, len(prompts) - s))
        return out


def take(items: list, ids: list[str], n: int | None, spread: bool) -> list:
    """The first n items, or with `spread` the n whose ids have the smallest sha256 (in their file order)."""
    if not n or n >= len(items):
        return items
    if not spread:
        return items[:n]
    chosen = set(sorted(range(len(items)), key=lambda i: hashlib.sha256(ids[i].encode()).hexdigest())[:n])
    return [x for i, x in enumerate(items) if i in chosen]


class Benchmark:
    name: str
    help: str               # for --no-<name>
    own_limit = True        # a --<name>-limit flag (0 = as --limit)
    alias: str | None = None    # a shorter prefix its --<name>-... flags also answer to (--<alias>-limit, ...)
    limit_help = "first N %s prompts (0 = as --limit)"
    chat_prompts = True     # prompts are chat messages: chat-formatted, length-filtered, answered greedily
    finish_reasons = False  # `answer` also returns each answer's finish reason ("stop" or "length") for `score`
    written: tuple[str, ...] = ()   # what its `score` writes under --out-dir (--overwrite removes it)

    @classmethod
    def add_args(cls, g: argparse._ArgumentGroup):
        """Flags of its own, --<name>-... (eval.py's benchmarks group)."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.limit = (getattr(args, f"{self.name}_limit", 0) if self.own_limit else 0) or args.limit or None
        self.prompts: Prompts | None = None

    def load(self, checkpoints: list) -> Prompts:
        """The prompts (at most the limit); checkpoints: eval.py's, for a benchmark whose choice depends on them."""
        raise NotImplementedError

    def check(self):
        """After the length filter, before any answer: read what scoring needs, so that a problem shows now."""

    def check_positions(self, checkpoints: list):
        """Every answer's new tokens must fit each checkpoint's positions (a chat benchmark: --max-new-tokens)."""
        for c in checkpoints:
            if self.args.max_new_tokens >= c.positions:
                raise EvalError(f"--max-new-tokens {self.args.max_new_tokens}: checkpoint {c.name} has {c.positions} "
                                "positions (max_position_embeddings of its config.json)")

    def notes(self, checkpoints: list) -> dict[str, str]:
        """Per checkpoint name, a note on these prompts (said at the start and kept in results.md)."""
        return {}

    def answer(self, model, tokenizer, prompt_ids: list[list[int]] | None, desc: str) -> tuple:
        """One checkpoint's answers, as the arguments `score` takes after (ctx, name); by default greedy, at most
        --max-new-tokens: (texts, token counts with the stop[, finish reasons]). prompt_ids: the chat prompts' ids
        (None otherwise)."""
        params = SamplingParams(self.args.max_new_tokens, temperature=0.0)
        with tqdm(total=len(prompt_ids), desc=desc, unit="prompt", leave=False) as bar:
            return complete(model, tokenizer, prompt_ids, params, self.args.batch_size, progress=bar,
                            with_finish=self.finish_reasons)

    def score(self, ctx: Context, name: str, answers: list[str], lengths: list[int]) -> Scores:
        """The metrics of one checkpoint's answers (named `name`), its files written under ctx.out."""
        raise NotImplementedError


# ---------------------------------------------------------------- AlpacaEval


def reward_columns(encoders: dict[str, str], asked: set[str], encoder_of: Callable[[str], object],
                   judge: object = None) -> dict[str, Component]:
    """Every reward of rlsr/reward.py as a column: <reward>_<key> for each encoder (name or path by column key) when
    it compares through one, else <reward>; rewards that are not computed by default only when asked. judge: the
    backend the judge reward grades with (asked by eval.py --judge-reward)."""
    wanted = [(name, kind) for name, kind in REWARDS.items() if kind.in_eval or name in asked]
    specs = [(f"{name}_{key}", RewardConfig(spec=name, encoder=e)) for key, e in encoders.items()
             for name, kind in wanted if kind.encoder]
    specs += [(name, RewardConfig(spec=name)) for name, kind in wanted if not kind.encoder]
    return {column: REWARDS[cfg.spec].build(Build(cfg, encoder_of, judge=judge)) for column, cfg in specs}


def eval_columns(args, device, judges=None) -> dict[str, Component]:
    """The reward columns of --encoders (each loaded, on `device`), --bertscore and --judge-reward (graded by
    `judges`) (`reward_columns`)."""
    keys = {encoder_key(e): e for e in args.encoders}
    if len(keys) != len(args.encoders):
        dup = next(k for k in keys if [encoder_key(e) for e in args.encoders].count(k) > 1)
        raise EvalError(f"--encoders {' '.join(args.encoders)}: two encoders would share the column name cosine_{dup}")
    encoders = {}
    for e in args.encoders:
        try:
            encoders[e] = Encoder.from_pretrained(encoder_path(e), device=device)
        except (FileNotFoundError, ValueError, KeyError, OSError, RuntimeError) as err:
            raise EvalError(f"--encoders {e}: {err}") from None
    try:
        asked = ({"bertscore"} if args.bertscore else set()) | ({"judge"} if args.judge_reward else set())
        return reward_columns(keys, asked, encoders.__getitem__, judges.grading if judges else None)
    except ValueError as err:
        raise EvalError(f"--encoders {' '.join(args.encoders)}: {err}") from None


def encoder_key(name: str) -> str:
    """Column suffix of an encoder: a packaged one's name (minilm, mpnet, embeddinggemma), or the directory name of a
    path (cosine_<key>, bertscore_<key>)."""
    base = name if name in ENCODERS else run_name(Path(name))
    return re.sub(r"[^0-9a-z]+", "_", base.lower()).strip("_") or "encoder"


def trained_on(ckpt) -> tuple[str, str] | None:
    """(data, split) the checkpoint's run trained on, from the settings.json saved with its weights; None if unknown."""
    p = ckpt.path / "settings.json"
    if ckpt.spec == "base" or not p.exists():
        return None
    try:
        s = json.loads(p.read_text())
        flags = argparse.Namespace(**{k: s.get(k) for k in ("train_split", "eval_data", "eval_split")}, data=s["data"])
        return s["data"], splits(flags)[0]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None


def resolve_split(args, checkpoints: list):
    """--split when given; else AlpacaEval's test split if a checkpoint trained on alpaca_eval, else all of it."""
    if args.split is not None:
        return
    trained = sorted(c.name for c in checkpoints if (trained_on(c) or ("",))[0] == args.data == "alpaca_eval")
    args.split = "test" if trained else "all"
    if trained:
        print(f"note: {', '.join(trained)} trained on alpaca_eval: evaluating on its test split, the prompts they "
              "did not train on (--split all for all 805)")


class AlpacaEval(Benchmark):
    name, help, own_limit, written = "alpaca_eval", "skip AlpacaEval (--data)", False, ("judgments",)
    finish_reasons = True  # the `terminated` column

    def load(self, checkpoints: list) -> Prompts:
        args = self.args
        resolve_split(args, checkpoints)
        try:
            held = load_dataset(args.data, args.split)
        except (DataError, ValueError, FileNotFoundError) as e:
            raise EvalError(f"--data {args.data} --split {args.split}: {e}") from None
        held = take(held, [ex.id for ex in held], self.limit, args.spread)
        return Prompts(self.name, held, [ex.id for ex in held], [ex.prompt_messages() for ex in held])

    def notes(self, checkpoints: list) -> dict[str, str]:
        """A note for each checkpoint that trained on some of the evaluated prompts (they are not held out)."""
        notes, seen = {}, {}
        for c in checkpoints:
            t = trained_on(c)
            if t is None:
                continue
            if t not in seen:
                try:
                    seen[t] = {prompt_key(ex) for ex in load_dataset(*t)}
                except (DataError, ValueError, FileNotFoundError) as e:
                    seen[t] = (f"its training data (--data {t[0]}, split {t[1]}) does not load here ({e}), so it is "
                               "unknown ")
            if isinstance(seen[t], str):
                notes[c.name] = seen[t] + "whether it trained on any evaluated prompt"
                continue
            n = sum(prompt_key(ex) in seen[t] for ex in self.prompts.items)
            if n:
                notes[c.name] = (f"WARNING: {n} of {len(self.prompts.items)} {self.name} prompts are prompts it "
                                 f"trained on (--data {t[0]}, split {t[1]}): they are not held out")
        return notes

    def score(self, ctx: Context, name: str, answers: list[str], lengths: list[int], finish: list[str]) -> Scores:
        held = self.prompts.items
        refs = [ex.reference for ex in held]
        prompts = [ex.prompt_messages() for ex in held]
        s = Scores({column: component(prompts, answers, refs)[0].tolist() for column, component in ctx.columns.items()})
        # terminated: the answer ended by itself (a stop token) rather than at --max-new-tokens (TRL's logs call
        # the rest clipped); a base model that never learnt to stop runs to the cap
        s.per_item.update({"length": lengths, "terminated": [float(f == "stop") for f in finish],
                           "distinct_2": [distinct_n([a], 2) for a in answers]})
        instructions = [ex.prompt_messages()[-1]["content"] for ex in held]
        outputs = [{"instruction": q, "output": a, "generator": name, "dataset": ex.source}
                   for q, ex, a in zip(instructions, held, answers)]
        (ctx.out / "model_outputs" / f"{name}.json").write_text(json.dumps(outputs, indent=1, ensure_ascii=False))
        if ctx.judges is None:
            return s
        t = time.perf_counter()
        j = pairwise_win_rate(WithProgress(ctx.judges.pairwise, f"{name} judge alpaca_eval", ctx.judges.chunk),
                              instructions, answers, refs)
        s.seconds["alpaca_eval_judge"] = time.perf_counter() - t
        s.per_item["win_rate"] = j["per_item"]
        s.extra["alpaca_eval_judge"] = {"consistency": j["consistency"], "unparseable": j["unparseable"], "n": j["n"]}
        s.notes.append(f"AlpacaEval judge: {j['unparseable']} of {2 * j['n']} replies unparseable (scored as ties), "
                       f"both orders agree on {j['consistency']:.0%} of instructions")
        lc = {"preference": j["per_item"], "length": [len(a) for a in answers],
              "baseline_length": [len(r) for r in refs]}
        if len(answers) < LC_FOLDS:
            s.notes.append(f"lc_win_rate left out: {len(answers)} AlpacaEval prompts, alpaca_eval's GLM needs "
                           f">= {LC_FOLDS}")
        elif math.isnan(lc_win_rate(**lc)):
            s.notes.append("lc_win_rate left out: every answer has its reference's length, so the GLM has no length "
                           "feature")
        else:
            s.per_item["lc_win_rate"] = lc
        (ctx.out / "judgments" / "alpaca_eval").mkdir(parents=True, exist_ok=True)
        arena_hard.write_jsonl(ctx.out / "judgments" / "alpaca_eval" / f"{name}.jsonl", [
            {"id": ex.id, "preference": p, "verdicts": list(v), "replies": list(r)}
            for ex, p, v, r in zip(held, j["per_item"], j["verdicts"], j["replies"])])
        return s


# ---------------------------------------------------------------- Arena-Hard v2.0


class ArenaHard(Benchmark):
    name, help, written = "arena_hard", "skip Arena-Hard v2.0", ("arena_hard",)

    def load(self, checkpoints: list) -> Prompts:
        qs = load_arena_hard()
        qs = take(qs, [q["uid"] for q in qs], self.limit, self.args.spread)
        return Prompts(self.name, qs, [q["uid"] for q in qs], [[{"role": "user", "content": q["prompt"]}] for q in qs])

    def check(self):
        self.baselines = arena_hard.load_baselines(self.prompts.items)  # each category's baseline answers

    def score(self, ctx: Context, name: str, answers: list[str], lengths: list[int]) -> Scores:
        qs, s = self.prompts.items, Scores()
        root = ctx.out / "arena_hard" / arena_hard.BENCH
        arena_hard.write_jsonl(root / "model_answer" / f"{name}.jsonl",
                               [arena_hard.answer_record(q, name, a) for q, a in zip(qs, answers)])
        if ctx.judges is None:
            return s
        t = time.perf_counter()
        j = arena_hard.judge_answers(WithProgress(ctx.judges.arena_hard, f"{name} judge arena_hard", ctx.judges.chunk),
                                     qs, answers, self.baselines)
        s.seconds["arena_hard_judge"] = time.perf_counter() - t
        for key, item in j["items"].items():
            s.per_item["arena_hard_win_rate" + ("" if key == "all" else f"_{key}")] = item
        s.extra["arena_hard_judge"] = {"dropped": j["dropped"], "unparseable": j["unparseable"], "n": len(qs)}
        s.notes.append(f"Arena-Hard judge: {j['unparseable']} of {2 * len(qs)} verdicts unparseable, "
                       f"{j['dropped']} of {len(qs)} questions dropped (as arena-hard-auto drops them)")
        arena_hard.write_jsonl(root / "model_judgment" / ctx.judges.name / f"{name}.jsonl", [
            arena_hard.judgment_record(q, name, ctx.judges.name, v, r)
            for q, v, r in zip(qs, j["verdicts"], j["replies"])])
        return s


# ---------------------------------------------------------------- IFEval


class IFEval(Benchmark):
    name, help, written = "ifeval", "skip IFEval", ("ifeval",)

    def load(self, checkpoints: list) -> Prompts:
        recs = load_ifeval()
        recs = take(recs, [str(r["key"]) for r in recs], self.limit, self.args.spread)
        return Prompts(self.name, recs, [str(r["key"]) for r in recs],
                       [[{"role": "user", "content": r["prompt"]}] for r in recs])

    def score(self, ctx: Context, name: str, answers: list[str], lengths: list[int]) -> Scores:
        recs = self.prompts.items
        (ctx.out / "ifeval" / name).mkdir(parents=True, exist_ok=True)
        write_input_response_data(ctx.out / "ifeval" / name / "input_response_data.jsonl", recs, answers)
        out, per_prompt = {}, score_ifeval(recs, answers)["per_prompt"]
        for mode in ("strict", "loose"):  # prompt level: a mean; instruction level: pooled over the prompts
            follows = [p[mode]["follow_list"] for p in per_prompt]
            out[f"ifeval_prompt_level_{mode}"] = [float(all(f)) for f in follows]
            out[f"ifeval_inst_level_{mode}"] = {"num": [sum(f) for f in follows], "den": [len(f) for f in follows]}
        return Scores({f"ifeval_{m}": out[f"ifeval_{m}"] for m in IFEVAL_METRICS})


# ---------------------------------------------------------------- the lm-eval-harness tasks


class LMEval(Benchmark):
    """Documents of the --lm-eval-tasks, --lm-eval-limit (else --limit) per task spread over it by a hash of their
    ids, whatever --spread; each column is one value per document (rlsr/lm_tasks.py). They are not chat prompts:
    no length filter (a context too long for the model loses tokens on the left, as the harness's HFLM truncates)."""
    name, help, chat_prompts, written = "lm_eval", "skip the lm-eval-harness tasks", False, ("lm_eval",)
    alias = "lm"  # --lm-tasks, --lm-limit, --lm-chat-template
    limit_help = "N documents per %s task, spread over it by a hash of their ids (0 = as --limit; both 0 = all)"

    @classmethod
    def add_args(cls, g):
        g.add_argument("--lm-eval-tasks", "--lm-tasks", nargs="+", default=list(lm_tasks.TASKS),
                       choices=list(lm_tasks.TASKS), metavar="TASK",
                       help=f"lm-eval-harness tasks (default all 18: {' '.join(lm_tasks.TASKS)})")
        g.add_argument("--lm-eval-chat-template", "--lm-chat-template", action="store_true",
                       help="apply each checkpoint's chat template to the lm-eval contexts (lm_eval "
                       "--apply_chat_template); default plain text, the harness's")

    def load(self, checkpoints: list) -> Prompts:
        try:
            self.docs = lm_tasks.load(self.args.lm_eval_tasks, self.limit or 0)   # {task: [Doc]}
        except FileNotFoundError as e:
            raise EvalError(f"lm-eval tasks: {e}; or leave them out with --no-lm-eval") from None
        docs = [d for task_docs in self.docs.values() for d in task_docs]
        return Prompts(self.name, docs, [d.id for d in docs], [])

    def check_positions(self, checkpoints: list):
        """The generative tasks answer with up to lm-eval's max_gen_toks tokens, after at least one of context."""
        generative = [t for t in self.args.lm_eval_tasks if lm_tasks.TASKS[t].until]
        for c in checkpoints:
            if generative and lm_tasks.MAX_GEN_TOKS >= c.positions:
                raise EvalError(f"lm-eval tasks {', '.join(generative)} answer with up to {lm_tasks.MAX_GEN_TOKS} "
                                f"tokens (the harness's max_gen_toks): checkpoint {c.name} has {c.positions} positions "
                                "(max_position_embeddings of its config.json); leave them out of --lm-eval-tasks, or "
                                "give --no-lm-eval")

    def answer(self, model, tokenizer, prompt_ids, desc: str) -> tuple[dict[str, list[dict]]]:
        with tqdm(total=len(self.prompts.items), desc=desc, unit="doc", leave=False) as bar:
            return (lm_tasks.score(model, tokenizer, self.docs, self.args.lm_eval_chat_template, self.args.batch_size,
                                   bar),)

    def score(self, ctx: Context, name: str, results: dict[str, list[dict]]) -> Scores:
        arena_hard.write_jsonl(ctx.out / "lm_eval" / f"{name}.jsonl",
                               [{"task": t, **r} for t, records in results.items() for r in records])
        return Scores(lm_tasks.per_item(results))


BENCHMARKS: list[type[Benchmark]] = [AlpacaEval, ArenaHard, IFEval, LMEval]


def load_benchmarks(args, checkpoints: list) -> list[Benchmark]:
    """The benchmarks the flags turn on (--no-<name> turns one off), their prompts loaded."""
    benches = [b(args) for b in BENCHMARKS if not getattr(args, f"no_{b.name}")]
    for b in benches:
        b.check_positions(checkpoints)
        b.prompts = b.load(checkpoints)
        b.prompts.total = len(b.prompts.items)
        if not b.prompts.items:
            raise EvalError(f"{b.name}: no prompts to evaluate")
    return benches


# ---------------------------------------------------------------- the checkpoints, the judges, the shared prompt set


def run_name(path: Path) -> str:
    """A checkpoint directory's name: the run's for RUN/final and RUN/model, else its own."""
    return path.parent.name if path.name in ("final", "model") else path.name


def name_of(path: str) -> str:
    return "base" if path == "base" else run_name(Path(path))


def read_compute(path: Path) -> dict | None:
    """compute.json of a checkpoint directory ({"flops": float, "tokens": int, ...}), or None if there is none."""
    file = path / "compute.json"
    if not file.exists():
        return None
    try:
        compute = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise EvalError(f"{file}:{e.lineno}: invalid JSON ({e.msg})") from None
    flops = compute.get("flops") if isinstance(compute, dict) else None
    if isinstance(flops, bool) or not isinstance(flops, (int, float)) or not math.isfinite(flops) or flops < 0:
        raise EvalError(f"{file}: field 'flops' must be a finite number >= 0, got {flops!r}")
    return compute


@dataclass
class Checkpoint:
    name: str
    spec: str            # as given on the command line
    path: Path
    tokenizer: Tokenizer
    compute: dict | None
    fingerprint: str     # identifies the tokenizer files (prompt ids are computed once per distinct tokenizer)
    positions: int       # max_position_embeddings: prompt and answer together must fit
    weights_sha256: str = ""  # identifies the weights (--resume re-evaluates a checkpoint whose weights changed)


def tokenizer_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json",
              "generation_config.json"):
        h.update(f.encode() + b"\0" + ((path / f).read_bytes() if (path / f).exists() else b"") + b"\0")
    return h.hexdigest()


def check_checkpoint(spec: str, name: str, chat_template: str | None = None) -> Checkpoint:
    """A checkpoint given on the command line (a directory, `base`, or a packaged policy's name), checked without
    loading its weights as the training scripts check theirs, and its weights finite; `chat_template` (jinja source)
    replaces its own template."""
    packaged = spec == "base" or spec in POLICIES
    path = default_policy_path() if spec == "base" else POLICIES[spec]() if packaged else Path(spec).resolve()
    if not path.is_dir():
        raise EvalError(f"checkpoint {name}: {spec} is not a directory (an HF-layout checkpoint, `base`, or a packaged "
                        f"policy: {', '.join(POLICIES)})")
    try:
        cfg, tok = check_model_dir(path, chat_template)  # config, tensor headers, tokenizer: as the training scripts
        digest, nonfinite = weights_digest(path)
    except ValueError as e:
        raise EvalError(f"checkpoint {name}: {e}") from None
    if nonfinite:
        raise EvalError(f"checkpoint {name}: tensor {nonfinite!r} in {path} holds NaN or inf; its answers would be "
                        "garbage (a diverged or damaged checkpoint)")
    fingerprint = tokenizer_fingerprint(path)
    if chat_template is not None:  # the same files under another template give other prompt ids
        fingerprint = hashlib.sha256((fingerprint + chat_template).encode()).hexdigest()
    return Checkpoint(name, spec, path, tok, None if packaged else read_compute(path), fingerprint,
                      cfg.max_position_embeddings, digest)


def check_checkpoints(specs: list[str], names: list[str], chat_template: str | None) -> list[Checkpoint]:
    """eval.py's checkpoints, each under --chat-template FILE when given (read and checked once)."""
    try:
        template = read_chat_template(chat_template) if chat_template else None
    except ValueError as e:
        raise EvalError(f"--chat-template {e}") from None
    return [check_checkpoint(spec, name, template) for name, spec in zip(names, specs)]


def make_judges(args, device, dtype) -> Judges | None:
    """The judge the flags name, probed (rlsr.judge.probe) before any answer is generated: it must reply, and its
    reply must parse."""
    if args.judge_url:
        key = args.judge_key_env or None
        bounds = dict(timeout=args.judge_timeout, retries=args.judge_retries, workers=args.judge_workers)
        pairwise = HTTPJudge(args.judge_model, base_url=args.judge_url, api_key_env=key, **bounds)
        arena = HTTPJudge(args.judge_model, base_url=args.judge_url, api_key_env=key, **bounds,
                          max_tokens=args.arena_hard_judge_max_tokens, system_prompt=None)
        grading = HTTPJudge(args.judge_model, base_url=args.judge_url, api_key_env=key, **bounds,
                            max_tokens=JudgeRewardConfig.max_tokens, system_prompt=None)
        judges = Judges(pairwise, arena, args.judge_model.replace("/", "_"), max(32, 4 * args.judge_workers), grading)
    elif args.judge:
        ckpt = check_checkpoint(args.judge, "--judge")
        pairwise = LocalJudge.from_pretrained(ckpt.path, dtype=dtype, device=device, system_prompt=SYSTEM_PROMPT)
        arena = LocalJudge(pairwise.model, pairwise.tokenizer, max_new_tokens=args.arena_hard_judge_max_tokens,
                           system_prompt=None)
        grading = LocalJudge(pairwise.model, pairwise.tokenizer, max_new_tokens=JudgeRewardConfig.max_tokens,
                             system_prompt=None)
        judges = Judges(pairwise, arena, name_of(args.judge), 32, grading)
    else:
        return None
    probe(judges.pairwise)
    return judges


def filter_prompts(benches: list[Benchmark], checkpoints: list, max_tokens: int) -> dict:
    """Keep the prompts that fit max_tokens under every checkpoint's tokenizer (the union of what is too long is
    left out for all). Returns {tokenizer fingerprint: {benchmark: [token ids of each kept prompt]}}; benchmarks
    whose prompts are not chat prompts are left as they are."""
    benches = [b for b in benches if b.chat_prompts]
    ids: dict[str, dict[str, list]] = {}
    for c in checkpoints:
        if c.fingerprint in ids:
            continue
        ids[c.fingerprint] = {}
        for b in benches:
            ids[c.fingerprint][b.name] = []
            for pid, m in zip(b.prompts.ids, b.prompts.messages):
                try:
                    ids[c.fingerprint][b.name].append(c.tokenizer.apply_chat_template(m, add_generation_prompt=True))
                except Exception as e:  # a chat template may refuse a conversation (e.g. a system turn)
                    raise EvalError(f"checkpoint {c.name}: its chat template fails on {b.name} prompt {pid}: "
                                    f"{type(e).__name__}: {e}") from None
    for b in benches:
        p = b.prompts
        fits = [all(len(ids[fp][b.name][i]) <= max_tokens for fp in ids) for i in range(len(p.items))]
        p.left_out = [i for i, f in zip(p.ids, fits) if not f]
        p.items, p.ids, p.messages = ([x for x, f in zip(seq, fits) if f] for seq in (p.items, p.ids, p.messages))
        for fp in ids:
            ids[fp][b.name] = [x for x, f in zip(ids[fp][b.name], fits) if f]
        if not p.items:
            raise EvalError(f"{b.name}: all {p.total} prompts are longer than --max-prompt-tokens {max_tokens} "
                            f"(chat-formatted) for some checkpoint's tokenizer; raise the limit or skip it with "
                            f"--no-{b.name.replace('_', '-')}")
    return ids

"""Evaluate checkpoints side by side on the same prompts: AlpacaEval, Arena-Hard v2.0, IFEval, and a judge.

    python eval.py base runs/sft/final runs/rlsr/final --names base sft rlsr --limit 100
    python eval.py base runs/rlsr/final --judge-url http://localhost:8000/v1 --judge-model Qwen/Qwen2.5-7B-Instruct \\
        --judge-key-env '' --compare rlsr:base

`base` stands for the packaged SmolLM2-135M-Instruct. Every checkpoint answers the same prompts greedily
(rlsr/sampling.py), so differences between rows are paired by prompt.

Benchmarks (all on by default; --no-alpaca-eval, --no-arena-hard, --no-ifeval turn one off; --limit N keeps the
first N prompts of each):
    alpaca_eval   --data alpaca_eval --split all: AlpacaEval's 805 instructions with GPT-4 Turbo's reference answers
                  (gpt4_1106_preview, AlpacaEval 2's baseline); --split test / train: the packaged split
                  (rlsr/data.py); or a .jsonl / .json file of prompts with references
    arena_hard    Arena-Hard v2.0's 750 questions (rlsr/arena_hard.py); judged against each category's baseline
    ifeval        IFEval's 541 prompts, scored by Google's checkers (rlsr/ifeval.py)

Columns of results.md (mean over prompts, [95% bootstrap interval over prompts]; a column exists only when its
metric was computed, e.g. no win rates without a judge):
    compute             training FLOPs of the checkpoint, from compute.json in its directory ("-" if absent)
    win_rate            AlpacaEval-2-style pairwise judge against the reference answer, both orders, per
                        instruction 0 / .25 / .5 / .75 / 1 (rlsr/judge.py); only with a judge
    lc_win_rate         the length-controlled win rate of those preferences: alpaca_eval's length_controlled_minimal
                        GLM (rlsr/judge.py lc_win_rate), as a fraction; only with a judge and >= 5 instructions
    cosine_<encoder>    cosine similarity of the sentence embeddings of answer and reference, one column per
                        --encoders entry (cosine_minilm: all-MiniLM-L6-v2, RLSR's default reward; cosine_mpnet:
                        all-mpnet-base-v2; cosine_embeddinggemma: EmbeddingGemma-300M with its sentence-similarity
                        prompt); each encoder truncates its input (MiniLM 256, MPNet 384 word pieces,
                        EmbeddingGemma 2048 tokens)
    bertscore_<encoder> BERTScore F1 with that encoder's last layer, as bert-score computes it (only with --bertscore)
    rouge_l             ROUGE-L F1 as rouge-score computes it (rlsr/reward.py; no stemmer), encoder-free
    bleu                sentence BLEU / 100 as sacreBLEU's sentence_bleu computes it (rlsr/reward.py)
    length              answer length in tokens of the checkpoint's tokenizer (generated tokens, the stop included)
    distinct_2          distinct word bigrams / word bigrams of the answer (1 = no repetition)
    arena_hard_win_rate[_<category>]   Arena-Hard v2.0 win rate against the category's baseline, arena-hard-auto's
                        scoring (strong verdicts weigh 3, ties 0.5, both orders; rlsr/arena_hard.py): pooled over
                        all judged questions, and per category (hard_prompt vs o3-mini, creative_writing vs
                        gemini-2.0-flash); only with a judge
    ifeval_*            IFEval prompt- and instruction-level accuracy, strict and loose (rlsr/ifeval.py)
Below the table: paired differences A - B (`--compare A:B`, repeatable; default every row against the first), the
metric difference on the same prompts with a paired bootstrap 95% interval (each resample draws prompts once and
recomputes both rows' metric on them; 2000 resamples, seed 0, rlsr.metrics.bootstrap's draws; an Arena-Hard
resample holding only dropped questions has no win rate and is left out of the interval, and counted).

Prompts whose chat-formatted form is longer than --max-prompt-tokens (default 512, the training default) under
ANY checkpoint's tokenizer are left out for all checkpoints (so rows stay paired), counted per benchmark, printed
and recorded in results.json ("prompts"). --limit applies first: the first N prompts (with --spread, N spread over
the benchmark), then the length filter.

Held out: without --split, AlpacaEval is evaluated whole (805), or on its test split (161) when a checkpoint's run
trained on alpaca_eval (read from the settings.json beside its weights), and said so. Whatever the split, AlpacaEval
prompts a checkpoint was trained on are counted and reported (a WARNING, and a note in results.md).

Robustness: every flag, checkpoint (config.json, safetensors headers and sizes, tokenizer), encoder, judge and data
file is checked before any work, and nothing is written when a check fails (`error: ...`, exit status 2). An
existing non-empty --out-dir is refused unless --overwrite (which first removes what an earlier eval.py wrote
there) or --resume (which skips checkpoints whose per_checkpoint/<name>.json is complete, and refuses, naming the
flag, if that file was made with other settings; --batch-size, --compare, --judge-workers, --judge-key-env may
change). Written to --out-dir:

    per_checkpoint/<name>.json      one checkpoint's results, written as soon as it is done
    model_outputs/<name>.json       AlpacaEval format (instruction, output, generator, dataset): feed it to the
                                    official `alpaca_eval evaluate --model_outputs ...`
    judgments/alpaca_eval/<name>.jsonl            the pairwise judge's replies and verdicts (with a judge)
    arena_hard/arena-hard-v2.0/model_answer/<name>.jsonl            arena-hard-auto's answer format
    arena_hard/arena-hard-v2.0/model_judgment/<judge>/<name>.jsonl  its judgment format (with a judge): copy
                                    arena_hard/arena-hard-v2.0 into arena-hard-auto's data/ to run show_result.py
    ifeval/<name>/input_response_data.jsonl       the official IFEval format (prompt, response)
    results.json                    per result: name, checkpoint, metrics {metric: {mean, ci}}, per_item, seconds,
                                    compute, ...; plus "paired" differences, "prompts" (filter counts), "settings"
    results.md                      the table (rows = methods, columns = metrics), as printed
    results.png                     every metric per checkpoint with its 95% interval (rlsr/plot.py; needs matplotlib)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from rlsr import arena_hard
from rlsr.assets import ENCODERS, POLICIES, default_policy_path, encoder_path
from rlsr.checkpoint import write_json
from rlsr.data import DataError, load_arena_hard, load_dataset, load_ifeval
from rlsr.encoder import Encoder
from rlsr.ifeval import METRICS as IFEVAL_METRICS
from rlsr.ifeval import score_ifeval, write_input_response_data
from rlsr.judge import (SYSTEM_PROMPT, HTTPJudge, JudgeError, LocalJudge, lc_win_rate,
                        pairwise_win_rate)
from rlsr.metrics import Statistic, distinct_n, interval, paired_differences
from rlsr.model import Transformer
from rlsr.plot import plot_eval
from rlsr.report import report
from rlsr.reward import BERTScore, SimilarityReward, rouge_l, sentence_bleu
from rlsr.sampling import SamplingParams, complete
from rlsr.tokenizer import Tokenizer, read_chat_template
from rlsr.training import prompt_key, splits

LC_MIN_ITEMS = 5  # alpaca_eval's GLM cross-validates over 5 folds
# Flags that change how fast results come, not what they are: --resume accepts new values for these.
RESUME_FREE = ("checkpoints", "names", "out_dir", "overwrite", "resume", "compare", "batch_size", "judge_workers",
               "judge_key_env", "encoder")
WRITTEN = ("per_checkpoint", "model_outputs", "judgments", "arena_hard", "ifeval", "results.json", "results.md",
           "results.png")


class EvalError(Exception):
    """A problem with the user's flags, checkpoints or data: printed as one line, exit status 2."""


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("checkpoints", nargs="+", help="HF-layout directories, or `base` for the packaged policy")
    ap.add_argument("--names", nargs="+", help="row names (default: derived from the paths)")
    g = ap.add_argument_group("benchmarks")
    g.add_argument("--data", default="alpaca_eval", help="AlpacaEval-style prompts with references (rlsr/data.py)")
    g.add_argument("--split", help="split of --data alpaca_eval: all (805), test (161), train (644); default all, or "
                   "test when a checkpoint was trained on alpaca_eval")
    g.add_argument("--limit", type=int, default=0, help="first N prompts of each benchmark (0 = all)")
    g.add_argument("--arena-hard-limit", type=int, default=0, help="first N Arena-Hard prompts (0 = as --limit)")
    g.add_argument("--ifeval-limit", type=int, default=0, help="first N IFEval prompts (0 = as --limit)")
    g.add_argument("--spread", action="store_true", help="with a limit: N prompts spread over the whole benchmark "
                   "(the N smallest sha256 of their ids, kept in file order) instead of the first N, so every "
                   "subset of AlpacaEval (ordered by subset in its file) is represented")
    g.add_argument("--max-prompt-tokens", type=int, default=512,
                   help="leave out prompts longer than this (chat-formatted, under any checkpoint's tokenizer)")
    g.add_argument("--no-alpaca-eval", action="store_true", help="skip AlpacaEval (--data)")
    g.add_argument("--no-arena-hard", action="store_true", help="skip Arena-Hard v2.0")
    g.add_argument("--no-ifeval", action="store_true", help="skip IFEval")
    g.add_argument("--encoders", nargs="+", default=["minilm", "mpnet"],
                   help="sentence encoders for the cosine columns: minilm, mpnet, embeddinggemma (packaged) or "
                   "directories")
    g.add_argument("--encoder", help=argparse.SUPPRESS)  # deprecated: one encoder, same as --encoders X
    g.add_argument("--bertscore", action="store_true", help="add BERTScore F1 columns (bertscore_<encoder>, each "
                   "--encoders entry's last layer, as rlsr/reward.py's reward computes it)")
    g = ap.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--chat-template", metavar="FILE", help="jinja chat template for every checkpoint instead of its "
                   "own (e.g. a base model under a chosen format); the judge keeps its own")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g = ap.add_argument_group("judge (optional; without one there are no win-rate columns)")
    g.add_argument("--judge", help="a local HF-layout judge checkpoint, run by rlsr's engine")
    g.add_argument("--judge-url", help="an OpenAI-compatible endpoint, e.g. https://api.openai.com/v1")
    g.add_argument("--judge-model", default="gpt-4o-mini", help="model name sent to --judge-url")
    g.add_argument("--judge-key-env", default="OPENAI_API_KEY", help="environment variable holding the key ('' = none)")
    g.add_argument("--judge-workers", type=int, default=4, help="parallel requests to --judge-url")
    g.add_argument("--arena-hard-judge-max-tokens", type=int, default=16000,
                   help="reply length for Arena-Hard judgments (its judges write their own answer before the "
                        "verdict; arena-hard-auto's v2.0 config uses 16000)")
    g = ap.add_argument_group("output")
    g.add_argument("--out-dir", default="results/eval")
    g.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out-dir")
    g.add_argument("--resume", action="store_true", help="keep finished checkpoints of an earlier run in --out-dir")
    g.add_argument("--compare", action="append", default=[], metavar="A:B",
                   help="report the paired difference A - B (repeatable; default: every row against the first)")
    args = ap.parse_args(argv)
    if args.encoder:
        print("note: --encoder is deprecated; use --encoders", file=sys.stderr)
        args.encoders = [args.encoder]
    return args


# ---------------------------------------------------------------- checks (nothing is written before they pass)

def run_name(path: Path) -> str:
    """A checkpoint directory's name: the run's for RUN/final and RUN/model, else its own."""
    return path.parent.name if path.name in ("final", "model") else path.name


def name_of(path: str) -> str:
    return "base" if path == "base" else run_name(Path(path))


def check_flags(args) -> list[str]:
    """Flag ranges and combinations; returns the row names."""
    for flag, value, low in (("--limit", args.limit, 0), ("--arena-hard-limit", args.arena_hard_limit, 0),
                             ("--ifeval-limit", args.ifeval_limit, 0), ("--max-new-tokens", args.max_new_tokens, 1),
                             ("--batch-size", args.batch_size, 1), ("--max-prompt-tokens", args.max_prompt_tokens, 1),
                             ("--judge-workers", args.judge_workers, 1),
                             ("--arena-hard-judge-max-tokens", args.arena_hard_judge_max_tokens, 1)):
        if value < low:
            raise EvalError(f"{flag} must be >= {low}, got {value}")
    if args.no_alpaca_eval and args.no_arena_hard and args.no_ifeval:
        raise EvalError("every benchmark is turned off (--no-alpaca-eval --no-arena-hard --no-ifeval)")
    if args.overwrite and args.resume:
        raise EvalError("--overwrite and --resume exclude each other")
    if args.judge and args.judge_url:
        raise EvalError("give one judge: --judge (a local checkpoint) or --judge-url, not both")
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        raise EvalError(f"--device {args.device!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EvalError(f"--device {args.device}: CUDA is not available on this machine")
    names = args.names or [name_of(c) for c in args.checkpoints]
    if len(names) != len(args.checkpoints):
        raise EvalError(f"{len(names)} --names for {len(args.checkpoints)} checkpoints")
    for n in names:
        if not n or n.startswith(".") or any(c in n for c in '/\\:') or n != n.strip():
            raise EvalError(f"row name {n!r} cannot be a file name (no '/', '\\', ':', leading '.' or spaces); "
                            "choose names with --names")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise EvalError(f"two checkpoints are both named {dup[0]!r}; give distinct --names")
    for c in args.compare:
        a, sep, b = c.partition(":")
        if not sep or a not in names or b not in names or a == b:
            raise EvalError(f"--compare {c!r}: expected A:B with two different row names among {', '.join(names)}")
    return names


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


def tokenizer_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json",
              "generation_config.json"):
        h.update(f.encode() + b"\0" + ((path / f).read_bytes() if (path / f).exists() else b"") + b"\0")
    return h.hexdigest()


def check_checkpoint(spec: str, name: str, chat_template: str | None = None) -> Checkpoint:
    packaged = spec == "base" or spec in POLICIES
    path = default_policy_path() if spec == "base" else POLICIES[spec]() if packaged else Path(spec).resolve()
    if not path.is_dir():
        raise EvalError(f"checkpoint {name}: {spec} is not a directory (an HF-layout checkpoint, `base`, or a packaged "
                        f"policy: {', '.join(POLICIES)})")
    if not (path / "config.json").exists():
        raise EvalError(f"checkpoint {name}: {path / 'config.json'} is missing")
    try:
        Transformer.check_pretrained(path)  # config and tensor headers, no weights loaded
    except (ValueError, FileNotFoundError) as e:
        raise EvalError(f"checkpoint {name}: {e}") from None
    try:
        tok = Tokenizer.from_pretrained(path, chat_template=chat_template)
        tok.apply_chat_template([{"role": "user", "content": "Hello"}], add_generation_prompt=True)
    except Exception as e:  # tokenizers and jinja2 raise their own types; any of them means "cannot be used"
        raise EvalError(f"checkpoint {name}: the tokenizer in {path} does not load: {type(e).__name__}: {e}") from None
    fingerprint = tokenizer_fingerprint(path)
    if chat_template is not None:  # the same files under another template give other prompt ids
        fingerprint = hashlib.sha256((fingerprint + chat_template).encode()).hexdigest()
    return Checkpoint(name, spec, path, tok, None if packaged else read_compute(path), fingerprint)


def trained_on(ckpt: Checkpoint) -> tuple[str, str] | None:
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


def resolve_split(args, checkpoints: list[Checkpoint]):
    """--split when given; else AlpacaEval's test split if a checkpoint trained on alpaca_eval, else all of it."""
    if args.split is not None:
        return
    trained = sorted(c.name for c in checkpoints if (trained_on(c) or ("",))[0] == args.data == "alpaca_eval")
    args.split = "test" if trained else "all"
    if trained:
        print(f"note: {', '.join(trained)} trained on alpaca_eval: evaluating on its test split, the prompts they "
              "did not train on (--split all for all 805)")


def training_overlap(bench: Bench, checkpoints: list[Checkpoint]) -> dict[str, str]:
    """Per checkpoint, a note when some evaluated prompts are prompts its run trained on (they are not held out)."""
    notes, seen = {}, {}
    for c in checkpoints:
        t = trained_on(c)
        if t is None:
            continue
        if t not in seen:
            try:
                seen[t] = {prompt_key(ex) for ex in load_dataset(*t)}
            except (DataError, ValueError, FileNotFoundError) as e:
                seen[t] = f"its training data (--data {t[0]}, split {t[1]}) does not load here ({e}), so it is unknown "
        if isinstance(seen[t], str):
            notes[c.name] = seen[t] + "whether it trained on any evaluated prompt"
            continue
        n = sum(prompt_key(ex) in seen[t] for ex in bench.items)
        if n:
            notes[c.name] = (f"WARNING: {n} of {len(bench.items)} {bench.name} prompts are prompts it trained on "
                             f"(--data {t[0]}, split {t[1]}): they are not held out")
    return notes


def encoder_key(name: str) -> str:
    """Metric name of an encoder: cosine_<name> for a packaged one (cosine_minilm, ...), cosine_<directory name> for a
    path."""
    base = name if name in ENCODERS else run_name(Path(name))
    return "cosine_" + (re.sub(r"[^0-9a-z]+", "_", base.lower()).strip("_") or "encoder")


# ---------------------------------------------------------------- benchmarks and the shared prompt set

@dataclass
class Bench:
    """One benchmark's prompts: items (Examples / question dicts / IFEval records), their ids and messages."""
    name: str
    items: list
    ids: list[str]
    messages: list[list[dict]]
    total: int = 0                          # prompts before the length filter (after --limit)
    left_out: list[str] = field(default_factory=list)


def take(items: list, ids: list[str], n: int | None, spread: bool) -> list:
    """The first n items, or with `spread` the n whose ids have the smallest sha256 (in their file order)."""
    if not n or n >= len(items):
        return items
    if not spread:
        return items[:n]
    chosen = set(sorted(range(len(items)), key=lambda i: hashlib.sha256(ids[i].encode()).hexdigest())[:n])
    return [x for i, x in enumerate(items) if i in chosen]


def load_benchmarks(args) -> dict[str, Bench]:
    n = args.limit or None
    out = {}
    if not args.no_alpaca_eval:
        try:
            held = load_dataset(args.data, args.split)
        except (DataError, ValueError, FileNotFoundError) as e:
            raise EvalError(f"--data {args.data} --split {args.split}: {e}") from None
        held = take(held, [ex.id for ex in held], n, args.spread)
        out["alpaca_eval"] = Bench("alpaca_eval", held, [ex.id for ex in held], [ex.prompt_messages() for ex in held])
    if not args.no_arena_hard:
        qs = load_arena_hard()
        qs = take(qs, [q["uid"] for q in qs], args.arena_hard_limit or n, args.spread)
        out["arena_hard"] = Bench("arena_hard", qs, [q["uid"] for q in qs],
                                  [[{"role": "user", "content": q["prompt"]}] for q in qs])
    if not args.no_ifeval:
        recs = load_ifeval()
        recs = take(recs, [str(r["key"]) for r in recs], args.ifeval_limit or n, args.spread)
        out["ifeval"] = Bench("ifeval", recs, [str(r["key"]) for r in recs],
                              [[{"role": "user", "content": r["prompt"]}] for r in recs])
    for b in out.values():
        b.total = len(b.items)
        if not b.items:
            raise EvalError(f"{b.name}: no prompts to evaluate")
    return out


def filter_prompts(benches: dict[str, Bench], checkpoints: list[Checkpoint], max_tokens: int) -> dict:
    """Keep the prompts that fit max_tokens under every checkpoint's tokenizer (the union of what is too long is
    left out for all). Returns {fingerprint: {benchmark: [token ids of each kept prompt]}}."""
    ids: dict[str, dict[str, list]] = {}
    for c in checkpoints:
        if c.fingerprint in ids:
            continue
        ids[c.fingerprint] = {}
        for b in benches.values():
            ids[c.fingerprint][b.name] = []
            for pid, m in zip(b.ids, b.messages):
                try:
                    ids[c.fingerprint][b.name].append(c.tokenizer.apply_chat_template(m, add_generation_prompt=True))
                except Exception as e:  # a chat template may refuse a conversation (e.g. a system turn)
                    raise EvalError(f"checkpoint {c.name}: its chat template fails on {b.name} prompt {pid}: "
                                    f"{type(e).__name__}: {e}") from None
    for b in benches.values():
        fits = [all(len(ids[fp][b.name][i]) <= max_tokens for fp in ids) for i in range(len(b.items))]
        b.left_out = [i for i, f in zip(b.ids, fits) if not f]
        b.items, b.ids, b.messages = ([x for x, f in zip(seq, fits) if f] for seq in (b.items, b.ids, b.messages))
        for fp in ids:
            ids[fp][b.name] = [x for x, f in zip(ids[fp][b.name], fits) if f]
        if not b.items:
            raise EvalError(f"{b.name}: all {b.total} prompts are longer than --max-prompt-tokens {max_tokens} "
                            f"(chat-formatted) for some checkpoint's tokenizer; raise the limit or skip it with "
                            f"--no-{b.name.replace('_', '-')}")
    return ids


# ---------------------------------------------------------------- judges

@dataclass
class Judges:
    pairwise: object      # AlpacaEval-2-style single-letter judge (rlsr/judge.py)
    arena_hard: object    # the same model answering Arena-Hard's conversations, with long replies
    name: str             # directory name of its arena-hard-auto judgments
    chunk: int            # prompts per call (a progress step); enough to keep every HTTP worker busy


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


def make_judges(args, device, dtype) -> Judges | None:
    if args.judge_url:
        key = args.judge_key_env or None
        pairwise = HTTPJudge(args.judge_model, base_url=args.judge_url, api_key_env=key, workers=args.judge_workers)
        arena = HTTPJudge(args.judge_model, base_url=args.judge_url, api_key_env=key, workers=args.judge_workers,
                          max_tokens=args.arena_hard_judge_max_tokens, system_prompt=None)
        return Judges(pairwise, arena, args.judge_model.replace("/", "_"), max(32, 4 * args.judge_workers))
    if args.judge:
        ckpt = check_checkpoint(args.judge, "--judge")
        pairwise = LocalJudge.from_pretrained(ckpt.path, dtype=dtype, device=device, system_prompt=SYSTEM_PROMPT)
        arena = LocalJudge(pairwise.model, pairwise.tokenizer, max_new_tokens=args.arena_hard_judge_max_tokens,
                           system_prompt=None)
        return Judges(pairwise, arena, name_of(args.judge), 32)
    return None


# ---------------------------------------------------------------- settings, out-dir, resume

def settings_of(args) -> dict:
    """The flags that determine the results (a resumed run must match them)."""
    s = {k: v for k, v in vars(args).items() if k not in RESUME_FREE}
    if Path(args.data).is_file():
        s["data"] = str(Path(args.data).resolve())
    if args.judge:
        s["judge"] = str(Path(args.judge).resolve())
    if not args.judge_url:
        s.pop("judge_model")
    if not (args.judge or args.judge_url):
        s.pop("arena_hard_judge_max_tokens")
    return json.loads(json.dumps(s))


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def finished(out: Path, ckpt: Checkpoint, settings: dict, prompts: dict[str, list[str]]) -> bool:
    """Whether per_checkpoint/<name>.json holds this checkpoint's complete results under these settings; a file
    made with other settings or prompts raises EvalError naming the difference."""
    file = out / "per_checkpoint" / f"{ckpt.name}.json"
    if not file.exists():
        return False
    try:
        r = json.loads(file.read_text())
        old_settings, old_prompts, old_path = r["settings"], r["prompts"], r["checkpoint"]
        if not isinstance(r["metrics"], dict) or not isinstance(r["per_item"], dict):
            raise TypeError("no metrics")
    except (json.JSONDecodeError, KeyError, TypeError):
        print(f"note: {file} is incomplete; {ckpt.name} is evaluated again")
        return False
    for key in sorted(set(settings) | set(old_settings)):
        if settings.get(key) != old_settings.get(key):
            raise EvalError(f"--resume: {file} was made with {flag(key)} {old_settings.get(key)!r}, this run has "
                            f"{settings.get(key)!r}; use the same flags, or --overwrite (or another --out-dir)")
    if old_path != str(ckpt.path):
        raise EvalError(f"--resume: {file} holds checkpoint {old_path}, but {ckpt.name} is now {ckpt.path}")
    if old_prompts != prompts:
        changed = next(b for b in sorted(set(prompts) | set(old_prompts)) if prompts.get(b) != old_prompts.get(b))
        raise EvalError(f"--resume: {file} was evaluated on other {changed} prompts "
                        f"({len(old_prompts.get(changed, []))} vs {len(prompts.get(changed, []))} now: the set of "
                        "checkpoints changed which prompts fit --max-prompt-tokens); use --overwrite")
    return True


def prepare_out_dir(args, out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise EvalError(f"--out-dir {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not (args.overwrite or args.resume):
        raise EvalError(f"--out-dir {out} exists and is not empty: pass --overwrite to replace its results, "
                        "--resume to keep its finished checkpoints, or choose another --out-dir")


# ---------------------------------------------------------------- per-item records

def ifeval_items(per_prompt: list[dict]) -> dict:
    """Per-prompt records of the four IFEval accuracies (prompt level: a mean; instruction level: pooled)."""
    out = {}
    for mode in ("strict", "loose"):
        follows = [p[mode]["follow_list"] for p in per_prompt]
        out[f"ifeval_prompt_level_{mode}"] = [float(all(f)) for f in follows]
        out[f"ifeval_inst_level_{mode}"] = {"num": [sum(f) for f in follows], "den": [len(f) for f in follows]}
    return {f"ifeval_{m}": out[f"ifeval_{m}"] for m in IFEVAL_METRICS}


# ---------------------------------------------------------------- one checkpoint

def generate(model, ckpt: Checkpoint, name: str, prompt_ids: list[list[int]], params, batch_size: int):
    with tqdm(total=len(prompt_ids), desc=f"{ckpt.name} {name}", unit="prompt", leave=False) as bar:
        return complete(model, ckpt.tokenizer, prompt_ids, params, batch_size, progress=bar)


def evaluate(ckpt: Checkpoint, benches: dict[str, Bench], prompt_ids: dict[str, list], ctx: dict) -> dict:
    """Answers, metrics and files of one checkpoint; returns its result record."""
    args, out, encoders, judges = ctx["args"], ctx["out"], ctx["encoders"], ctx["judges"]
    t0 = time.perf_counter()
    params = SamplingParams(args.max_new_tokens, temperature=0.0)
    model = Transformer.from_pretrained(ckpt.path, dtype=getattr(torch, args.dtype), device=torch.device(args.device),
                                        output_vocab=ckpt.tokenizer.vocab_size)
    answers, lengths, seconds = {}, {}, {}
    for name in benches:
        t = time.perf_counter()
        answers[name], lengths[name] = generate(model, ckpt, name, prompt_ids[name], params, args.batch_size)
        seconds[name] = time.perf_counter() - t
    del model
    if torch.device(args.device).type == "cuda":
        torch.cuda.empty_cache()

    per_item, extra, notes = {}, {}, [n for n in [ctx["overlap"].get(ckpt.name)] if n]
    if "alpaca_eval" in benches:
        held, ans = benches["alpaca_eval"].items, answers["alpaca_eval"]
        refs = [ex.reference for ex in held]
        for key, reward in encoders.items():
            per_item[key] = reward(ans, refs)[0].tolist()
            if args.bertscore:  # BERTScore F1 on the same encoder's last layer (rlsr/reward.py)
                per_item["bertscore_" + key.removeprefix("cosine_")] = BERTScore(reward.encoder)(ans, refs)[0].tolist()
        per_item.update({"rouge_l": [rouge_l(a, r) for a, r in zip(ans, refs)],
                         "bleu": [sentence_bleu(a, r) for a, r in zip(ans, refs)], "length": lengths["alpaca_eval"],
                         "distinct_2": [distinct_n([a], 2) for a in ans]})
        instructions = [ex.prompt_messages()[-1]["content"] for ex in held]
        outputs = [{"instruction": q, "output": a, "generator": ckpt.name, "dataset": ex.source}
                   for q, ex, a in zip(instructions, held, ans)]
        (out / "model_outputs" / f"{ckpt.name}.json").write_text(json.dumps(outputs, indent=1, ensure_ascii=False))
        if judges is not None:
            t = time.perf_counter()
            j = pairwise_win_rate(WithProgress(judges.pairwise, f"{ckpt.name} judge alpaca_eval", judges.chunk),
                                  instructions, ans, refs)
            seconds["alpaca_eval_judge"] = time.perf_counter() - t
            per_item["win_rate"] = j["per_item"]
            extra["alpaca_eval_judge"] = {"consistency": j["consistency"], "unparseable": j["unparseable"],
                                          "n": j["n"]}
            notes.append(f"AlpacaEval judge: {j['unparseable']} of {2 * j['n']} replies unparseable (scored as "
                         f"ties), both orders agree on {j['consistency']:.0%} of instructions")
            lc = {"preference": j["per_item"], "length": [len(a) for a in ans],
                  "baseline_length": [len(r) for r in refs]}
            if len(ans) < LC_MIN_ITEMS:
                notes.append(f"lc_win_rate left out: {len(ans)} AlpacaEval prompts, alpaca_eval's GLM needs "
                             f">= {LC_MIN_ITEMS}")
            elif math.isnan(lc_win_rate(**lc)):
                notes.append("lc_win_rate left out: every answer has its reference's length, so the GLM has no "
                             "length feature")
            else:
                per_item["lc_win_rate"] = lc
            (out / "judgments" / "alpaca_eval").mkdir(parents=True, exist_ok=True)
            arena_hard.write_jsonl(out / "judgments" / "alpaca_eval" / f"{ckpt.name}.jsonl", [
                {"id": ex.id, "preference": p, "verdicts": list(v), "replies": list(r)}
                for ex, p, v, r in zip(held, j["per_item"], j["verdicts"], j["replies"])])
    if "arena_hard" in benches:
        qs, ans = benches["arena_hard"].items, answers["arena_hard"]
        root = out / "arena_hard" / arena_hard.BENCH
        arena_hard.write_jsonl(root / "model_answer" / f"{ckpt.name}.jsonl",
                               [arena_hard.answer_record(q, ckpt.name, a) for q, a in zip(qs, ans)])
        if judges is not None:
            t = time.perf_counter()
            j = arena_hard.judge_answers(WithProgress(judges.arena_hard, f"{ckpt.name} judge arena_hard",
                                                      judges.chunk), qs, ans, ctx["baselines"])
            seconds["arena_hard_judge"] = time.perf_counter() - t
            for key, item in j["items"].items():
                per_item["arena_hard_win_rate" + ("" if key == "all" else f"_{key}")] = item
            extra["arena_hard_judge"] = {"dropped": j["dropped"], "unparseable": j["unparseable"], "n": len(qs)}
            notes.append(f"Arena-Hard judge: {j['unparseable']} of {2 * len(qs)} verdicts unparseable, "
                         f"{j['dropped']} of {len(qs)} questions dropped (as arena-hard-auto drops them)")
            arena_hard.write_jsonl(root / "model_judgment" / judges.name / f"{ckpt.name}.jsonl", [
                arena_hard.judgment_record(q, ckpt.name, judges.name, v, r)
                for q, v, r in zip(qs, j["verdicts"], j["replies"])])
    if "ifeval" in benches:
        recs, ans = benches["ifeval"].items, answers["ifeval"]
        (out / "ifeval" / ckpt.name).mkdir(parents=True, exist_ok=True)
        write_input_response_data(out / "ifeval" / ckpt.name / "input_response_data.jsonl", recs, ans)
        per_item.update(ifeval_items(score_ifeval(recs, ans)["per_prompt"]))
    for note in notes:
        tqdm.write(f"{ckpt.name}: {note}")
    stats = {k: Statistic(v) for k, v in per_item.items()}
    ctx["stats"][ckpt.name] = stats
    metrics = {k: interval(s) for k, s in stats.items()}
    return {"name": ckpt.name, "checkpoint": str(ckpt.path), "compute": ckpt.compute, "metrics": metrics,
            "per_item": per_item, "seconds": time.perf_counter() - t0, "seconds_by_phase": seconds, **extra,
            "notes": notes, "settings": ctx["settings"], "prompts": {b.name: b.ids for b in benches.values()}}


# ---------------------------------------------------------------- main

def prepare(args) -> dict:
    """Every check, before anything is written or computed."""
    names = check_flags(args)
    out = Path(args.out_dir)
    prepare_out_dir(args, out)
    try:
        template = read_chat_template(args.chat_template) if args.chat_template else None
    except ValueError as e:
        raise EvalError(f"--chat-template {e}") from None
    checkpoints = [check_checkpoint(spec, name, template) for name, spec in zip(names, args.checkpoints)]
    resolve_split(args, checkpoints)
    benches = load_benchmarks(args)
    overlap = training_overlap(benches["alpaca_eval"], checkpoints) if "alpaca_eval" in benches else {}
    ids = filter_prompts(benches, checkpoints, args.max_prompt_tokens)
    keys = [encoder_key(e) for e in args.encoders]
    if len(set(keys)) != len(keys):
        raise EvalError(f"--encoders {' '.join(args.encoders)}: two encoders would share the column name "
                        f"{next(k for k in keys if keys.count(k) > 1)}")
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    encoders = {}
    if "alpaca_eval" in benches:
        for e, key in zip(args.encoders, keys):
            try:
                encoders[key] = SimilarityReward(Encoder.from_pretrained(encoder_path(e), device=device))
            except (FileNotFoundError, ValueError, KeyError, OSError, RuntimeError) as err:
                raise EvalError(f"--encoders {e}: {err}") from None
    judges = make_judges(args, device, dtype)
    baselines = arena_hard.load_baselines(benches["arena_hard"].items) if "arena_hard" in benches else {}
    settings = settings_of(args)
    prompts = {b.name: b.ids for b in benches.values()}
    done = {c.name for c in checkpoints if args.resume and finished(out, c, settings, prompts)}
    return {"args": args, "out": out, "benches": benches, "checkpoints": checkpoints, "ids": ids,
            "encoders": encoders, "judges": judges, "baselines": baselines, "settings": settings, "done": done,
            "overlap": overlap, "stats": {}}


def main(argv=None):
    args = parse_args(argv)
    try:
        ctx = prepare(args)
    except (EvalError, DataError, JudgeError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    out, benches, checkpoints = ctx["out"], ctx["benches"], ctx["checkpoints"]
    if args.overwrite:
        for w in WRITTEN:
            p = out / w
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    for d in ("per_checkpoint", "model_outputs"):
        (out / d).mkdir(parents=True, exist_ok=True)
    for b in benches.values():
        print(f"{b.name}: {len(b.items)} prompts" + (f" ({len(b.left_out)} of {b.total} left out: longer than "
                                                      f"{args.max_prompt_tokens} tokens)" if b.left_out else ""))
    for name, note in ctx["overlap"].items():
        print(f"{name}: {note}")
    todo = [c for c in checkpoints if c.name not in ctx["done"]]
    if ctx["done"]:
        print(f"--resume: {', '.join(sorted(ctx['done']))} already evaluated, skipped")
    print(f"{len(todo)} checkpoints to evaluate, greedy, <= {args.max_new_tokens} new tokens, judge: "
          f"{ctx['judges'].name if ctx['judges'] else 'none'}")

    results = {}
    for c in checkpoints:
        if c.name in ctx["done"]:
            results[c.name] = json.loads((out / "per_checkpoint" / f"{c.name}.json").read_text())
            ctx["stats"][c.name] = {k: Statistic(v) for k, v in results[c.name]["per_item"].items()}
    try:
        for c in tqdm(todo, desc="checkpoints", unit="ckpt"):
            r = evaluate(c, benches, ctx["ids"][c.fingerprint], ctx)
            write_json(out / "per_checkpoint" / f"{c.name}.json", r)
            results[c.name] = r
            tqdm.write(f"{c.name}: " + ", ".join(f"{k} {v['mean']:.3f}" for k, v in r["metrics"].items())
                       + f" ({r['seconds']:.0f} s)")
    except JudgeError as e:
        print(f"error: {e}\nfinished checkpoints are in {out / 'per_checkpoint'}; rerun with --resume to continue",
              file=sys.stderr)
        raise SystemExit(1) from None

    rows = [results[c.name] for c in checkpoints]
    pairs = [tuple(p.split(":", 1)) for p in args.compare] or [(r["name"], rows[0]["name"]) for r in rows[1:]]
    paired = [{"name": f"{a} - {b}", "a": a, "b": b, "metrics": paired_differences(ctx["stats"], a, b)}
              for a, b in pairs]
    prompts = {b.name: {"total": b.total, "evaluated": len(b.items), "left_out": len(b.left_out),
                        "left_out_ids": b.left_out, "max_prompt_tokens": args.max_prompt_tokens}
               for b in benches.values()}
    md = report(rows, paired, prompts, ctx["judges"] is not None, args.max_prompt_tokens)
    (out / "results.md").write_text(md)
    write_json(out / "results.json", {"settings": ctx["settings"], "prompts": prompts, "results": rows,
                                      "paired": paired})
    chart = plot_eval(out / "results.json", out / "results.png")  # None (said so) without matplotlib
    print(md)
    print(f"outputs in {out}: results.md, results.json, " + ("results.png, " if chart else "") + "per_checkpoint/, model_outputs/"
          + (", arena_hard/" if "arena_hard" in benches else "") + (", ifeval/" if "ifeval" in benches else "")
          + (", judgments/" if ctx["judges"] and "alpaca_eval" in benches else ""))


if __name__ == "__main__":
    main()

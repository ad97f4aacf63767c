"""Evaluate checkpoints side by side on the same prompts: AlpacaEval, Arena-Hard v2.0, IFEval, lm-eval-harness, a judge.

    python eval.py base runs/sft/final runs/rlsr/final --names base sft rlsr --limit 100
    python eval.py base runs/rlsr/final --judge-url http://localhost:8000/v1 --judge-model Qwen/Qwen2.5-7B-Instruct \\
        --judge-key-env '' --compare rlsr:base

`base` is the packaged SmolLM2-135M-Instruct (gemma3-270m: the packaged Gemma 3 base model; --chat-template FILE
for a base model's format). Every checkpoint answers the same prompts greedily, so rows are paired by prompt.

Benchmarks (all on by default, --no-<name> turns one off; --limit N keeps the first N prompts of each, --<name>-limit
of one), each a unit of rlsr/benchmarks.py (load -> answer -> score); this script checks every input, then loops
over checkpoints and benchmarks:
    alpaca_eval   --data alpaca_eval --split all: AlpacaEval's 805 instructions with GPT-4 Turbo's reference answers
                  (gpt4_1106_preview, AlpacaEval 2's baseline); --split test / train: the packaged split
                  (rlsr/data.py); or a .jsonl / .json file of prompts with references
    arena_hard    Arena-Hard v2.0's 750 questions (rlsr/arena_hard.py); judged against each category's baseline
    ifeval        IFEval's 541 prompts, scored by Google's checkers (rlsr/ifeval.py)
    lm_eval       the paper's 18 lm-eval-harness tasks (--lm-eval-tasks), zero-shot, plain text unless
                  --lm-eval-chat-template, scored as lm-eval-harness 0.4.13's `--model hf` (rlsr/lm_tasks.py)

Columns of results.md (mean over prompts, [95% bootstrap interval over prompts]; a column exists only when its
metric was computed, e.g. no win rates without a judge):
    compute             training FLOPs of the checkpoint, from compute.json in its directory ("-" if absent)
    win_rate            AlpacaEval-2-style pairwise judge against the reference answer, both orders, per
                        instruction 0 / .25 / .5 / .75 / 1 (rlsr/judge.py); only with a judge
    lc_win_rate         the length-controlled win rate of those preferences: alpaca_eval's length_controlled_minimal
                        GLM (rlsr/lc_win_rate.py), as a fraction; only with a judge and >= 5 instructions
    cosine_<encoder>    cosine similarity of the sentence embeddings of answer and reference, one column per
                        --encoders entry (cosine_minilm: all-MiniLM-L6-v2, RLSR's default reward; cosine_mpnet:
                        all-mpnet-base-v2; cosine_embeddinggemma: EmbeddingGemma-300M with its sentence-similarity
                        prompt); each encoder truncates its input (MiniLM 256, MPNet 384 word pieces,
                        EmbeddingGemma 2048 tokens)
    bertscore_<encoder> BERTScore F1 with that encoder's last layer, as bert-score computes it (only with --bertscore)
    rouge_l             ROUGE-L F1 as rouge-score computes it (rlsr/text_metrics.py; no stemmer), encoder-free
    bleu                sentence BLEU / 100 as sacreBLEU's sentence_bleu computes it (rlsr/text_metrics.py)
    judge               the judge reward: the judge's 1-10 grade of the answer given the question and the reference,
                        as (grade - 1) / 9 (rlsr/judge_reward.py, its default prompt); only with --judge-reward
    <reward>            every other reward of rlsr/reward.py (REWARDS), under its --reward name
    length              answer length in tokens of the checkpoint's tokenizer (generated tokens, the stop included)
    terminated          1 if the answer ended by itself (a stop token), 0 if it was cut at --max-new-tokens
    distinct_2          distinct word bigrams / word bigrams of the answer (1 = no repetition)
    arena_hard_win_rate[_<category>]   Arena-Hard v2.0 win rate against the category's baseline, arena-hard-auto's
                        scoring (strong verdicts weigh 3, ties 0.5, both orders; rlsr/arena_hard.py): pooled over
                        all judged questions, and per category (hard_prompt vs o3-mini, creative_writing vs
                        gemini-2.0-flash); only with a judge
    ifeval_*            IFEval prompt- and instruction-level accuracy, strict and loose (rlsr/ifeval.py)
    lm_<task>           per document acc, acc_norm or exact_match as lm-eval-harness computes them (rlsr/lm_tasks.py)
    lm_average          their macro-average over the tasks (the interval resamples each task's documents on their own)
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

Robustness: every flag, checkpoint (config.json, safetensors headers and sizes, finite weights, tokenizer), encoder,
judge (probed: it must reply, and its reply must parse) and data file is checked before any work, and nothing is
written when a check fails (`error: ...`, exit status 2). An existing non-empty --out-dir is refused unless
--overwrite (which first removes the files an earlier eval.py wrote there, listed in written.json, and nothing else)
or --resume (which skips checkpoints whose per_checkpoint/<name>.json is complete and made from the same weights,
and refuses, naming the flag, if that file was made with other settings; --batch-size, --compare, --judge-workers,
--judge-key-env, --judge-timeout, --judge-retries may change). Written to --out-dir:

    per_checkpoint/<name>.json      one checkpoint's results, written as soon as it is done
    model_outputs/<name>.json       AlpacaEval format (instruction, output, generator, dataset): feed it to the
                                    official `alpaca_eval evaluate --model_outputs ...`
    judgments/alpaca_eval/<name>.jsonl            the pairwise judge's replies and verdicts (with a judge)
    arena_hard/arena-hard-v2.0/model_answer/<name>.jsonl            arena-hard-auto's answer format
    arena_hard/arena-hard-v2.0/model_judgment/<judge>/<name>.jsonl  its judgment format (with a judge): copy
                                    arena_hard/arena-hard-v2.0 into arena-hard-auto's data/ to run show_result.py
    ifeval/<name>/input_response_data.jsonl       the official IFEval format (prompt, response)
    lm_eval/<name>.jsonl            per lm-eval document: task, id, value, log-likelihoods, acc, acc_norm or answer
    results.json                    per result: name, checkpoint, metrics {metric: {mean, ci}}, per_item, seconds,
                                    compute, ...; plus "paired" differences, "prompts" (filter counts), "settings"
    results.md                      the table (rows = methods, columns = metrics), as printed
    results.png                     every metric per checkpoint with its 95% interval (rlsr/plot.py; needs matplotlib)
    written.json                    every file above that this script wrote: all that --overwrite removes
    .lock                           held by the eval.py writing here (another one is refused, naming it)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from rlsr.assets import POLICIES
from rlsr.benchmarks import (BENCHMARKS, Benchmark, Checkpoint, Context, EvalError, check_checkpoints, eval_columns,
                             filter_prompts, load_benchmarks, make_judges, name_of)
from rlsr.checkpoint import write_json
from rlsr.data import DataError
from rlsr.judge import JudgeError
from rlsr.lock import LockedError, lock_dir
from rlsr.metrics import Statistic, interval, paired_differences
from rlsr.outdir import files_under, finished, flag, prepare_out_dir, record_written, remove_written
from rlsr.model import Transformer
from rlsr.plot import plot_eval
from rlsr.report import report
from rlsr.training import HelpFormatter

# Flags that change how fast results come, not what they are: --resume accepts new values for these.
RESUME_FREE = ("checkpoints", "names", "out_dir", "overwrite", "resume", "compare", "batch_size", "judge_workers",
               "judge_key_env", "encoder", "judge_timeout", "judge_retries")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("checkpoints", nargs="+", help=f"HF-layout directories, `base`, or a policy: {', '.join(POLICIES)}")
    ap.add_argument("--names", nargs="+", help="row names (default: derived from the paths)")
    g = ap.add_argument_group("benchmarks")
    g.add_argument("--data", default="alpaca_eval", help="AlpacaEval-style prompts with references (rlsr/data.py)")
    g.add_argument("--split", help="split of --data alpaca_eval: all (805), test (161), train (644); default all, or "
                   "test when a checkpoint was trained on alpaca_eval")
    g.add_argument("--limit", type=int, default=0, help="first N prompts of each benchmark (0 = all)")
    for b in BENCHMARKS:
        if b.own_limit:
            g.add_argument(*(flag(f"{n}_limit") for n in (b.name, b.alias) if n), type=int, default=0,
                           help=b.limit_help % b.name)
    g.add_argument("--spread", action="store_true", help="with a limit: N prompts spread over the whole benchmark "
                   "(the N smallest sha256 of their ids, kept in file order) instead of the first N, so every "
                   "subset of AlpacaEval (ordered by subset in its file) is represented")
    g.add_argument("--max-prompt-tokens", type=int, default=512,
                   help="leave out prompts longer than this (chat-formatted, under any checkpoint's tokenizer)")
    for b in BENCHMARKS:
        g.add_argument(flag(f"no_{b.name}"), action="store_true", help=b.help)
        b.add_args(g)
    g.add_argument("--encoders", nargs="+", default=["minilm", "mpnet"],
                   help="sentence encoders for the cosine columns: minilm, mpnet, embeddinggemma (packaged) or "
                   "directories")
    g.add_argument("--encoder", help=argparse.SUPPRESS)  # deprecated: one encoder, same as --encoders X
    g.add_argument("--bertscore", action="store_true", help="add BERTScore F1 columns (bertscore_<encoder>, each "
                   "--encoders entry's last layer, as the bertscore reward computes it)")
    g = ap.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=256, help="answer length cap (greedy)")
    g.add_argument("--batch-size", type=int, default=32, help="prompts answered together")
    g.add_argument("--chat-template", metavar="FILE", help="jinja chat template for every checkpoint instead of its "
                   "own (e.g. a base model under a chosen format); the judge keeps its own")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="weights and compute")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g = ap.add_argument_group("judge (optional; without one there are no win-rate columns)")
    g.add_argument("--judge", help="a local HF-layout judge checkpoint, run by rlsr's engine")
    g.add_argument("--judge-url", help="an OpenAI-compatible endpoint, e.g. https://api.openai.com/v1")
    g.add_argument("--judge-model", default="gpt-4o-mini", help="model name sent to --judge-url")
    g.add_argument("--judge-key-env", default="OPENAI_API_KEY", help="environment variable holding the key ('' = none)")
    g.add_argument("--judge-workers", type=int, default=4, help="parallel requests to --judge-url")
    g.add_argument("--judge-timeout", type=float, default=60.0, help="seconds one request to --judge-url may take")
    g.add_argument("--judge-retries", type=int, default=4, help="retries of a failed request (timeouts, 429, 5xx), "
                   "with waits of 1, 2, 4, ... s: a judge that never replies fails after (retries + 1) x timeout + "
                   "the waits (315 s by default), found before any answer is generated")
    g.add_argument("--judge-reward", action="store_true", help="also the column `judge`: the judge grades each "
                   "AlpacaEval answer 1-10 against the reference (the judge reward of rlsr/judge_reward.py)")
    g.add_argument("--arena-hard-judge-max-tokens", type=int, default=16000,
                   help="reply length for Arena-Hard judgments (its judges write their own answer before the "
                        "verdict; arena-hard-auto's v2.0 config uses 16000)")
    g = ap.add_argument_group("output")
    g.add_argument("--out-dir", default="results/eval", help="where the results are written")
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

def check_flags(args) -> list[str]:
    """Flag ranges and combinations; returns the row names."""
    limits = ["limit"] + [f"{b.name}_limit" for b in BENCHMARKS if b.own_limit]
    for key, low in [(k, 0) for k in limits] + [("max_new_tokens", 1), ("batch_size", 1), ("max_prompt_tokens", 1),
                                                ("judge_workers", 1), ("arena_hard_judge_max_tokens", 1)]:
        if getattr(args, key) < low:
            raise EvalError(f"{flag(key)} must be >= {low}, got {getattr(args, key)}")
    if not (0.1 <= args.judge_timeout <= 3600 and 0 <= args.judge_retries <= 10):
        raise EvalError(f"--judge-timeout {args.judge_timeout} must be in [0.1, 3600] s and --judge-retries "
                        f"{args.judge_retries} in [0, 10]: a judge that never replies must fail in bounded time")
    if all(getattr(args, f"no_{b.name}") for b in BENCHMARKS):
        raise EvalError(f"every benchmark is turned off ({' '.join(flag('no_' + b.name) for b in BENCHMARKS)})")
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


# ---------------------------------------------------------------- the plan: every check, then one loop

@dataclass
class Plan:
    """Everything the loop needs, checked before any work."""
    args: argparse.Namespace
    out: Path
    benches: list[Benchmark]                  # the benchmarks turned on, their prompts loaded and filtered
    checkpoints: list[Checkpoint]
    ids: dict[str, dict[str, list]]           # tokenizer fingerprint -> benchmark -> prompt token ids
    context: Context                          # what scoring needs: out-dir, reward columns, judges
    settings: dict                            # the flags results depend on (--resume compares them)
    done: set[str]                            # checkpoints --resume skips
    overlap: dict[str, str]                   # per checkpoint: a note on evaluated prompts it trained on
    stats: dict[str, dict[str, Statistic]]    # per checkpoint: per metric, its bootstrap statistic


def prepare(args) -> Plan:
    """Every check, before anything is written or computed."""
    names = check_flags(args)
    out = Path(args.out_dir)
    prepare_out_dir(args, out)
    checkpoints = check_checkpoints(args.checkpoints, names, args.chat_template)
    benches = load_benchmarks(args, checkpoints)
    overlap = {k: v for b in benches for k, v in b.notes(checkpoints).items()}
    ids = filter_prompts(benches, checkpoints, args.max_prompt_tokens)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    judges = make_judges(args, device, dtype)
    if args.judge_reward and not judges:
        raise EvalError("--judge-reward grades with the judge: give --judge or --judge-url")
    columns = eval_columns(args, device, judges) if any(b.name == "alpaca_eval" for b in benches) else {}
    for b in benches:
        b.check()
    settings = settings_of(args)
    prompts = {b.name: b.prompts.ids for b in benches}
    done = {c.name for c in checkpoints if args.resume and finished(out, c, settings, prompts)}
    return Plan(args, out, benches, checkpoints, ids, Context(out, columns, judges), settings, done, overlap, {})


def evaluate(ckpt: Checkpoint, plan: Plan) -> dict:
    """One checkpoint: its answers to every benchmark, then their scores and files; returns its result record."""
    args, t0 = plan.args, time.perf_counter()
    model = Transformer.from_pretrained(ckpt.path, dtype=getattr(torch, args.dtype), device=torch.device(args.device),
                                        output_vocab=ckpt.tokenizer.vocab_size)
    answers, seconds = {}, {}
    for b in plan.benches:
        t = time.perf_counter()
        ids = plan.ids[ckpt.fingerprint].get(b.name)  # None: not chat prompts
        answers[b.name] = b.answer(model, ckpt.tokenizer, ids, f"{ckpt.name} {b.name}")
        seconds[b.name] = time.perf_counter() - t
    del model
    if torch.device(args.device).type == "cuda":
        torch.cuda.empty_cache()  # the judge may need the memory

    per_item, extra, notes = {}, {}, [n for n in [plan.overlap.get(ckpt.name)] if n]
    for b in plan.benches:
        s = b.score(plan.context, ckpt.name, *answers[b.name])
        per_item.update(s.per_item)
        extra.update(s.extra)
        notes += s.notes
        seconds.update(s.seconds)
    for note in notes:
        tqdm.write(f"{ckpt.name}: {note}")
    plan.stats[ckpt.name] = {k: Statistic(v) for k, v in per_item.items()}
    metrics = {k: interval(s) for k, s in plan.stats[ckpt.name].items()}
    return {"name": ckpt.name, "checkpoint": str(ckpt.path), "weights_sha256": ckpt.weights_sha256,
            "compute": ckpt.compute, "metrics": metrics,
            "per_item": per_item, "seconds": time.perf_counter() - t0, "seconds_by_phase": seconds, **extra,
            "notes": notes, "settings": plan.settings, "prompts": {b.name: b.prompts.ids for b in plan.benches}}


def main(argv=None):
    args = parse_args(argv)
    try:
        plan = prepare(args)
    except (EvalError, DataError, JudgeError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    out = plan.out
    try:
        lock_dir(out)                # one eval.py per --out-dir, for this process's life
        prepare_out_dir(args, out)   # again under the lock: another eval.py may have written it meanwhile
    except (LockedError, EvalError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.overwrite:
        remove_written(out)
    before = files_under(out)
    for d in ("per_checkpoint", "model_outputs"):
        (out / d).mkdir(parents=True, exist_ok=True)
    for b in plan.benches:
        p = b.prompts
        print(f"{b.name}: {len(p.items)} prompts" + (f" ({len(p.left_out)} of {p.total} left out: longer than "
                                                     f"{args.max_prompt_tokens} tokens)" if p.left_out else ""))
    for name, note in plan.overlap.items():
        print(f"{name}: {note}")
    todo = [c for c in plan.checkpoints if c.name not in plan.done]
    if plan.done:
        print(f"--resume: {', '.join(sorted(plan.done))} already evaluated, skipped")
    print(f"{len(todo)} checkpoints to evaluate, greedy, <= {args.max_new_tokens} new tokens, judge: "
          f"{plan.context.judges.name if plan.context.judges else 'none'}")

    results = {}
    for c in plan.checkpoints:
        if c.name in plan.done:
            results[c.name] = json.loads((out / "per_checkpoint" / f"{c.name}.json").read_text())
            plan.stats[c.name] = {k: Statistic(v) for k, v in results[c.name]["per_item"].items()}
    try:
        for c in tqdm(todo, desc="checkpoints", unit="ckpt"):
            r = evaluate(c, plan)
            write_json(out / "per_checkpoint" / f"{c.name}.json", r)
            record_written(out, before)
            results[c.name] = r
            tqdm.write(f"{c.name}: " + ", ".join(f"{k} {v['mean']:.3f}" for k, v in r["metrics"].items())
                       + f" ({r['seconds']:.0f} s)")
    except JudgeError as e:
        print(f"error: {e}\nfinished checkpoints are in {out / 'per_checkpoint'}; rerun with --resume to continue",
              file=sys.stderr)
        raise SystemExit(1) from None

    rows = [results[c.name] for c in plan.checkpoints]
    pairs = [tuple(p.split(":", 1)) for p in args.compare] or [(r["name"], rows[0]["name"]) for r in rows[1:]]
    paired = [{"name": f"{a} - {b}", "a": a, "b": b, "metrics": paired_differences(plan.stats, a, b)}
              for a, b in pairs]
    prompts = {b.name: {"total": b.prompts.total, "evaluated": len(b.prompts.items), "left_out": len(b.prompts.left_out),
                        "left_out_ids": b.prompts.left_out, "max_prompt_tokens": args.max_prompt_tokens}
               for b in plan.benches}
    md = report(rows, paired, prompts, plan.context.judges is not None, args.max_prompt_tokens)
    (out / "results.md").write_text(md)
    write_json(out / "results.json", {"settings": plan.settings, "prompts": prompts, "results": rows,
                                      "paired": paired})
    chart = plot_eval(out / "results.json", out / "results.png")  # None (said so) without matplotlib
    record_written(out, before)
    print(md)
    written = (["results.md", "results.json"] + ["results.png"] * bool(chart) + ["per_checkpoint/", "model_outputs/"]
               + [f"{w}/" for b in plan.benches for w in b.written if (out / w).exists()])
    print(f"outputs in {out}: {', '.join(written)}")


if __name__ == "__main__":
    main()

"""Evaluate checkpoints side by side on the same prompts: held-out AlpacaEval answers, IFEval, similarity, a judge.

    python eval.py base runs/sft/final runs/rlsr/final --names base sft rlsr --limit 100
    python eval.py base runs/rlsr/final --judge-url http://localhost:8000/v1 --judge-model Qwen/Qwen2.5-7B-Instruct

`base` stands for the packaged SmolLM2-135M-Instruct. Every checkpoint answers the same prompts greedily
(rlsr/sampling.py), so differences between rows are paired by prompt. Written to --out-dir:

    model_outputs/<name>.json                  AlpacaEval format (instruction, output, generator): feed it to the
                                               official `alpaca_eval evaluate --model_outputs ...`
    ifeval/<name>/input_response_data.jsonl    the official IFEval format (prompt, response)
    results.json                               every metric with its 95% bootstrap interval, per-item values,
                                               and paired differences against the first checkpoint
    results.md                                 the table (rows = methods, columns = metrics), as printed

Metrics (mean over prompts, [95% bootstrap interval]):
    cosine      cosine of MiniLM embeddings of answer and reference: the training reward
    rouge_l     ROUGE-L F1 against the reference, a second measure that does not use the reward encoder
    length      answer length in tokens; distinct_2: fraction of distinct word bigrams (1 = no repetition)
    win_rate    pairwise judge against the reference answer, both orders (rlsr/judge.py), only with --judge*
    ifeval_*    IFEval prompt- and instruction-level accuracy, strict and loose (rlsr/ifeval.py)
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from rlsr.assets import default_encoder_path, default_policy_path
from rlsr.data import load_dataset, load_ifeval
from rlsr.encoder import Encoder
from rlsr.ifeval import METRICS as IFEVAL_METRICS
from rlsr.ifeval import score_ifeval, write_input_response_data
from rlsr.metrics import bootstrap, distinct_n, rouge_l
from rlsr.model import Transformer
from rlsr.reward import SimilarityReward
from rlsr.sampling import SamplingParams, complete
from rlsr.tokenizer import Tokenizer


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", help="HF-layout directories, or `base` for the packaged policy")
    ap.add_argument("--names", nargs="+", help="row names (default: derived from the paths)")
    g = ap.add_argument_group("data")
    g.add_argument("--data", default="alpaca_eval", help="held-out prompt/reference data (rlsr/data.py)")
    g.add_argument("--split", default="test")
    g.add_argument("--limit", type=int, default=0, help="first N prompts of each benchmark (0 = all)")
    g.add_argument("--no-ifeval", action="store_true", help="skip IFEval")
    g = ap.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g = ap.add_argument_group("judge (optional)")
    g.add_argument("--judge", help="a local HF-layout judge checkpoint, run by rlsr's engine")
    g.add_argument("--judge-url", help="an OpenAI-compatible endpoint, e.g. https://api.openai.com/v1")
    g.add_argument("--judge-model", default="gpt-4o-mini", help="model name sent to --judge-url")
    g.add_argument("--judge-key-env", default="OPENAI_API_KEY", help="environment variable holding the key ('' = none)")
    g = ap.add_argument_group("output")
    g.add_argument("--out-dir", default="results/eval")
    g.add_argument("--encoder", help="encoder for the cosine metric (default: packaged all-MiniLM-L6-v2)")
    args = ap.parse_args(argv)
    if args.names and len(args.names) != len(args.checkpoints):
        ap.error(f"{len(args.names)} --names for {len(args.checkpoints)} checkpoints")
    return args


def name_of(path: str) -> str:
    p = Path(path)
    return "base" if path == "base" else (p.parent.name if p.name in ("final", "model") else p.name)


def make_judge(args):
    from rlsr.judge import HTTPJudge, LocalJudge
    if args.judge_url:
        return HTTPJudge(args.judge_model, base_url=args.judge_url, api_key_env=args.judge_key_env or None)
    if args.judge:
        return LocalJudge.from_pretrained(args.judge, dtype=getattr(torch, args.dtype), device=args.device)
    return None


def statistic(item):
    """A per-item record -> the metric over resampled items: the mean of a list, or sum(num) / sum(den) (a
    pooled rate such as IFEval's instruction-level accuracy, where prompts carry different numbers of instructions)."""
    if isinstance(item, dict):
        num, den = np.asarray(item["num"], dtype=np.float64), np.asarray(item["den"], dtype=np.float64)
        return lambda idx: num[idx].sum(1) / den[idx].sum(1)
    v = np.asarray(item, dtype=np.float64)
    return lambda idx: v[idx].mean(1)


def n_items(item) -> int:
    return len(item["num"]) if isinstance(item, dict) else len(item)


def interval(item) -> dict:
    point, lo, hi = bootstrap(statistic(item), n_items(item))
    return {"mean": point, "ci": [lo, hi]}


def ifeval_items(per_prompt: list[dict]) -> dict:
    """Per-prompt records of the four IFEval accuracies (prompt level: a mean; instruction level: pooled)."""
    out = {}
    for mode in ("strict", "loose"):
        follows = [p[mode]["follow_list"] for p in per_prompt]
        out[f"ifeval_prompt_level_{mode}"] = [float(all(f)) for f in follows]
        out[f"ifeval_inst_level_{mode}"] = {"num": [sum(f) for f in follows], "den": [len(f) for f in follows]}
    return {f"ifeval_{m}": out[f"ifeval_{m}"] for m in IFEVAL_METRICS}


def paired_differences(first: dict, other: dict) -> dict:
    """other - first for every metric, bootstrapped over the shared items (the same prompts)."""
    out = {}
    for key, item in first["per_item"].items():
        a, b = statistic(item), statistic(other["per_item"][key])
        point, lo, hi = bootstrap(lambda idx: b(idx) - a(idx), n_items(item))
        out[key] = {"mean": point, "ci": [lo, hi]}
    return out


def table(results: list[dict], columns: list[str]) -> str:
    head = "| method | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns) + "\n"
    rows = []
    for r in results:
        cells = []
        for c in columns:
            m = r["metrics"].get(c)
            cells.append("n/a" if m is None else f"{m['mean']:.3f} [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}]")
        rows.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out_dir)
    (out / "model_outputs").mkdir(parents=True, exist_ok=True)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    names = args.names or [name_of(c) for c in args.checkpoints]
    held = load_dataset(args.data, args.split)[:args.limit or None]
    ifeval = [] if args.no_ifeval else load_ifeval()[:args.limit or None]
    reward = SimilarityReward(Encoder.from_pretrained(args.encoder or default_encoder_path(), device=device))
    judge = make_judge(args)
    params = SamplingParams(args.max_new_tokens, temperature=0.0)
    print(f"{len(args.checkpoints)} checkpoints x ({len(held)} held-out prompts + {len(ifeval)} IFEval prompts), "
          f"greedy, <= {args.max_new_tokens} new tokens")

    results = []
    for name, ckpt in zip(names, args.checkpoints):
        t0 = time.perf_counter()
        path = default_policy_path() if ckpt == "base" else Path(ckpt)
        model = Transformer.from_pretrained(path, dtype=dtype, device=device)
        tok = Tokenizer.from_pretrained(path)
        prompts = [tok.apply_chat_template(ex.prompt_messages(), add_generation_prompt=True) for ex in held]
        answers, lengths = complete(model, tok, prompts, params, args.batch_size)
        refs = [ex.reference for ex in held]
        cosine, _ = reward(answers, refs)
        per_item = {"cosine": cosine.tolist(), "rouge_l": [rouge_l(a, r) for a, r in zip(answers, refs)],
                    "length": lengths, "distinct_2": [distinct_n([a], 2) for a in answers]}
        outputs = [{"instruction": ex.prompt_messages()[-1]["content"], "output": a, "generator": name,
                    "dataset": ex.source} for ex, a in zip(held, answers)]
        (out / "model_outputs" / f"{name}.json").write_text(json.dumps(outputs, indent=1, ensure_ascii=False))
        extra = {}
        if judge is not None:
            from rlsr.judge import pairwise_win_rate
            j = pairwise_win_rate(judge, [o["instruction"] for o in outputs], answers, refs)
            per_item["win_rate"] = j["per_item"]
            extra = {"judge_consistency": j["consistency"], "judge_unparseable": j["unparseable"]}
        if ifeval:
            ids = [tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], add_generation_prompt=True)
                   for r in ifeval]
            responses, _ = complete(model, tok, ids, params, args.batch_size)
            (out / "ifeval" / name).mkdir(parents=True, exist_ok=True)
            write_input_response_data(out / "ifeval" / name / "input_response_data.jsonl", ifeval, responses)
            per_item.update(ifeval_items(score_ifeval(ifeval, responses)["per_prompt"]))
        metrics = {k: interval(v) for k, v in per_item.items()}
        results.append({"name": name, "checkpoint": str(path), "metrics": metrics, **extra, "per_item": per_item,
                        "seconds": time.perf_counter() - t0})
        print(f"{name}: " + ", ".join(f"{k} {v['mean']:.3f}" for k, v in metrics.items()) +
              f" ({results[-1]['seconds']:.0f} s)")
        del model

    for r in results[1:]:
        r["paired_vs_" + results[0]["name"]] = paired_differences(results[0], r)
    columns = [c for c in ("win_rate", "cosine", "rouge_l", "length", "distinct_2", "ifeval_prompt_level_strict",
                           "ifeval_inst_level_strict", "ifeval_prompt_level_loose", "ifeval_inst_level_loose")
               if c in results[0]["metrics"]]
    md = table(results, columns)
    if len(results) > 1:
        diffs = [{"name": f"{r['name']} - {results[0]['name']}", "metrics": r["paired_vs_" + results[0]["name"]]}
                 for r in results[1:]]
        md += "\nPaired differences against the first row (same prompts):\n\n" + table(
            diffs, [c for c in columns if c in diffs[0]["metrics"]])
    (out / "results.md").write_text(md)
    (out / "results.json").write_text(json.dumps({"settings": vars(args), "results": results}, indent=1))
    print(md)


if __name__ == "__main__":
    main()

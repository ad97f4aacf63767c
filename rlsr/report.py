"""results.md from eval.py's results: rows = methods, columns = benchmarks, derived from what was computed.

Columns are every metric any row has, in a preferred order (COLUMN_ORDER; a metric it does not name still gets a
column, after these, so a new metric never silently disappears), each cell the mean with its 95% interval. Below the
table: the paired differences, the spread between training seeds (rows named METHOD@SEED), the prompts evaluated.

    python -m rlsr.report EVAL_DIR [--prompts N]   # markdown: each row's answers to the first N AlpacaEval prompts
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from rlsr.ifeval import METRICS as IFEVAL_METRICS

# Preferred column order only: a metric not named here still gets a column, after these.
COLUMN_ORDER = ("win_rate", "lc_win_rate", "cosine_*", "bertscore_*", "rouge_l", "bleu", "length", "terminated",
                "distinct_2", "arena_hard_win_rate", "arena_hard_win_rate_*", *(f"ifeval_{m}" for m in IFEVAL_METRICS),
                "lm_average", "lm_*")


def column_rank(metric: str) -> tuple[int, str]:
    for i, pattern in enumerate(COLUMN_ORDER):
        if metric == pattern or (pattern.endswith("*") and metric.startswith(pattern[:-1])):
            return i, ""
    return len(COLUMN_ORDER), metric


def columns_of(results: list[dict]) -> list[str]:
    """Every metric any row has, in the preferred order (first appearance within a group, e.g. encoders)."""
    seen = list(dict.fromkeys(k for r in results for k in r["metrics"]))
    return sorted(seen, key=lambda m: column_rank(m))  # stable: ties keep first appearance


def fmt(m: dict | None, metric: str, signed: bool = False) -> str:
    if m is None:
        return "-"
    digits = 1 if metric == "length" else 3
    s = "+" if signed else ""
    return f"{m['mean']:{s}.{digits}f} [{m['ci'][0]:.{digits}f}, {m['ci'][1]:.{digits}f}]"


def fmt_flops(compute: dict | None) -> str:
    if not compute:
        return "-"
    x = float(compute["flops"])
    if x == 0:
        return "0"
    e = math.floor(math.log10(x))
    m = round(x / 10 ** e, 1)
    if m >= 10:
        m, e = m / 10, e + 1
    return f"{m:.1f}e{e}"


def table(rows: list[tuple[str, list[str]]], head: list[str]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join([name] + cells) + " |" for name, cells in rows]
    return "\n".join(lines) + "\n"


def across_seeds(results: list[dict], columns: list[str]) -> str:
    """Rows named METHOD@SEED (reproduce.sh --seeds N): each method's mean over seeds and the spread between them
    (sample std over seeds, and the smallest and largest seed). Empty when no method has two seeds."""
    groups: dict[str, list[dict]] = {}
    for r in results:
        method, at, seed = r["name"].rpartition("@")
        if at and seed.isdigit():
            groups.setdefault(method, []).append(r)
    rows = []
    for method, rs in groups.items():
        if len(rs) < 2:
            continue
        cells = []
        for c in columns:
            v = np.array([r["metrics"][c]["mean"] for r in rs if c in r["metrics"]])
            digits = 1 if c == "length" else 3
            cells.append(f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f} ({v.min():.{digits}f}-{v.max():.{digits}f})"
                         if len(v) > 1 else "-")
        rows.append((f"{method} ({len(rs)} seeds)", cells))
    if not rows:
        return ""
    return ("\nAcross training seeds: mean ± std over seeds (smallest-largest seed):\n\n"
            + table(rows, ["method"] + columns))


def report(results: list[dict], paired: list[dict], prompts: dict[str, dict], judged: bool, max_tokens: int) -> str:
    """results.md: the table, the paired differences, the spread over seeds, the prompts evaluated, the notes.
    prompts: {benchmark: {"evaluated", "total", "left_out"}} (results.json's "prompts")."""
    columns = columns_of(results)
    md = table([(r["name"], [fmt_flops(r.get("compute"))] + [fmt(r["metrics"].get(c), c) for c in columns])
                for r in results], ["method", "compute (training FLOPs)"] + columns)
    if paired:
        md += ("\nPaired differences A - B on the same prompts (paired bootstrap 95% interval over prompts):\n\n"
               + table([(p["name"], [fmt(p["metrics"].get(c), c, signed=True) for c in columns]) for p in paired],
                       ["difference"] + columns))
    md += across_seeds(results, columns)
    md += "\nBenchmarks (prompts evaluated; left out: longer than --max-prompt-tokens "
    md += f"{max_tokens} for some checkpoint's tokenizer):\n\n"
    labels = {"alpaca_eval": "AlpacaEval (win_rate, lc_win_rate, cosine_*, bertscore_*, rouge_l, bleu, length, "
                             "terminated, distinct_2)",
              "arena_hard": "Arena-Hard v2.0 (arena_hard_win_rate*)", "ifeval": "IFEval (ifeval_*)",
              "lm_eval": "lm-eval-harness tasks (lm_*; documents, all tasks together)"}
    for name, p in prompts.items():
        md += f"- {labels[name]}: {p['evaluated']} of {p['total']} prompts, {p['left_out']} left out\n"
    if not judged:
        md += ("\nNo judge was given (--judge or --judge-url), so there are no win-rate columns (AlpacaEval "
               "win_rate and lc_win_rate, Arena-Hard); Arena-Hard answers are written for a later judge.\n")
    notes = [f"{r['name']}: {n}" for r in results for n in r.get("notes", [])]
    if notes:
        md += "\n" + "".join(f"- {n}\n" for n in notes)
    return md


def quote(text: str) -> str:
    return "\n".join("> " + line for line in text.splitlines()) if text.strip() else "> (empty)"


def samples(eval_dir: Path, n: int = 2) -> str:
    """Markdown: every row's greedy answer to each of the first n AlpacaEval prompts evaluated, from eval.py's
    results.json (the rows, in order) and model_outputs/<row>.json (the same prompts, in the same order, per row)."""
    eval_dir = Path(eval_dir)
    names = [r["name"] for r in json.loads((eval_dir / "results.json").read_text())["results"]]
    outputs = {name: json.loads((eval_dir / "model_outputs" / f"{name}.json").read_text()) for name in names}
    md = f"Greedy answers of each row to the first {n} AlpacaEval prompts evaluated ({eval_dir}).\n"
    for i in range(min(n, len(outputs[names[0]]))):
        md += f"\n## Prompt {i + 1}\n\n{quote(outputs[names[0]][i]['instruction'])}\n"
        md += "".join(f"\n**{name}**\n\n{quote(outputs[name][i]['output'])}\n" for name in names)
    return md


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="each row's answers to the first AlpacaEval prompts of an eval.py run")
    ap.add_argument("eval_dir", type=Path, help="eval.py's --out-dir (results.json, model_outputs/)")
    ap.add_argument("--prompts", type=int, default=2, help="how many prompts (default 2)")
    args = ap.parse_args()
    print(samples(args.eval_dir, args.prompts), end="")

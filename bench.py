"""Speed benchmarks. Each prints its figure as the last line.

    python bench.py sample --rows 8 --new-tokens 128            -> tokens_per_s=<float>
    python bench.py rlsr-step --prompts 4 --group 8 --new-tokens 64 --beta 0.04   -> s_per_step=<float>
        (train_rlsr.py's own step on the prompts and references of TRL's anchor benchmark, median after a warm-up)

Defaults use the packaged SmolLM2-135M-Instruct (and all-MiniLM-L6-v2 for rlsr-step), fp32, on the CPU or the GPU.
--profile prints where the time goes (torch.profiler, top operators by self time).
"""
import argparse
import statistics
import sys
import time
from contextlib import nullcontext

import torch

from rlsr import cpu_matmul
from rlsr.assets import POLICIES, default_policy_path, policy_path
from rlsr.flops import forward_flops
from rlsr.model import Transformer
from rlsr.sampling import SamplingParams, draw_uniforms, generate
from rlsr.tokenizer import Tokenizer
from rlsr.training import HelpFormatter

PROMPT = "Give three tips for staying healthy."


# Dense peak TFLOP/s by GPU name and dtype (vendor data sheets, no sparsity); other devices: pass --peak-tflops.
PEAK_TFLOPS = {"H100": {"bfloat16": 989.0, "float16": 989.0, "float32": 67.0},
               "H200": {"bfloat16": 989.0, "float16": 989.0, "float32": 67.0},
               "A100": {"bfloat16": 312.0, "float16": 312.0, "float32": 19.5}}


def peak_flops(args) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if args.device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        for key, table in PEAK_TFLOPS.items():
            if key in name:
                return table[args.dtype] * 1e12
    return None


def report_flops(flops_per_s: float, args):
    peak = peak_flops(args)
    mfu = f"{100 * flops_per_s / peak:.1f}% of {peak / 1e12:g} TFLOP/s" if peak else "n/a (pass --peak-tflops)"
    print(f"model FLOP/s {flops_per_s / 1e12:.3f} TFLOP/s, MFU {mfu}")


def load_policy(args):
    path = policy_path(args.model)
    tok = Tokenizer.from_pretrained(path)
    model = Transformer.from_pretrained(path, dtype=getattr(torch, args.dtype), device=args.device,
                                        output_vocab=tok.vocab_size)
    return model, tok


def profiled(enabled):
    if not enabled:
        return nullcontext(None)
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    return profile(activities=acts)


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def progress(message: str):
    """What the benchmark is doing, on stderr as it happens (stdout ends with the figure)."""
    print(message, file=sys.stderr, flush=True)


def bench_sample(args):
    progress(f"loading {args.model or default_policy_path()} ({args.dtype}, {args.device})")
    model, tok = load_policy(args)
    cpu_matmul.enabled = not args.plain_matmul
    prompt = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True)
    gen = torch.Generator().manual_seed(0)
    run = lambda n: generate(model, [prompt], SamplingParams(max_new_tokens=n, temperature=1.0, ignore_stop=True),  # noqa: E731
                             tok.stop_ids, args.rows, draw_uniforms(gen, n, args.rows), tok.pad_id, compile=args.compile)
    progress("warm-up" + (" (compiling)" if args.compile else ""))
    run(args.new_tokens if args.compile else 8)  # warm-up (a compiled step compiles here)
    rates = []
    for i in range(args.repeats):
        progress(f"timed run {i + 1} of {args.repeats}: {args.rows} rows x {args.new_tokens} tokens")
        with profiled(args.profile and i == 0) as prof:
            sync(model.device)
            t = time.perf_counter()
            r = run(args.new_tokens)
            sync(model.device)
            dt = time.perf_counter() - t
        rates.append(r.mask.sum().item() / dt)
        if prof is not None:
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    print(f"sample rows={args.rows} new_tokens={args.new_tokens} dtype={args.dtype} device={model.device} "
          f"runs={[round(x, 1) for x in rates]}")
    # decode FLOPs per token (the prefill is one prompt): weights, attention over ~the mean context, the head
    per_token = forward_flops(model.config, 1, len(prompt) + args.new_tokens // 2, 1, model.output_vocab)
    report_flops(statistics.median(rates) * per_token, args)
    print(f"tokens_per_s={statistics.median(rates):.1f}")


# The workload of TRL's anchor benchmark (../shared/tools/trl_grpo_bench.py): four prompts with short references.
TRL_ROWS = [("Give three tips for staying healthy.", "Eat a balanced diet, exercise regularly, and get enough sleep."),
            ("Explain what a hash table is.", "A hash table maps keys to values using a hash function to pick a bucket."),
            ("Write a haiku about autumn.", "Crisp leaves drift and fall / golden light on quiet paths / the year exhales slow"),
            ("Name the capital of France.", "The capital of France is Paris.")]


def bench_rlsr_step(args):
    """Full RLSR steps through train_rlsr.py itself (rollout, reward, reference, update), timed by its own logs."""
    import json
    import tempfile
    from pathlib import Path

    import train_rlsr
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "trl_rows.jsonl"
        data.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in TRL_ROWS))
        argv = ["--data", str(data), "--train-split", "all", "--no-eval", "--out-dir", str(Path(tmp) / "run"),
                "--steps", str(args.steps), "--prompts-per-step", str(args.prompts), "--group-size", str(args.group),
                "--max-new-tokens", str(args.new_tokens), "--beta", str(args.beta), "--dtype", args.dtype,
                "--device", args.device, "--save-every", "0", "--sample-every", "0", "--lr", "1e-6"]
        if args.model:
            argv += ["--init", args.model]
        if args.compile:
            argv += ["--compile-sampling"]
        cpu_matmul.enabled = not args.plain_matmul
        progress(f"{args.steps} RLSR steps through train_rlsr.py (the first is a warm-up); its progress bar follows")
        with profiled(args.profile) as prof:
            train_rlsr.main(argv)
        metrics = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    if prof is not None:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    timed = metrics[1:]  # the first step is the warm-up
    for part in [k for k in timed[0] if k.startswith("time/")]:
        print(f"{part}: median {statistics.median(m[part] for m in timed):.2f} s")
    print(f"steps={[round(m['step_time'], 2) for m in metrics]} completion tokens/step "
          f"{statistics.median(m['completions/mean_length'] for m in timed) * args.prompts * args.group:.0f}")
    # model FLOPs of each step as the run counted them (rlsr/flops.py): sampling, KL model, forward + backward
    flops = [b["flops"] - a["flops"] for a, b in zip(metrics, metrics[1:])]
    report_flops(statistics.median(f / m["step_time"] for f, m in zip(flops, timed)), args)
    print(f"s_per_step={statistics.median(m['step_time'] for m in timed):.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", help="HF-layout policy directory or a packaged policy "
                        f"({', '.join(POLICIES)}; default: the first)")
    common.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    common.add_argument("--profile", action="store_true", help="print the top operators of the first timed run")
    common.add_argument("--compile", action="store_true", help="torch.compile'd static-shape decode step "
                        "(CUDA graphs on a GPU; slow to compile and no faster on a CPU)")
    common.add_argument("--peak-tflops", type=float, help="the device's peak for the MFU figure (known GPUs: automatic)")
    common.add_argument("--plain-matmul", action="store_true", help="decode without the CPU few-row product "
                        "(rlsr/cpu_matmul.py), to measure what it gains")
    s = sub.add_parser("sample", parents=[common], formatter_class=HelpFormatter,
                       help="sampling throughput, one chat prompt, stop tokens ignored")
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    s.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up; the median is reported")
    s.add_argument("--rows", type=int, default=8)
    s.add_argument("--new-tokens", type=int, default=128)
    s = sub.add_parser("rlsr-step", parents=[common], formatter_class=HelpFormatter,
                       help="seconds per full RLSR step (TRL anchor's workload)")
    s.add_argument("--prompts", type=int, default=4)
    s.add_argument("--group", type=int, default=8)
    s.add_argument("--new-tokens", type=int, default=64)
    s.add_argument("--beta", type=float, default=0.04)
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    s.add_argument("--steps", type=int, default=4, help="steps run (>= 2); the first is a warm-up")
    args = ap.parse_args()
    if args.cmd == "rlsr-step" and args.steps < 2:
        ap.error("rlsr-step --steps must be >= 2: the first step is a warm-up and is not timed")
    {"sample": bench_sample, "rlsr-step": bench_rlsr_step}[args.cmd](args)


if __name__ == "__main__":
    main()

"""Speed benchmarks. Each prints its figure as the last line.

    python bench.py sample --rows 8 --new-tokens 128            -> tokens_per_s=<float>
    python bench.py rlsr-step --prompts 4 --group 8 --new-tokens 64 --beta 0.04   -> s_per_step=<float>

Defaults use the packaged SmolLM2-135M-Instruct (and all-MiniLM-L6-v2 for rlsr-step), fp32, on the CPU or the GPU.
--profile prints where the time goes (torch.profiler, top operators by self time).
"""
import argparse
import statistics
import time
from contextlib import nullcontext

import torch

from rlsr.assets import default_policy_path
from rlsr.model import Transformer
from rlsr.sampling import SamplingParams, generate
from rlsr.tokenizer import Tokenizer

PROMPT = "Give three tips for staying healthy."


def load_policy(args):
    path = args.model or default_policy_path()
    dtype = getattr(torch, args.dtype)
    return Transformer.from_pretrained(path, dtype=dtype, device=args.device), Tokenizer.from_pretrained(path)


def profiled(enabled):
    if not enabled:
        return nullcontext(None)
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    return profile(activities=acts)


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def bench_sample(args):
    model, tok = load_policy(args)
    prompt = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True)
    gen = torch.Generator(device=model.device).manual_seed(0)
    run = lambda n: generate(model, [prompt], SamplingParams(max_new_tokens=n, temperature=1.0, ignore_stop=True),  # noqa: E731
                             tok.stop_ids, tok.vocab_size, group_size=args.rows, generator=gen, pad_id=tok.pad_id,
                             compile=args.compile)
    run(args.new_tokens if args.compile else 8)  # warm-up (a compiled step compiles here)
    rates = []
    for i in range(args.repeats):
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
    print(f"tokens_per_s={statistics.median(rates):.1f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", help="HF-layout policy directory (default: packaged SmolLM2-135M-Instruct)")
    common.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    common.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    common.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up; the median is reported")
    common.add_argument("--profile", action="store_true", help="print the top operators of the first timed run")
    common.add_argument("--compile", action="store_true", help="torch.compile'd static-shape decode step "
                        "(CUDA graphs on a GPU; slow to compile and no faster on a CPU)")
    s = sub.add_parser("sample", parents=[common], help="sampling throughput, one chat prompt, stop tokens ignored")
    s.add_argument("--rows", type=int, default=8)
    s.add_argument("--new-tokens", type=int, default=128)
    args = ap.parse_args()
    {"sample": bench_sample}[args.cmd](args)


if __name__ == "__main__":
    main()

"""SFT baseline: next-token cross-entropy on the reference answers of the same data RLSR trains on.

    python train_sft.py                                # the embedded default: SmolLM2-135M-Instruct on AlpacaEval's
                                                       # train split, ~12 min on 2 CPU cores
    python train_sft.py --pack --max-seq-len 1024      # several examples per row, no padding compute
    python train_rlsr.py --init runs/sft/final         # SFT -> RLSR: this script's output is a valid --init
    python train_sft.py --resume runs/sft              # continue a killed run exactly

Same chat template, data, prompt filter, run directory, metrics.jsonl, atomic HF-layout checkpoints and exact resume
as train_rlsr.py. Trained tokens: the reference answer and its end-of-turn token (rlsr/sft.py); the loss is
normalised over the whole optimizer step, so micro-batching does not change the gradient.
"""
import argparse
import math
import time

import torch
from tqdm import tqdm

from rlsr import distributed
from rlsr.assets import default_policy_path
from rlsr.data import PromptSampler, chat_prompts, load_dataset
from rlsr.model import Transformer
from rlsr.run import adamw_with_warmup, open_run
from rlsr.sft import make_batch, micro_batches, sft_loss, tokenize_example
from rlsr.tokenizer import Tokenizer


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_argument_group("model")
    g.add_argument("--init", help="HF-layout checkpoint to start from (default: packaged SmolLM2-135M-Instruct)")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="weights and compute")
    g.add_argument("--amp", action="store_true", help="bf16 autocast over fp32 weights (GPU)")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--grad-checkpointing", action="store_true", help="recompute blocks in backward: less memory")
    g.add_argument("--fsdp", action="store_true", help="under torchrun: FSDP2 instead of DDP")
    g = ap.add_argument_group("data")
    g.add_argument("--data", default="alpaca_eval", help="built-in data set name or a JSONL file (rlsr/data.py)")
    g.add_argument("--train-split", default="train", help="split of a built-in data set ('all' for everything)")
    g.add_argument("--eval-data", help="held-out data (default: --data with --eval-split)")
    g.add_argument("--eval-split", default="test")
    g.add_argument("--eval-examples", type=int, default=32, help="held-out examples for the loss (0 = all)")
    g.add_argument("--max-prompt-tokens", type=int, default=512, help="longer prompts are left out, as in RLSR")
    g.add_argument("--max-seq-len", type=int, default=384, help="examples are cut here (counted as truncated)")
    g.add_argument("--pack", action="store_true", help="pack several examples per row (positions/attention reset)")
    g = ap.add_argument_group("optimization")
    g.add_argument("--steps", type=int, default=25, help="optimizer steps")
    g.add_argument("--examples-per-step", type=int, default=8)
    g.add_argument("--micro-batch-size", type=int, default=4, help="rows per forward/backward (memory, not maths)")
    g.add_argument("--lr", type=float, default=2e-5)
    g.add_argument("--warmup-steps", type=int, default=3)
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--grad-clip", type=float, default=1.0)
    g = ap.add_argument_group("run")
    g.add_argument("--out-dir", default="runs/sft", help="run directory (must be new or empty)")
    g.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its latest checkpoint, with its settings")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--save-every", type=int, default=10, help="checkpoint every N steps (and at the end)")
    g.add_argument("--eval-every", type=int, default=0, help="held-out loss every N steps (0 = start and end)")
    return ap.parse_args(argv)


@torch.no_grad()
def held_out_loss(model, examples, args, vocab_size, d) -> float:
    """Mean cross-entropy per trained token over the held-out examples (nats); ranks split the examples."""
    model.eval()
    mine = examples[d.rank::d.world]
    n = sum(x.trained[1:].count(True) for x in examples)  # every rank holds them all
    total = sum(sft_loss(model, make_batch(rows), n, vocab_size).item()
                for rows in micro_batches(mine, args.micro_batch_size, args.pack, args.max_seq_len))
    return distributed.all_reduce({"loss": total}, d)["loss"]


def main(argv=None):
    args = parse_args(argv)
    d = distributed.init(args.device)  # one process, or one rank of a torchrun job
    run, args = open_run(args, argv, writer=d.main)
    distributed.barrier(d)
    say = print if d.main else (lambda *a, **k: None)
    device, dtype = d.device, getattr(torch, args.dtype)
    torch.manual_seed(args.seed)

    init = args.init or str(default_policy_path())
    ckpt = run.latest_checkpoint() if args.resume else None
    tok = Tokenizer.from_pretrained(init)
    policy = Transformer.from_pretrained(ckpt or init, dtype=dtype, device=device)
    policy.gradient_checkpointing = args.grad_checkpointing
    model = distributed.wrap(policy, d, args.fsdp)

    def prepare(examples, what):
        keep, _ = chat_prompts(tok, examples, args.max_prompt_tokens)
        if len(keep) < len(examples):
            say(f"{what}: left out {len(examples) - len(keep)} of {len(examples)} prompts longer than "
                f"{args.max_prompt_tokens} tokens")
        tokenized = {ex.id: tokenize_example(tok, ex, args.max_seq_len) for ex in keep}
        cut = sum(x.truncated for x in tokenized.values())
        say(f"{what}: {len(keep)} examples, {cut} cut at {args.max_seq_len} tokens")
        return keep, tokenized
    train, train_tok = prepare(load_dataset(args.data, args.train_split), "train")
    held = load_dataset(args.eval_data or args.data, args.eval_split)[:args.eval_examples or None]
    held, held_tok = prepare(held, "eval")
    held_tok = list(held_tok.values())
    sampler = PromptSampler(train, args.examples_per_step, seed=args.seed)  # the global batch, identical on all ranks

    params = [p for p in model.parameters() if p.requires_grad]
    fused = not (args.fsdp and device.type == "cpu")  # fused AdamW does not take CPU DTensors
    optimizer, scheduler = adamw_with_warmup(params, args.lr, args.weight_decay, args.warmup_steps, fused)
    load_optimizer = lambda state: distributed.load_optimizer_state(model, optimizer, state, d)  # noqa: E731
    start = run.restore(ckpt, load_optimizer, scheduler, sampler) if args.resume else 0

    evals = distributed.gather({e["step"]: e for e in run.read_log("eval.jsonl")} if d.main else {}, d)[0]
    if 0 not in evals:
        evals[0] = {"step": 0, "loss": held_out_loss(model, held_tok, args, tok.vocab_size, d)}
        run.log(evals[0], "eval.jsonl")
    say(f"held-out loss at start: {evals[0]['loss']:.4f} nats/token (n={len(held_tok)} examples)")

    bar = tqdm(range(start + 1, args.steps + 1), initial=start, total=args.steps, desc="sft", dynamic_ncols=True,
               disable=not d.main)
    for step in bar:
        t0 = time.perf_counter()
        examples = [train_tok[ex.id] for ex in distributed.shard(next(sampler), d)]
        mbs = micro_batches(examples, args.micro_batch_size, args.pack, args.max_seq_len)
        counts = distributed.all_reduce({"targets": sum(x.trained[1:].count(True) for x in examples),
                                         "tokens": sum(len(x.ids) for x in examples)}, d)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        local = {"loss": 0.0, "rows": 0, "padded_tokens": 0, "truncated": sum(x.truncated for x in examples)}
        for k, rows in enumerate(mbs):
            batch = make_batch(rows, tok.pad_id)
            with distributed.gradient_sync(model, d, args.fsdp, sync=k == len(mbs) - 1):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
                    loss = sft_loss(model, batch, counts["targets"], tok.vocab_size)  # a share of the step loss
                (loss * d.loss_scale).backward()
            local["loss"] += loss.item()
            local["rows"] += batch.ids.shape[0]
            local["padded_tokens"] += batch.ids.numel()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
        grad_norm = grad_norm.full_tensor().item() if hasattr(grad_norm, "full_tensor") else grad_norm.item()
        optimizer.step()
        scheduler.step()
        dt = time.perf_counter() - t0
        total = distributed.all_reduce(local, d)
        m = {"step": step, "loss": total["loss"], "perplexity": math.exp(min(total["loss"], 50)), "grad_norm": grad_norm,
             "learning_rate": scheduler.get_last_lr()[0], "num_tokens": counts["tokens"], "num_targets": counts["targets"],
             "truncated": total["truncated"] / args.examples_per_step, "rows": total["rows"],
             "padding_fraction": 1 - counts["tokens"] / total["padded_tokens"], "step_time": dt,
             "tokens_per_s": counts["tokens"] / dt}
        run.log(m)
        bar.set_postfix(loss=f"{m['loss']:.3f}", tok_s=f"{m['tokens_per_s']:.0f}")
        if args.eval_every and step % args.eval_every == 0 and step != args.steps:
            e = {"step": step, "loss": held_out_loss(model, held_tok, args, tok.vocab_size, d)}
            run.log(e, "eval.jsonl")
            if d.main:
                tqdm.write(f"step {step}: held-out loss {e['loss']:.4f}")
        if step % args.save_every == 0 or step == args.steps:
            run.checkpoint(step, model, policy, tok, optimizer, scheduler, sampler, d)
    bar.close()

    run.save_final(model, policy, tok, d)
    if args.steps not in evals:
        evals[args.steps] = {"step": args.steps, "loss": held_out_loss(model, held_tok, args, tok.vocab_size, d)}
        run.log(evals[args.steps], "eval.jsonl")
    summary = (f"held-out loss (n={len(held_tok)} examples): {evals[0]['loss']:.4f} -> {evals[args.steps]['loss']:.4f} "
               f"nats/token; weights in {run.path / 'final'}")
    run.log({"step": args.steps, "summary": summary}, "summary.jsonl")
    say(summary)
    distributed.close(d)


if __name__ == "__main__":
    main()

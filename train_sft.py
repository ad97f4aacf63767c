"""SFT baseline: next-token cross-entropy on the reference answers of the same data RLSR trains on.

    python train_sft.py                                # the embedded default: SmolLM2-135M-Instruct on AlpacaEval's
                                                       # train split, 25 steps
    python train_sft.py --pack --max-seq-len 1024      # several examples per row, no padding compute
    python train_rlsr.py --init runs/sft/final         # SFT -> RLSR: this script's output is a valid --init
    python train_sft.py --resume runs/sft              # continue a killed run exactly

Same chat template, data, prompt filter, run directory, metrics.jsonl, verified HF-layout checkpoints, compute
count and exact resume as train_rlsr.py (the shared set-up is rlsr/training.py). Trained tokens: the reference
answer and its end-of-turn token (rlsr/sft.py); the loss is normalised over the whole optimizer step, so
micro-batching does not change the gradient.
"""
import argparse
import math

import torch
from tqdm import tqdm

from rlsr import distributed, training
from rlsr.data import PromptSampler
from rlsr.sft import Tokenized, num_targets, sft_batches, sft_loss, tokenize_example
from rlsr.training import check_range


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=training.HelpFormatter,
                                 allow_abbrev=False)
    groups = training.common_args(ap, steps=25, lr=2e-5, warmup=3, micro_batch=4, out_dir="runs/sft")
    g = groups["data"]
    g.add_argument("--eval-examples", type=int, default=32, help="held-out examples for the loss (0 = all)")
    g.add_argument("--max-seq-len", type=int, default=384, help="examples are cut here (counted as truncated)")
    g.add_argument("--pack", action="store_true", help="pack several examples per row (positions/attention reset)")
    groups["optimization"].add_argument("--examples-per-step", type=int, default=8, help="examples per optimizer step")
    return ap


def micro_batches(examples: list[Tokenized], args, d, tok) -> list:
    """This rank's micro-batches, padded with empty ones to the largest count over ranks: under FSDP2 every forward
    all-gathers parameters, so every rank must run the same number (packing gives ranks different row counts)."""
    mbs = sft_batches(examples, args.micro_batch_size, args.pack, args.max_seq_len, tok.pad_id)
    n = distributed.all_reduce_max(len(mbs), d)
    empty = Tokenized([tok.pad_id, tok.pad_id], [False, False], False)  # no target: its loss and gradient are 0
    return mbs + sft_batches([empty] * (n - len(mbs)), 1, False, 2, tok.pad_id)


@torch.no_grad()
def held_out_loss(model, examples: list[Tokenized], args, d, tok, compute) -> float:
    """Mean cross-entropy per trained token over the held-out examples (nats); ranks split the examples."""
    model.eval()
    mine = examples[d.rank::d.world]
    total = sum(sft_loss(model, b, num_targets(examples)).item()
                for b in tqdm(micro_batches(mine, args, d, tok), desc="held-out", leave=False, disable=not d.main))
    compute.sequences([len(x.ids) for x in mine], num_targets(mine), "eval")
    return distributed.all_reduce({"loss": total}, d)["loss"]


def main(argv=None):
    ap = build_parser()
    args = training.parse(ap, argv)                       # with --resume: the run's own settings
    d = distributed.init(args.device, args.fsdp)          # one process, or one rank of a torchrun job
    training.check_common(args, d.world, "examples_per_step")
    check_range(args, "examples_per_step", 1)
    check_range(args, "eval_examples", 0)
    check_range(args, "max_seq_len", 2)
    say = training.speaker(d)
    torch.manual_seed(args.seed)

    init = training.init_path(args)
    _, tok = training.load_init(args, init, say)
    train, held = training.load_splits(args, say)

    def prepare(examples, what, source):
        kept, _ = training.filter_prompts(tok, examples, args.max_prompt_tokens, what, source, say)
        tokenized = {ex.id: tokenize_example(tok, ex, args.max_seq_len) for ex in kept}
        say(f"{what}: {len(kept)} examples, {sum(x.truncated for x in tokenized.values())} cut at {args.max_seq_len} "
            "tokens")
        return kept, tokenized
    train, train_tok = prepare(train, "train", args.data)
    held, held_tok = prepare(held[:args.eval_examples or None], "held-out", args.eval_data or args.data)
    held_tok = list(held_tok.values())
    sampler = PromptSampler(train, args.examples_per_step, seed=args.seed)  # the global batch, identical on all ranks

    ckpt = training.checkpoint_to_resume(args, d)
    policy = training.load_trained(init, ckpt, tok, args, d)   # with --lora-rank: frozen, under adapters
    trainer = training.Trainer(args, d, tok, policy, sampler, init)   # the run directory: every input was checked
    model = trainer.model
    start = trainer.restore(ckpt)

    def held_out(step: int, when: str | None = None) -> dict:
        return trainer.evaluate(step, lambda c: {"loss": held_out_loss(model, held_tok, args, d, tok, c)},
                                f"held-out loss {when}: {len(held_tok)} examples" if when else None)
    first = held_out(0, "at start")
    say(f"held-out loss at start: {first['loss']:.4f} nats/token (n={len(held_tok)} examples); run dir "
        f"{trainer.run.path}")

    bar = tqdm(range(start + 1, args.steps + 1), initial=start, total=args.steps, desc="sft", dynamic_ncols=True,
               disable=not d.main)
    for step in bar:
        laps, step_compute = training.Laps(), trainer.step_compute()
        examples = [train_tok[ex.id] for ex in distributed.shard(next(sampler), d)]
        mbs = micro_batches(examples, args, d, tok)
        counts = distributed.all_reduce({"targets": num_targets(examples),
                                         "tokens": sum(len(x.ids) for x in examples)}, d)
        model.train()
        local = {"loss": 0.0, "rows": 0, "padded_tokens": 0, "truncated": sum(x.truncated for x in examples)}
        for k, batch in enumerate(mbs):
            with distributed.gradient_sync(model, d, sync=k == len(mbs) - 1):
                with trainer.amp():
                    loss = sft_loss(model, batch, counts["targets"])  # a share of the step loss
                (loss * d.loss_scale).backward()
            local["loss"] += loss.item()
            local["rows"] += batch.ids.shape[0]
            local["padded_tokens"] += batch.ids.numel()
        step_compute.sequences([len(x.ids) for x in examples], num_targets(examples), "sft", with_backward=True)
        total = distributed.all_reduce(local, d)
        grad_norm, _ = trainer.step(step, total["loss"])
        laps.lap("update")
        trainer.count(step_compute)
        dt = laps.times["update"]
        m = {"step": step, "loss": total["loss"], "perplexity": math.exp(min(total["loss"], 50)),
             "grad_norm": grad_norm, "learning_rate": trainer.scheduler.get_last_lr()[0],
             "num_tokens": counts["tokens"], "num_targets": counts["targets"],
             "truncated": total["truncated"] / args.examples_per_step, "rows": total["rows"],
             "padding_fraction": 1 - counts["tokens"] / total["padded_tokens"],
             "nonfinite_steps": trainer.nonfinite_steps, "flops": trainer.compute.training_flops, "step_time": dt,
             "tokens_per_s": counts["tokens"] / dt}
        trainer.log(m)
        bar.set_postfix(loss=f"{m['loss']:.3f}", tok_s=f"{m['tokens_per_s']:.0f}")
        if trainer.due(step):
            e = held_out(step)
            if d.main:
                tqdm.write(f"step {step}: held-out loss {e['loss']:.4f}")
        trainer.maybe_checkpoint(step)
    bar.close()

    last = held_out(args.steps, "at the end")
    trainer.summarize(f"held-out loss (n={len(held_tok)} examples): {first['loss']:.4f} -> {last['loss']:.4f} nats/token",
                      "WARNING: the held-out loss rose: the model got worse on held-out references; lower --lr"
                      if last["loss"] > first["loss"] else None)
    trainer.close(trainer.finish())  # final/ last: a run whose final/ is intact has finished


if __name__ == "__main__":
    training.cli(main)

"""RLSR: reinforcement learning on SFT data, rewarded by sentence-embedding similarity to the reference answer.

    python train_rlsr.py                              # the embedded default: SmolLM2-135M-Instruct on AlpacaEval's
                                                      # train split, MiniLM reward; ~11 min on 2 CPU cores
    python train_rlsr.py --init runs/sft/final        # SFT -> RLSR: start from any HF-layout checkpoint
    python train_rlsr.py --resume runs/rlsr           # continue a killed run exactly where its last checkpoint was

One step, top to bottom: P prompts -> G completions each (rlsr/sampling.py) -> rewards cos(E(y), E(y*))
(rlsr/reward.py) -> group advantages (rlsr/grpo.py) -> [old log-probs, only when a rollout is reused] ->
[reference log-probs, only when beta > 0] -> micro-batched update with the clipped loss -> grad clip -> AdamW.
The exact algorithm and each default's reason are in rlsr/grpo.py. Logs, checkpoints and resume: rlsr/run.py.
"""
import argparse
import time

import torch
from tqdm import tqdm

from rlsr import distributed
from rlsr.assets import default_encoder_path, default_policy_path
from rlsr.data import PromptSampler, chat_prompts, load_dataset
from rlsr.encoder import Encoder
from rlsr.grpo import AGGREGATIONS, KL_ESTIMATORS, SCALES, group_advantages, policy_loss, token_counts, token_weights
from rlsr.logprobs import completion_logprobs
from rlsr.metrics import copy_fraction, distinct_n, format_ci, paired_bootstrap_ci, pearson
from rlsr.model import Transformer
from rlsr.reward import SimilarityReward
from rlsr.run import adamw_with_warmup, open_run
from rlsr.sampling import SamplingParams, complete, generate
from rlsr.tokenizer import Tokenizer


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_argument_group("model")
    g.add_argument("--init", help="HF-layout checkpoint to start from (default: packaged SmolLM2-135M-Instruct)")
    g.add_argument("--ref", help="reference model of the KL term (default: the --init checkpoint)")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="weights and compute")
    g.add_argument("--amp", action="store_true", help="bf16 autocast over fp32 weights (GPU): bf16 matmuls, fp32 "
                   "master weights and optimizer; log-softmax stays fp32 either way")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--grad-checkpointing", action="store_true", help="recompute blocks in backward: less memory")
    g.add_argument("--fsdp", action="store_true", help="under torchrun: FSDP2 (shard parameters, gradients and "
                   "optimizer state) instead of DDP")
    g.add_argument("--ref-offload", action="store_true", help="keep the reference model on the CPU between its passes")
    g = ap.add_argument_group("data")
    g.add_argument("--data", default="alpaca_eval", help="built-in data set name or a JSONL file (rlsr/data.py)")
    g.add_argument("--train-split", default="train", help="split of a built-in data set ('all' for everything)")
    g.add_argument("--eval-data", help="held-out data (default: --data with --eval-split)")
    g.add_argument("--eval-split", default="test")
    g.add_argument("--eval-prompts", type=int, default=64, help="held-out prompts scored at start and end (0 = all)")
    g.add_argument("--no-eval", action="store_true", help="no held-out evaluation (benchmarks, quick checks)")
    g.add_argument("--max-prompt-tokens", type=int, default=512, help="longer prompts are left out (and counted)")
    g = ap.add_argument_group("reward")
    g.add_argument("--encoder", help="sentence encoder directory (default: packaged all-MiniLM-L6-v2)")
    g = ap.add_argument_group("rollout")
    g.add_argument("--prompts-per-step", type=int, default=4, help="P: prompts per optimizer step")
    g.add_argument("--group-size", type=int, default=8, help="G: completions sampled per prompt")
    g.add_argument("--max-new-tokens", type=int, default=64, help="completion length cap (finish reason 'length')")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature, also applied to log-probs")
    g = ap.add_argument_group("algorithm (rlsr/grpo.py)")
    g.add_argument("--scale-rewards", default="group", choices=SCALES, help="advantage std scaling")
    g.add_argument("--std-floor", type=float, default=0.02, help="advantages divide by max(std, floor)")
    g.add_argument("--tie-tolerance", type=float, default=1e-3, help="a group whose rewards span less is a near-tie")
    g.add_argument("--drop-ties", action="store_true", help="leave near-tie groups out of the loss")
    g.add_argument("--epsilon-low", type=float, default=0.2, help="clip ratio below 1 - eps_low")
    g.add_argument("--epsilon-high", type=float, default=0.2, help="clip ratio above 1 + eps_high")
    g.add_argument("--beta", type=float, default=0.04, help="KL weight; 0 = no reference model at all")
    g.add_argument("--kl-estimator", default="k3", choices=KL_ESTIMATORS)
    g.add_argument("--loss-aggregation", default="token", choices=AGGREGATIONS)
    g.add_argument("--num-iterations", type=int, default=1, help="optimizer steps per rollout (>1: PPO epochs)")
    g = ap.add_argument_group("optimization")
    g.add_argument("--steps", type=int, default=16, help="training steps (rollouts)")
    g.add_argument("--lr", type=float, default=5e-5)
    g.add_argument("--warmup-steps", type=int, default=2, help="linear warm-up of the learning rate, then constant")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm")
    g.add_argument("--micro-batch-size", type=int, default=8,
                   help="rows per forward/backward, rounded to whole groups (memory, not maths)")
    g = ap.add_argument_group("run")
    g.add_argument("--out-dir", default="runs/rlsr", help="run directory (must be new or empty)")
    g.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its latest checkpoint, with its settings")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--save-every", type=int, default=10, help="checkpoint every N steps (and at the end)")
    g.add_argument("--sample-every", type=int, default=5, help="write the step's completions to samples.jsonl")
    g.add_argument("--eval-every", type=int, default=0, help="held-out evaluation every N steps (0 = start and end)")
    return ap.parse_args(argv)


def chunks(indices: list[int], size: int) -> list[list[int]]:
    return [indices[i:i + size] for i in range(0, len(indices), size)]


def micro_batches(rollout, group_size: int, rows_per_batch: int) -> list[torch.Tensor]:
    """Row indices of whole groups (a prompt is run once per group), longest groups first, similar lengths together."""
    lengths = (rollout.lengths + rollout.prompt_mask.sum(-1)).view(-1, group_size).max(-1).values  # [P]
    groups = torch.argsort(lengths, descending=True).tolist()
    per_batch = max(1, rows_per_batch // group_size)
    return [torch.cat([torch.arange(g * group_size, (g + 1) * group_size) for g in c]) for c in chunks(groups, per_batch)]


def rows_logprobs(model, rollout, rows: torch.Tensor, group_size: int, temperature: float, vocab_size: int,
                  with_entropy=False):
    """Teacher-forced log-probs [b, Tc] for whole groups of rows, padding trimmed to these rows."""
    pmask, cmask = rollout.prompt_mask[rows], rollout.mask[rows]
    p0 = int((~pmask.any(0)).sum())               # leading columns that are padding in every row
    tc = int(cmask.sum(-1).max())                 # longest completion among these rows
    logp, ent = completion_logprobs(model, rollout.prompt_ids[rows, p0:], pmask[:, p0:], rollout.tokens[rows, :tc],
                                    cmask[:, :tc], temperature, vocab_size, with_entropy, group_size)
    return logp, ent, tc


def evaluate(policy, tok, examples, prompts, reward, max_new_tokens, d) -> dict:
    """Greedy answers to held-out prompts, scored by the reward: per-prompt rewards, lengths and answers.
    Data-parallel ranks each answer every W-th prompt; the results are gathered in prompt order."""
    mine = list(range(d.rank, len(examples), d.world))
    texts, lengths = complete(policy, tok, [prompts[i] for i in mine], SamplingParams(max_new_tokens, temperature=0.0))
    rewards, _ = reward(texts, [examples[i].reference for i in mine]) if mine else (torch.zeros(0), None)
    rows = sorted((i, r, n, t) for part in distributed.gather(list(zip(mine, rewards.tolist(), lengths, texts)), d)
                  for i, r, n, t in part)
    rewards, lengths, texts = [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows]
    return {"reward": sum(rewards) / len(rewards), "mean_length": sum(lengths) / len(lengths), "rewards": rewards,
            "ids": [ex.id for ex in examples], "completions": texts}


def main(argv=None):
    args = parse_args(argv)
    d = distributed.init(args.device)  # one process, or one rank of a torchrun job
    run, args = open_run(args, argv, writer=d.main)  # with --resume: the run's own settings
    distributed.barrier(d)
    say = print if d.main else (lambda *a, **k: None)
    device, dtype = d.device, getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    gen = torch.Generator(device=device).manual_seed(args.seed)   # rollout sampling: the same stream on every rank

    # ---- models: policy (trained), reference (frozen, only if beta > 0), reward encoder (frozen)
    init = args.init or str(default_policy_path())
    ckpt = run.latest_checkpoint() if args.resume else None
    tok = Tokenizer.from_pretrained(init)
    policy = Transformer.from_pretrained(ckpt or init, dtype=dtype, device=device)
    policy.gradient_checkpointing = args.grad_checkpointing
    model = distributed.wrap(policy, d, args.fsdp)  # what the update runs through (DDP / FSDP2 / the policy itself)
    ref = None
    if args.beta > 0:
        ref_device = "cpu" if args.ref_offload else device
        ref = Transformer.from_pretrained(args.ref or init, dtype=dtype, device=ref_device).requires_grad_(False)
    encoder = Encoder.from_pretrained(args.encoder or default_encoder_path(), device=device)
    reward = SimilarityReward(encoder)

    # ---- data: chat-formatted prompt ids; over-long prompts are left out, and said so
    def prepare(examples, what):
        kept, ids = chat_prompts(tok, examples, args.max_prompt_tokens)
        if len(kept) < len(examples):
            say(f"{what}: left out {len(examples) - len(kept)} of {len(examples)} prompts longer than "
                f"{args.max_prompt_tokens} tokens")
        return kept, ids
    train, train_ids = prepare(load_dataset(args.data, args.train_split), "train")
    held_out = [] if args.no_eval else load_dataset(args.eval_data or args.data, args.eval_split)
    held_out, held_ids = prepare(held_out[:args.eval_prompts or None], "eval")
    sampler = PromptSampler(train, args.prompts_per_step, seed=args.seed)  # the global batch, identical on all ranks

    params = [p for p in model.parameters() if p.requires_grad]
    fused = not (args.fsdp and device.type == "cpu")  # fused AdamW does not take CPU DTensors
    optimizer, scheduler = adamw_with_warmup(params, args.lr, args.weight_decay, args.warmup_steps * args.num_iterations,
                                             fused)
    load_optimizer = lambda state: distributed.load_optimizer_state(model, optimizer, state, d)  # noqa: E731
    start = run.restore(ckpt, load_optimizer, scheduler, sampler, gen) if args.resume else 0
    G, W = args.group_size, d.world
    say(f"policy {init}: {sum(p.numel() for p in policy.parameters()) / 1e6:.1f}M parameters, {dtype}, {device}"
        + (f", {W} ranks ({'FSDP2' if args.fsdp else 'DDP'})" if d.enabled else ""))
    say(f"{len(train)} training prompts, {args.prompts_per_step} x {G} = {args.prompts_per_step * G} completions per "
        f"step, <= {args.max_new_tokens} new tokens each; beta {args.beta}; {len(held_out)} held-out prompts; "
        f"run dir {run.path}")

    held_prompts = [held_ids[ex.id] for ex in held_out]
    evals = {e["step"]: e for e in run.read_log("eval.jsonl")} if d.main else {}
    evals = distributed.gather(evals, d)[0]

    amp = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)  # noqa: E731

    def held_out_eval(step):
        with distributed.full_weights(model, d, args.fsdp), amp():
            e = {"step": step, **evaluate(policy, tok, held_out, held_prompts, reward, args.max_new_tokens, d)}
        run.log(e, "eval.jsonl")
        return e
    if 0 not in evals and not args.no_eval:
        evals[0] = held_out_eval(0)
        say(f"held-out reward at start: {evals[0]['reward']:.4f} (greedy, n={len(held_out)})")

    bar = tqdm(range(start + 1, args.steps + 1), initial=start, total=args.steps, desc="rlsr", dynamic_ncols=True,
               disable=not d.main)
    for step in bar:
        t0 = time.perf_counter()
        # ---- rollout: G samples per prompt at the training temperature; each rank samples its share of the prompts
        batch = distributed.shard(next(sampler), d)
        n_rows = len(batch) * G
        with distributed.full_weights(model, d, args.fsdp), amp():
            rollout = generate(policy, [train_ids[ex.id] for ex in batch],
                               SamplingParams(args.max_new_tokens, args.temperature), tok.stop_ids, tok.vocab_size,
                               group_size=G, generator=gen, pad_id=tok.pad_id, row_offset=d.rank * n_rows,
                               total_rows=W * n_rows)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the KV cache is gone; give its memory back before the training passes
        t1 = time.perf_counter()
        # ---- reward on the decoded completion text only; advantages within each prompt's group (never across ranks)
        texts = tok.batch_decode(rollout.completions())
        refs = [batch[i].reference for i in rollout.prompt_index.tolist()]
        rewards, reward_stats = reward(texts, refs)
        everything = distributed.gather((rewards.tolist(), rollout.lengths.tolist(), rollout.finish_reason, texts,
                                         refs), d)
        all_rewards = torch.tensor([r for part in everything for r in part[0]])
        adv, ties, _ = group_advantages(rewards, G, args.scale_rewards, args.std_floor, args.tie_tolerance,
                                        batch_std=all_rewards.std(unbiased=False).item())
        keep = ~ties if args.drop_ties else None
        counts = distributed.all_reduce(token_counts(rollout.mask, keep), d)  # the normaliser of the whole step
        weights = token_weights(rollout.mask, args.loss_aggregation, args.max_new_tokens, keep, counts)
        mbs = micro_batches(rollout, G, args.micro_batch_size)
        t2 = time.perf_counter()
        # ---- frozen log-probs: the reference's (KL) and, when a rollout is reused, the policy's own before updating
        ref_logp, old_logp = {}, {}
        with torch.no_grad(), amp():
            if ref is not None:
                ref.to(device)
                for k, rows in enumerate(mbs):
                    ref_logp[k] = rows_logprobs(ref, rollout, rows, G, args.temperature, tok.vocab_size)[0]
                if args.ref_offload:
                    ref.to("cpu")
            if args.num_iterations > 1:
                model.eval()
                for k, rows in enumerate(mbs):
                    old_logp[k] = rows_logprobs(model, rollout, rows, G, args.temperature, tok.vocab_size)[0]
        t3 = time.perf_counter()
        # ---- update: every micro-batch's loss is its share of the step loss, so accumulation == one batch
        model.train()
        for _ in range(args.num_iterations):
            optimizer.zero_grad(set_to_none=True)
            sums = {}
            for k, rows in enumerate(mbs):
                with distributed.gradient_sync(model, d, args.fsdp, sync=k == len(mbs) - 1):
                    with amp():
                        logp, ent, tc = rows_logprobs(model, rollout, rows, G, args.temperature, tok.vocab_size, True)
                    w = weights[rows, :tc]
                    loss, st = policy_loss(logp, old_logp.get(k, logp.detach()), adv[rows], w, args.epsilon_low,
                                           args.epsilon_high, ref_logp.get(k), args.beta, args.kl_estimator)
                    (loss * d.loss_scale).backward()
                for key, v in {**st, "loss": loss, "entropy": (w * ent).sum()}.items():
                    sums[key] = sums.get(key, 0.0) + v.item()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
            grad_norm = grad_norm.full_tensor().item() if hasattr(grad_norm, "full_tensor") else grad_norm.item()
            optimizer.step()
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)  # free the gradients before the next rollout needs the memory
        t4 = time.perf_counter()

        # ---- metrics over the whole step (all ranks), TRL's names where TRL has one, and reward-hacking monitors
        sums = distributed.all_reduce({**sums, **{k: v * n_rows for k, v in reward_stats.items()},
                                       "prompt_tokens": rollout.prompt_mask[::G].sum().item()}, d)
        prompt_tokens = sums.pop("prompt_tokens")  # once per prompt: prefilled once, and held once per packed group
        all_lengths = torch.tensor([n for part in everything for n in part[1]], dtype=torch.float32)
        stopped = torch.tensor([f == "stop" for part in everything for f in part[2]])
        all_texts, all_refs = [t for part in everything for t in part[3]], [r for part in everything for r in part[4]]
        _, _, adv_stats = group_advantages(all_rewards, G, args.scale_rewards, args.std_floor, args.tie_tolerance)
        wsum = max(sums.pop("weight"), 1e-12)
        m = {"step": step, **adv_stats, **{k: sums.pop(k) / (W * n_rows) for k in list(reward_stats)},
             "loss": sums.pop("loss"), **{k: v / wsum for k, v in sums.items()},
             "completions/mean_length": all_lengths.mean().item(),
             "completions/clipped_ratio": 1 - stopped.float().mean().item(),
             "completions/mean_terminated_length": all_lengths[stopped].mean().item() if stopped.any() else 0.0,
             "monitor/length_reward_corr": pearson(all_lengths.tolist(), all_rewards.tolist()),
             "monitor/distinct_2": distinct_n(all_texts, 2),
             "monitor/copy_fraction_4gram": sum(map(copy_fraction, all_texts, all_refs)) / len(all_texts),
             "prompt_tokens": prompt_tokens,
             "grad_norm": grad_norm, "learning_rate": scheduler.get_last_lr()[0],
             "step_time": t4 - t0, "tokens_per_s": all_lengths.sum().item() / (t4 - t0), "time/rollout": t1 - t0,
             "time/reward": t2 - t1, "time/frozen_logprobs": t3 - t2, "time/update": t4 - t3}
        run.log(m)
        bar.set_postfix(reward=f"{m['reward']:.3f}", kl=f"{m.get('kl', 0):.4f}", len=f"{m['completions/mean_length']:.0f}",
                        tok_s=f"{m['tokens_per_s']:.0f}")
        if args.sample_every and step % args.sample_every == 0:
            for i, text in enumerate(texts):  # each rank's own rows; only rank 0 writes, so rank 0's share
                ex = batch[rollout.prompt_index[i]]
                run.log({"step": step, "id": ex.id, "prompt": ex.prompt_messages()[-1]["content"], "reference": ex.reference,
                         "completion": text, "reward": rewards[i].item(), "advantage": adv[i].item(),
                         "finish_reason": rollout.finish_reason[i]}, "samples.jsonl")
        if args.eval_every and step % args.eval_every == 0 and step != args.steps and not args.no_eval:
            e = held_out_eval(step)
            if d.main:
                tqdm.write(f"step {step}: held-out reward {e['reward']:.4f}")
        if step % args.save_every == 0 or step == args.steps:
            run.checkpoint(step, model, policy, tok, optimizer, scheduler, sampler, d, gen)
    bar.close()

    # ---- the end: the final weights, and the held-out evaluation paired with the one at the start
    run.save_final(model, policy, tok, d)
    if not args.no_eval:
        if args.steps not in evals:
            evals[args.steps] = held_out_eval(args.steps)
        change = paired_bootstrap_ci(evals[0]["rewards"], evals[args.steps]["rewards"])
        summary = (f"held-out reward (greedy, n={len(held_out)}): {evals[0]['reward']:.4f} -> "
                   f"{evals[args.steps]['reward']:.4f}, change {format_ci(change)} (paired bootstrap 95%); mean length "
                   f"{evals[0]['mean_length']:.0f} -> {evals[args.steps]['mean_length']:.0f} tokens; weights in "
                   f"{run.path / 'final'}")
        run.log({"step": args.steps, "summary": summary, "change": change[0], "change_ci": list(change[1:])},
                "summary.jsonl")
        say(summary)
    distributed.close(d)


if __name__ == "__main__":
    main()

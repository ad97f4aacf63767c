"""RLSR: reinforcement learning on SFT data, rewarded by the similarity of each sample to the reference answer.

    python train_rlsr.py                              # the embedded default: SmolLM2-135M-Instruct on AlpacaEval's
                                                      # train split, MiniLM cosine reward, 16 steps
    python train_rlsr.py --data sharegpt --encoder mpnet   # general SFT data, the larger SentenceBERT encoder
    python train_rlsr.py --init runs/sft/final        # SFT -> RLSR: start from any HF-layout checkpoint
    python train_rlsr.py --resume runs/rlsr           # continue a killed run exactly where its last checkpoint was

One step, top to bottom: P prompts -> G completions each (rlsr/sampling.py) -> rewards R(y, y*) (rlsr/reward.py)
-> group advantages and loss weights over the whole step (rlsr/grpo.py) -> [old log-probs, only when a rollout is
reused] -> [KL-model log-probs, only when beta > 0] -> micro-batched update with the clipped loss -> guarded AdamW
step -> metrics (rlsr/metrics.py). The algorithm and each default's reason: rlsr/grpo.py. The set-up both training
scripts share (flags, checks, run directory, checkpoints, compute): rlsr/training.py.
"""
import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from rlsr import distributed, training
from rlsr.assets import encoder_path
from rlsr.data import PromptSampler
from rlsr.encoder import Encoder
from rlsr.flops import Compute
from rlsr.grpo import (AGGREGATIONS, IMPORTANCE_LEVELS, KL_ESTIMATORS, SCALES, LossConfig, group_advantages, near_ties,
                       policy_loss, row_weights)
from rlsr.logprobs import completion_logprobs
from rlsr.metrics import StepSamples, format_ci, paired_bootstrap_ci, step_metrics
from rlsr.reward import RewardConfig, add_reward_args, build_reward
from rlsr.sampling import Rollout, SamplingParams, complete, draw_uniforms, generate
from rlsr.training import check_range


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    groups = training.common_args(ap, steps=16, lr=5e-5, warmup=2, micro_batch=8, out_dir="runs/rlsr")
    g = groups["model"]
    g.add_argument("--kl-model", help="model the KL term pulls towards (default: the --init checkpoint)")
    g.add_argument("--kl-model-offload", action="store_true", help="keep the KL model on the CPU between its passes")
    g.add_argument("--ref", dest="kl_model", action=training.Deprecated, new="--kl-model", help=argparse.SUPPRESS)
    g.add_argument("--ref-offload", dest="kl_model_offload", action=training.Deprecated, nargs=0,
                   new="--kl-model-offload", help=argparse.SUPPRESS)
    g.add_argument("--compile-sampling", action="store_true", help="decode through torch.compile with a static cache "
                   "(CUDA graphs on a GPU; slow to compile and no faster on a CPU)")
    g = groups["data"]
    g.add_argument("--eval-prompts", type=int, default=64, help="held-out prompts scored at start and end (0 = all)")
    g.add_argument("--no-eval", action="store_true", help="no held-out evaluation (benchmarks, quick checks)")
    add_reward_args(ap)
    g = ap.add_argument_group("rollout")
    g.add_argument("--prompts-per-step", type=int, default=4, help="P: prompts per optimizer step")
    g.add_argument("--group-size", type=int, default=8, help="G: completions sampled per prompt (>= 2)")
    g.add_argument("--max-new-tokens", type=int, default=64, help="completion length cap (finish reason 'length')")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (> 0), also applied to log-probs")
    g.add_argument("--dynamic-sampling", action="store_true", help="DAPO: draw more prompts until the step has P groups "
                   "that are not near-ties (replacing the ties)")
    g.add_argument("--max-extra-draws", type=int, default=4, help="with --dynamic-sampling: at most this many extra "
                   "batches of P prompts per step; short of P groups after them, the step trains on what it has")
    g = ap.add_argument_group("algorithm (rlsr/grpo.py)")
    g.add_argument("--scale-rewards", default="group", choices=SCALES, help="advantage std scaling")
    g.add_argument("--std-floor", type=float, default=0.02, help="advantages divide by max(std, floor)")
    g.add_argument("--tie-tolerance", type=float, default=1e-3, help="a group whose rewards span less is a near-tie")
    g.add_argument("--drop-ties", action="store_true", help="leave near-tie groups out of the loss")
    g.add_argument("--epsilon-low", type=float, default=0.2, help="clip ratio below 1 - eps_low (GSPO: 3e-4)")
    g.add_argument("--epsilon-high", type=float, default=0.2, help="clip ratio above 1 + eps_high (GSPO: 4e-4)")
    g.add_argument("--importance-level", default="token", choices=IMPORTANCE_LEVELS,
                   help="token ratios (PPO/GRPO) or one length-normalised ratio per sequence (GSPO)")
    g.add_argument("--tis-cap", type=float, help="truncated importance sampling: weight tokens by "
                   "min(pi_old / pi_sampler, C) with the sampler's own log-probs (off by default)")
    g.add_argument("--beta", type=float, default=0.04, help="KL weight; 0 = no KL model at all")
    g.add_argument("--kl-estimator", default="k3", choices=KL_ESTIMATORS)
    g.add_argument("--loss-aggregation", default="token", choices=AGGREGATIONS)
    g.add_argument("--num-iterations", type=int, default=1, help="optimizer steps per rollout (>1: PPO epochs)")
    groups["run"].add_argument("--sample-every", type=int, default=5,
                               help="write the step's completions to samples.jsonl every N steps (0 = never)")
    return ap


def check_args(args, world: int):
    training.check_common(args, world, "prompts_per_step")
    for name in ("prompts_per_step", "max_new_tokens", "num_iterations"):
        check_range(args, name, 1)
    check_range(args, "group_size", 2)
    for name in ("beta", "std_floor", "tie_tolerance", "epsilon_low", "epsilon_high", "sample_every", "max_extra_draws",
                 "eval_prompts"):
        check_range(args, name, 0)
    check_range(args, "epsilon_low", 0, 1)
    check_range(args, "temperature", 0, low_open=True)  # greedy samples are identical: every group would be a tie
    if args.tis_cap is not None:
        check_range(args, "tis_cap", 1)


@dataclass
class Draw:
    """One batch of prompts' samples on this rank."""
    rollout: Rollout
    examples: list            # the example each row answers
    samples: StepSamples      # this rank's rows, scored

    def informative(self, group_size: int, tolerance: float) -> list[int]:
        """Groups whose rewards are not near-ties (they carry a learning signal)."""
        ties = near_ties(torch.tensor(self.samples.rewards), group_size, tolerance)[::group_size]
        return [g for g, tie in enumerate(ties.tolist()) if not tie]


def keep_groups(draws: list[Draw], need: int, group_size: int, tolerance: float, pad_id: int) -> Draw:
    """DAPO's dynamic sampling on this rank: the first `need` informative groups over the draws, in draw order,
    topped up with near-tie groups if the draws ran out (the step then trains on fewer informative groups)."""
    informative = [set(x.informative(group_size, tolerance)) for x in draws]
    picked = [(k, g) for k in range(len(draws)) for g in sorted(informative[k])]
    ties = [(k, g) for k, x in enumerate(draws) for g in range(len(x.examples) // group_size) if g not in informative[k]]
    chosen = sorted((picked + ties)[:need])
    parts = []
    for k, x in enumerate(draws):
        rows = [g * group_size + j for kk, g in chosen if kk == k for j in range(group_size)]
        if rows:
            parts.append(Draw(x.rollout.select(torch.tensor(rows)), [x.examples[i] for i in rows],
                              x.samples.select(rows)))
    return Draw(Rollout.cat([x.rollout for x in parts], pad_id), [e for x in parts for e in x.examples],
                StepSamples.concat([x.samples for x in parts]))


def group_batches(lengths: torch.Tensor, group_size: int, rows_per_batch: int) -> list[torch.Tensor]:
    """Row indices of whole groups (a prompt is run once per group), longest groups first, similar lengths together.
    lengths [N]: prompt + completion tokens of each row."""
    longest = lengths.view(-1, group_size).max(-1).values                        # [P]
    groups = torch.argsort(longest, descending=True).tolist()
    per_batch = max(1, rows_per_batch // group_size)
    return [torch.cat([torch.arange(g * group_size, (g + 1) * group_size) for g in groups[i:i + per_batch]])
            for i in range(0, len(groups), per_batch)]


def rows_logprobs(model, rollout: Rollout, rows: torch.Tensor, group_size: int, temperature: float,
                  with_entropy: bool = False):
    """Teacher-forced log-probs [b, Tc] for whole groups of rows, padding trimmed to these rows."""
    pmask, cmask = rollout.prompt_mask[rows], rollout.mask[rows]
    p0 = int((~pmask.any(0)).sum())               # leading columns that are padding in every row
    tc = int(cmask.sum(-1).max())                 # longest completion among these rows
    logp, ent = completion_logprobs(model, rollout.prompt_ids[rows, p0:], pmask[:, p0:], rollout.tokens[rows, :tc],
                                    cmask[:, :tc], temperature, with_entropy, group_size)
    return logp, ent, tc


def group_lengths(rollout: Rollout, group_size: int) -> tuple[list[int], list[list[int]]]:
    """Prompt length of each group and the completion lengths of its G rows (what the FLOPs count needs)."""
    prompts = rollout.prompt_mask[::group_size].sum(-1).tolist()
    return prompts, rollout.lengths.view(-1, group_size).tolist()


def evaluate(policy, tok, examples, prompts, reward, max_new_tokens, d, compute) -> dict:
    """Greedy answers to held-out prompts, scored by the training reward: per-prompt rewards, lengths and answers.
    Data-parallel ranks each answer every W-th prompt; the results are gathered in prompt order."""
    mine = list(range(d.rank, len(examples), d.world))
    with tqdm(total=len(mine), desc="held-out", leave=False, disable=not d.main, dynamic_ncols=True) as bar:
        texts, lengths = complete(policy, tok, [prompts[i] for i in mine], SamplingParams(max_new_tokens, temperature=0.0),
                                  progress=bar)
    compute.sampling([len(prompts[i]) for i in mine], [[n] for n in lengths], phase="eval")
    scored = reward(texts, [examples[i].reference for i in mine], lengths=lengths)
    rows = sorted((i, r, n, t) for part in distributed.gather(list(zip(mine, scored.rewards.tolist(), lengths, texts)), d)
                  for i, r, n, t in part)
    rewards, lengths, texts = [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows]
    return {"reward": sum(rewards) / len(rewards), "mean_length": sum(lengths) / len(lengths), "rewards": rewards,
            "ids": [ex.id for ex in examples], "completions": texts}


def main(argv=None):
    ap = build_parser()
    args = training.parse(ap, argv)                       # with --resume: the run's own settings
    d = distributed.init(args.device, args.fsdp)          # one process, or one rank of a torchrun job
    check_args(args, d.world)
    say = print if d.main else (lambda *a, **k: None)
    device = d.device
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)        # rollout draws: the same global stream on every rank
    G, T_new = args.group_size, args.max_new_tokens

    # ---- data: chat-formatted prompt ids; over-long prompts are left out, and said so
    init = training.init_path(args)
    tok = training.load_tokenizer(args, init, say)
    train, held_out = training.load_splits(args, say)
    train, train_ids = training.filter_prompts(tok, train, args.max_prompt_tokens, "train", args.data, say)
    held_out, held_ids = (training.filter_prompts(tok, held_out[:args.eval_prompts or None], args.max_prompt_tokens,
                                                  "held-out", args.eval_data or args.data, say)
                          if held_out else ([], {}))
    sampler = PromptSampler(train, args.prompts_per_step, seed=args.seed)  # the global batch, identical on all ranks

    # ---- models: policy (trained), KL model (frozen, only if beta > 0), reward (frozen encoders)
    ckpt = training.checkpoint_to_resume(args, d)
    policy = training.load_policy(ckpt or init, tok, args, d)
    model = distributed.wrap(policy, d)  # what the update runs through (DDP / FSDP2 / the policy itself)
    kl_model = None
    if args.beta > 0:
        kl_model = training.load_policy(Path(args.kl_model) if args.kl_model else init, tok, args, d,
                                        training.frozen_dtype(args)).requires_grad_(False)
        if args.kl_model_offload:
            kl_model.to("cpu")
    try:
        reward = build_reward(RewardConfig.from_args(args),
                              lambda name: Encoder.from_pretrained(encoder_path(name), device=device),
                              T_new, idf_corpus=[ex.reference for ex in train])
    except ValueError as e:
        raise training.UsageError(str(e)) from None
    loss_cfg = LossConfig(args.epsilon_low, args.epsilon_high, args.beta, args.kl_estimator, args.importance_level,
                          args.tis_cap)

    # ---- the run directory, now that every input has been checked
    run = training.open_run(args, d)
    compute = Compute(policy.config, tok.vocab_size, offset=training.compute_offset(init))
    trainer = training.Trainer(args, d, run, tok, policy, model, sampler, compute, (gen,),
                               warmup_steps=args.warmup_steps * args.num_iterations)
    start = trainer.restore(ckpt)
    say(f"policy {init}: {sum(p.numel() for p in policy.parameters()) / 1e6:.1f}M parameters, {args.dtype}, {device}"
        + (f", {d.world} ranks ({'FSDP2' if d.fsdp else 'DDP'})" if d.enabled else ""))
    say(f"{len(train)} training prompts, {args.prompts_per_step} x {G} completions per step, <= {T_new} new tokens "
        f"each; reward {args.reward}; beta {args.beta}; {len(held_out)} held-out prompts; run dir {run.path}")

    held_prompts = [held_ids[ex.id] for ex in held_out]
    evals = distributed.gather({e["step"]: e for e in run.read_log("eval.jsonl")} if d.main else {}, d)[0]
    amp = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)  # noqa: E731

    def held_out_eval(step):
        eval_compute = Compute(policy.config, tok.vocab_size)
        with distributed.full_weights(model, d), amp():
            e = {"step": step, **evaluate(policy, tok, held_out, held_prompts, reward, T_new, d, eval_compute)}
        training.merge_compute(compute, eval_compute, d)
        trainer.log(e, "eval.jsonl")
        return e
    if 0 not in evals and held_out:
        say(f"held-out evaluation at start: greedy answers to {len(held_out)} prompts")
        evals[0] = held_out_eval(0)
        say(f"held-out reward at start: {evals[0]['reward']:.4f}")

    def draw(step_compute) -> Draw:
        """G samples for each of this rank's prompts of the next global batch, scored."""
        batch = next(sampler)
        uniforms = draw_uniforms(gen, T_new, len(batch) * G)[:, d.share(len(batch) * G)]  # this rank's columns
        mine = distributed.shard(batch, d)
        with distributed.full_weights(model, d), amp():
            r = generate(policy, [train_ids[ex.id] for ex in mine], SamplingParams(T_new, args.temperature),
                         tok.stop_ids, G, uniforms, tok.pad_id, compile=args.compile_sampling)
        step_compute.sampling(*group_lengths(r, G))
        examples = [mine[i] for i in r.prompt_index.tolist()]
        texts = tok.batch_decode(r.completions())
        scored = reward(texts, [ex.reference for ex in examples], lengths=r.lengths.tolist())
        return Draw(r, examples, StepSamples(scored.rewards.tolist(), r.lengths.tolist(),
                                             [f == "stop" for f in r.finish_reason], texts,
                                             [ex.reference for ex in examples],
                                             {k: v.tolist() for k, v in scored.components.items()}, [scored.stats]))

    bar = tqdm(range(start + 1, args.steps + 1), initial=start, total=args.steps, desc="rlsr", dynamic_ncols=True,
               disable=not d.main)
    for step in bar:
        times, step_compute = {}, Compute(policy.config, tok.vocab_size)
        # ---- rollout: each rank samples its share of the global batch. Dynamic sampling draws further batches until
        # every rank has P/W groups that are not near-ties, and trains on those.
        with training.timed(times, "rollout"):
            draws = [draw(step_compute)]
            need = args.prompts_per_step // d.world
            while (args.dynamic_sampling and len(draws) <= args.max_extra_draws and
                   min(distributed.gather(sum(len(x.informative(G, args.tie_tolerance)) for x in draws), d)) < need):
                draws.append(draw(step_compute))
            mine = keep_groups(draws, need, G, args.tie_tolerance, tok.pad_id) if args.dynamic_sampling else draws[0]
            rollout, examples, local = mine.rollout, mine.examples, mine.samples
            everything = StepSamples.concat(distributed.gather(local, d))
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the KV cache is gone; give its memory back before the training passes
        # ---- advantages and loss weights over the whole step (all ranks), then this rank's rows
        with training.timed(times, "advantages"):
            rows = d.share(len(everything.rewards))
            all_rewards = torch.tensor(everything.rewards)
            adv = group_advantages(all_rewards, G, args.scale_rewards, args.std_floor)[rows]
            trained = ~near_ties(all_rewards, G, args.tie_tolerance) if args.drop_ties else None
            weights = row_weights(torch.tensor(everything.lengths), args.loss_aggregation, T_new, trained)[rows]
            mbs = group_batches(rollout.lengths + rollout.prompt_mask.sum(-1), G, args.micro_batch_size)
        # ---- frozen log-probs: the KL model's and, when a rollout is reused, the policy's own before updating
        kl_logp, old_logp = {}, {}
        with training.timed(times, "frozen_logprobs"), torch.no_grad(), amp():
            if kl_model is not None:
                kl_model.to(device)
                for k, mb in enumerate(mbs):
                    kl_logp[k] = rows_logprobs(kl_model, rollout, mb, G, args.temperature)[0]
                step_compute.packed_groups(*group_lengths(rollout, G), phase="kl_model")
                if args.kl_model_offload:
                    kl_model.to("cpu")
            if args.num_iterations > 1:
                model.eval()
                for k, mb in enumerate(mbs):
                    old_logp[k] = rows_logprobs(model, rollout, mb, G, args.temperature)[0]
                step_compute.packed_groups(*group_lengths(rollout, G), phase="old_logprobs")
        # ---- update: every micro-batch's loss is its share of the step loss, so accumulation == one batch
        model.train()
        sums, grad_norms = {}, []
        with training.timed(times, "update"):
            for _ in range(args.num_iterations):
                step_loss = 0.0
                for k, mb in enumerate(mbs):
                    with distributed.gradient_sync(model, d, sync=k == len(mbs) - 1):
                        with amp():
                            logp, ent, tc = rows_logprobs(model, rollout, mb, G, args.temperature, with_entropy=True)
                        mask = rollout.mask[mb, :tc]
                        loss, st = policy_loss(logp, old_logp.get(k, logp.detach()), adv[mb], weights[mb], mask,
                                               loss_cfg, kl_logp.get(k), rollout.logprobs[mb, :tc])
                        (loss * d.loss_scale).backward()
                    for key, v in {**st, "loss": loss, "entropy": (ent * mask).sum()}.items():
                        sums[key] = sums.get(key, 0.0) + v.item()
                    step_loss += loss.item()
                step_compute.packed_groups(*group_lengths(rollout, G), phase="policy", with_backward=True)
                grad_norm, _ = trainer.step(step, distributed.all_reduce({"loss": step_loss}, d)["loss"])
                grad_norms.append(grad_norm)

        # ---- metrics over the whole step (all ranks): rlsr/metrics.py
        sums = distributed.all_reduce({**sums, "prompt_tokens": rollout.prompt_mask[::G].sum().item()}, d)
        training.merge_compute(compute, step_compute, d)
        total_time = sum(times.values())
        m = {"step": step, **step_metrics(everything, sums, G, args.num_iterations, args.scale_rewards, args.std_floor,
                                          args.tie_tolerance),
             "prompt_tokens": sums["prompt_tokens"], "grad_norm": sum(grad_norms) / len(grad_norms),
             "learning_rate": trainer.scheduler.get_last_lr()[0], "nonfinite_steps": trainer.nonfinite_steps,
             "flops": compute.training_flops, "step_time": total_time,
             "tokens_per_s": sum(everything.lengths) / total_time, **{f"time/{k}": v for k, v in times.items()}}
        if args.dynamic_sampling:
            m["dynamic_sampling/draws"] = len(draws)
        trainer.log(m)
        bar.set_postfix(reward=f"{m['reward']:.3f}", kl=f"{m.get('kl', 0):.4f}", len=f"{m['completions/mean_length']:.0f}",
                        tok_s=f"{m['tokens_per_s']:.0f}")
        trainer.warn_collapse(step, m)
        if args.sample_every and step % args.sample_every == 0:
            for i, ex in enumerate(examples):  # each rank's own rows; only rank 0 writes, so rank 0's share
                trainer.log({"step": step, "id": ex.id, "prompt": ex.prompt_messages()[-1]["content"],
                             "reference": ex.reference, "completion": local.texts[i], "reward": local.rewards[i],
                             "advantage": adv[i].item(), "finish_reason": rollout.finish_reason[i]}, "samples.jsonl")
        if args.eval_every and step % args.eval_every == 0 and step != args.steps and held_out:
            e = held_out_eval(step)
            if d.main:
                tqdm.write(f"step {step}: held-out reward {e['reward']:.4f}")
        trainer.maybe_checkpoint(step)
    bar.close()

    # ---- the end: the final weights, and the held-out evaluation paired with the one at the start
    final = trainer.finish()
    if held_out:
        if args.steps not in evals:
            say(f"held-out evaluation at the end: greedy answers to {len(held_out)} prompts")
            evals[args.steps] = held_out_eval(args.steps)
        change = paired_bootstrap_ci(evals[0]["rewards"], evals[args.steps]["rewards"])
        summary = (f"held-out reward (greedy, n={len(held_out)}): {evals[0]['reward']:.4f} -> "
                   f"{evals[args.steps]['reward']:.4f}, change {format_ci(change)} (paired bootstrap 95%); mean length "
                   f"{evals[0]['mean_length']:.0f} -> {evals[args.steps]['mean_length']:.0f} tokens")
        trainer.log({"step": args.steps, "summary": summary, "change": change[0], "change_ci": list(change[1:]),
                     "compute": compute.summary()}, "summary.jsonl")
        say(summary)
        if change[2] < 0:
            say("WARNING: the held-out reward fell (its whole interval is below 0): the policy got worse at what it "
                "was trained for; check metrics.jsonl (entropy, kl, grad_norm) and lower --lr")
    trainer.close()
    say(trainer.outputs(final))
    distributed.close(d)


if __name__ == "__main__":
    training.cli(main)

"""RLSR: reinforcement learning on SFT data, rewarded by the similarity of each sample to the reference answer.

    python train_rlsr.py                              # the embedded default: SmolLM2-135M-Instruct on AlpacaEval's
                                                      # train split, MiniLM cosine reward, 16 steps
    python train_rlsr.py --data sharegpt --encoder mpnet   # general SFT data, the larger SentenceBERT encoder
    python train_rlsr.py --init runs/sft/final        # SFT -> RLSR: start from any HF-layout checkpoint
    python train_rlsr.py --resume runs/rlsr           # continue a killed run exactly where its last checkpoint was

One step, top to bottom: P prompts -> G completions each (rlsr/sampling.py), scored R(x, y, y*) (rlsr/reward.py;
rlsr/rollout.py keeps a step's rows together and does DAPO's dynamic sampling) -> group advantages and loss weights
over the whole step (rlsr/grpo.py) -> [old log-probs, only when a rollout is reused] -> [KL-model log-probs, only
when beta > 0] (rlsr/logprobs.py) -> micro-batched update with the clipped loss -> guarded AdamW step -> metrics
(rlsr/metrics.py). The algorithm and each default's reason: rlsr/grpo.py. The set-up both training scripts share
(flags, checks, run directory, held-out evaluations, checkpoints, compute, resume): rlsr/training.py.
"""
import argparse
from pathlib import Path

import torch
from tqdm import tqdm

from rlsr import distributed, lora, training
from rlsr.assets import encoder_path
from rlsr.data import PromptSampler
from rlsr.encoder import Encoder
from rlsr.grpo import LossConfig, add_algorithm_args, group_advantages, near_ties, policy_loss, row_weights
from rlsr.judge import JudgeError
from rlsr.logprobs import rows_logprobs
from rlsr.metrics import StepSamples, format_ci, paired_bootstrap_ci, step_metrics
from rlsr.packing import group_batches
from rlsr.reward import RewardConfig, add_reward_args, build_reward
from rlsr.rollout import Rows, keep_groups, score
from rlsr.sampling import SamplingParams, complete, draw_uniforms, generate
from rlsr.training import check_range


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=training.HelpFormatter,
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
    add_algorithm_args(ap)
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
    training.check(not (args.kl_model_offload and args.lora_rank and not args.kl_model), "--kl-model-offload: under "
                   "--lora-rank the KL model is the policy with its adapters off, there is nothing to offload")
    if args.tis_cap is not None:
        check_range(args, "tis_cap", 1)


def evaluate(policy, tok, examples, prompts, reward, max_new_tokens, d, compute) -> dict:
    """Greedy answers to held-out prompts, scored by the training reward: per-prompt rewards, lengths and answers.
    Data-parallel ranks each answer every W-th prompt; the results are gathered in prompt order."""
    mine = list(range(d.rank, len(examples), d.world))
    with tqdm(total=len(mine), desc="held-out", leave=False, disable=not d.main, dynamic_ncols=True) as bar:
        texts, lengths = complete(policy, tok, [prompts[i] for i in mine], SamplingParams(max_new_tokens, temperature=0.0),
                                  progress=bar)
    compute.sampling([len(prompts[i]) for i in mine], [[n] for n in lengths], phase="eval")
    scored = reward([examples[i].prompt_messages() for i in mine], texts, [examples[i].reference for i in mine],
                    lengths=lengths)
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
    say = training.speaker(d)
    device = d.device
    torch.manual_seed(args.seed)
    G, T_new = args.group_size, args.max_new_tokens

    # ---- data: chat-formatted prompt ids; over-long prompts are left out, and said so
    init = training.init_path(args)
    cfg, tok = training.load_init(args, init, say)
    max_prompt = training.prompt_budget(args, cfg, T_new, "--max-new-tokens")
    train, held_out = training.load_splits(args, say)
    train, train_ids = training.filter_prompts(tok, train, max_prompt, "train", args.data, say)
    held_out, held_ids = (training.filter_prompts(tok, held_out[:args.eval_prompts or None], max_prompt,
                                                  "held-out", args.eval_data or args.data, say)
                          if held_out else ([], {}))
    sampler = PromptSampler(train, args.prompts_per_step, seed=args.seed)  # the global batch, identical on all ranks

    # ---- models: policy (trained), KL model (frozen, only if beta > 0), reward (frozen encoders)
    ckpt = training.checkpoint_to_resume(args, d)
    policy = training.load_trained(init, ckpt, tok, args, d)   # with --lora-rank: frozen, under adapters
    kl_model = None
    if args.beta > 0 and args.lora_rank and not args.kl_model:
        kl_model = lora.AdaptersOff(policy)  # the base model is the policy with its adapters off: no second copy
    elif args.beta > 0:
        kl_path = Path(args.kl_model) if args.kl_model else init
        if args.kl_model:
            training.checked_model(kl_path, "--kl-model", same_vocabulary_as=tok)
        kl_model = training.load_policy(kl_path, tok, args, d, training.frozen_dtype(args)).requires_grad_(False)
        if args.kl_model_offload:
            kl_model.to("cpu")
    try:
        reward = build_reward(RewardConfig.from_args(args),
                              lambda name: Encoder.from_pretrained(encoder_path(name), device=device),
                              T_new, idf_corpus=[ex.reference for ex in train], device=device)
    except (ValueError, JudgeError) as e:
        raise training.UsageError(str(e)) from None
    loss_cfg = LossConfig.from_args(args)

    # ---- the run directory, now that every input has been checked
    trainer = training.Trainer(args, d, tok, policy, sampler, init)
    model = trainer.model  # what the update runs through (DDP / FSDP2 / the policy itself)
    start = trainer.restore(ckpt)
    say(f"policy {init}: {sum(p.numel() for p in policy.parameters()) / 1e6:.1f}M parameters, {args.dtype}, {device}"
        + (f", {d.world} ranks ({'FSDP2' if d.fsdp else 'DDP'})" if d.enabled else ""))
    say(f"{len(train)} training prompts, {args.prompts_per_step} x {G} completions per step, <= {T_new} new tokens "
        f"each; reward {args.reward}; beta {args.beta}; {len(held_out)} held-out prompts; run dir {trainer.run.path}")

    held_prompts = [held_ids[ex.id] for ex in held_out]

    def held_out_eval(step: int, when: str | None = None) -> dict:
        return trainer.evaluate(step, lambda c: evaluate(policy, tok, held_out, held_prompts, reward, T_new, d, c),
                                f"held-out evaluation {when}: greedy answers to {len(held_out)} prompts" if when else None)
    if held_out:
        say(f"held-out reward at start: {held_out_eval(0, 'at start')['reward']:.4f}")

    def draw() -> Rows:
        """G samples for each of this rank's prompts of the next global batch, scored."""
        batch = next(sampler)
        uniforms = draw_uniforms(trainer.generator, T_new, len(batch) * G)[:, d.share(len(batch) * G)]  # [T, n] mine
        mine = distributed.shard(batch, d)
        with distributed.full_weights(model, d), trainer.amp():
            r = generate(policy, [train_ids[ex.id] for ex in mine], SamplingParams(T_new, args.temperature),
                         tok.stop_ids, G, uniforms, tok.pad_id, compile=args.compile_sampling)
        return score(r, [mine[i] for i in r.prompt_index.tolist()], tok, reward)

    bar = tqdm(range(start + 1, args.steps + 1), initial=start, total=args.steps, desc="rlsr", dynamic_ncols=True,
               disable=not d.main)
    for step in bar:
        laps = training.Laps()
        # ---- rollout: each rank samples its share of the global batch (n = P/W prompts x G rows). Dynamic sampling
        # draws further batches until every rank has P/W groups that are not near-ties, and trains on those.
        draws = [draw()]
        need = args.prompts_per_step // d.world
        while (args.dynamic_sampling and len(draws) <= args.max_extra_draws and
               min(distributed.gather(sum(len(x.informative(G, args.tie_tolerance)) for x in draws), d)) < need):
            draws.append(draw())
        rows = keep_groups(draws, need, G, args.tie_tolerance, tok.pad_id) if args.dynamic_sampling else draws[0]
        rollout = rows.rollout                                                   # tokens, mask [n, T]
        everything = StepSamples.concat(distributed.gather(rows.samples, d))     # all ranks' rows: P x G
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the KV cache is gone; give its memory back before the training passes
        laps.lap("rollout")
        # ---- advantages and loss weights over the whole step (all ranks), then this rank's rows
        mine = d.share(len(everything.rewards))
        all_rewards = torch.tensor(everything.rewards)                          # [P * G]
        adv = group_advantages(all_rewards, G, args.scale_rewards, args.std_floor, args.baseline)[mine]  # [n]
        trained = ~near_ties(all_rewards, G, args.tie_tolerance) if args.drop_ties else None          # [P * G]
        weights = row_weights(torch.tensor(everything.lengths), args.loss_aggregation, T_new, trained)[mine]  # [n]
        mbs = group_batches(rollout.lengths + rollout.prompt_mask.sum(-1), G, args.micro_batch_size)  # [b] each
        laps.lap("advantages")
        # ---- frozen log-probs [b, tc] per micro-batch: the KL model's and, when a rollout is reused, the policy's
        # own before updating
        kl_logp, old_logp = {}, {}
        with torch.no_grad(), trainer.amp():
            if kl_model is not None:
                with training.on_device(kl_model, device, offload=args.kl_model_offload):
                    kl_logp = {k: rows_logprobs(kl_model, rollout, mb, G, args.temperature)[0] for k, mb in enumerate(mbs)}
            if args.num_iterations > 1:
                model.eval()
                old_logp = {k: rows_logprobs(model, rollout, mb, G, args.temperature)[0] for k, mb in enumerate(mbs)}
        laps.lap("frozen_logprobs")
        # ---- update: every micro-batch's loss is its share of the step loss, so accumulation == one batch
        model.train()
        sums, grad_norms = {}, []
        for _ in range(args.num_iterations):
            step_loss = 0.0
            for k, mb in enumerate(mbs):
                with distributed.gradient_sync(model, d, sync=k == len(mbs) - 1):
                    with trainer.amp():
                        logp, ent, tc = rows_logprobs(model, rollout, mb, G, args.temperature, with_entropy=True)
                    mask = rollout.mask[mb, :tc]                                         # [b, tc]
                    loss, st = policy_loss(logp, old_logp.get(k, logp.detach()), adv[mb], weights[mb], mask,
                                           loss_cfg, kl_logp.get(k), rollout.logprobs[mb, :tc])
                    (loss * d.loss_scale).backward()
                for key, v in {**st, "loss": loss, "entropy": (ent * mask).sum()}.items():
                    sums[key] = sums.get(key, 0.0) + v.item()
                step_loss += loss.item()
            grad_norm, _ = trainer.step(step, distributed.all_reduce({"loss": step_loss}, d)["loss"])
            grad_norms.append(grad_norm)
        laps.lap("update")

        # ---- compute and metrics over the whole step (all ranks): rlsr/flops.py, rlsr/metrics.py
        step_compute = trainer.step_compute()
        step_compute.rlsr_step([x.group_lengths(G) for x in draws], rows.group_lengths(G), kl_model is not None,
                               args.num_iterations > 1, args.num_iterations)
        trainer.count(step_compute)
        sums = distributed.all_reduce({**sums, "prompt_tokens": rollout.prompt_mask[::G].sum().item()}, d)
        m = {"step": step, **step_metrics(everything, sums, G, args.num_iterations, args.scale_rewards, args.std_floor,
                                          args.tie_tolerance),
             "prompt_tokens": sums["prompt_tokens"], "grad_norm": sum(grad_norms) / len(grad_norms),
             "learning_rate": trainer.scheduler.get_last_lr()[0], "nonfinite_steps": trainer.nonfinite_steps,
             "flops": trainer.compute.training_flops, "step_time": laps.total,
             "tokens_per_s": sum(everything.lengths) / laps.total, **{f"time/{k}": v for k, v in laps.times.items()}}
        if args.dynamic_sampling:
            m["dynamic_sampling/draws"] = len(draws)
        trainer.log(m)
        bar.set_postfix(reward=f"{m['reward']:.3f}", kl=f"{m.get('kl', 0):.4f}", len=f"{m['completions/mean_length']:.0f}",
                        tok_s=f"{m['tokens_per_s']:.0f}")
        trainer.warn_collapse(step, m)
        if args.sample_every and step % args.sample_every == 0:
            for i, ex in enumerate(rows.examples):  # each rank's own rows; only rank 0 writes, so rank 0's share
                trainer.log({"step": step, "id": ex.id, "prompt": ex.prompt_messages()[-1]["content"],
                             "reference": ex.reference, "completion": rows.samples.texts[i],
                             "reward": rows.samples.rewards[i], "advantage": adv[i].item(),
                             "finish_reason": rollout.finish_reason[i]}, "samples.jsonl")
        if trainer.due(step) and held_out:
            e = held_out_eval(step)
            if d.main:
                tqdm.write(f"step {step}: held-out reward {e['reward']:.4f}")
        trainer.maybe_checkpoint(step)
    bar.close()

    # ---- the end: the held-out evaluation paired with the one at the start, then the final weights (written last:
    # a run whose final/ is intact has finished)
    if held_out:
        first, last = held_out_eval(0), held_out_eval(args.steps, "at the end")
        change = paired_bootstrap_ci(first["rewards"], last["rewards"])
        trainer.summarize(f"held-out reward (greedy, n={len(held_out)}): {first['reward']:.4f} -> {last['reward']:.4f}, "
                          f"change {format_ci(change)} (paired bootstrap 95%); mean length "
                          f"{first['mean_length']:.0f} -> {last['mean_length']:.0f} tokens",
                          "WARNING: the held-out reward fell (its whole interval is below 0): the policy got worse at "
                          "what it was trained for; check metrics.jsonl (entropy, kl, grad_norm) and lower --lr"
                          if change[2] < 0 else None, change=change[0], change_ci=list(change[1:]))
    trainer.close(trainer.finish())


if __name__ == "__main__":
    training.cli(main)

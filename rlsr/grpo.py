"""The RLSR policy update as pure tensor functions: group-relative advantages, the clipped surrogate, KL, aggregation.

The exact variant implemented (each default, and why):

Rollout. For every prompt x the policy at rollout time (pi_old) samples G completions y_1..y_G at temperature T.
Rows are laid out prompt-major: row r answers prompt r // G (rlsr.sampling, `repeat_interleave`). The reward of
row i is r_i = cos(E(y_i), E(y*)) with a frozen sentence encoder E and the reference answer y* (rlsr/reward.py).

1. Advantage, one per completion, shared by its tokens (`group_advantages`):
       A_i = (r_i - mean_group(r)) / max(std, std_floor)
   scale="group" (default; GRPO): std of r within the group; scale="batch": std over every reward of the step
   (keeps the relative spread between groups); scale="none" (Dr. GRPO): no division. std is the population std.
   std_floor=0.02 (default): cosine rewards of one prompt's samples often lie within a few hundredths of each other
   (0.71 vs 0.74). Dividing by their std alone (plus the usual 1e-4) would turn such differences, partly encoder
   noise, into advantages of +-1. The floor caps the amplification at 1/0.02 = 50x: a group whose rewards spread
   less than about 0.02 is treated as nearly tied, not as a strong signal.
   Near-tie groups (max - min < tie_tolerance, default 1e-3) are counted (`frac_reward_zero_std`), and dropped
   from the step when drop_ties=True (their rows get zero weight and leave the loss normaliser).
   Departure from the paper: its body is not public; GRPO with group scaling is our choice, the floor is ours.

2. Per-token policy term, PPO's clipped surrogate with asymmetric clip (`policy_loss`):
       ratio_t = exp(logp_t - logp_old_t)
       l_t = -min(ratio_t * A, clip(ratio_t, 1 - eps_low, 1 + eps_high) * A)
   eps_low = eps_high = 0.2 by default (PPO's value; eps_high > eps_low is DAPO's "clip-higher").
   With one optimizer step per rollout (num_iterations=1) logp_old = logp.detach(): the ratio is exactly 1, the
   gradient is the vanilla policy gradient, and no extra forward pass is spent. With several updates per rollout,
   logp_old is computed once, before the first update, in eval mode at the sampling temperature.

3. KL to the reference policy (the initial model), added per token with weight beta (default 0.04 in train_rlsr.py):
       k3: exp(d) - d - 1 with d = logp_ref - logp (unbiased value, low variance, >= 0; GRPO's choice)
       k1: logp - logp_ref
   d is clamped to [-10, 10] before exp so one outlier token cannot blow up the loss. beta = 0 means no reference
   model is ever loaded or run.

4. Aggregation, as per-token weights w_t that sum the loss over the WHOLE optimizer step (`token_weights`):
       "token"    (DAPO, default): sum_t l_t / (number of completion tokens in the step)
       "sequence" (original GRPO): mean over sequences of each sequence's token mean (favours short answers
                  with positive advantage and long ones with negative; kept for comparison)
       "constant" (Dr. GRPO): sum_t l_t / (number of sequences * max_new_tokens)
   Because the weights are computed for the whole step before it is split into micro-batches, the summed
   micro-batch losses equal the loss of one big batch: gradient accumulation changes nothing.

Every completion token is trained, the stop token included (the sampler keeps it in the mask); log-probs are those
of softmax(logits / T) over the real vocabulary, computed in fp32 (rlsr/logprobs.py).
"""
from __future__ import annotations

import torch

SCALES = ("group", "batch", "none")
AGGREGATIONS = ("token", "sequence", "constant")
KL_ESTIMATORS = ("k3", "k1")


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group", std_floor: float = 0.02,
                     tie_tolerance: float = 1e-3, batch_std: float | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """rewards [P * G] (prompt-major) -> advantages [P * G], near-tie flags per row [P * G] (bool), stats.

    batch_std: the std of the whole step's rewards when this call sees only part of them (data parallelism).

    >>> adv, ties, _ = group_advantages(torch.tensor([1.0, 0.0, 0.5, 0.5]), group_size=2, std_floor=0.0)
    >>> adv.tolist(), ties.tolist()   # group 1: mean 0.5, std 0.5; group 2: a tie
    ([1.0, -1.0, 0.0, 0.0], [False, False, True, True])
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    r = rewards.float().view(-1, group_size)                                       # [P, G]
    adv = r - r.mean(-1, keepdim=True)                                             # [P, G]
    if scale == "group":
        adv = adv / r.std(-1, unbiased=False, keepdim=True).clamp(min=max(std_floor, 1e-8))
    elif scale == "batch":
        std = r.std(unbiased=False) if batch_std is None else torch.tensor(batch_std)
        adv = adv / std.clamp(min=max(std_floor, 1e-8))
    ties = (r.max(-1).values - r.min(-1).values) < tie_tolerance                   # [P]
    stats = {"reward": r.mean().item(), "reward_std": r.std(-1, unbiased=False).mean().item(),
             "frac_reward_zero_std": ties.float().mean().item(),
             "frac_std_below_floor": (r.std(-1, unbiased=False) < std_floor).float().mean().item()}
    return adv.view(-1), ties.repeat_interleave(group_size), stats


def token_counts(mask: torch.Tensor, keep: torch.Tensor | None = None) -> dict[str, float]:
    """The normalisers of `token_weights`: trained tokens and sequences (sum them over ranks for the global ones)."""
    m = mask.float() if keep is None else mask.float() * keep.float()[:, None]
    return {"tokens": m.sum().item(), "sequences": (m.sum(-1) > 0).sum().item()}


def token_weights(mask: torch.Tensor, aggregation: str = "token", max_new_tokens: int | None = None,
                  keep: torch.Tensor | None = None, counts: dict[str, float] | None = None) -> torch.Tensor:
    """Per-token loss weights [N, T] for the whole step: loss = sum(w * l). mask [N, T] marks completion tokens.

    keep [N] (bool) removes rows (e.g. dropped near-tie groups) from the loss and from the normaliser.
    counts: the step's token and sequence counts when `mask` is only part of the step (`token_counts` summed over
    data-parallel ranks); by default they are counted from `mask`.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    m = mask.float()
    if keep is not None:
        m = m * keep.float()[:, None]
    counts = counts or token_counts(mask, keep)
    n_seq = max(counts["sequences"], 1)
    if aggregation == "token":
        return m / max(counts["tokens"], 1)
    if aggregation == "sequence":
        return m / m.sum(-1, keepdim=True).clamp(min=1) / n_seq
    if max_new_tokens is None:
        raise ValueError("aggregation='constant' needs max_new_tokens")
    return m / (n_seq * max_new_tokens)


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from log-probs of tokens sampled from pi. [N, T] -> [N, T]."""
    if estimator == "k1":
        return logp - ref_logp
    if estimator == "k3":
        d = (ref_logp - logp).clamp(-10, 10)
        return d.exp() - d - 1
    raise ValueError(f"estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, weights: torch.Tensor,
                eps_low: float = 0.2, eps_high: float = 0.2, ref_logp: torch.Tensor | None = None,
                beta: float = 0.0, kl_estimator: str = "k3") -> tuple[torch.Tensor, dict]:
    """Clipped surrogate (+ beta * KL) summed with the step's token weights. Tensors [B, T]; advantages [B].

    Returns the loss (a micro-batch's share of the step loss: sum these over micro-batches) and token-weighted
    sums of the diagnostics (divide by the step's summed "weight" to get means).
    """
    A = advantages[:, None]                                                        # [B, 1]
    ratio = (logp - old_logp).exp()                                                # [B, T]
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high)
    per_token = -torch.min(ratio * A, clipped * A)                                 # [B, T]
    kl = None
    if ref_logp is not None:
        kl = kl_penalty(logp, ref_logp, kl_estimator)                              # [B, T]
        per_token = per_token + beta * kl
    loss = (weights * per_token).sum()
    with torch.no_grad():
        w = weights
        low = (ratio < 1 - eps_low) & (A < 0)    # clipping that stops a further decrease of the probability
        high = (ratio > 1 + eps_high) & (A > 0)  # ... that stops a further increase
        stats = {"weight": w.sum(), "clip_ratio/low_mean": (w * low).sum(), "clip_ratio/high_mean": (w * high).sum(),
                 "clip_ratio/region_mean": (w * (low | high)).sum(), "ratio_mean": (w * ratio).sum()}
        if kl is not None:
            stats["kl"] = (w * kl).sum()
    return loss, stats

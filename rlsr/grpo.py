"""The RLSR policy update as pure tensor functions: group-relative advantages, the clipped surrogate, KL, aggregation.

Every function here sees the WHOLE optimizer step (all prompts, all ranks): the training loop gathers the few numbers
per row it needs (rewards, lengths) and takes its own rows' slice afterwards, so nothing below knows about data
parallelism. The exact variant implemented (each default, and why):

Rollout. For every prompt x the policy at rollout time (pi_old) samples G completions y_1..y_G at temperature T.
Rows are laid out prompt-major: row r answers prompt r // G (rlsr.sampling, `repeat_interleave`). The reward of
row i is r_i = R(y_i, y*) for the reference answer y*, by default cos(E(y_i), E(y*)) with a frozen sentence encoder
E (rlsr/reward.py).

1. Advantage, one per completion, shared by its tokens (`group_advantages`):
       A_i = (r_i - b_i) / max(std, std_floor)
   The baseline b_i (`BASELINES`, --baseline): "group" (default; GRPO) the mean of the group's G rewards;
   "loo" (RLOO, Ahmadian et al. 2024, arXiv 2402.14740) the mean of the other G - 1 rewards of the group, which
   does not depend on y_i itself: r_i - b_i = G / (G - 1) * (r_i - mean_group(r)). RLOO as published does not
   divide by a std: use it with scale="none"; with a std scale the two baselines differ by the factor G / (G - 1).
   scale="group" (default; GRPO): std of r within the group; scale="batch": std over every reward of the step
   (keeps the relative spread between groups); scale="none" (Dr. GRPO): no division. std is the population std.
   std_floor=0.02 (default): cosine rewards of one prompt's samples often lie within a few hundredths of each other
   (0.71 vs 0.74). Dividing by their std alone (plus the usual 1e-4) would turn such differences, partly encoder
   noise, into advantages of +-1. The floor caps the amplification at 1/0.02 = 50x: a group whose rewards spread
   less than about 0.02 is treated as nearly tied, not as a strong signal.
   Near-tie groups (max - min < tie_tolerance, default 1e-3; `near_ties`) are counted (`frac_near_tie_groups`) and
   can be dropped from the step (their rows get zero weight and leave the loss normaliser) or, with DAPO's dynamic
   sampling, replaced by groups of newly drawn prompts (rlsr/rollout.py).
   Departure from the paper: its body is not public; GRPO with group scaling is our choice, the floor is ours.

2. Per-token policy term, PPO's clipped surrogate with asymmetric clip (`policy_loss`):
       l_t = -min(w_t * A, clip(w_t, 1 - eps_low, 1 + eps_high) * A)
   importance="token" (default, PPO/GRPO): w_t = pi_theta(y_t) / pi_old(y_t).
   importance="sequence" (GSPO, arXiv 2507.18071; TRL importance_sampling_level="sequence"): one weight per
       sequence, w = exp(mean_t log(pi_theta(y_t) / pi_old(y_t))), the length-normalised sequence ratio, clipped per
       sequence. Its ratios stay far closer to 1 than token ratios, so GSPO uses much tighter clips: the paper's
       eps_low = 3e-4, eps_high = 4e-4 (the values TRL's GSPO example uses), not 0.2.
   eps_low = eps_high = 0.2 by default (PPO's value; eps_high > eps_low is DAPO's "clip-higher").
   With one optimizer step per rollout (num_iterations=1) pi_old is the current policy, detached: the ratio is
   exactly 1, the gradient is the vanilla policy gradient, and no extra forward pass is spent. With several updates
   per rollout, log pi_old is computed once, before the first update, in eval mode at the sampling temperature.
   Truncated importance sampling (tis_cap C; Yao et al. 2025, "Your efficient RL framework secretly brings you
   off-policy RL training"; TRL's vllm_importance_sampling_correction, mode token_truncate): when the sampler's
   log-probs differ from the trainer's (bf16 or compiled sampling), the tokens were drawn from pi_sample, not pi_old;
   each token's term is weighted by min(pi_old(y_t) / pi_sample(y_t), C), with the sampler's own log-probs
   (Rollout.logprobs). Off by default: rlsr's fp32 sampler and trainer agree to 1e-4.

3. KL to the reference policy pi_ref (the initial model), added per token with weight beta (default 0.04 in
   train_rlsr.py). With d = log pi_ref(y_t) - log pi_theta(y_t) on tokens sampled from pi_theta (`kl_penalty`):
       k1: -d                  value: unbiased estimate of KL(pi || pi_ref). As a loss term its expected gradient
                               on on-policy samples is ZERO (E_pi[grad log pi] = 0): it penalises nothing.
       k2: d^2 / 2             value: biased, low-variance; as a loss term its gradient is E[-d grad log pi], the
                               gradient of KL(pi || pi_ref) itself (the reverse KL the objective means).
       k3: exp(d) - d - 1      value: unbiased, low variance, >= 0 (GRPO's choice, the default); as a loss term its
                               gradient is E[(1 - exp(d)) grad log pi], the gradient of the forward KL(pi_ref || pi),
                               not of the reverse KL (a known subtlety of GRPO's KL term).
   d is clamped to [-10, 10] before exp so one outlier token cannot blow up the loss. beta = 0 means no reference
   model is ever loaded or run. (TRL multiplies k3 by the importance ratio by default, use_bias_correction_kl; at
   ratio 1 that changes the gradient, not the value. We do not.)

4. Aggregation, as per-row weights that sum the loss over the WHOLE optimizer step (`row_weights`; every token of
   a row gets its row's weight):
       "token"    (DAPO, default; TRL loss_type="dapo"): sum_t l_t / (number of completion tokens in the step)
       "sequence" (original GRPO; TRL "grpo"): mean over sequences of each sequence's token mean (favours short
                  answers with positive advantage and long ones with negative; kept for comparison)
       "constant" (Dr. GRPO; TRL "dr_grpo"): sum_t l_t / (number of sequences * max_new_tokens)
   Because the weights are computed for the whole step before it is split into micro-batches and ranks, the
   summed micro-batch losses equal the loss of one big batch: accumulation and data parallelism change nothing.

Logged statistics (`policy_loss` returns sums; rlsr/metrics.py divides): TRL's names mean TRL's quantities, token
means over the whole step whatever the aggregation: `kl`, `entropy`, `clip_ratio/{low,high,region}_mean` (per
sequence under importance="sequence", as TRL counts them); `ratio_mean` is ours, the token mean of the weight.

Every completion token is trained, the stop token included (the sampler keeps it in the mask); log-probs are those
of softmax(logits / T) over the real vocabulary, computed in fp32 (rlsr/logprobs.py).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

def group_mean(r: torch.Tensor) -> torch.Tensor:
    """[P, G] rewards -> [P, 1]: the mean of each group (GRPO)."""
    return r.mean(-1, keepdim=True)


def leave_one_out_mean(r: torch.Tensor) -> torch.Tensor:
    """[P, G] rewards -> [P, G]: for each row, the mean of the other G - 1 rewards of its group (RLOO)."""
    return (r.sum(-1, keepdim=True) - r) / (r.shape[-1] - 1)


# A new baseline: a function [P, G] rewards -> its baseline (broadcast to [P, G]), named here; the name becomes a
# --baseline choice.
BASELINES = {"group": group_mean, "loo": leave_one_out_mean}
SCALES = ("group", "batch", "none")
AGGREGATIONS = ("token", "sequence", "constant")
KL_ESTIMATORS = ("k3", "k1", "k2")
IMPORTANCE_LEVELS = ("token", "sequence")


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group", std_floor: float = 0.02,
                     baseline: str = "group") -> torch.Tensor:
    """rewards [P * G] of the whole step (prompt-major) -> advantages [P * G].

    >>> group_advantages(torch.tensor([1.0, 0.0, 0.5, 0.5]), group_size=2, std_floor=0.0).tolist()
    [1.0, -1.0, 0.0, 0.0]
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {tuple(BASELINES)}, got {baseline!r}")
    r = rewards.float().view(-1, group_size)                                       # [P, G]
    adv = r - BASELINES[baseline](r)                                               # [P, G]
    floor = max(std_floor, 1e-8)
    if scale == "group":
        adv = adv / r.std(-1, unbiased=False, keepdim=True).clamp(min=floor)
    elif scale == "batch":
        adv = adv / r.std(unbiased=False).clamp(min=floor)
    return adv.view(-1)


def near_ties(rewards: torch.Tensor, group_size: int, tolerance: float = 1e-3) -> torch.Tensor:
    """[P * G] rewards -> [P * G] bool: the row's group spans less than `tolerance` (max - min)."""
    r = rewards.float().view(-1, group_size)
    return ((r.max(-1).values - r.min(-1).values) < tolerance).repeat_interleave(group_size)


def reward_stats(rewards: torch.Tensor, group_size: int, scale: str = "group", std_floor: float = 0.02,
                 tie_tolerance: float = 1e-3) -> dict[str, float]:
    """Statistics of the step's rewards [P * G]: TRL's `reward`, `reward_std` (unbiased std over every reward of the
    step) and `frac_reward_zero_std` (fraction of rows whose scaling std is 0: the group's, or the batch's under
    scale="batch"); ours: `reward_std_within_group` (mean population std within groups), `frac_near_tie_groups`,
    `frac_std_below_floor`."""
    r = rewards.float().view(-1, group_size)                                       # [P, G]
    within = r.std(-1, unbiased=False)                                             # [P]
    unbiased = r.std(-1) if group_size > 1 else torch.zeros(len(r))
    zero_std = torch.isclose(r.flatten().std(), torch.zeros(())).expand(len(r)) if scale == "batch" else \
        torch.isclose(unbiased, torch.zeros_like(unbiased))
    return {"reward": r.mean().item(), "reward_std": r.flatten().std().item() if r.numel() > 1 else 0.0,
            "frac_reward_zero_std": zero_std.float().mean().item(),
            "reward_std_within_group": within.mean().item(),
            "frac_near_tie_groups": near_ties(rewards, group_size, tie_tolerance)[::group_size].float().mean().item(),
            "frac_std_below_floor": (within < std_floor).float().mean().item()}


def row_weights(lengths: torch.Tensor, aggregation: str = "token", max_new_tokens: int | None = None,
                trained: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row loss weights [N] for the whole step from completion lengths [N]: loss = sum_rows w_r * sum_t l_rt.

    trained [N] (bool): rows in the loss; the others (e.g. dropped near-tie groups) leave it and its normaliser.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    n = lengths.double() if trained is None else lengths.double() * trained.double()  # [N] trained tokens per row
    n_seq = max(int((n > 0).sum()), 1)
    if aggregation == "token":
        w = (n > 0).double() / max(n.sum().item(), 1.0)
    elif aggregation == "sequence":
        w = (n > 0).double() / n.clamp(min=1) / n_seq
    else:
        if max_new_tokens is None:
            raise ValueError("aggregation='constant' needs max_new_tokens")
        w = (n > 0).double() / (n_seq * max_new_tokens)
    return w.float()


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from log-probs of tokens sampled from pi. [N, T] -> [N, T]."""
    if estimator == "k1":
        return logp - ref_logp
    d = (ref_logp - logp).clamp(-10, 10)
    if estimator == "k2":
        return 0.5 * d ** 2
    if estimator == "k3":
        return d.exp() - d - 1
    raise ValueError(f"estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


@dataclass
class LossConfig:
    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.0              # KL weight; 0 = no KL term
    kl_estimator: str = "k3"
    importance: str = "token"      # "token" | "sequence" (GSPO)
    tis_cap: float | None = None   # truncated importance sampling against the sampler's log-probs; None = off

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "LossConfig":
        return cls(args.epsilon_low, args.epsilon_high, args.beta, args.kl_estimator, args.importance_level,
                   args.tis_cap)

    def __post_init__(self):
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {self.kl_estimator!r}")
        if self.importance not in IMPORTANCE_LEVELS:
            raise ValueError(f"importance must be one of {IMPORTANCE_LEVELS}, got {self.importance!r}")


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, weights: torch.Tensor,
                mask: torch.Tensor, cfg: LossConfig, ref_logp: torch.Tensor | None = None,
                sampler_logp: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate (+ beta * KL) summed with the step's row weights. logp, old_logp, mask [B, T]; advantages,
    weights [B]; ref_logp (when beta > 0) and sampler_logp (when tis_cap is set) [B, T].

    Returns the loss (this micro-batch's share of the step loss: sum these over micro-batches) and sums of the
    diagnostics with their denominators ("tokens", "clip_count": tokens or, under GSPO, sequences).
    """
    m = mask.float()
    A = advantages[:, None]                                                        # [B, 1]
    log_ratio = logp - old_logp                                                    # [B, T]
    if cfg.importance == "sequence":
        log_ratio = (log_ratio * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1)  # [B, 1]
    ratio = log_ratio.exp()                                                        # [B, T] or [B, 1]
    clipped = ratio.clamp(1 - cfg.eps_low, 1 + cfg.eps_high)
    per_token = -torch.min(ratio * A, clipped * A)                                 # [B, T] or [B, 1]
    if cfg.tis_cap is not None:
        if sampler_logp is None:
            raise ValueError("tis_cap needs the sampler's log-probs")
        per_token = per_token * (old_logp - sampler_logp).exp().clamp(max=cfg.tis_cap).detach()
    kl = None
    if cfg.beta and ref_logp is not None:
        kl = kl_penalty(logp, ref_logp, cfg.kl_estimator)                          # [B, T]
        per_token = per_token + cfg.beta * kl
    per_token = per_token.expand_as(m)                                             # [B, T]
    loss = (weights[:, None] * per_token * m).sum()
    with torch.no_grad():
        low = (ratio < 1 - cfg.eps_low) & (A < 0)    # clipping that stops a further decrease of the probability
        high = (ratio > 1 + cfg.eps_high) & (A > 0)  # ... that stops a further increase
        unit = m if cfg.importance == "token" else (m.sum(-1, keepdim=True) > 0).float()  # what a clip fraction counts
        stats = {"tokens": m.sum(), "clip_count": unit.sum(), "clip_ratio/low_mean": (low * unit).sum(),
                 "clip_ratio/high_mean": (high * unit).sum(), "clip_ratio/region_mean": ((low | high) * unit).sum(),
                 "ratio_mean": (ratio.expand_as(m) * m).sum()}
        if kl is not None:
            stats["kl"] = (kl * m).sum()
    return loss, stats


def add_algorithm_args(parser: argparse.ArgumentParser):
    """The flags of the algorithm above; the choices are this module's."""
    g = parser.add_argument_group("algorithm (rlsr/grpo.py)")
    g.add_argument("--baseline", default="group", choices=tuple(BASELINES),
                   help="what a reward is compared with: its group's mean (GRPO) or the mean of the others (RLOO)")
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
    return g

"""Log-probabilities of tokens under a model, computed the same way by the sampler and by the trainer.

The PPO ratio pi_theta / pi_old starts at exactly 1 only if the trainer's log-probs are those the sampler drew from.
So both go through `scaled_log_softmax`: logits in fp32, divided by the sampling temperature. The logits already
cover the real vocabulary only (rlsr/model.py, `output_vocab`).

The trainer scores completions teacher-forced on packed groups (rlsr/packing.py `pack_groups`): each prompt is run
once per group of G completions, and only the positions that predict a completion token reach the vocabulary
projection. Results equal the padded per-row computation up to fp32 rounding (tested).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rlsr.packing import pack_groups


def scaled_log_softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """[..., V] logits -> [..., V] fp32 log-probs of softmax(logits / T). Temperature 0 (greedy) is scored at T = 1."""
    logits = logits.float()
    if temperature not in (0, 1):
        logits = logits / temperature
    return F.log_softmax(logits, dim=-1)


def completion_logprobs(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                        completion_mask: torch.Tensor, temperature: float = 1.0, with_entropy: bool = False,
                        group_size: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Teacher-forced log-probs of completion tokens [B, Tc] at the sampling temperature, and (if asked, without
    gradient) the per-token entropies [B, Tc] of that distribution in nats. Zero where completion_mask is False.

    prompt_ids/prompt_mask [B, Tp] are left-padded, completion_ids/completion_mask [B, Tc] right-padded. The rows
    come in groups of `group_size` sharing one prompt (rows g*G .. g*G+G-1, the sampler's layout); G = 1 packs each
    row on its own.
    """
    packed = pack_groups(prompt_ids, prompt_mask, completion_ids, completion_mask, group_size)
    logits = model(packed.ids, packed.positions, packed.mask, logits_at=packed.logits_at)     # [N, V]
    logp = scaled_log_softmax(logits, temperature)                                           # [N, V] fp32
    token_logp = logp.gather(-1, packed.targets[:, None]).squeeze(-1)                        # [N]
    # back to the [B, Tc] layout of the rollout: the targets are completion_ids[completion_mask], row-major
    out = torch.zeros(completion_ids.shape, dtype=token_logp.dtype, device=token_logp.device)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            p = logp.exp()
            entropy = out.masked_scatter(completion_mask, -(p * logp.masked_fill(p == 0, 0)).sum(-1))
    return out.masked_scatter(completion_mask, token_logp), entropy


def rows_logprobs(model, rollout, rows: torch.Tensor, group_size: int, temperature: float,
                  with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Teacher-forced log-probs [b, tc] (and entropies, if asked) of the completions of some whole groups of a
    rollout's rows (rlsr.sampling.Rollout; rows [b]), padding trimmed to these rows; tc is their longest completion."""
    pmask, cmask = rollout.prompt_mask[rows], rollout.mask[rows]                 # [b, Tp], [b, T]
    p0 = int((~pmask.any(0)).sum())               # leading columns that are padding in every row
    tc = int(cmask.sum(-1).max())                 # longest completion among these rows
    logp, ent = completion_logprobs(model, rollout.prompt_ids[rows, p0:], pmask[:, p0:], rollout.tokens[rows, :tc],
                                    cmask[:, :tc], temperature, with_entropy, group_size)
    return logp, ent, tc

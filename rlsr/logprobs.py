"""Log-probabilities of tokens under a model, computed the same way by the sampler and by the trainer.

The PPO ratio pi_theta / pi_old starts at exactly 1 only if the trainer's log-probs are those the sampler drew from.
So both go through `scaled_log_softmax`: logits in fp32, divided by the sampling temperature, with the embedding rows
past the tokenizer's real vocabulary (Qwen pads 151,665 tokens to 151,936 rows) removed from the softmax.

Packed groups. In RLSR every prompt has G completions. With group_size=G, `completion_logprobs` packs each group
into ONE sequence, [prompt | completion 1 | ... | completion G], where completion i sees the prompt and its own
earlier tokens only (rlsr.model.segment_mask) and its positions continue from the prompt's. The prompt is then run
once per group instead of G times, and no compute goes to padding after short completions; only the positions that
predict completion tokens go through the vocabulary projection. Results equal the padded per-row computation up to
fp32 rounding (tested).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rlsr.model import segment_mask


def scaled_log_softmax(logits: torch.Tensor, temperature: float = 1.0, vocab_size: int | None = None) -> torch.Tensor:
    """[..., V] logits -> [..., V] fp32 log-probs of softmax(logits / T) over the first vocab_size ids (others -inf).

    temperature 0 (greedy) is scored at T = 1.
    """
    logits = logits.float()
    if vocab_size is not None and vocab_size < logits.shape[-1]:
        logits = logits.clone()
        logits[..., vocab_size:] = float("-inf")
    if temperature not in (0, 1):
        logits = logits / temperature
    return F.log_softmax(logits, dim=-1)


def pack_groups(prompt_ids, prompt_mask, completion_ids, completion_mask, group_size: int):
    """Pack each group of G rows (one prompt, G completions) into one sequence.

    Returns ids, positions and segments [P, L] (segment 0 = prompt, i = completion i, -1 = padding) and, for every
    completion token in row-major order, the packed (row, column) of the position that predicts it.
    """
    B, G = completion_ids.shape[0], group_size
    if B % G:
        raise ValueError(f"{B} rows are not whole groups of {G}")
    P, device = B // G, completion_ids.device
    p_len = prompt_mask[::G].sum(-1)                                              # [P]
    c_len = completion_mask.sum(-1).view(P, G)                                    # [P, G]
    L = int((p_len + c_len.sum(-1)).max())
    ids = torch.zeros(P, L, dtype=torch.long, device=device)
    positions = torch.zeros(P, L, dtype=torch.long, device=device)
    segments = torch.full((P, L), -1, dtype=torch.long, device=device)
    src_row, src_col = [], []
    for p in range(P):
        n = int(p_len[p])
        ids[p, :n] = prompt_ids[p * G][prompt_mask[p * G]]
        positions[p, :n] = torch.arange(n, device=device)
        segments[p, :n] = 0
        start = n
        for i in range(G):
            m = int(c_len[p, i])
            ids[p, start:start + m] = completion_ids[p * G + i, :m]
            positions[p, start:start + m] = torch.arange(n, n + m, device=device)
            segments[p, start:start + m] = i + 1
            # token 0 is predicted by the prompt's last position, token j > 0 by the completion's own token j - 1
            src_col += [n - 1] + list(range(start, start + m - 1))
            src_row += [p] * m
            start += m
    return ids, positions, segments, torch.tensor(src_row, device=device), torch.tensor(src_col, device=device)


def completion_logprobs(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                        completion_mask: torch.Tensor, temperature: float = 1.0, vocab_size: int | None = None,
                        with_entropy: bool = False, group_size: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Teacher-forced log-probs of completion tokens [B, Tc] at the sampling temperature, and (if asked, without
    gradient) the per-token entropies [B, Tc] of that distribution in nats. Zero where completion_mask is False.

    prompt_ids/prompt_mask [B, Tp] are left-padded, completion_ids/completion_mask [B, Tc] right-padded. With
    group_size G > 1 the rows come in groups of G sharing one prompt (rows g*G .. g*G+G-1, the sampler's layout).
    """
    B, Tc = completion_ids.shape
    if group_size == 1:
        ids = torch.cat([prompt_ids, completion_ids], dim=1)                      # [B, Tp + Tc]
        mask = torch.cat([prompt_mask, completion_mask], dim=1)
        logits = model(ids, attention_mask=mask, logits_to_keep=Tc + 1)[:, :-1]  # [B, Tc, V]
        targets = completion_ids
    else:
        ids, positions, segments, row, col = pack_groups(prompt_ids, prompt_mask, completion_ids, completion_mask,
                                                         group_size)
        logits = model(ids, attention_mask=segment_mask(segments), positions=positions, keep=(row, col))  # [N, V]
        targets = completion_ids[completion_mask]                                 # [N], row-major like row/col
    logp = scaled_log_softmax(logits, temperature, vocab_size)                    # [..., V] fp32
    token_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            p = logp.exp()
            entropy = -(p * logp.masked_fill(p == 0, 0)).sum(-1)
    if group_size > 1:  # back to the [B, Tc] layout of the rollout
        token_logp = torch.zeros(B, Tc, dtype=token_logp.dtype, device=token_logp.device).masked_scatter(
            completion_mask, token_logp)
        if entropy is not None:
            entropy = torch.zeros(B, Tc, dtype=entropy.dtype, device=entropy.device).masked_scatter(
                completion_mask, entropy)
    else:
        token_logp = token_logp * completion_mask
        entropy = entropy * completion_mask if entropy is not None else None
    return token_logp, entropy

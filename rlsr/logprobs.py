"""Log-probabilities of tokens under a model, computed the same way by the sampler and by the trainer.

The PPO ratio pi_theta / pi_old starts at exactly 1 only if the trainer's log-probs are those the sampler drew from.
So both go through `scaled_log_softmax`: logits in fp32, divided by the sampling temperature, with the embedding rows
past the tokenizer's real vocabulary (Qwen pads 151,665 tokens to 151,936 rows) removed from the softmax.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


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


def completion_logprobs(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                        completion_mask: torch.Tensor, temperature: float = 1.0, vocab_size: int | None = None,
                        with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Teacher-forced log-probs of completion tokens: [B, Tc] (and per-token entropies [B, Tc] if asked).

    prompt_ids/prompt_mask [B, Tp] are left-padded, completion_ids/completion_mask [B, Tc] right-padded, so the
    sequence is [pad.. prompt | completion ..pad] and positions come from the combined mask. Only the Tc logits that
    predict completion tokens are computed (the prompt's last position predicts the first completion token).
    """
    ids = torch.cat([prompt_ids, completion_ids], dim=1)                              # [B, Tp + Tc]
    mask = torch.cat([prompt_mask, completion_mask], dim=1)
    Tc = completion_ids.shape[1]
    logits = model(ids, attention_mask=mask, logits_to_keep=Tc + 1)[:, :-1]         # [B, Tc, V]
    logp = scaled_log_softmax(logits, temperature, vocab_size)                        # [B, Tc, V] fp32
    token_logp = logp.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)            # [B, Tc]
    entropy = None
    if with_entropy:
        p = logp.exp()
        entropy = -(p * logp.masked_fill(p == 0, 0)).sum(-1)                          # [B, Tc], nats
    return token_logp, entropy

"""Supervised fine-tuning on the same prompt/reference pairs RLSR trains on: tokenising, packing, the loss.

Each example is the conversation prompt + [assistant: reference], rendered with the checkpoint's chat template.
Only the reference's tokens are trained, its end-of-turn token included (without it the model never learns to
stop), i.e. exactly the tokens RLSR samples and rewards; the prompt, earlier turns and template text are not.

Loss: summed token cross-entropy divided by the number of trained tokens in the WHOLE optimizer step, so the
summed micro-batch losses equal one big batch's and gradient accumulation changes nothing.

Packing (optional): several examples share one row, each with positions from 0 and attention only within
itself (rlsr/packing.py); the loss equals the unpacked one up to fp32 rounding, without padding compute.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlsr.packing import Packed, first_fit_decreasing, pack_examples


@dataclass
class Tokenized:
    ids: list[int]
    trained: list[bool]   # token t is a training target (predicted from position t - 1)
    truncated: bool       # cut at max_len: its end-of-turn token, at least, is lost


def tokenize_example(tok, example, max_len: int) -> Tokenized:
    prompt = tok.apply_chat_template(example.prompt_messages(), add_generation_prompt=True)
    conv = example.prompt_messages() + [{"role": "assistant", "content": example.reference}]
    ids, mask = tok.apply_chat_template(conv, return_assistant_mask=True)
    if ids[:len(prompt)] != prompt:
        raise ValueError(f"{example.id}: the chat template tokenises the prompt differently inside the conversation")
    trained = [False] * len(prompt) + [bool(m) for m in mask[len(prompt):]]  # the last turn only: the reference
    return Tokenized(ids[:max_len], trained[:max_len], len(ids) > max_len)


def sft_batches(examples: list[Tokenized], rows_per_batch: int, packed: bool, max_len: int, pad_id: int = 0
                ) -> list[Packed]:
    """Micro-batches of rows_per_batch rows, longest first: one example per row, or several (first-fit-decreasing
    packing into rows of at most max_len tokens)."""
    if packed:
        rows = [[examples[i] for i in r] for r in first_fit_decreasing([len(x.ids) for x in examples], max_len)]
    else:
        rows = [[x] for x in sorted(examples, key=lambda x: -len(x.ids))]
    return [pack_examples([[(x.ids, x.trained) for x in row] for row in rows[i:i + rows_per_batch]], pad_id)
            for i in range(0, len(rows), rows_per_batch)]


def num_targets(examples: list[Tokenized]) -> int:
    return sum(x.trained[1:].count(True) for x in examples)


def sft_loss(model, batch: Packed, normalizer: int) -> torch.Tensor:
    """This micro-batch's share of the step loss: summed cross-entropy of its targets / the step's target count."""
    b = batch.to(next(model.parameters()).device)
    logits = model(b.ids, b.positions, b.mask, logits_at=b.logits_at).float()                  # [N, V]
    return F.cross_entropy(logits, b.targets, reduction="sum") / max(normalizer, 1)

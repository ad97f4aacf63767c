"""Supervised fine-tuning on the same prompt/reference pairs RLSR trains on: tokenising, packing, the loss.

Each example is the conversation prompt + [assistant: reference], rendered with the checkpoint's chat template.
Only the reference's tokens are trained, its end-of-turn token included (without it the model never learns to
stop), i.e. exactly the tokens RLSR samples and rewards; the prompt, earlier turns and template text are not.

Loss: summed token cross-entropy divided by the number of trained tokens in the WHOLE optimizer step, so the
summed micro-batch losses equal one big batch's and gradient accumulation changes nothing.

Packing (optional): several examples share one row, each with positions from 0 and attention only within
itself (rlsr.model.segment_mask); the loss equals the unpacked one up to fp32 rounding, without padding compute.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlsr.model import segment_mask


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


@dataclass
class Batch:
    ids: torch.Tensor          # [B, T]
    positions: torch.Tensor    # [B, T]
    attention: torch.Tensor    # [B, 1, T, T] bool
    rows: torch.Tensor         # [N] row and column of each position whose NEXT token is trained
    cols: torch.Tensor         # [N]
    targets: torch.Tensor      # [N] that next token

    @property
    def num_targets(self) -> int:
        return len(self.targets)


def make_batch(rows: list[list[Tokenized]], pad_id: int = 0) -> Batch:
    """Rows of one or more examples each (several = packed) -> padded tensors and the trained positions."""
    T = max(sum(len(x.ids) for x in row) for row in rows)
    B = len(rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    positions = torch.zeros(B, T, dtype=torch.long)
    segments = torch.full((B, T), -1, dtype=torch.long)
    r, c, targets = [], [], []
    for b, row in enumerate(rows):
        start = 0
        for s, x in enumerate(row):
            n = len(x.ids)
            ids[b, start:start + n] = torch.tensor(x.ids)
            positions[b, start:start + n] = torch.arange(n)
            segments[b, start:start + n] = s + 1
            for t in range(1, n):
                if x.trained[t]:
                    r.append(b)
                    c.append(start + t - 1)
                    targets.append(x.ids[t])
            start += n
    return Batch(ids, positions, segment_mask(segments), torch.tensor(r, dtype=torch.long),
                 torch.tensor(c, dtype=torch.long), torch.tensor(targets, dtype=torch.long))


def pack(examples: list[Tokenized], max_len: int) -> list[list[Tokenized]]:
    """First-fit-decreasing bin packing of examples into rows of at most max_len tokens."""
    rows, room = [], []
    for x in sorted(examples, key=lambda x: len(x.ids), reverse=True):
        i = next((i for i, free in enumerate(room) if free >= len(x.ids)), None)
        if i is None:
            rows.append([x])
            room.append(max_len - len(x.ids))
        else:
            rows[i].append(x)
            room[i] -= len(x.ids)
    return rows


def micro_batches(examples: list[Tokenized], rows_per_batch: int, packed: bool, max_len: int) -> list[list[list[Tokenized]]]:
    """Rows (packed or one example each), longest first, grouped into micro-batches of rows_per_batch rows."""
    rows = pack(examples, max_len) if packed else [[x] for x in sorted(examples, key=lambda x: -len(x.ids))]
    return [rows[i:i + rows_per_batch] for i in range(0, len(rows), rows_per_batch)]


def sft_loss(model, batch: Batch, normalizer: int, vocab_size: int | None = None) -> torch.Tensor:
    """This micro-batch's share of the step loss: summed cross-entropy of its targets / the step's target count."""
    device = next(model.parameters()).device
    logits = model(batch.ids.to(device), attention_mask=batch.attention.to(device), positions=batch.positions.to(device),
                   keep=(batch.rows.to(device), batch.cols.to(device))).float()         # [N, V]
    if vocab_size is not None and vocab_size < logits.shape[-1]:  # padded embedding rows are never targets
        logits = logits.masked_fill(torch.arange(logits.shape[-1], device=device) >= vocab_size, float("-inf"))
    return F.cross_entropy(logits, batch.targets.to(device), reduction="sum") / max(normalizer, 1)

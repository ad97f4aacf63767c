"""How several sequences share a batch: left padding for sampling, packed rows for training.

The model (rlsr/model.py) takes explicit positions and an explicit attention mask; this module builds both.

Left padding (sampling, evaluation). Prompts of different lengths are left-padded to a common length, so every
row's next token lands in the same KV-cache column. Positions count real tokens only and the mask hides the pads,
so a padded row computes exactly what the row alone would (`left_pad`, `padding_mask`, `positions_from_mask`).

Packing (training). Several sequences share one row without padding between them; `segment_mask` lets each see
only itself and an optional shared prefix, and positions restart where the sequences' own positions do:
    pack_groups    RLSR: one row per prompt, [prompt | completion 1 | ... | completion G]; completion i sees the
                   prompt and its own earlier tokens, positions continue from the prompt's. The prompt is run once
                   per group instead of G times, and no compute goes to padding after short completions.
    pack_prefixed  the same for any number of sequences per prefix, given as token lists (pack_groups builds on it;
                   rlsr/lm_score.py scores a context's answer choices this way)
    pack_examples  SFT: rows of whole examples (`first_fit_decreasing` chooses them), each example with positions
                   from 0 and attention within itself.
Each returns a `Packed` batch whose `logits_at` lists, in row-major order, the flat positions (row * L + column)
whose next token is a target, so the vocabulary projection runs only where a log-prob is needed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def left_pad(prompts: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> ids [P, Tp] and bool mask [P, Tp] (True = real token), padded on the left."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, T - len(p):] = True
    return ids.to(device), mask.to(device)


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """[B, T] real-token mask -> [B, T] positions counting real tokens only (pads get 0; their outputs are unused)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def padding_mask(mask: torch.Tensor, q_len: int | None = None, causal: bool = True) -> torch.Tensor:
    """Boolean SDPA mask [B, 1, q_len, T_k] from a [B, T_k] real-token mask whose last q_len columns are the queries.

    Query i (absolute column T_k - q_len + i) may see key j when j <= that column (any j if not causal) and key j
    is real. A pad query might see nothing (or, in a sliding window, no real key) and SDPA would return NaN, so
    every query also sees itself; pad outputs are never used.
    """
    B, Tk = mask.shape
    q_len = Tk if q_len is None else q_len
    q_abs = torch.arange(Tk - q_len, Tk, device=mask.device)                         # [Tq]
    k_abs = torch.arange(Tk, device=mask.device)                                     # [Tk]
    allowed = mask.bool()[:, None, :]                                                # [B, 1, Tk]
    if causal:
        allowed = allowed & (k_abs[None, :] <= q_abs[:, None])[None]                 # [B, Tq, Tk]
    allowed = allowed | (k_abs[None, None, :] == q_abs[None, :, None])               # [B, Tq, Tk]
    return allowed[:, None]                                                          # [B, 1, Tq, Tk]


def segment_mask(segments: torch.Tensor) -> torch.Tensor:
    """Boolean SDPA mask [B, 1, T, T] for rows that pack several sequences.

    segments [B, T]: -1 for padding, 0 for a prefix every later token may see (a shared prompt), s > 0 for the
    tokens of sequence s. Query q sees key k <= q when k is real and is in q's own sequence or in the prefix.
    Pads see only themselves (their outputs are unused; a row with no visible key would make SDPA return NaN).
    """
    T = segments.shape[1]
    idx = torch.arange(T, device=segments.device)
    seg_q, seg_k = segments[:, :, None], segments[:, None, :]                        # [B, T, 1], [B, 1, T]
    allowed = (idx[None, None, :] <= idx[None, :, None]) & (seg_k >= 0) & ((seg_k == seg_q) | (seg_k == 0))
    allowed |= torch.eye(T, dtype=torch.bool, device=segments.device)
    return allowed[:, None]                                                          # [B, 1, T, T]


@dataclass
class Packed:
    ids: torch.Tensor        # [R, L] token ids, 0 in padding
    positions: torch.Tensor  # [R, L]
    mask: torch.Tensor       # [R, 1, L, L] bool (segment_mask)
    logits_at: torch.Tensor  # [N] flat positions row * L + column whose next token is a target, row-major order
    targets: torch.Tensor    # [N] those next tokens

    def to(self, device) -> "Packed":
        return Packed(*(t.to(device) for t in (self.ids, self.positions, self.mask, self.logits_at, self.targets)))


def pack_groups(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                completion_mask: torch.Tensor, group_size: int) -> Packed:
    """Rows in groups of G sharing one prompt (rows g*G .. g*G+G-1, the sampler's layout) -> one packed row per group.

    prompt_ids/prompt_mask [B, Tp] left-padded, completion_ids/completion_mask [B, Tc] right-padded. The targets are
    every completion token, in row-major order of the [B, Tc] completion tensors (completion_ids[completion_mask]).
    """
    B, G = completion_ids.shape[0], group_size
    if B % G:
        raise ValueError(f"{B} rows are not whole groups of {G}")
    p_ids, p_mask, c_ids, c_len = (prompt_ids.cpu(), prompt_mask.cpu(), completion_ids.cpu(),
                                   completion_mask.sum(-1).tolist())
    groups = [(p_ids[p][p_mask[p]].tolist(), [c_ids[p + i, :c_len[p + i]].tolist() for i in range(G)])
              for p in range(0, B, G)]
    return pack_prefixed(groups).to(completion_ids.device)


def pack_prefixed(groups: list[tuple[list[int], list[list[int]]]]) -> Packed:
    """One row per group [prefix | sequence 1 | ... | sequence k] (k may differ between groups): sequence i sees the
    prefix and its own earlier tokens, its positions continue from the prefix's. The targets are every token of
    every sequence, in order; a sequence's first token is predicted by the prefix's last position (so prefixes are
    not empty)."""
    L = max(len(p) + sum(map(len, cs)) for p, cs in groups)
    ids = torch.zeros(len(groups), L, dtype=torch.long)
    positions = torch.zeros(len(groups), L, dtype=torch.long)
    segments = torch.full((len(groups), L), -1, dtype=torch.long)
    at, targets = [], []
    for r, (prefix, seqs) in enumerate(groups):
        n = len(prefix)
        ids[r, :n] = torch.tensor(prefix, dtype=torch.long)
        positions[r, :n] = torch.arange(n)
        segments[r, :n] = 0
        start = n
        for i, seq in enumerate(seqs):
            m = len(seq)
            if not m:
                continue
            ids[r, start:start + m] = torch.tensor(seq, dtype=torch.long)
            positions[r, start:start + m] = torch.arange(n, n + m)
            segments[r, start:start + m] = i + 1
            # token 0 is predicted by the prefix's last position, token j > 0 by the sequence's own token j - 1
            at += [r * L + n - 1] + [r * L + c for c in range(start, start + m - 1)]
            targets += seq
            start += m
    return Packed(ids, positions, segment_mask(segments), torch.tensor(at, dtype=torch.long),
                  torch.tensor(targets, dtype=torch.long))


def pack_examples(rows: list[list[tuple[list[int], list[bool]]]], pad_id: int = 0) -> Packed:
    """SFT rows, each a list of examples (ids, trained) where trained[t] marks ids[t] as a target -> a Packed batch.

    Every example gets positions from 0 and sees only itself; a target at t is predicted by position t - 1.
    """
    L = max(sum(len(ids) for ids, _ in row) for row in rows)
    R = len(rows)
    ids = torch.full((R, L), pad_id, dtype=torch.long)
    positions = torch.zeros(R, L, dtype=torch.long)
    segments = torch.full((R, L), -1, dtype=torch.long)
    at, targets = [], []
    for r, row in enumerate(rows):
        start = 0
        for s, (x, trained) in enumerate(row):
            n = len(x)
            ids[r, start:start + n] = torch.tensor(x)
            positions[r, start:start + n] = torch.arange(n)
            segments[r, start:start + n] = s + 1
            for t in range(1, n):
                if trained[t]:
                    at.append(r * L + start + t - 1)
                    targets.append(x[t])
            start += n
    return Packed(ids, positions, segment_mask(segments), torch.tensor(at, dtype=torch.long),
                  torch.tensor(targets, dtype=torch.long))


def first_fit_decreasing(lengths: list[int], max_len: int) -> list[list[int]]:
    """Bin packing of items (by length) into rows of at most max_len tokens: indices per row, longest rows first."""
    rows, room = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        j = next((j for j, free in enumerate(room) if free >= lengths[i]), None)
        if j is None:
            rows.append([i])
            room.append(max_len - lengths[i])
        else:
            rows[j].append(i)
            room[j] -= lengths[i]
    return rows


def group_batches(lengths: torch.Tensor, group_size: int, rows_per_batch: int) -> list[torch.Tensor]:
    """RLSR's micro-batches: row indices of whole groups (a prompt is run once per group, `pack_groups`), longest
    groups first, similar lengths together, at least one group per batch. lengths [N]: prompt + completion tokens
    of each row."""
    longest = lengths.view(-1, group_size).max(-1).values                        # [P]
    groups = torch.argsort(longest, descending=True).tolist()
    per_batch = max(1, rows_per_batch // group_size)
    return [torch.cat([torch.arange(g * group_size, (g + 1) * group_size) for g in groups[i:i + per_batch]])
            for i in range(0, len(groups), per_batch)]

"""A CPU speed path for decoding: few-row matrix products as one batched product over narrow blocks of W.

While decoding, each projection multiplies a handful of rows (one token per sequence) by a large weight matrix.
For that shape MKL's x @ W^T on the CPU runs far below what memory bandwidth allows: it is bound by its own
arithmetic, not by reading W. Viewing W [N, K] as N/32 blocks of 32 output rows (a view, no copy) and multiplying
x by every block in one bmm is faster. Each output is still one K-long dot product, so results equal F.linear up
to summation order (tested). The README's speed section gives the measured gain.

It is a switch, not part of the architecture: `few_row_matmul(model)` turns it on for the duration of a `with`
block (rlsr/sampling.py uses it around decoding) by giving the model's nn.Linear modules this forward; parameters,
state dicts and gradients are unchanged. On other devices, for more than 64 rows, or when N is not a multiple of
the block, the product is plain F.linear.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

BLOCK = 32       # output rows per block; 16 and 64 measured no better
MAX_ROWS = 64    # above this the plain product is at least as fast
enabled = True   # set False to decode with plain F.linear (e.g. to compare)


def few_row_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, weight, bias) computed block-wise when x has few rows on the CPU. x [..., K], weight [N, K]."""
    rows, (n, k) = x.numel() // x.shape[-1], weight.shape
    if x.device.type != "cpu" or rows > MAX_ROWS or n % BLOCK:
        return F.linear(x, weight, bias)
    w = weight.view(n // BLOCK, BLOCK, k).transpose(1, 2)                 # [N/32, K, 32], a view
    y = torch.matmul(x.reshape(rows, k), w)                               # [N/32, rows, 32]
    y = y.transpose(0, 1).reshape(*x.shape[:-1], n)                       # [..., N], contiguous
    return y if bias is None else y + bias


class FewRowLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return few_row_linear(x, self.weight, self.bias)


@contextmanager
def few_row_matmul(model: nn.Module):
    """Inside the block, every exact nn.Linear of `model` computes with `few_row_linear` (CPU only, if `enabled`), and
    so does every layer with a `few_rows` switch (rlsr/lora.py's base product)."""
    swapped, flagged = [], []
    if enabled and next(model.parameters()).device.type == "cpu":
        swapped = [m for m in model.modules() if type(m) is nn.Linear]
        flagged = [m for m in model.modules() if hasattr(m, "few_rows")]  # layers with their own forward (LoRA's)
        for m in swapped:
            m.__class__ = FewRowLinear
        for m in flagged:
            m.few_rows = True
    try:
        yield model
    finally:
        for m in swapped:
            m.__class__ = nn.Linear
        for m in flagged:
            m.few_rows = False

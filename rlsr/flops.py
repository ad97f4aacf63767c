"""Model FLOPs of every forward and backward pass of a training run, counted from the shapes of what ran.

Model FLOPs count the arithmetic the model needs, not what the hardware happened to do (the convention of model
FLOP utilisation, MFU): a multiply-add is 2 FLOPs; per token, the trunk's weight matrices cost 2 x their size,
attention 2 x 2 x heads x head_dim per key the token attends to (scores and the weighted sum of values), the vocabulary
projection 2 x hidden x vocabulary at each position whose logits are computed; the embedding lookup, norms,
activations and softmax are left out (small); sliding-window layers (Gemma 3) are counted as if they saw every
earlier key, which overcounts only sequences longer than the window (512 tokens for gemma-3-270m). A backward pass
costs 2x its forward: the gradients of the inputs and of the weights; with the weights frozen (LoRA, rlsr/lora.py)
the weight products cost 1x (no weight gradients) while attention still costs 2x, and the adapters' own products
(2 x rank x (in + out) per token and module) are left out. Not counted: recomputation under gradient checkpointing,
and the junk rows a batched decode computes for sequences that have already finished.

What each kind of pass attends to:
    a sequence of n tokens, causal                      n (n + 1) / 2 query-key pairs
    sampling: a prompt of p tokens prefilled once       p (p + 1) / 2 pairs, logits at 1 position
      per sample of c tokens, c - 1 decode steps        the j-th sees p + j keys; logits at each step
    a packed group [prompt p | completions c_1..c_G]    p (p + 1) / 2 + sum_i (c_i p + c_i (c_i + 1) / 2)
"""
from __future__ import annotations

from collections import defaultdict


def block_matmul_params(cfg) -> int:
    """Weights a token multiplies with in the transformer blocks (rlsr.model.ModelConfig)."""
    attn = cfg.hidden_size * cfg.head_dim * (2 * cfg.num_attention_heads + 2 * cfg.num_key_value_heads)
    mlp = 3 * cfg.hidden_size * cfg.intermediate_size
    return cfg.num_hidden_layers * (attn + mlp)


def forward_parts(cfg, tokens: int, pairs: int, logits: int, vocab: int | None = None) -> tuple[int, int]:
    """One forward pass over `tokens` tokens with `pairs` query-key pairs and logits at `logits` positions: the FLOPs
    of its products with weights, and those of attention."""
    vocab = cfg.vocab_size if vocab is None else vocab
    weights = 2 * block_matmul_params(cfg) * tokens + 2 * cfg.hidden_size * vocab * logits
    return weights, 4 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * pairs


def forward_flops(cfg, tokens: int, pairs: int, logits: int, vocab: int | None = None) -> int:
    return sum(forward_parts(cfg, tokens, pairs, logits, vocab))


def causal_pairs(n: int) -> int:
    return n * (n + 1) // 2


class Compute:
    """Running totals of model FLOPs and tokens by phase ("rollout", "policy", "kl_model", "sft", ...).

    `training_flops` sums every phase except the held-out evaluation ("eval"). `offset` carries the compute of the
    checkpoint the run started from (its compute.json), so SFT -> RLSR reports the compute of both stages.
    """

    def __init__(self, cfg, vocab: int | None = None, offset: float = 0.0, frozen_weights: bool = False):
        self.cfg, self.vocab, self.offset, self.frozen_weights = cfg, vocab, offset, frozen_weights
        self.flops: dict[str, float] = defaultdict(float)
        self.tokens: dict[str, int] = defaultdict(int)

    def add(self, phase: str, tokens: int, pairs: int, logits: int, with_backward: bool = False):
        weights, attention = forward_parts(self.cfg, tokens, pairs, logits, self.vocab)
        if with_backward:
            weights, attention = (2 if self.frozen_weights else 3) * weights, 3 * attention
        self.flops[phase] += weights + attention
        self.tokens[phase] += tokens

    def sampling(self, prompt_lengths: list[int], completion_lengths: list[list[int]], phase: str = "rollout"):
        """Prompts prefilled once each; completion_lengths[i] are prompt i's samples."""
        for p, cs in zip(prompt_lengths, completion_lengths):
            self.add(phase, p, causal_pairs(p), 1)
            for c in cs:
                steps = max(c - 1, 0)
                self.add(phase, steps, steps * p + causal_pairs(steps), steps)

    def packed_groups(self, prompt_lengths: list[int], completion_lengths: list[list[int]], phase: str,
                      with_backward: bool = False):
        """Teacher-forced passes over packed groups, logits at every completion token."""
        for p, cs in zip(prompt_lengths, completion_lengths):
            pairs = causal_pairs(p) + sum(c * p + causal_pairs(c) for c in cs)
            self.add(phase, p + sum(cs), pairs, sum(cs), with_backward)

    def sequences(self, lengths: list[int], logits: int, phase: str, with_backward: bool = False):
        """Independent causal sequences (SFT examples, packed or not), logits at `logits` positions in all."""
        self.add(phase, sum(lengths), sum(causal_pairs(n) for n in lengths), logits, with_backward)

    def rlsr_step(self, sampled: list[tuple[list[int], list[list[int]]]], trained: tuple[list[int], list[list[int]]],
                  kl_model: bool, old_logprobs: bool, iterations: int):
        """One RLSR step, counted once from what ran: the sampling of every draw (sampled: per draw, each group's
        prompt length and completion lengths), then on the trained groups the KL model's pass, the policy's own
        pass before the update when a rollout is reused, and `iterations` forward + backward passes."""
        for prompts, completions in sampled:
            self.sampling(prompts, completions)
        if kl_model:
            self.packed_groups(*trained, phase="kl_model")
        if old_logprobs:
            self.packed_groups(*trained, phase="old_logprobs")
        for _ in range(iterations):
            self.packed_groups(*trained, phase="policy", with_backward=True)

    def merge(self, other: dict):
        """Add another count's `state_dict()` (e.g. other ranks' share of a step)."""
        for k, v in other["flops"].items():
            self.flops[k] += v
        for k, v in other["tokens"].items():
            self.tokens[k] += int(v)

    @property
    def training_flops(self) -> float:
        return self.offset + sum(v for k, v in self.flops.items() if k != "eval")

    def state_dict(self) -> dict:
        return {"flops": dict(self.flops), "tokens": dict(self.tokens), "offset": self.offset}

    def load_state_dict(self, state: dict):
        self.flops, self.tokens = defaultdict(float, state["flops"]), defaultdict(int, state["tokens"])
        self.offset = state["offset"]

    def summary(self) -> dict:
        """compute.json: cumulative training FLOPs (the starting checkpoint's included), and this run's by phase."""
        return {"flops": self.training_flops, "flops_this_run": self.training_flops - self.offset,
                "flops_init": self.offset, "tokens": sum(v for k, v in self.tokens.items() if k != "eval"),
                "by_phase": {k: {"flops": self.flops[k], "tokens": self.tokens[k]} for k in sorted(self.flops)}}

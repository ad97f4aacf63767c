"""The RLSR reward: cosine similarity between sentence embeddings of a response and of its reference answer.

    r(y, y*) = cos(E(y), E(y*))  in [-1, 1]

E embeds the decoded response text only: no prompt, no chat markup, no special tokens (the stop token is decoded
away). Reference embeddings are computed once per reference text and kept for the run, each on its own (batch of
one): an embedding then never depends on which other texts happened to share its batch (padding changes the fp32
rounding), so a resumed run computes exactly the rewards of an uninterrupted one. The encoder truncates long
inputs (all-MiniLM-L6-v2: 256 word pieces), so only the head of a long answer is scored; how often that happens is
reported (`reward/truncated_responses`, `reward/truncated_references`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class SimilarityReward:
    def __init__(self, encoder, batch_size: int = 16):  # 16: the fastest encoder batch on a 2-core CPU
        self.encoder = encoder
        self.batch_size = batch_size
        self._refs: dict[str, torch.Tensor] = {}       # reference text -> unit embedding [D]
        self._ref_truncated: dict[str, bool] = {}

    def add_references(self, references: list[str]):
        """Embed (once) every reference not seen yet."""
        new = list(dict.fromkeys(r for r in references if r not in self._refs))
        if not new:
            return
        emb, truncated = self.encoder.encode(new, batch_size=1, return_truncated=True)
        emb = F.normalize(emb.float(), dim=-1)
        for text, e, t in zip(new, emb, truncated.tolist()):
            self._refs[text], self._ref_truncated[text] = e, t

    def __call__(self, responses: list[str], references: list[str]) -> tuple[torch.Tensor, dict]:
        """responses[i] is scored against references[i] -> rewards [N] (fp32, CPU) and truncation stats."""
        if len(responses) != len(references):
            raise ValueError(f"{len(responses)} responses but {len(references)} references")
        self.add_references(references)
        emb, truncated = self.encoder.encode(responses, batch_size=self.batch_size, return_truncated=True)
        emb = F.normalize(emb.float(), dim=-1)                                       # [N, D]
        ref = torch.stack([self._refs[r] for r in references])                       # [N, D]
        rewards = (emb * ref).sum(-1)                                                # [N] cosine
        stats = {"reward/truncated_responses": truncated.float().mean().item(),
                 "reward/truncated_references": sum(self._ref_truncated[r] for r in references) / len(references)}
        return rewards, stats

"""A step's rows on this rank: what was sampled, for which example, and how it scored, kept together; and DAPO's
dynamic sampling, which picks the groups a step trains on from several draws.

Rows are laid out prompt-major, G per prompt (rlsr/sampling.py): rows g*G .. g*G+G-1 answer the same example and
form group g. `Rows.select` and `Rows.cat` keep the three parts aligned; nothing else indexes them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rlsr.grpo import near_ties
from rlsr.metrics import StepSamples
from rlsr.sampling import Rollout


@dataclass
class Rows:
    rollout: Rollout          # the sampler's output: token ids, masks, log-probs [n, T], prompts [n, Tp]
    examples: list            # [n] the example each row answers
    samples: StepSamples      # [n] rewards, lengths, texts; this rank's reward statistics

    def select(self, rows: list[int]) -> "Rows":
        return Rows(self.rollout.select(torch.tensor(rows)), [self.examples[i] for i in rows],
                    self.samples.select(rows))

    @staticmethod
    def cat(parts: list["Rows"], pad_id: int) -> "Rows":
        return Rows(Rollout.cat([x.rollout for x in parts], pad_id), [e for x in parts for e in x.examples],
                    StepSamples.concat([x.samples for x in parts]))

    def informative(self, group_size: int, tolerance: float) -> list[int]:
        """Groups whose rewards are not near-ties (they carry a learning signal)."""
        ties = near_ties(torch.tensor(self.samples.rewards), group_size, tolerance)[::group_size]
        return [g for g, tie in enumerate(ties.tolist()) if not tie]

    def group_lengths(self, group_size: int) -> tuple[list[int], list[list[int]]]:
        """Prompt length of each group and the completion lengths of its G rows (what the FLOPs count needs)."""
        prompts = self.rollout.prompt_mask[::group_size].sum(-1).tolist()
        return prompts, self.rollout.lengths.view(-1, group_size).tolist()


def score(rollout: Rollout, examples: list, tok, reward) -> Rows:
    """The sampled rows decoded and scored against their examples' references (rlsr/reward.py), each answer with
    the prompt it answers."""
    texts = tok.batch_decode(rollout.completions())
    lengths = rollout.lengths.tolist()
    refs = [ex.reference for ex in examples]
    scored = reward([ex.prompt_messages() for ex in examples], texts, refs, lengths=lengths)
    stopped = [f == "stop" for f in rollout.finish_reason]
    return Rows(rollout, examples, StepSamples(scored.rewards.tolist(), lengths, stopped, texts, refs,
                                               {k: v.tolist() for k, v in scored.components.items()}, [scored.stats]))


def keep_groups(draws: list[Rows], need: int, group_size: int, tolerance: float, pad_id: int) -> Rows:
    """DAPO's dynamic sampling on this rank: the first `need` informative groups over the draws, in draw order,
    topped up with near-tie groups if the draws ran out (the step then trains on fewer informative groups)."""
    informative = [set(x.informative(group_size, tolerance)) for x in draws]
    picked = [(k, g) for k in range(len(draws)) for g in sorted(informative[k])]
    ties = [(k, g) for k, x in enumerate(draws) for g in range(len(x.examples) // group_size) if g not in informative[k]]
    chosen = sorted((picked + ties)[:need])
    parts = []
    for k, x in enumerate(draws):
        rows = [g * group_size + j for kk, g in chosen if kk == k for j in range(group_size)]
        if rows:
            parts.append(x.select(rows))
    return Rows.cat(parts, pad_id)

"""Reference-based rewards: each response is scored against the reference answer of its prompt.

A reward component is a callable `component(prompts, responses, references) -> (values [N], stats)`: prompts[i] is
the chat conversation before response i (a list of {"role", "content"} messages, as the policy saw it),
references[i] the reference answer it is compared with; values [N] is one number per response, stats per-call means
to log. A component may read the prompt (a judge, a reward for answering the question asked) or not (every one
below). `REWARDS` names each kind and how it is built; `build_reward` makes the training reward from `RewardConfig`
(the `--reward` flags, `add_reward_args`), and eval.py computes every kind as a column (rlsr/benchmarks.py), so a
reward added to REWARDS is both a `--reward` option and an eval metric. The menu:

    cosine      RLSR's reward: cos(E(y), E(y*)) of sentence embeddings (rlsr/encoder.py; MiniLM by default, any
                encoder: MPNet, last-token pooling over a decoder). In [-1, 1].
    bertscore   BERTScore F1 as bert-score computes it (rlsr/text_metrics.py). In [-1, 1].
    rouge_l     ROUGE-L F1 as rouge-score computes it, no stemmer (rlsr/text_metrics.py). In [0, 1].
    bleu        sentence BLEU / 100 as sacrebleu.sentence_bleu computes it (rlsr/text_metrics.py). In [0, 1].
    judge       an LLM judge's 1-10 grade of the answer given the question and the reference, reference-guided as
                MT-Bench grades, mapped to [0, 1] (rlsr/judge_reward.py; an eval.py column with --judge-reward).
    weighted sums, `--reward cosine=0.7,rouge_l=0.3`: total = sum of weight x component; every component is
                logged on its own (`reward/cosine`, `reward/rouge_l`), a weight of 0 logs a component without
                rewarding it.
    length terms, both off by default, added to the total: DAPO's soft overlong punishment (`--overlong-cache`)
                and a penalty on the length ratio to the reference (`--length-ratio-coef`); see LengthTerm.

Conventions shared by every component
- Responses are the decoded completion texts (no chat markup).
- The training reward is fp32: each component's values are rounded to fp32 before they are summed; eval.py's
  columns keep the values as the component computes them (BLEU and ROUGE-L in float64).
- Whatever a component computes for a reference is computed for that reference alone, never batched with other
  texts: padding changes fp32 rounding, and a resumed run must compute exactly the rewards of an uninterrupted one.
  Cosine keeps each reference embedding for the run (one vector per reference); BERTScore recomputes the token
  states of a step's distinct references each step (keeping [T, d] states of every reference of a long run would
  not fit in memory).
- Stats are means over the call's items (data-parallel ranks weight them by their item counts).
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, fields
from typing import Callable, Protocol

import torch
import torch.nn.functional as F

from rlsr import judge_reward
from rlsr.judge import JudgeFn
from rlsr.judge_reward import JudgeRewardConfig, add_judge_reward_args
from rlsr.text_metrics import BERTScore, PairMetric, check_pairs, idf_weights, read_baseline, rouge_l, sentence_bleu

Prompt = list  # a chat conversation before the answer: [{"role": ..., "content": ...}, ...]


class Component(Protocol):
    def __call__(self, prompts: list[Prompt], responses: list[str], references: list[str]
                 ) -> tuple[torch.Tensor, dict]: ...


# ---------------------------------------------------------------- cosine: RLSR's sentence-embedding reward


class SimilarityReward:
    """r(y, y*) = cos(E(y), E(y*)): `SimilarityReward(encoder)(prompts, responses, refs) -> (rewards [N], stats)`.

    E embeds the decoded response text only. Reference embeddings are computed once per reference text, each on its
    own (batch of one), and kept for the run. The encoder truncates long inputs (all-MiniLM-L6-v2: 256 word pieces),
    so only the head of a long answer is scored; how often is logged (`reward/truncated_responses`,
    `reward/truncated_references`).
    """

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

    def __call__(self, prompts: list[list[dict]], responses: list[str], references: list[str]
                 ) -> tuple[torch.Tensor, dict]:
        """responses[i] is scored against references[i] (the prompt is not read) -> rewards [N] (fp32, CPU) and
        truncation stats."""
        check_pairs(responses, references)
        self.add_references(references)
        emb, truncated = self.encoder.encode(responses, batch_size=self.batch_size, return_truncated=True)
        emb = F.normalize(emb.float(), dim=-1)                                       # [N, D]
        ref = torch.stack([self._refs[r] for r in references])                       # [N, D]
        rewards = (emb * ref).sum(-1)                                                # [N] cosine
        stats = {"reward/truncated_responses": truncated.float().mean().item(),
                 "reward/truncated_references": sum(self._ref_truncated[r] for r in references) / len(references)}
        return rewards, stats


# ---------------------------------------------------------------- metrics that read no prompt


class ReferenceOnly:
    """A text metric `metric(responses, references) -> (values [N], stats)` (rlsr/text_metrics.py) as a component."""

    def __init__(self, metric: Callable[[list[str], list[str]], tuple[torch.Tensor, dict]]):
        self.metric = metric

    def __call__(self, prompts: list[Prompt], responses: list[str], references: list[str]) -> tuple[torch.Tensor, dict]:
        return self.metric(responses, references)


# ---------------------------------------------------------------- length terms


def overlong_penalty(length: int, max_length: int, cache: int) -> float:
    """DAPO's soft overlong punishment (Yu et al. 2025, arXiv 2503.14476), lengths in policy tokens:
    0 up to max_length - cache, then falling linearly to -1 at max_length, -1 beyond."""
    if length <= max_length - cache:
        return 0.0
    if length <= max_length:
        return ((max_length - cache) - length) / cache
    return -1.0


def length_ratio_penalty(response: str, reference: str) -> float:
    """-max(0, |y| / |y*| - 1), lengths in whitespace-separated words (|y*| at least 1): 0 while the response is no
    longer than its reference, -1 at twice its length. Words, because the reference has no policy tokens and the
    same unit must measure both sides; one-sided, because the failure mode of similarity rewards is growth (a longer
    answer covers more of the reference), while a short answer already loses recall-type reward."""
    return -max(0.0, len(response.split()) / max(len(reference.split()), 1) - 1.0)


@dataclass
class LengthTerm:
    """Added to the reward: overlong_coef * overlong_penalty + ratio_coef * length_ratio_penalty (each on if > 0)."""
    max_new_tokens: int | None = None   # DAPO's L_max: the sampler's cap, so completions never pass it
    overlong_cache: int = 0             # DAPO's L_cache in policy tokens; 0 = off
    overlong_coef: float = 1.0          # DAPO adds the punishment unscaled
    ratio_coef: float = 0.0             # 0 = off

    def __call__(self, responses: list[str], references: list[str], lengths: list[int] | None):
        """-> {component name: unweighted values [N]}, total added to the reward [N] (float64)."""
        parts, total = {}, torch.zeros(len(responses), dtype=torch.float64)
        if self.overlong_cache > 0:
            if lengths is None or len(lengths) != len(responses):
                raise ValueError("the overlong term (--overlong-cache) needs each completion's length in policy "
                                 f"tokens: got {None if lengths is None else len(lengths)} for {len(responses)}")
            v = torch.tensor([overlong_penalty(n, self.max_new_tokens, self.overlong_cache) for n in lengths],
                             dtype=torch.float64)
            parts["overlong"], total = v, total + self.overlong_coef * v
        if self.ratio_coef > 0:
            v = torch.tensor([length_ratio_penalty(y, r) for y, r in zip(responses, references)], dtype=torch.float64)
            parts["length_ratio"], total = v, total + self.ratio_coef * v
        return parts, total


# ---------------------------------------------------------------- the reward: weighted components + length term


@dataclass
class Scored:
    rewards: torch.Tensor                 # [N] fp32 CPU: the training reward (weighted components + length term)
    components: dict[str, torch.Tensor]   # each component's unweighted per-item values [N] fp32
    stats: dict[str, float]               # per-step means: reward/<component>, truncation fractions, length term


class Reward:
    """sum_k weight_k * component_k(x, y, y*) [+ length term]. A single reward is a sum of one term of weight 1
    (then the total equals the component, rounded to fp32, bit for bit)."""

    def __init__(self, terms: list[tuple[str, float, Component]], length: LengthTerm | None = None):
        self.terms = terms
        self.length = length

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.terms]

    def __call__(self, prompts: list[Prompt], responses: list[str], references: list[str],
                 lengths: list[int] | None = None) -> Scored:
        """responses[i] answers prompts[i] and is scored against references[i]; lengths[i]: its length in policy
        tokens (length term)."""
        check_pairs(responses, references)
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        n = len(responses)
        if n == 0:
            return Scored(torch.zeros(0), {name: torch.zeros(0) for name in self.names}, {})
        total = torch.zeros(n, dtype=torch.float64)                                      # [N]
        components, stats = {}, {}
        for name, weight, component in self.terms:
            values, st = component(prompts, responses, references)
            values = values.float()                                                      # [N] the fp32 reward
            components[name] = values
            stats.update(st)
            stats[f"reward/{name}"] = values.double().mean().item()
            total += weight * values.double()
        if self.length is not None:
            parts, term = self.length(responses, references, lengths)
            for name, v in parts.items():
                components[name] = v.float()
                stats[f"reward/{name}"] = v.mean().item()
            stats["reward/length_term"] = term.mean().item()
            total += term
        return Scored(total.float(), components, stats)


# ---------------------------------------------------------------- the kinds of reward, flags and construction


@dataclass
class Build:
    """What a component's constructor may use."""
    cfg: RewardConfig
    encoder: Callable[[str | None], object]   # an Encoder by name or path (None: the packaged MiniLM), loaded once
    idf_corpus: list[str] | None = None       # the training references (BERTScore's idf)
    judge: JudgeFn | None = None              # a judge backend to grade with (eval.py's); None: --reward-judge-*'s
    device: object = None                     # where a local judge runs


@dataclass(frozen=True)
class RewardKind:
    build: Callable[[Build], Component]
    encoder: bool = False      # compares through the --encoder: eval.py makes a column per --encoders entry
    in_eval: bool = True       # an eval.py column by default (False: only when asked, e.g. --bertscore)


def _bertscore(b: Build) -> Component:
    cfg = b.cfg
    enc = b.encoder(cfg.bertscore_encoder or cfg.encoder)
    n_layers = enc.model.config.num_hidden_layers
    layer = n_layers if cfg.bertscore_layer is None else cfg.bertscore_layer
    if not 0 <= layer <= n_layers:
        raise ValueError(f"--bertscore-layer {layer}: this encoder has hidden states 0 (embeddings) to {n_layers}")
    score = BERTScore(enc, layer)
    if cfg.bertscore_idf:
        if not b.idf_corpus:
            raise ValueError("--bertscore-idf needs a reference corpus to count document frequencies over")
        score.idf = idf_weights(b.idf_corpus, lambda texts: score.token_ids(texts)[0])
    if cfg.bertscore_baseline is not None:
        score.baseline = read_baseline(cfg.bertscore_baseline, layer)
    return ReferenceOnly(score)


# A new reward: a component above (or anywhere), and its entry here. Its name is a --reward option and an eval.py
# column (one per --encoders entry when it compares through an encoder).
REWARDS: dict[str, RewardKind] = {
    "cosine": RewardKind(lambda b: SimilarityReward(b.encoder(b.cfg.encoder)), encoder=True),
    "bertscore": RewardKind(_bertscore, encoder=True, in_eval=False),
    "rouge_l": RewardKind(lambda b: ReferenceOnly(PairMetric(rouge_l))),
    "bleu": RewardKind(lambda b: ReferenceOnly(PairMetric(sentence_bleu))),
    "judge": RewardKind(lambda b: judge_reward.build(b.cfg.judge_reward, b.judge, b.device), in_eval=False),
}


def parse_spec(spec: str) -> list[tuple[str, float]]:
    """"cosine" | "cosine=0.7,rouge_l=0.3" -> [(name, weight)]; a bare name has weight 1."""
    terms: list[tuple[str, float]] = []
    for part in spec.split(","):
        name, eq, weight = (s.strip() for s in part.partition("="))
        if name not in REWARDS:
            raise ValueError(f"--reward {spec!r}: {part.strip()!r} names no reward; choose from {', '.join(REWARDS)}, "
                             "or a weighted sum such as cosine=0.7,rouge_l=0.3")
        try:
            w = float(weight) if eq else 1.0
        except ValueError:
            w = math.nan
        if not math.isfinite(w):
            raise ValueError(f"--reward {spec!r}: the weight in {part.strip()!r} is not a finite number")
        if name in (t[0] for t in terms):
            raise ValueError(f"--reward {spec!r}: {name} appears twice")
        terms.append((name, w))
    return terms


@dataclass
class RewardConfig:
    """The reward flags (`add_reward_args`); the docstring of this module defines each reward."""
    spec: str = "cosine"                        # --reward
    encoder: str | None = None                  # --encoder: cosine's encoder (None = packaged all-MiniLM-L6-v2)
    bertscore_encoder: str | None = None        # --bertscore-encoder (None = the --encoder)
    bertscore_layer: int | None = None          # --bertscore-layer: HF hidden_states index, None = last
    bertscore_idf: bool = False                 # --bertscore-idf
    bertscore_baseline: str | None = None       # --bertscore-baseline: a number or a bert-score baseline file
    judge_reward: JudgeRewardConfig = field(default_factory=JudgeRewardConfig)  # --reward-judge-* flags
    overlong_cache: int = 0                     # --overlong-cache (policy tokens; 0 = off)
    overlong_coef: float = 1.0                  # --overlong-coef
    length_ratio_coef: float = 0.0              # --length-ratio-coef (0 = off)

    FLAGS = {"spec": "reward"}  # field -> argparse dest where they differ

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RewardConfig":
        default = cls()
        return cls(**{f.name: getattr(args, cls.FLAGS.get(f.name, f.name), getattr(default, f.name))
                      for f in fields(cls) if f.name != "judge_reward"}, judge_reward=JudgeRewardConfig.from_args(args))


def add_reward_args(parser: argparse.ArgumentParser):
    g = parser.add_argument_group("reward", "reference-based rewards (rlsr/reward.py)")
    g.add_argument("--reward", default="cosine", metavar="SPEC", help=f"{' | '.join(REWARDS)}, or a weighted sum such as "
                   "cosine=0.7,rouge_l=0.3 (each component logged as reward/<name>; weight 0 = logged only)")
    g.add_argument("--encoder", metavar="NAME", help="sentence encoder of the cosine reward: minilm (default, packaged "
                   "all-MiniLM-L6-v2), mpnet, embeddinggemma, or a sentence-transformers directory")
    g.add_argument("--bertscore-encoder", metavar="NAME", help="encoder whose token states BERTScore matches (default: --encoder; "
                   "BERT or MPNet)")
    g.add_argument("--bertscore-layer", type=int, metavar="K", help="BERTScore's layer as an HF hidden_states index (0 = "
                   "embeddings, k = after block k; default: the last, 6 for MiniLM, 12 for MPNet)")
    g.add_argument("--bertscore-idf", action="store_true", help="weight BERTScore's tokens by idf over the training "
                   "references (bert-score's get_idf_dict); default: weight 1")
    g.add_argument("--bertscore-baseline", metavar="B", help="rescale BERTScore F1 as (F - b) / (1 - b): b as a number, or a "
                   "bert-score baseline file (LAYER,P,R,F; the --bertscore-layer row's F); default: no rescaling")
    g.add_argument("--overlong-cache", type=int, default=0, metavar="N", help="DAPO's soft overlong punishment: 0 up to "
                   "max_new_tokens - N completion tokens, then down to -1 at max_new_tokens (default 0 = off)")
    g.add_argument("--overlong-coef", type=float, default=1.0, metavar="C", help="weight of the overlong punishment (default 1, "
                   "as DAPO adds it)")
    g.add_argument("--length-ratio-coef", type=float, default=0.0, metavar="C", help="add -C * max(0, words(response) / "
                   "words(reference) - 1) (default 0 = off)")
    add_judge_reward_args(g)
    return g


def build_reward(cfg: RewardConfig, encoder_loader: Callable[[str | None], object], max_new_tokens: int | None = None,
                 idf_corpus: list[str] | None = None, device=None) -> Reward:
    """The Reward `cfg` describes. encoder_loader(name or path) -> Encoder, called once per distinct encoder;
    max_new_tokens: the sampler's cap (the overlong term's L_max); idf_corpus: the references idf counts over;
    device: where a local judge runs."""
    terms = parse_spec(cfg.spec)
    names = [name for name, _ in terms]
    if "bertscore" not in names:
        unused = [flag for flag, value, default in (
            ("--bertscore-encoder", cfg.bertscore_encoder, None), ("--bertscore-layer", cfg.bertscore_layer, None),
            ("--bertscore-idf", cfg.bertscore_idf, False), ("--bertscore-baseline", cfg.bertscore_baseline, None))
            if value != default]
        if unused:
            raise ValueError(f"{', '.join(unused)} given, but --reward {cfg.spec!r} has no bertscore")
    if "judge" not in names and cfg.judge_reward.given:
        raise ValueError(f"--reward-judge* / --judge-reward-prompt given, but --reward {cfg.spec!r} has no judge")
    uses_encoder = any(REWARDS[n].encoder and not (n == "bertscore" and cfg.bertscore_encoder) for n in names)
    if cfg.encoder is not None and not uses_encoder:
        raise ValueError(f"--encoder {cfg.encoder} given, but --reward {cfg.spec!r} uses no sentence encoder")
    for flag, value in (("--overlong-cache", cfg.overlong_cache), ("--overlong-coef", cfg.overlong_coef),
                        ("--length-ratio-coef", cfg.length_ratio_coef)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{flag} {value}: must be a finite number >= 0")
    if cfg.overlong_cache > 0 and (max_new_tokens is None or cfg.overlong_cache > max_new_tokens):
        raise ValueError(f"--overlong-cache {cfg.overlong_cache} must be at most --max-new-tokens ({max_new_tokens})")
    if all(w == 0 for _, w in terms) and not ((cfg.overlong_cache > 0 and cfg.overlong_coef > 0)
                                              or cfg.length_ratio_coef > 0):
        raise ValueError(f"--reward {cfg.spec!r}: every weight is 0, so every sample's reward is 0 and there is "
                         "nothing to learn from")

    encoders: dict[str | None, object] = {}

    def encoder(name):
        if name not in encoders:
            encoders[name] = encoder_loader(name)
        return encoders[name]

    build = Build(cfg, encoder, idf_corpus, device=device)
    length = None
    if cfg.overlong_cache > 0 or cfg.length_ratio_coef > 0:
        length = LengthTerm(max_new_tokens, cfg.overlong_cache, cfg.overlong_coef, cfg.length_ratio_coef)
    return Reward([(name, weight, REWARDS[name].build(build)) for name, weight in terms], length)

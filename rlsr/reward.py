"""Reference-based rewards: each response is scored against the reference answer of its prompt.

One interface for all of them: `reward(responses, references, prompts=None, lengths=None) -> Scored`, where
Scored.rewards [N] is the training reward, Scored.components holds each component's own per-item values and
Scored.stats the per-step means that are logged. `build_reward` makes one from `RewardConfig` (the `--reward`
flags, `add_reward_args`). The menu:

    cosine      RLSR's reward: cos(E(y), E(y*)) of sentence embeddings (rlsr/encoder.py; MiniLM by default, any
                encoder: MPNet, last-token pooling over a decoder). In [-1, 1].
    bertscore   BERTScore F1 (Zhang et al., ICLR 2020) as the bert-score package (0.3.13) computes it: contextual
                token vectors of an encoder layer, L2-normalised; each response token is matched to its most similar
                reference token (precision) and each reference token to its most similar response token (recall),
                both averaged with token weights; F1 = 2PR / (P + R). In [-1, 1].
    bleu        sentence BLEU / 100 as sacrebleu.sentence_bleu(y, [y*]) computes it with its defaults (sacrebleu
                2.6.0: 13a tokenisation, case-sensitive, 'exp' smoothing, effective order). In [0, 1].
    rouge_l     ROUGE-L F1 as Google's rouge-score computes it, RougeScorer(["rougeL"], use_stemmer=False). In [0, 1].
    weighted sums, `--reward cosine=0.7,rouge_l=0.3`: total = sum of weight x component; every component is
                logged on its own (`reward/cosine`, `reward/rouge_l`), a weight of 0 logs a component without
                rewarding it.
    length terms, both off by default, added to the total: DAPO's soft overlong punishment (`--overlong-cache`)
                and a penalty on the length ratio to the reference (`--length-ratio-coef`); see LengthTerm.

Conventions shared by every component
- Only the decoded response text is scored (no prompt, no chat markup); `prompts` is accepted for rewards that
  need it and unused by these.
- Whatever a component computes for a reference is computed for that reference alone, never batched with other
  texts: padding changes fp32 rounding, and a resumed run must compute exactly the rewards of an uninterrupted one.
  Cosine keeps each reference embedding for the run (one vector per reference); BERTScore recomputes the token
  states of a step's distinct references each step (keeping [T, d] states of every reference of a long run would
  not fit in memory).
- Stats are means over the call's items (data-parallel ranks weight them by their item counts).

BERTScore details (each as bert-score does): texts are stripped of surrounding whitespace and truncated at 512
tokens counting the special tokens (bert-score's tokenizer.model_max_length for MiniLM and MPNet; sentence-
transformers' own limit of 256 / 384 does not apply here); a blank text is the special tokens alone. Token weights
are 1, or with `--bertscore-idf` the idf of bert-score's get_idf_dict over a reference corpus (the training
references): idf(w) = log((M + 1) / (df(w) + 1)) over M documents (duplicates counted), log(M + 1) for a word
piece never seen. The special tokens ([CLS]/[SEP], <s>/</s>) weigh 0, which drops them from the averages: with
idf off bert-score sets their weight to 0, with idf on they occur in every document, so their idf is log(1) = 0.
They still take part as match targets, as in bert-score. A response or reference with no weighted token (blank)
scores F1 = 0 (bert-score's NaN -> 0). Baseline rescaling (off by default) is bert-score's (F - b) / (1 - b), b from
`--bertscore-baseline`: a number, or a baseline file in bert-score's format (CSV header LAYER,P,R,F, one row per
layer, the row at the layer's position, column F). The greedy matching is computed pair by pair; bert-score's
batched call pads a batch's shorter rows of the similarity matrix with zeros, which changes its max only for a
token whose cosines to every real token are negative.
Default encoder: the `--encoder` (all-MiniLM-L6-v2), at its last layer. bert-score's layer table (model2layers)
has no entry for sentence-transformers/all-MiniLM-L6-v2 or all-mpnet-base-v2 (it lists microsoft/mpnet-base,
layer 8 of 12, the masked-LM checkpoint all-mpnet-base-v2 was fine-tuned from). Its layers were tuned on WMT16
correlation with human judgements, mostly for pretrained masked-LM checkpoints; these two models were fine-tuned
for sentence similarity on the mean of their last layer, the layer their training shaped to compare meaning.
`--bertscore-layer` picks another, e.g. 5 of MiniLM's 6 (the table's layer for the 6-layer
google/bert_uncased_L-6_H-* and distilbert-base-uncased).

Why reimplemented rather than imported: bert-score needs transformers, which rlsr does not run on. sacrebleu
would bring portalocker, regex, tabulate, colorama and lxml, and rouge-score brings absl-py, nltk and six, for
what is ~20 lines each here (the 13a regexes and BLEU's statistics; a regex and an LCS). Each function equals its
package on the committed fixtures of tests/make_reward_fixtures.py (bleu and rouge_l bit for bit, BERTScore to
~2e-7). rouge_l uses
rouge-score's default tokenizer without its Porter stemmer (use_stemmer=False, RougeScorer's default; the stemmer
is nltk's): lower-case, every run of characters outside [a-z0-9] is a separator, so non-ASCII letters split or
drop words ("café" -> "caf"; "你好" -> nothing).
"""
from __future__ import annotations

import argparse
import csv
import math
import re
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------- cosine: RLSR's sentence-embedding reward


class SimilarityReward:
    """r(y, y*) = cos(E(y), E(y*)): `SimilarityReward(encoder)(responses, refs) -> (rewards [N], stats)`.

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

    def __call__(self, responses: list[str], references: list[str]) -> tuple[torch.Tensor, dict]:
        """responses[i] is scored against references[i] -> rewards [N] (fp32, CPU) and truncation stats."""
        _check_pairs(responses, references)
        self.add_references(references)
        emb, truncated = self.encoder.encode(responses, batch_size=self.batch_size, return_truncated=True)
        emb = F.normalize(emb.float(), dim=-1)                                       # [N, D]
        ref = torch.stack([self._refs[r] for r in references])                       # [N, D]
        rewards = (emb * ref).sum(-1)                                                # [N] cosine
        stats = {"reward/truncated_responses": truncated.float().mean().item(),
                 "reward/truncated_references": sum(self._ref_truncated[r] for r in references) / len(references)}
        return rewards, stats


# ---------------------------------------------------------------- bleu: sacrebleu.sentence_bleu, defaults

# mteval-v13a's tokenisation as sacrebleu's TokenizerRegexp applies it, in this order
_13A_RULES = [
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),   # ASCII punctuation and symbols stand alone
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),                # a period or comma after a non-digit splits off,
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),                # ... and before one: kept only in 3.14, 1,000
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),                     # dash after a digit
]
BLEU_ORDER = 4


def tokenize_13a(line: str) -> list[str]:
    """sacrebleu's '13a' tokens of one segment (its `_preprocess_segment`: rstrip first, case kept)."""
    line = line.rstrip().replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} "
    for rule, repl in _13A_RULES:
        line = rule.sub(repl, line)
    return line.split()


def _ngram_counts(tokens: list[str]) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for n in range(1, BLEU_ORDER + 1) for i in range(len(tokens) - n + 1))


def sentence_bleu(hypothesis: str, reference: str) -> float:
    """sacrebleu.sentence_bleu(hypothesis, [reference]).score / 100, in [0, 1], with sacrebleu's defaults.

    Clipped n-gram precisions p_n (n = 1..4, in percent), brevity penalty BP = exp(1 - |ref| / |hyp|) when the
    hypothesis is shorter, score = BP * exp(mean log p_n) over the orders the hypothesis has n-grams of (effective
    order); an order with no match counts as 100 / (2^k * total_n) for its k-th such order ('exp' smoothing, the
    NIST method); no match at any order scores 0.
    """
    hyp, ref = tokenize_13a(hypothesis), tokenize_13a(reference)
    hyp_counts, ref_counts = _ngram_counts(hyp), _ngram_counts(ref)
    correct, total = [0] * BLEU_ORDER, [0] * BLEU_ORDER
    for gram, count in hyp_counts.items():
        total[len(gram) - 1] += count
        correct[len(gram) - 1] += min(count, ref_counts.get(gram, 0))
    if not any(correct):
        return 0.0
    bp = 1.0 if len(hyp) >= len(ref) else math.exp(1 - len(ref) / len(hyp))
    logs, smooth = [], 1.0
    for n in range(BLEU_ORDER):
        if total[n] == 0:
            break
        if correct[n] == 0:
            smooth *= 2
            logs.append(math.log(100.0 / (smooth * total[n])))
        else:
            logs.append(math.log(100.0 * correct[n] / total[n]))
    return bp * math.exp(sum(logs) / len(logs)) / 100


# ---------------------------------------------------------------- rouge_l: rouge-score's rougeL, no stemmer

_ROUGE_TOKEN = re.compile(r"[a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """rouge-score's default tokens (no stemmer): lower-case, then the runs of [a-z0-9]. Equal to its
    lower -> replace [^a-z0-9]+ by a space -> split on whitespace -> drop empty tokens."""
    return _ROUGE_TOKEN.findall(text.lower())


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence, by the bit-vector recurrence of Crochemore et al. (2001): bit j of
    v is 0 where b[j] ends a match of the LCS so far; len(a) big-int steps instead of a len(a) x len(b) table."""
    if not a or not b:
        return 0
    match: dict[str, int] = {}
    for j, y in enumerate(b):
        match[y] = match.get(y, 0) | (1 << j)
    full = (1 << len(b)) - 1
    v = full
    for x in a:
        u = v & match.get(x, 0)
        v = ((v + u) | (v - u)) & full
    return len(b) - v.bit_count()


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F1 as rouge_scorer.RougeScorer(["rougeL"]).score(reference, hypothesis)["rougeL"].fmeasure:
    LCS of the two token sequences (`rouge_tokens`), P = LCS / |hyp|, R = LCS / |ref|, F1 = 2PR / (P + R); 0 when
    either side has no token. A second, encoder-free similarity: a gain that only fools the reward encoder does not
    show here."""
    h, r = rouge_tokens(hypothesis), rouge_tokens(reference)
    lcs = lcs_length(h, r)
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(h), lcs / len(r)
    return 2 * p * rec / (p + rec)


class TextMetric:
    """A per-pair text function (sentence_bleu, rouge_l) as a reward component: (values [N] fp32, no stats)."""

    def __init__(self, fn: Callable[[str, str], float]):
        self.fn = fn

    def __call__(self, responses: list[str], references: list[str]) -> tuple[torch.Tensor, dict]:
        _check_pairs(responses, references)
        return torch.tensor([self.fn(h, r) for h, r in zip(responses, references)], dtype=torch.float32), {}


# ---------------------------------------------------------------- bertscore

# bert-score truncates at tokenizer.model_max_length: 512 for MiniLM and MPNet (BERTScore: or the position
# table, if an encoder has fewer positions)
BERTSCORE_MAX_LENGTH = 512


def _truncating_tokenizer(encoder, max_length: int):
    """A copy of the encoder's tokenizer (tokenizer.json, special tokens added) truncating at max_length tokens."""
    from tokenizers import Tokenizer as HFTokenizer
    tk = HFTokenizer.from_str(encoder.tokenizer.to_str())
    tk.no_padding()
    tk.enable_truncation(max_length)
    return tk


def idf_weights(corpus: list[str], tokenize: Callable[[list[str]], list[list[int]]]) -> tuple[dict[int, float], float]:
    """bert-score's get_idf_dict: {word-piece id: log((M + 1) / (df + 1))} over the M corpus documents (duplicates
    count as documents), and the weight of an id that never occurs, log(M + 1)."""
    df = Counter(i for ids in tokenize(corpus) for i in set(ids))
    m = len(corpus)
    return {i: math.log((m + 1) / (c + 1)) for i, c in df.items()}, math.log(m + 1)


def read_baseline(spec: str, layer: int) -> float:
    """--bertscore-baseline: a number, or a bert-score baseline file (CSV: header with an F column, row k = layer k;
    bert-score reads it with pandas and takes `.iloc[layer]`, the row at that position)."""
    try:
        return float(spec)
    except ValueError:
        pass
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"--bertscore-baseline {spec!r} is neither a number nor a file")
    with open(path, newline="") as f:
        rows = [(n, row) for n, row in enumerate(csv.reader(f), 1) if row]  # blank lines skipped, as pandas does
    if not rows or "F" not in rows[0][1]:
        raise ValueError(f"{path}:1: the header {rows[0][1] if rows else ''} has no F column (bert-score's format "
                         "is LAYER,P,R,F)")
    col = rows[0][1].index("F")
    if layer + 1 >= len(rows):
        raise ValueError(f"{path}: no row for layer {layer} ({len(rows) - 1} layer rows)")
    line, row = rows[layer + 1]
    try:
        return float(row[col])
    except (ValueError, IndexError):
        raise ValueError(f"{path}:{line}: column F of the layer-{layer} row is not a number") from None


class BERTScore:
    """BERTScore F1 of each response against its reference (see the module docstring for every convention).

    encoder: an rlsr Encoder with `token_states` (BERT or MPNet); layer: HF hidden_states index, None = the last.
    idf: (id -> weight, weight of unseen ids) from `idf_weights`, or None for weight 1. baseline: b of the
    rescaling (F - b) / (1 - b), or None.
    """

    def __init__(self, encoder, layer: int | None = None, idf: tuple[dict[int, float], float] | None = None,
                 baseline: float | None = None, max_length: int = BERTSCORE_MAX_LENGTH, batch_size: int = 16):
        self.encoder, self.layer, self.idf, self.baseline = encoder, layer, idf, baseline
        self.max_length = min(max_length, encoder.model.max_tokens)  # an encoder with fewer positions stops there
        self.batch_size = batch_size
        self._tokenizer = _truncating_tokenizer(encoder, self.max_length)
        self.special = set(self._tokenizer.encode("").ids)  # what the post-processor adds: [CLS] [SEP], <s> </s>
        encoder.token_states([""], layer=layer, max_length=self.max_length)  # fails now, not at the first step, if the
        # encoder has no token states (a decoder) or the layer or max_length is out of its range

    def token_ids(self, texts: list[str]) -> tuple[list[list[int]], list[bool]]:
        """Stripped texts -> (ids after truncation, special tokens included; whether each text lost tokens)."""
        enc = self._tokenizer.encode_batch([t.strip() for t in texts])
        return [e.ids for e in enc], [bool(e.overflowing) for e in enc]

    def weights(self, ids: list[int]) -> torch.Tensor:
        if self.idf is None:
            return torch.tensor([0.0 if i in self.special else 1.0 for i in ids])    # [T]
        table, unseen = self.idf
        return torch.tensor([table.get(i, unseen) for i in ids])                      # [T] fp32, as bert-score pads

    def _states(self, texts: list[str], batch_size: int) -> list[tuple[list[int], torch.Tensor]]:
        """(ids, unit token vectors [T, d]) of each stripped text."""
        states = self.encoder.token_states([t.strip() for t in texts], layer=self.layer, max_length=self.max_length,
                                           batch_size=batch_size)
        return [(ids, h / h.norm(dim=-1, keepdim=True)) for ids, h in states]

    def __call__(self, responses: list[str], references: list[str]) -> tuple[torch.Tensor, dict]:
        _check_pairs(responses, references)
        hyps = self._states(responses, self.batch_size)
        distinct = list(dict.fromkeys(references))
        refs = {r: self._states([r], 1)[0] for r in distinct}           # each reference alone: batch-independent
        f1 = torch.empty(len(responses))                                                 # [N]
        for k, ((h_ids, h), r_text) in enumerate(zip(hyps, references)):
            r_ids, r = refs[r_text]
            if not h_ids or not r_ids:                            # a tokenizer without special tokens, blank text
                f1[k] = 0.0
                continue
            sim = h @ r.T                                                                # [Th, Tr] cosines
            wh, wr = self.weights(h_ids), self.weights(r_ids)                            # [Th], [Tr]
            p = (sim.max(dim=1).values * (wh / wh.sum())).sum()   # weights normalised first, as bert-score does
            rec = (sim.max(dim=0).values * (wr / wr.sum())).sum()
            f = 2 * p * rec / (p + rec)
            f1[k] = 0.0 if torch.isnan(f) else f                  # no weighted token on a side: 0/0 -> 0
        if self.baseline is not None:
            b = torch.tensor(self.baseline, dtype=torch.float32)
            f1 = (f1 - b) / (1 - b)
        _, h_trunc = self.token_ids(responses)
        r_trunc = dict(zip(distinct, self.token_ids(distinct)[1]))
        stats = {"reward/bertscore_truncated_responses": sum(h_trunc) / len(responses),
                 "reward/bertscore_truncated_references": sum(r_trunc[r] for r in references) / len(references)}
        return f1, stats


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


class Component(Protocol):
    def __call__(self, responses: list[str], references: list[str]) -> tuple[torch.Tensor, dict]: ...


@dataclass
class Scored:
    rewards: torch.Tensor                 # [N] fp32 CPU: the training reward (weighted components + length term)
    components: dict[str, torch.Tensor]   # each component's unweighted per-item values [N] fp32
    stats: dict[str, float]               # per-step means: reward/<component>, truncation fractions, length term


class Reward:
    """sum_k weight_k * component_k(y, y*) [+ length term]. A single reward is a sum of one term of weight 1
    (then the total equals the component bit for bit)."""

    def __init__(self, terms: list[tuple[str, float, Component]], length: LengthTerm | None = None):
        self.terms = terms
        self.length = length

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.terms]

    def __call__(self, responses: list[str], references: list[str], prompts: list[str] | None = None,
                 lengths: list[int] | None = None) -> Scored:
        """responses[i] is scored against references[i]; lengths[i]: its length in policy tokens (length term)."""
        _check_pairs(responses, references)
        n = len(responses)
        if n == 0:
            return Scored(torch.zeros(0), {name: torch.zeros(0) for name in self.names}, {})
        total = torch.zeros(n, dtype=torch.float64)                                      # [N]
        components, stats = {}, {}
        for name, weight, component in self.terms:
            values, st = component(responses, references)
            components[name] = values.float()
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


def _check_pairs(responses: list[str], references: list[str]):
    if len(responses) != len(references):
        raise ValueError(f"{len(responses)} responses but {len(references)} references")


# ---------------------------------------------------------------- flags and construction

REWARDS = ("cosine", "bertscore", "bleu", "rouge_l")


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
    overlong_cache: int = 0                     # --overlong-cache (policy tokens; 0 = off)
    overlong_coef: float = 1.0                  # --overlong-coef
    length_ratio_coef: float = 0.0              # --length-ratio-coef (0 = off)

    FLAGS = {"spec": "reward"}  # field -> argparse dest where they differ

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RewardConfig":
        default = cls()
        return cls(**{f.name: getattr(args, cls.FLAGS.get(f.name, f.name), getattr(default, f.name))
                      for f in fields(cls)})


def add_reward_args(parser: argparse.ArgumentParser):
    g = parser.add_argument_group("reward", "reference-based rewards (rlsr/reward.py)")
    g.add_argument("--reward", default="cosine", metavar="SPEC", help="cosine | bertscore | bleu | rouge_l, or a weighted sum such as "
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
    return g


def build_reward(cfg: RewardConfig, encoder_loader: Callable[[str | None], object], max_new_tokens: int | None = None,
                 idf_corpus: list[str] | None = None) -> Reward:
    """The Reward `cfg` describes. encoder_loader(name or path) -> Encoder, called once per distinct encoder;
    max_new_tokens: the sampler's cap (the overlong term's L_max); idf_corpus: the references idf counts over."""
    terms = parse_spec(cfg.spec)
    names = [name for name, _ in terms]
    if "bertscore" not in names:
        unused = [flag for flag, value, default in (
            ("--bertscore-encoder", cfg.bertscore_encoder, None), ("--bertscore-layer", cfg.bertscore_layer, None),
            ("--bertscore-idf", cfg.bertscore_idf, False), ("--bertscore-baseline", cfg.bertscore_baseline, None))
            if value != default]
        if unused:
            raise ValueError(f"{', '.join(unused)} given, but --reward {cfg.spec!r} has no bertscore")
    uses_encoder = "cosine" in names or ("bertscore" in names and cfg.bertscore_encoder is None)
    if cfg.encoder is not None and not uses_encoder:
        raise ValueError(f"--encoder {cfg.encoder} given, but --reward {cfg.spec!r} uses no sentence encoder")
    for flag, value in (("--overlong-cache", cfg.overlong_cache), ("--overlong-coef", cfg.overlong_coef),
                        ("--length-ratio-coef", cfg.length_ratio_coef)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{flag} {value}: must be a finite number >= 0")
    if cfg.overlong_cache > 0 and (max_new_tokens is None or cfg.overlong_cache > max_new_tokens):
        raise ValueError(f"--overlong-cache {cfg.overlong_cache} must be at most --max-new-tokens ({max_new_tokens})")

    encoders: dict[str | None, object] = {}

    def encoder(name):
        if name not in encoders:
            encoders[name] = encoder_loader(name)
        return encoders[name]

    components: list[tuple[str, float, Component]] = []
    for name, weight in terms:
        if name == "cosine":
            comp: Component = SimilarityReward(encoder(cfg.encoder))
        elif name == "bleu":
            comp = TextMetric(sentence_bleu)
        elif name == "rouge_l":
            comp = TextMetric(rouge_l)
        else:
            enc = encoder(cfg.bertscore_encoder or cfg.encoder)
            n_layers = enc.model.config.num_hidden_layers
            layer = n_layers if cfg.bertscore_layer is None else cfg.bertscore_layer
            if not 0 <= layer <= n_layers:
                raise ValueError(f"--bertscore-layer {layer}: this encoder has hidden states 0 (embeddings) to "
                                 f"{n_layers}")
            comp = BERTScore(enc, layer)
            if cfg.bertscore_idf:
                if not idf_corpus:
                    raise ValueError("--bertscore-idf needs a reference corpus to count document frequencies over")
                comp.idf = idf_weights(idf_corpus, lambda texts: comp.token_ids(texts)[0])
            if cfg.bertscore_baseline is not None:
                comp.baseline = read_baseline(cfg.bertscore_baseline, layer)
        components.append((name, weight, comp))
    length = None
    if cfg.overlong_cache > 0 or cfg.length_ratio_coef > 0:
        length = LengthTerm(max_new_tokens, cfg.overlong_cache, cfg.overlong_coef, cfg.length_ratio_coef)
    return Reward(components, length)

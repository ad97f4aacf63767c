"""Reference-based text metrics, each equal to its reference package: sentence BLEU (sacrebleu), ROUGE-L
(rouge-score) and BERTScore (bert-score). Each compares a response with its reference only; rlsr/reward.py makes
them reward components (and so eval.py columns).

    sentence_bleu   sacrebleu.sentence_bleu(y, [y*]).score / 100 with its defaults (sacrebleu 2.6.0: 13a
                    tokenisation, case-sensitive, 'exp' smoothing, effective order). In [0, 1].
    rouge_l         ROUGE-L F1 as Google's rouge-score computes it, RougeScorer(["rougeL"], use_stemmer=False).
                    In [0, 1].
    BERTScore       BERTScore F1 (Zhang et al., ICLR 2020) as the bert-score package (0.3.13) computes it:
                    contextual token vectors of an encoder layer, L2-normalised; each response token is matched to
                    its most similar reference token (precision) and each reference token to its most similar
                    response token (recall), both averaged with token weights; F1 = 2PR / (P + R). In [-1, 1].

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

import csv
import math
import re
from collections import Counter
from pathlib import Path
from typing import Callable

import torch

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


class PairMetric:
    """A per-pair function (sentence_bleu, rouge_l) over a batch: (responses, references) -> (values [N] float64,
    exactly as the function computes them; no stats)."""

    def __init__(self, fn: Callable[[str, str], float]):
        self.fn = fn

    def __call__(self, responses: list[str], references: list[str]) -> tuple[torch.Tensor, dict]:
        check_pairs(responses, references)
        return torch.tensor([self.fn(h, r) for h, r in zip(responses, references)], dtype=torch.float64), {}


def check_pairs(responses: list[str], references: list[str]):
    if len(responses) != len(references):
        raise ValueError(f"{len(responses)} responses but {len(references)} references")


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
        check_pairs(responses, references)
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

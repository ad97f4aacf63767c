"""Statistics for monitoring training and comparing checkpoints: bootstrap intervals and reward-hacking monitors.

A similarity reward can be gamed without answering better: longer answers cover more of a long reference, repeated
phrases can pull an embedding towards the reference's topic, and a policy that had seen references could copy them.
The monitors here make each visible: corr(length, reward), distinct-n (repetition) and the fraction of a
response's n-grams that also occur in its reference (copying).
Words are lower-cased whitespace/punctuation-separated tokens (`words`), so the numbers do not depend on a tokenizer.
"""
from __future__ import annotations

import math
import re

import numpy as np

_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Mean over texts of (distinct n-grams / n-grams) in that text; 1 = no repetition. Texts shorter than n skip."""
    fracs = [len(set(g)) / len(g) for t in texts if (g := ngrams(words(t), n))]
    return float(np.mean(fracs)) if fracs else 1.0


def copy_fraction(response: str, reference: str, n: int = 4) -> float:
    """Fraction of the response's word n-grams that also occur in the reference (0 when the response is shorter)."""
    g = ngrams(words(response), n)
    if not g:
        return 0.0
    ref = set(ngrams(words(reference), n))
    return sum(x in ref for x in g) / len(g)


def pearson(x, y) -> float:
    """Pearson correlation; 0 when either side is constant (nothing to correlate)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def bootstrap(statistic, n: int, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Percentile bootstrap over n items: (statistic on all items, low, high).

    statistic maps an index array [B, n] (B resamples of the items) to B values, e.g. a mean, a ratio of sums, or a
    paired difference of two metrics on the same items; it is called on [[0 .. n-1]] for the point estimate.
    """
    if n == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    values = statistic(rng.integers(0, n, size=(n_boot, n)))
    alpha = (1 - level) / 2
    point = float(statistic(np.arange(n)[None])[0])
    return point, float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def bootstrap_ci(values, **kw) -> tuple[float, float, float]:
    """Mean of `values` and its percentile bootstrap interval: (mean, low, high)."""
    v = np.asarray(values, dtype=np.float64)
    return bootstrap(lambda idx: v[idx].mean(1), len(v), **kw)


def paired_bootstrap_ci(a, b, **kw) -> tuple[float, float, float]:
    """Mean of b - a over paired items (the same prompts scored twice) with its bootstrap interval."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in size: {a.shape} vs {b.shape}")
    return bootstrap_ci(b - a, **kw)


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F1: longest common subsequence of the two word sequences (`words`), harmonic mean of its precision
    and recall. A second, encoder-free similarity: a gain that only fools the reward encoder does not show here."""
    h, r = words(hypothesis), words(reference)
    if not h or not r:
        return 0.0
    prev = [0] * (len(r) + 1)
    for x in h:  # LCS table, one row at a time
        cur = [0]
        for j, y in enumerate(r):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(h), lcs / len(r)
    return 2 * p * rec / (p + rec)


def format_ci(ci: tuple[float, float, float], digits: int = 4) -> str:
    m, lo, hi = ci
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"

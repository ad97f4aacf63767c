"""The reward interface: cosine, components that read the prompt, weighted sums, the length terms and the flags,
against hand-computed values (the text metrics against their packages: tests/test_text_metrics.py)."""
import argparse
import math

import pytest
import torch
import torch.nn.functional as F

from rlsr.reward import (REWARDS, LengthTerm, Reward, RewardConfig, RewardKind, SimilarityReward, add_reward_args,
                         build_reward, length_ratio_penalty, overlong_penalty, parse_spec)
from rlsr.text_metrics import read_baseline, sentence_bleu
from test_text_metrics import BASELINE_FILE, REFERENCES, RESPONSES, TEXT


def asked(n: int, question: str = "What is it?") -> list[list[dict]]:
    """n prompts: the chat messages before each answer."""
    return [[{"role": "user", "content": question}] for _ in range(n)]


def test_reward_is_cosine_of_embeddings_and_history_free(tiny_encoder):
    enc = tiny_encoder
    responses = ["Hello there", "Tell me a joke about the road, why did the chicken cross", ""]
    refs = ["Hello! How can I help?", "Why did the chicken cross the road?", "Hello! How can I help?"]
    reward = SimilarityReward(enc)
    r, stats = reward(asked(3), responses, refs)
    e = F.normalize(enc.encode(responses), dim=-1)
    ref = torch.stack([F.normalize(enc.encode([t]), dim=-1)[0] for t in refs])
    assert torch.allclose(r, (e * ref).sum(-1), atol=1e-6) and r.shape == (3,)
    assert abs(stats["reward/truncated_responses"] - 1 / 3) < 1e-6  # the tiny encoder keeps 16 word pieces
    assert len(reward._refs) == 2                            # each distinct reference embedded once
    # a reference's embedding does not depend on what else was embedded before it
    other = SimilarityReward(enc)
    other.add_references(["You are terse. " * 3, refs[1], "x"])
    assert torch.equal(other._refs[refs[1]], reward._refs[refs[1]])


# ---------------------------------------------------------------- sums, length terms, flags

def test_weighted_sum_logs_each_component(tiny_encoder):
    responses, refs = ["the cat sat on the mat", "a b"], ["the cat is on the mat", "a x b y"]
    reward = build_reward(RewardConfig(spec="cosine=0.7,rouge_l=0.3"), lambda name: tiny_encoder)
    scored = reward(asked(2), responses, refs)
    cosine, cos_stats = SimilarityReward(tiny_encoder)(asked(2), responses, refs)
    rouge = torch.tensor([5 / 6, 2 / 3])                         # LCS 5 of 6 and 6; LCS 2 of 2 and 4
    assert torch.allclose(scored.components["rouge_l"], rouge, atol=1e-7)
    assert torch.equal(scored.components["cosine"], cosine)
    assert torch.allclose(scored.rewards, 0.7 * cosine + 0.3 * rouge, atol=1e-6)
    assert scored.stats["reward/rouge_l"] == pytest.approx((5 / 6 + 2 / 3) / 2)
    assert scored.stats["reward/cosine"] == pytest.approx(cosine.mean().item())
    assert scored.stats["reward/truncated_responses"] == cos_stats["reward/truncated_responses"]
    # a single reward is the component itself, bit for bit
    single = build_reward(RewardConfig(), lambda name: tiny_encoder)(asked(2), responses, refs)
    assert torch.equal(single.rewards, cosine) and single.rewards.dtype == torch.float32


def test_weight_zero_logs_without_rewarding():
    scored = build_reward(RewardConfig(spec="bleu, rouge_l=0"), lambda name: None)(asked(3), RESPONSES[:3], REFERENCES[:3])
    assert torch.equal(scored.rewards, scored.components["bleu"])
    assert scored.stats["reward/rouge_l"] == pytest.approx(sum(TEXT["rouge_l"][:3]) / 3)


@pytest.mark.parametrize("spec, message", [
    ("cosin", "'cosin' names no reward"), ("cosine=0.7,rouge=0.3", "'rouge=0.3' names no reward"),
    ("cosine=abc", "weight in 'cosine=abc'"), ("bleu=inf", "weight in 'bleu=inf'"),
    ("bleu,bleu=2", "bleu appears twice"), ("bleu,", "'' names no reward")])
def test_bad_reward_specs_name_the_flag_and_the_part(spec, message):
    with pytest.raises(ValueError, match="--reward") as e:
        parse_spec(spec)
    assert message in str(e.value)


def test_overlong_penalty_by_hand():
    # L_max 64, L_cache 16: free up to 48 tokens, then linear to -1 at 64
    got = [overlong_penalty(n, 64, 16) for n in (10, 48, 49, 56, 64, 70)]
    assert got == [0.0, 0.0, -1 / 16, -0.5, -1.0, -1.0]


def test_length_ratio_penalty_by_hand():
    assert length_ratio_penalty("a b c d", "a b") == -1.0       # twice as long: -(4/2 - 1)
    assert length_ratio_penalty("a b c", "a b") == -0.5
    assert length_ratio_penalty("a", "a b") == 0.0              # shorter: no penalty
    assert length_ratio_penalty("x y", "") == -1.0              # an empty reference counts as one word


def test_length_term_in_the_reward():
    cfg = RewardConfig(spec="bleu", overlong_cache=16, overlong_coef=0.5, length_ratio_coef=2.0)
    reward = build_reward(cfg, lambda name: None, max_new_tokens=64)
    responses, refs = ["the cat sat on the mat", "the cat"], ["the cat sat on the mat", "the cat sat on the mat"]
    scored = reward(asked(2), responses, refs, lengths=[56, 20])
    bleu = [sentence_bleu(h, r) for h, r in zip(responses, refs)]
    expected = [bleu[0] + 0.5 * -0.5 + 2.0 * 0.0, bleu[1] + 0.0 + 0.0]
    assert scored.rewards.tolist() == pytest.approx(expected, abs=1e-6)
    assert scored.components["overlong"].tolist() == [-0.5, 0.0]
    assert scored.components["length_ratio"].tolist() == [0.0, 0.0]
    assert scored.stats["reward/length_term"] == pytest.approx(-0.125)
    longer = reward(asked(1), ["one two three four five six seven eight nine ten eleven twelve"], ["the cat sat on the mat"],
                    lengths=[10])
    assert longer.components["length_ratio"].item() == pytest.approx(-1.0)   # 12 words vs 6
    with pytest.raises(ValueError, match="--overlong-cache"):
        reward(asked(2), responses, refs)                        # lengths are needed


def test_flags_round_trip_and_checks():
    ap = argparse.ArgumentParser()
    add_reward_args(ap)
    args = ap.parse_args(["--reward", "cosine=0.7,bertscore=0.3", "--bertscore-layer", "5", "--bertscore-idf",
                          "--bertscore-baseline", "0.3", "--overlong-cache", "8", "--length-ratio-coef", "0.1"])
    cfg = RewardConfig.from_args(args)
    assert cfg == RewardConfig(spec="cosine=0.7,bertscore=0.3", bertscore_layer=5, bertscore_idf=True,
                               bertscore_baseline="0.3", overlong_cache=8, length_ratio_coef=0.1)
    assert RewardConfig.from_args(ap.parse_args([])) == RewardConfig()
    with pytest.raises(ValueError, match="--bertscore-idf given, but --reward 'bleu' has no bertscore"):
        build_reward(RewardConfig(spec="bleu", bertscore_idf=True), lambda name: None)
    with pytest.raises(ValueError, match="--encoder mpnet given, but --reward 'rouge_l' uses no sentence encoder"):
        build_reward(RewardConfig(spec="rouge_l", encoder="mpnet"), lambda name: None)
    with pytest.raises(ValueError, match="uses no sentence encoder"):  # BERTScore on another encoder
        build_reward(RewardConfig(spec="bertscore", encoder="mpnet", bertscore_encoder="minilm"), lambda name: None)
    with pytest.raises(ValueError, match="--overlong-cache 80 must be at most --max-new-tokens"):
        build_reward(RewardConfig(spec="bleu", overlong_cache=80), lambda name: None, max_new_tokens=64)
    with pytest.raises(ValueError, match="--length-ratio-coef -1"):
        build_reward(RewardConfig(spec="bleu", length_ratio_coef=-1), lambda name: None)


def test_build_bertscore_options(tiny_encoder):
    loaded = []

    def loader(name):
        loaded.append(name)
        return tiny_encoder
    cfg = RewardConfig(spec="cosine,bertscore", bertscore_idf=True, bertscore_baseline=str(BASELINE_FILE))
    reward = build_reward(cfg, loader, idf_corpus=["Hello there", "Hello kind"])
    assert loaded == [None]                                      # one encoder, loaded once
    bert = reward.terms[1][2].metric
    assert bert.layer == 2 and bert.baseline == read_baseline(str(BASELINE_FILE), 2)
    hello = bert.token_ids(["Hello"])[0][0][1]
    assert bert.idf[0][hello] == pytest.approx(math.log(3 / 3)) and bert.idf[1] == pytest.approx(math.log(3))
    scored = reward(asked(1), ["Hello there"], ["Hello kind"])
    assert set(scored.components) == {"cosine", "bertscore"}
    assert "reward/bertscore" in scored.stats and "reward/bertscore_truncated_responses" in scored.stats
    with pytest.raises(ValueError, match="--bertscore-idf needs a reference corpus"):
        build_reward(RewardConfig(spec="bertscore", bertscore_idf=True), loader)
    with pytest.raises(ValueError, match="--bertscore-layer 3"):
        build_reward(RewardConfig(spec="bertscore", bertscore_layer=3), loader)


def test_empty_call_and_mismatched_lengths():
    reward = Reward([("bleu", 1.0, REWARDS["bleu"].build(None))], LengthTerm(ratio_coef=1.0))
    scored = reward([], [], [])
    assert scored.rewards.shape == (0,) and scored.components["bleu"].shape == (0,)
    with pytest.raises(ValueError, match="2 responses but 1 references"):
        reward(asked(2), ["a", "b"], ["a"])
    with pytest.raises(ValueError, match="1 prompts but 2 responses"):
        reward(asked(1), ["a", "b"], ["a", "b"])


def test_a_component_sees_the_prompts_and_is_rounded_to_fp32(monkeypatch):
    seen = []

    def question_length(prompts, responses, references):         # reads only the prompt
        seen.append(prompts)
        return torch.tensor([len(p[-1]["content"]) / 3 for p in prompts], dtype=torch.float64), {}
    monkeypatch.setitem(REWARDS, "question_length", RewardKind(lambda b: question_length))
    reward = build_reward(RewardConfig(spec="bleu=0,question_length=2"), lambda name: None)
    prompts = asked(1, "Why?") + asked(1, "What now?")
    scored = reward(prompts, ["a", "b"], ["a", "c"])
    assert seen == [prompts]
    third = torch.tensor([4 / 3, 9 / 3], dtype=torch.float64).float()       # the reward is fp32
    assert torch.equal(scored.components["question_length"], third)
    assert torch.equal(scored.rewards, (2 * third.double()).float())
    assert scored.stats["reward/question_length"] == third.double().mean().item()

"""The reward menu against its reference packages (fixtures of tests/make_reward_fixtures.py: sacrebleu, rouge-score,
bert-score), and the sums, the length terms and the flags against hand-computed values."""
import argparse
import json
import math
import random

import pytest
import torch
import torch.nn.functional as F

from conftest import FIXTURES, make_tiny_bert_dir, needs_minilm, needs_mpnet
from rlsr.encoder import Encoder
from rlsr.reward import (BERTScore, LengthTerm, Reward, RewardConfig, SimilarityReward, TextMetric, add_reward_args,
                         build_reward, idf_weights, lcs_length, length_ratio_penalty, overlong_penalty, parse_spec,
                         read_baseline, rouge_l, rouge_tokens, sentence_bleu, tokenize_13a)

TEXT = json.loads((FIXTURES / "rewards.json").read_text())
PAIRS = [tuple(p) for p in TEXT["pairs"]]
RESPONSES, REFERENCES = [h for h, _ in PAIRS], [r for _, r in PAIRS]
BASELINE_FILE = FIXTURES / "rewards_bertscore_baseline.tsv"


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    """The tiny random BERT, its tokenizer given BERT's template: <|im_start|> text <|im_end|> stand for [CLS] [SEP]."""
    from tokenizers import Tokenizer, processors
    path = make_tiny_bert_dir(tmp_path_factory.mktemp("enc"))
    tk = Tokenizer.from_file(str(path / "tokenizer.json"))
    cls, sep = "<|im_start|>", "<|im_end|>"
    tk.post_processor = processors.Sequence([tk.post_processor, processors.TemplateProcessing(
        single=f"{cls} $A {sep}", special_tokens=[(cls, tk.token_to_id(cls)), (sep, tk.token_to_id(sep))])])
    tk.save(str(path / "tokenizer.json"))
    return Encoder.from_pretrained(path)


def test_reward_is_cosine_of_embeddings_and_history_free(tiny_encoder):
    enc = tiny_encoder
    responses = ["Hello there", "Tell me a joke about the road, why did the chicken cross", ""]
    refs = ["Hello! How can I help?", "Why did the chicken cross the road?", "Hello! How can I help?"]
    reward = SimilarityReward(enc)
    r, stats = reward(responses, refs)
    e = F.normalize(enc.encode(responses), dim=-1)
    ref = torch.stack([F.normalize(enc.encode([t]), dim=-1)[0] for t in refs])
    assert torch.allclose(r, (e * ref).sum(-1), atol=1e-6) and r.shape == (3,)
    assert abs(stats["reward/truncated_responses"] - 1 / 3) < 1e-6  # the tiny encoder keeps 16 word pieces
    assert len(reward._refs) == 2                            # each distinct reference embedded once
    # a reference's embedding does not depend on what else was embedded before it
    other = SimilarityReward(enc)
    other.add_references(["You are terse. " * 3, refs[1], "x"])
    assert torch.equal(other._refs[refs[1]], reward._refs[refs[1]])


# ---------------------------------------------------------------- bleu and rouge_l: exact against the packages

def test_bleu_equals_sacrebleu_sentence_bleu():
    assert TEXT["versions"]["sacrebleu"] == "2.6.0"
    assert [sentence_bleu(h, r) for h, r in PAIRS] == TEXT["bleu"]      # bit for bit: the same float operations
    # the cases the fixture covers do exercise the rules: perfect match, no match, smoothing, brevity penalty
    assert max(TEXT["bleu"]) == pytest.approx(1.0) and 0.0 in TEXT["bleu"] and len(set(TEXT["bleu"])) > 15


def test_rouge_l_equals_rouge_score():
    assert [rouge_l(h, r) for h, r in PAIRS] == TEXT["rouge_l"]


def test_tokenizers_on_hand_made_examples():
    assert tokenize_13a("Hello, world! 3.14 and 1,000-2 e-mail.") == \
        ["Hello", ",", "world", "!", "3.14", "and", "1,000", "-", "2", "e-mail", "."]
    assert tokenize_13a("x &amp; y<skipped>  ") == ["x", "&", "y"]
    assert rouge_tokens("Café, naïve_Cat 42!") == ["caf", "na", "ve", "cat", "42"]
    # LCS("the cat sat on the mat", "the cat is on the mat") = 5 words: P = R = 5/6
    assert rouge_l("The cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)


def test_bit_vector_lcs_equals_the_table():
    def table(a, b):
        prev = [0] * (len(b) + 1)
        for x in a:
            cur = [0]
            for j, y in enumerate(b):
                cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
            prev = cur
        return prev[-1]
    rng = random.Random(0)
    for _ in range(300):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 30))]
        b = [rng.choice("abcde") for _ in range(rng.randint(0, 90))]  # > 64 columns: several machine words
        assert lcs_length(a, b) == table(a, b)


def test_text_components_as_tensors():
    values, stats = TextMetric(sentence_bleu)(RESPONSES, REFERENCES)
    assert values.dtype == torch.float32 and stats == {}
    assert torch.allclose(values.double(), torch.tensor(TEXT["bleu"], dtype=torch.float64), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- bertscore

def bertscore_check(encoder: Encoder, fixture: dict):
    layer = fixture["num_layers"]
    assert fixture["model_max_length"] == 512
    plain = BERTScore(encoder, layer)
    # the tokenisation bert-score sees (strip, special tokens, truncation at 512): same lengths per text
    ids, truncated = plain.token_ids(RESPONSES + REFERENCES)
    assert [len(x) for x in ids] == fixture["token_counts"]
    assert any(truncated) and all(t == (n == 512) for t, n in zip(truncated, fixture["token_counts"]))
    f1, stats = plain(RESPONSES, REFERENCES)
    assert f1.dtype == torch.float32 and f1.shape == (len(PAIRS),)
    assert torch.allclose(f1, torch.tensor(fixture["f1"]), atol=1e-5, rtol=0)
    n = len(RESPONSES)
    assert stats["reward/bertscore_truncated_responses"] == pytest.approx(sum(truncated[:n]) / n)
    assert stats["reward/bertscore_truncated_references"] == pytest.approx(sum(truncated[n:]) / n)
    # idf over the references, as get_idf_dict: the table itself, then the scores
    idf = idf_weights(REFERENCES, lambda texts: plain.token_ids(texts)[0])
    assert idf[1] == pytest.approx(fixture["idf_default"], abs=1e-12)
    assert {str(k): v for k, v in idf[0].items()} == pytest.approx(fixture["idf"], abs=1e-12)
    f1_idf, _ = BERTScore(encoder, layer, idf=idf)(RESPONSES, REFERENCES)
    assert torch.allclose(f1_idf, torch.tensor(fixture["f1_idf"]), atol=1e-5, rtol=0)
    # baseline rescaling, b read from bert-score's file format (the short pairs: the long ones cost time, not cover)
    b = read_baseline(str(BASELINE_FILE), layer)
    assert b == fixture["baseline_f"] and read_baseline(str(b), layer) == b
    k = 12
    rescaled, _ = BERTScore(encoder, layer, baseline=b)(RESPONSES[:k], REFERENCES[:k])
    assert torch.allclose(rescaled, torch.tensor(fixture["f1_rescaled"][:k]), atol=1e-5, rtol=0)


@needs_minilm
def test_bertscore_equals_bert_score_minilm():
    from rlsr.assets import default_encoder_path
    fixture = json.loads((FIXTURES / "rewards_bertscore_minilm.json").read_text())
    assert fixture["model"] == "all-MiniLM-L6-v2" and fixture["num_layers"] == 6
    bertscore_check(Encoder.from_pretrained(default_encoder_path()), fixture)


@needs_mpnet
def test_bertscore_equals_bert_score_mpnet():
    from rlsr.assets import default_mpnet_path
    fixture = json.loads((FIXTURES / "rewards_bertscore_mpnet.json").read_text())
    assert fixture["model"] == "all-mpnet-base-v2" and fixture["num_layers"] == 12
    score = BERTScore(Encoder.from_pretrained(default_mpnet_path()), 12)
    ids, _ = score.token_ids(RESPONSES + REFERENCES)
    assert [len(x) for x in ids] == fixture["token_counts"]
    f1, _ = score(RESPONSES, REFERENCES)
    assert torch.allclose(f1, torch.tensor(fixture["f1"]), atol=1e-5, rtol=0)
    # bert-score's batched call differs only where its zero padding beat a negative best cosine: one pair here
    differ = (torch.tensor(fixture["f1_batched"]) - f1).abs() > 1e-5
    assert differ.tolist() == [h.startswith("the the the") for h in RESPONSES] and f1[differ].item() < 0


def test_bertscore_identical_blank_and_by_hand(tiny_encoder):
    enc = tiny_encoder
    score = BERTScore(enc, layer=1, max_length=64)
    f1, _ = score(["a kind joke", "", "Hello there", "  "], ["a kind joke", "Hello there", "", "x"])
    assert f1[0].item() == pytest.approx(1.0, abs=1e-6)          # identical texts
    assert f1[1:].tolist() == [0.0, 0.0, 0.0]                    # a blank side has no weighted token
    # one pair by hand from the token states: greedy max cosines, special tokens weigh 0 but are match targets
    (hi, h), (ri, r) = enc.token_states(["Why did the chicken cross", "the road?"], layer=1, max_length=64)
    sim = F.normalize(h, dim=-1) @ F.normalize(r, dim=-1).T                      # [Th, Tr]
    p = sim.max(1).values[1:-1].mean()                                           # [CLS] and [SEP] left out
    rec = sim.max(0).values[1:-1].mean()
    got, _ = score(["Why did the chicken cross"], ["the road?"])
    assert got.item() == pytest.approx((2 * p * rec / (p + rec)).item(), abs=1e-6)
    # rescaling: (F - b) / (1 - b), also for the blank pair's 0
    rescaled, _ = BERTScore(enc, layer=1, baseline=0.2, max_length=64)(["Why did the chicken cross", ""],
                                                                        ["the road?", "x"])
    assert rescaled.tolist() == pytest.approx([(got.item() - 0.2) / 0.8, -0.25], abs=1e-6)


def test_read_baseline_errors(tmp_path):
    bad = tmp_path / "b.tsv"
    bad.write_text("LAYER,P,R\n0,1,2,3\n")
    with pytest.raises(ValueError, match="no F column"):
        read_baseline(str(bad), 0)
    with pytest.raises(ValueError, match="no row for layer 13"):
        read_baseline(str(BASELINE_FILE), 13)
    bad.write_text("LAYER,P,R,F\n\n0,1,2,x\n")
    with pytest.raises(ValueError, match=r"b.tsv:3: column F of the layer-0 row is not a number"):
        read_baseline(str(bad), 0)
    with pytest.raises(ValueError, match="neither a number nor a file"):
        read_baseline(str(tmp_path / "missing.tsv"), 0)


# ---------------------------------------------------------------- sums, length terms, flags

def test_weighted_sum_logs_each_component(tiny_encoder):
    responses, refs = ["the cat sat on the mat", "a b"], ["the cat is on the mat", "a x b y"]
    reward = build_reward(RewardConfig(spec="cosine=0.7,rouge_l=0.3"), lambda name: tiny_encoder)
    scored = reward(responses, refs)
    cosine, cos_stats = SimilarityReward(tiny_encoder)(responses, refs)
    rouge = torch.tensor([5 / 6, 2 / 3])                         # LCS 5 of 6 and 6; LCS 2 of 2 and 4
    assert torch.allclose(scored.components["rouge_l"], rouge, atol=1e-7)
    assert torch.equal(scored.components["cosine"], cosine)
    assert torch.allclose(scored.rewards, 0.7 * cosine + 0.3 * rouge, atol=1e-6)
    assert scored.stats["reward/rouge_l"] == pytest.approx((5 / 6 + 2 / 3) / 2)
    assert scored.stats["reward/cosine"] == pytest.approx(cosine.mean().item())
    assert scored.stats["reward/truncated_responses"] == cos_stats["reward/truncated_responses"]
    # a single reward is the component itself, bit for bit
    single = build_reward(RewardConfig(), lambda name: tiny_encoder)(responses, refs)
    assert torch.equal(single.rewards, cosine) and single.rewards.dtype == torch.float32


def test_weight_zero_logs_without_rewarding():
    scored = build_reward(RewardConfig(spec="bleu, rouge_l=0"), lambda name: None)(RESPONSES[:3], REFERENCES[:3])
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
    scored = reward(responses, refs, lengths=[56, 20])
    bleu = [sentence_bleu(h, r) for h, r in zip(responses, refs)]
    expected = [bleu[0] + 0.5 * -0.5 + 2.0 * 0.0, bleu[1] + 0.0 + 0.0]
    assert scored.rewards.tolist() == pytest.approx(expected, abs=1e-6)
    assert scored.components["overlong"].tolist() == [-0.5, 0.0]
    assert scored.components["length_ratio"].tolist() == [0.0, 0.0]
    assert scored.stats["reward/length_term"] == pytest.approx(-0.125)
    longer = reward(["one two three four five six seven eight nine ten eleven twelve"], ["the cat sat on the mat"],
                    lengths=[10])
    assert longer.components["length_ratio"].item() == pytest.approx(-1.0)   # 12 words vs 6
    with pytest.raises(ValueError, match="--overlong-cache"):
        reward(responses, refs)                                  # lengths are needed


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
    bert = reward.terms[1][2]
    assert bert.layer == 2 and bert.baseline == read_baseline(str(BASELINE_FILE), 2)
    hello = bert.token_ids(["Hello"])[0][0][1]
    assert bert.idf[0][hello] == pytest.approx(math.log(3 / 3)) and bert.idf[1] == pytest.approx(math.log(3))
    scored = reward(["Hello there"], ["Hello kind"])
    assert set(scored.components) == {"cosine", "bertscore"}
    assert "reward/bertscore" in scored.stats and "reward/bertscore_truncated_responses" in scored.stats
    with pytest.raises(ValueError, match="--bertscore-idf needs a reference corpus"):
        build_reward(RewardConfig(spec="bertscore", bertscore_idf=True), loader)
    with pytest.raises(ValueError, match="--bertscore-layer 3"):
        build_reward(RewardConfig(spec="bertscore", bertscore_layer=3), loader)


def test_empty_call_and_mismatched_lengths():
    reward = Reward([("bleu", 1.0, TextMetric(sentence_bleu))], LengthTerm(ratio_coef=1.0))
    scored = reward([], [])
    assert scored.rewards.shape == (0,) and scored.components["bleu"].shape == (0,)
    with pytest.raises(ValueError, match="2 responses but 1 references"):
        reward(["a", "b"], ["a"])

"""The text metrics against their reference packages (fixtures of tests/make_reward_fixtures.py: sacrebleu,
rouge-score, bert-score) and hand-computed examples."""
import json
import random

import pytest
import torch
import torch.nn.functional as F

from conftest import FIXTURES, needs_minilm, needs_mpnet
from rlsr.encoder import Encoder
from rlsr.text_metrics import (BERTScore, PairMetric, idf_weights, lcs_length, read_baseline, rouge_l, rouge_tokens,
                               sentence_bleu, tokenize_13a)

TEXT = json.loads((FIXTURES / "rewards.json").read_text())
PAIRS = [tuple(p) for p in TEXT["pairs"]]
RESPONSES, REFERENCES = [h for h, _ in PAIRS], [r for _, r in PAIRS]
BASELINE_FILE = FIXTURES / "rewards_bertscore_baseline.tsv"


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


def test_pair_metric_keeps_the_functions_values():
    values, stats = PairMetric(sentence_bleu)(RESPONSES, REFERENCES)
    assert values.dtype == torch.float64 and stats == {} and values.tolist() == TEXT["bleu"]


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

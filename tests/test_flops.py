"""The model-FLOPs count (rlsr/flops.py) against a count by hand on the tiny Qwen2 checkpoint, and the compute a
training run records."""
import json

import pytest
import torch

from conftest import FIXTURES, make_tiny_bert_dir, make_tiny_data, make_tiny_policy_dir, run_script
from rlsr.flops import Compute, block_matmul_params, forward_flops
from rlsr.model import Transformer

# tiny qwen2: hidden 64, intermediate 96, 2 layers, 4 heads / 2 kv heads of 16, vocabulary 128
PER_TOKEN = 2 * 2 * (64 * 64 + 64 * 32 + 64 * 32 + 64 * 64 + 3 * 64 * 96)   # 2 x the block weights: 122,880
PER_PAIR = 4 * 2 * 4 * 16                                                   # scores + values, every layer: 512
PER_LOGIT = 2 * 64 * 128                                                    # the vocabulary projection: 16,384


def cfg():
    return Transformer.from_pretrained(FIXTURES / "models" / "qwen2").config


def test_block_weights_are_the_models_own_matrices():
    model = Transformer.from_pretrained(FIXTURES / "models" / "qwen2")
    weights = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear))
    assert block_matmul_params(model.config) == weights == PER_TOKEN // 2


def test_each_kind_of_pass_by_hand():
    c = Compute(cfg())
    # a packed group: prompt of 3, completions of 2 and 1 -> 6 tokens; pairs 3*4/2 + (2*3 + 3) + (1*3 + 1) = 19
    c.packed_groups([3], [[2, 1]], "policy", with_backward=True)
    assert c.flops["policy"] == 3 * (6 * PER_TOKEN + 19 * PER_PAIR + 3 * PER_LOGIT) and c.tokens["policy"] == 6
    # sampling the same: the prompt prefilled once (6 pairs, logits once); the 2-token sample takes one decode step
    # that sees 3 + 1 keys; the 1-token sample none (its token came from the prefill's logits)
    c.sampling([3], [[2, 1]])
    assert c.flops["rollout"] == 4 * PER_TOKEN + (6 + 4) * PER_PAIR + 2 * PER_LOGIT
    # SFT: two examples of 4 and 2 tokens in one packed row, 3 targets
    c.sequences([4, 2], 3, "sft", with_backward=True)
    assert c.flops["sft"] == 3 * (6 * PER_TOKEN + (10 + 3) * PER_PAIR + 3 * PER_LOGIT)
    c.sampling([5], [[1]], phase="eval")
    assert c.training_flops == c.flops["policy"] + c.flops["rollout"] + c.flops["sft"]  # evaluation is not training
    assert forward_flops(cfg(), 1, 0, 1, vocab=120) == PER_TOKEN + 2 * 64 * 120        # only real-vocabulary logits


def test_with_frozen_weights_a_backward_pass_skips_the_weight_gradients():
    c = Compute(cfg(), frozen_weights=True)                                  # LoRA: gradients of inputs only
    c.packed_groups([3], [[2, 1]], "policy", with_backward=True)
    assert c.flops["policy"] == 2 * (6 * PER_TOKEN + 3 * PER_LOGIT) + 3 * 19 * PER_PAIR


def test_an_rlsr_step_counts_every_draw_and_pass_once():
    one = Compute(cfg())
    one.sampling([3], [[2, 1]])
    forward = 6 * PER_TOKEN + 19 * PER_PAIR + 3 * PER_LOGIT       # the packed group of test_each_kind_of_pass_by_hand
    c = Compute(cfg())
    # two draws sampled (dynamic sampling), one group trained, KL model on, two PPO epochs
    c.rlsr_step([([3], [[2, 1]]), ([3], [[2, 1]])], ([3], [[2, 1]]), kl_model=True, old_logprobs=True, iterations=2)
    assert c.flops["rollout"] == 2 * one.flops["rollout"] and c.flops["kl_model"] == forward
    assert c.flops["old_logprobs"] == forward and c.flops["policy"] == 2 * 3 * forward


def test_state_round_trip_and_offset():
    c = Compute(cfg(), offset=1e12)
    c.sampling([3], [[2]])
    d = Compute(cfg())
    d.load_state_dict(json.loads(json.dumps(c.state_dict())))
    assert d.summary() == c.summary() and d.summary()["flops"] == 1e12 + c.flops["rollout"]


def test_a_training_run_writes_its_compute(tmp_path):
    policy, enc, data = make_tiny_policy_dir(tmp_path / "p"), make_tiny_bert_dir(tmp_path / "e"), make_tiny_data(
        tmp_path / "d.jsonl")
    run_script("train_sft.py", ["--init", str(policy), "--data", str(data), "--out-dir", str(tmp_path / "sft"),
                                "--steps", "2", "--examples-per-step", "2", "--save-every", "0"])
    sft = json.loads((tmp_path / "sft" / "final" / "compute.json").read_text())
    assert sft["flops"] == sft["by_phase"]["sft"]["flops"] > 0 and sft["flops_init"] == 0
    run_script("train_rlsr.py", ["--init", str(tmp_path / "sft" / "final"), "--encoder", str(enc), "--data", str(data),
                                 "--no-eval", "--out-dir", str(tmp_path / "rl"), "--steps", "2", "--prompts-per-step",
                                 "2", "--group-size", "2", "--max-new-tokens", "4", "--save-every", "0"])
    rl = json.loads((tmp_path / "rl" / "final" / "compute.json").read_text())
    assert rl["flops_init"] == sft["flops"] and rl["flops"] == pytest.approx(rl["flops_init"] + rl["flops_this_run"])
    assert set(rl["by_phase"]) == {"rollout", "kl_model", "policy"}
    steps = [json.loads(line) for line in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1]["flops"] == pytest.approx(rl["flops"])   # the logged cumulative count ends at the total

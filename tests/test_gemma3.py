"""Gemma 3 against transformers' Gemma3ForCausalLM (fixtures: tests/make_gemma3_fixtures.py).

The family-parametrised tests (test_model.py, test_sampling.py, test_logprobs.py, test_hf_interop.py) cover the
fp32 tiny model too: logits, left padding, save/load, cached decoding past the 3-token window, sampler = trainer.
"""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import FIXTURES
from rlsr.logprobs import completion_logprobs
from rlsr.model import FULL, SLIDING, ModelConfig, Transformer, sliding_window_mask
from rlsr.packing import pack_examples, padding_mask, positions_from_mask
from rlsr.sampling import SamplingParams, generate

MODELS = FIXTURES / "models"


def load(name, dtype=None):
    return Transformer.from_pretrained(MODELS / name, dtype=dtype)


def test_config_switches():
    c = load("gemma3").config
    assert (c.family, c.hidden_act, c.norm_offset, c.sandwich_norm, c.tie_word_embeddings) == \
        ("gemma3", "gelu_pytorch_tanh", True, True, True)
    assert c.embed_scale == 64 ** 0.5 and c.attn_scale == 32 ** -0.5 and c.sliding_window == 3
    assert c.layer_types == (SLIDING, FULL, SLIDING) and (c.rope_theta, c.local_rope_theta) == (1e6, 1e4)
    assert c.final_softcap is None
    # transformers 4.x wrote rope_theta / rope_local_base_freq / sliding_window_pattern instead: same config
    hf = json.loads((MODELS / "gemma3" / "config.json").read_text())
    old = {k: v for k, v in hf.items() if k not in ("rope_parameters", "layer_types")}
    old |= {"rope_theta": 1e6, "rope_local_base_freq": 1e4, "sliding_window_pattern": 2, "num_hidden_layers": 3}
    o = ModelConfig.from_hf(old)
    assert (o.layer_types, o.rope_theta, o.local_rope_theta) == ((SLIDING, FULL, SLIDING), 1e6, 1e4)
    assert ModelConfig.from_hf(dict(hf, use_bidirectional_attention=True)).bidirectional  # an encoder: encoder.py


def test_four_norms_and_tied_head():
    m = load("gemma3")
    block = m.model.layers[0]
    for name in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                 "post_feedforward_layernorm"):
        assert getattr(block, name).offset
    assert block.self_attn.q_norm.offset and m.lm_head.weight is m.model.embed_tokens.weight
    assert [b.sliding for b in m.model.layers] == [True, False, True]


@pytest.mark.parametrize("name, tol", [("gemma3-bf16", None), ("gemma3-softcap", 1e-4)])
def test_bf16_and_softcap_logits_match_transformers(name, tol):
    model, ref = load(name), load_file(MODELS / name / "reference.safetensors")
    ids, mask = ref["padded_ids"], ref["padded_mask"]
    with torch.no_grad():
        logits = model(ref["input_ids"]).float()
        padded = model(ids, positions_from_mask(mask), padding_mask(mask)).float()
    real = mask.bool()
    # bf16: both sides round in bf16, summing in other orders: a few bf16 ulps of the logits' scale
    tol = tol or 0.04 * ref["logits"].abs().max()
    assert model.dtype == (torch.bfloat16 if "bf16" in name else torch.float32)
    assert (logits - ref["logits"]).abs().max() <= tol
    assert (padded[real] - ref["padded_logits"][real]).abs().max() <= tol


def test_sliding_window_mask_by_position():
    q = torch.tensor([[0, 1, 2, 3, 4]])
    m = sliding_window_mask(None, q, q, 3)[0, 0]
    want = torch.tensor([[i - 3 < j <= i for j in range(5)] for i in range(5)])
    assert torch.equal(m, want)
    additive = torch.zeros(1, 1, 5, 5)  # an all-visible additive mask: only the window (both sides of it) remains
    later = ~torch.ones(5, 5, dtype=torch.bool).tril()
    assert torch.equal(sliding_window_mask(additive, q, q, 3)[0, 0] == 0, want | later)


def test_greedy_generate_past_the_window_equals_transformers():
    """transformers' generate() on a left-padded batch, 9 new tokens after prompts of 6 and 2 (window 3)."""
    model, ref = load("gemma3"), load_file(MODELS / "gemma3" / "generate.safetensors")
    prompts = [row[m.bool()].tolist() for row, m in zip(ref["prompt_ids"], ref["prompt_mask"])]
    r = generate(model, prompts, SamplingParams(max_new_tokens=9, temperature=0, ignore_stop=True))
    assert torch.equal(r.tokens, ref["tokens"])
    assert (r.logprobs - ref["logprobs"]).abs().max() <= 1e-4


def _group():
    ref = load_file(MODELS / "gemma3" / "generate.safetensors")
    n = ref["group_lengths"]
    comp_mask = torch.arange(6)[None] < n[:, None]                                    # [3, 6]
    return ref, comp_mask


def test_packed_group_logprobs_equal_transformers():
    """Three completions of one 7-token prompt packed in one row: their columns are not their positions."""
    model, (ref, comp_mask) = load("gemma3"), _group()
    prompt = ref["group_prompt"][None].expand(3, -1)
    logp, _ = completion_logprobs(model, prompt, torch.ones_like(prompt, dtype=torch.bool),
                                  ref["group_completions"], comp_mask, group_size=3)
    assert (logp - ref["group_logprobs"]).abs().max() <= 1e-4


def test_sft_packing_logprobs_equal_transformers():
    model, (ref, comp_mask) = load("gemma3"), _group()
    p = ref["group_prompt"].tolist()
    examples = [(p + c[m].tolist(), [False] * len(p) + [True] * int(m.sum()))
                for c, m in zip(ref["group_completions"], comp_mask)]
    packed = pack_examples([examples[:2], examples[2:]])  # two rows, one holding two examples
    logits = model(packed.ids, packed.positions, packed.mask, logits_at=packed.logits_at)
    logp = torch.log_softmax(logits, -1).gather(-1, packed.targets[:, None])[:, 0]
    assert (logp - ref["group_logprobs"][comp_mask]).abs().max() <= 1e-4

"""The decoder against logits transformers computed for the same tiny random checkpoints (tests/make_fixtures.py)."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import FAMILIES, FIXTURES
from rlsr.model import ModelConfig, Transformer
from rlsr.packing import padding_mask, positions_from_mask


def load(name, dtype=torch.float32):
    return Transformer.from_pretrained(FIXTURES / "models" / name, dtype=dtype)


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(family):
    model, ref = load(family), load_file(FIXTURES / "models" / family / "reference.safetensors")
    assert model.config.family == family
    with torch.no_grad():
        logits = model(ref["input_ids"])
    assert logits.shape == ref["logits"].shape
    assert (logits - ref["logits"]).abs().max() <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_batch_matches_transformers_and_rows_alone(family):
    model, ref = load(family), load_file(FIXTURES / "models" / family / "reference.safetensors")
    ids, mask = ref["padded_ids"], ref["padded_mask"]
    with torch.no_grad():
        logits = model(ids, positions_from_mask(mask), padding_mask(mask))
    real = mask.bool()
    assert (logits[real] - ref["padded_logits"][real]).abs().max() <= 1e-4
    for i in range(len(ids)):  # each row alone, without padding, gives the same logits
        with torch.no_grad():
            alone = model(ids[i][real[i]][None])[0]
        assert (alone - logits[i][real[i]]).abs().max() <= 1e-4


def test_family_specific_structure():
    q2, q3, ll = load("qwen2"), load("qwen3"), load("llama")
    attn2, attn3 = q2.model.layers[0].self_attn, q3.model.layers[0].self_attn
    assert attn2.q_proj.bias is not None and attn2.o_proj.bias is None
    assert q2.lm_head.weight.data_ptr() != q2.model.embed_tokens.weight.data_ptr()
    assert hasattr(attn3, "q_norm") and attn3.q_proj.bias is None and attn3.q_proj.out_features == 4 * 24
    assert q3.lm_head.weight is q3.model.embed_tokens.weight
    assert ll.lm_head.weight is ll.model.embed_tokens.weight and not hasattr(ll.model.layers[0].self_attn, "q_norm")


def test_bf16_sharded_checkpoint_loads():
    path = FIXTURES / "models" / "qwen2-bf16-sharded"
    assert len(list(path.glob("model-*.safetensors"))) == 3
    model = Transformer.from_pretrained(path)
    assert model.dtype == torch.bfloat16
    stored = {}
    for f in path.glob("model-*.safetensors"):
        stored.update(load_file(f))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stored.items())  # every shard, bit-exact
    ref = load_file(path / "reference.safetensors")
    with torch.no_grad():
        logits = model(ref["input_ids"]).float()
    # bf16 arithmetic on both sides, summed in different orders: a few bf16 ulps of the logits' scale
    assert (logits - ref["logits"]).abs().max() <= 0.04 * ref["logits"].abs().max()
    assert Transformer.from_pretrained(path, dtype=torch.float32).dtype == torch.float32


@pytest.mark.parametrize("family", FAMILIES)
def test_save_then_load_roundtrip(family, tmp_path):
    model = load(family)
    model.save_pretrained(tmp_path / "a")
    model.save_pretrained(tmp_path / "b", max_shard_bytes=20_000)  # forces several shards + index
    assert (tmp_path / "b" / "model.safetensors.index.json").exists()
    files = load_file(tmp_path / "a" / "model.safetensors")
    assert ("lm_head.weight" in files) == (not model.config.tie_word_embeddings)  # HF convention for tied heads
    saved_cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved_cfg["architectures"] == json.loads((FIXTURES / "models" / family / "config.json").read_text())["architectures"]
    ids = torch.randint(0, 128, (2, 5))
    want_sd = model.state_dict()
    with torch.no_grad():
        want = model(ids)
        for d in ("a", "b"):
            again = Transformer.from_pretrained(tmp_path / d)
            assert all(torch.equal(v, want_sd[k]) for k, v in again.state_dict().items())
            # MKL sums in another order for differently aligned buffers: equal up to fp32 rounding (parity tolerance)
            assert (again(ids) - want).abs().max() <= 1e-4
    bf16 = tmp_path / "c"
    model.save_pretrained(bf16, dtype=torch.bfloat16)
    assert Transformer.from_pretrained(bf16).dtype == torch.bfloat16


def _copy(tmp_path, family="qwen2"):
    dst = tmp_path / family
    shutil.copytree(FIXTURES / "models" / family, dst)
    return dst


def test_missing_tensor_is_named(tmp_path):
    d = _copy(tmp_path)
    sd = load_file(d / "model.safetensors")
    del sd["model.layers.1.self_attn.k_proj.bias"]
    save_file(sd, d / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing tensor 'model\.layers\.1\.self_attn\.k_proj\.bias'"):
        Transformer.from_pretrained(d)


def test_extra_tensor_is_named(tmp_path):
    d = _copy(tmp_path)
    sd = load_file(d / "model.safetensors")
    sd["model.layers.0.mlp.extra.weight"] = torch.zeros(2)
    save_file(sd, d / "model.safetensors")
    with pytest.raises(ValueError, match=r"unexpected tensor 'model\.layers\.0\.mlp\.extra\.weight'"):
        Transformer.from_pretrained(d)


def test_shape_mismatch_is_named(tmp_path):
    d = _copy(tmp_path)
    sd = load_file(d / "model.safetensors")
    sd["model.norm.weight"] = torch.ones(65)
    save_file(sd, d / "model.safetensors")
    with pytest.raises(ValueError, match=r"'model\.norm\.weight' has shape \[65\], the model expects \[64\]"):
        Transformer.from_pretrained(d)


def test_unsupported_architecture_lists_supported(tmp_path):
    d = _copy(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"], cfg["model_type"] = ["GPT2LMHeadModel"], "gpt2"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="not supported; supported: Qwen2ForCausalLM, Qwen3ForCausalLM, LlamaForCausalLM"):
        Transformer.from_pretrained(d)


def test_broken_config_json_names_file_and_line(tmp_path):
    d = _copy(tmp_path)
    (d / "config.json").write_text('{\n  "hidden_size": 64,\n  oops\n}')
    with pytest.raises(ValueError, match=r"config\.json: line 3"):
        Transformer.from_pretrained(d)


def test_rope_theta_read_from_either_key():
    base = json.loads((FIXTURES / "models" / "qwen3" / "config.json").read_text())
    assert ModelConfig.from_hf(base).rope_theta == 1e6  # transformers 5: rope_parameters
    old = {k: v for k, v in base.items() if k != "rope_parameters"} | {"rope_theta": 5e5}
    assert ModelConfig.from_hf(old).rope_theta == 5e5  # transformers 4: rope_theta


def test_llama3_rope_scaling_matches_reference_formula():
    cfg = json.loads((FIXTURES / "models" / "llama" / "config.json").read_text())
    cfg["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 8}
    from rlsr.model import RotaryEmbedding
    c = ModelConfig.from_hf(cfg)
    inv = RotaryEmbedding(c.head_dim, c.rope_theta, c.rope_scaling).inv_freq
    plain = 1.0 / c.rope_theta ** (torch.arange(0, 16, 2).float() / 16)
    wavelen = 2 * torch.pi / plain
    # long wavelengths (> 8 / 1) are divided by the factor, short ones (< 8 / 4) kept
    assert torch.allclose(inv[wavelen > 8], plain[wavelen > 8] / 8)
    assert torch.allclose(inv[wavelen < 2], plain[wavelen < 2])
    cfg["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    with pytest.raises(ValueError, match="rope type 'yarn' is not supported"):
        ModelConfig.from_hf(cfg)


def test_gradient_checkpointing_gives_the_same_gradients():
    ids = torch.randint(0, 128, (2, 6))
    grads = []
    for ckpt in (False, True):
        model = load("qwen3").train()
        model.gradient_checkpointing = ckpt
        model(ids).float().logsumexp(-1).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_hidden_states_and_logits_at_positions():
    model = load("llama")
    ids = torch.randint(0, 128, (2, 6))
    with torch.no_grad():
        full = model(ids)
        at = torch.tensor([5, 11, 3, 3])                       # flat row * 6 + column; a position may repeat
        picked = model(ids, logits_at=at)
        hidden = model.hidden(ids)
    assert torch.allclose(picked, full.flatten(0, 1)[at], atol=1e-6)
    assert hidden.shape == (2, 6, 64)
    assert torch.allclose(hidden @ model.lm_head.weight.T, full, atol=1e-5)


def test_output_vocab_drops_padded_embedding_rows(tmp_path):
    path = FIXTURES / "models" / "qwen2"
    full, cut = Transformer.from_pretrained(path), Transformer.from_pretrained(path, output_vocab=120)
    ids = torch.randint(0, 120, (2, 5))
    with torch.no_grad():
        a, b = full(ids), cut(ids)
    assert b.shape == (2, 5, 120) and torch.equal(a[..., :120], b)
    with pytest.raises(ValueError, match="output_vocab 129 is not in"):
        Transformer.from_pretrained(path, output_vocab=129)


def test_untied_checkpoint_without_the_config_key_stays_untied(tmp_path):
    """transformers' Qwen2/Qwen3/Llama configs default to tie_word_embeddings=False; a head that is stored is used."""
    for family in ("llama", "qwen2"):
        d = _copy(tmp_path, family)
        cfg = json.loads((d / "config.json").read_text())
        cfg.pop("tie_word_embeddings", None)
        (d / "config.json").write_text(json.dumps(cfg))
        sd = load_file(d / "model.safetensors")
        head = torch.randn(128, 64)
        sd["lm_head.weight"] = head
        save_file(sd, d / "model.safetensors")
        model = Transformer.from_pretrained(d)
        assert not model.config.tie_word_embeddings and torch.equal(model.lm_head.weight, head)
        model.save_pretrained(tmp_path / f"{family}-saved")  # the key is written, so transformers unties it too
        assert json.loads((tmp_path / f"{family}-saved" / "config.json").read_text())["tie_word_embeddings"] is False
        del sd["lm_head.weight"]  # no stored head and no key: the head can only be the embedding
        save_file(sd, d / "model.safetensors")
        assert Transformer.from_pretrained(d).config.tie_word_embeddings

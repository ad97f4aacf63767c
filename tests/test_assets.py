"""The packaged default policy: the GGUF conversion against transformers' own conversion of the same file."""
import json
import os

import torch
from safetensors.torch import load_file

from conftest import FIXTURES, needs_minilm, needs_smollm2
from rlsr import assets
from rlsr.gguf_convert import unpermute_qk
from rlsr.model import Transformer
from rlsr.tokenizer import Tokenizer


def test_unpermute_inverts_llama_cpp_permutation():
    n_head, head_dim, dim_in = 3, 8, 5
    w = torch.arange(n_head * head_dim * dim_in, dtype=torch.float32).reshape(n_head * head_dim, dim_in).numpy()
    # llama.cpp's convert_hf_to_gguf.py permutes rows (2, head_dim/2) -> (head_dim/2, 2) within each head
    permuted = w.reshape(n_head, 2, head_dim // 2, dim_in).swapaxes(1, 2).reshape(w.shape)
    assert (unpermute_qk(permuted, n_head) == w).all()


def test_cache_dir_respects_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RLSR_CACHE_DIR", str(tmp_path / "c"))
    assert assets.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("RLSR_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert assets.cache_dir() == tmp_path / "x" / "rlsr"


def test_missing_package_says_how_to_install():
    import pytest
    with pytest.raises(FileNotFoundError, match="requirements-assets.txt"):
        assets.package_dir("no_such_module_rlsr", "no-such-package")


@needs_smollm2
def test_conversion_is_cached_and_rebuilt_when_incomplete(monkeypatch, tmp_path):
    monkeypatch.setenv("RLSR_CACHE_DIR", str(tmp_path))
    path = assets.default_policy_path()
    stamp = os.stat(path / "model.safetensors").st_mtime_ns
    assert assets.default_policy_path() == path and os.stat(path / "model.safetensors").st_mtime_ns == stamp
    (path / "tokenizer.json").unlink()  # an incomplete cache entry is rebuilt, not trusted
    assert (assets.default_policy_path() / "tokenizer.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directories left


@needs_smollm2
def test_smollm2_logits_match_transformers_gguf_conversion(smollm2_path):
    ref = json.loads((FIXTURES / "smollm2_reference.json").read_text())
    want = load_file(FIXTURES / "smollm2_reference.safetensors")["logits"]
    model = Transformer.from_pretrained(smollm2_path, dtype=torch.float32)
    cfg = model.config
    assert (cfg.family, cfg.num_hidden_layers, cfg.hidden_size, cfg.num_key_value_heads, cfg.rope_theta) == \
        ("llama", 30, 576, 3, 1e5)
    ids = torch.tensor([ref["chat_prompt_ids"]])
    with torch.no_grad():
        logits = model(ids)[0, ref["logits_positions"]]
    assert (logits - want).abs().max() <= 1e-3


@needs_smollm2
def test_smollm2_greedy_answer_is_coherent(smollm2_path):
    ref = json.loads((FIXTURES / "smollm2_reference.json").read_text())
    model = Transformer.from_pretrained(smollm2_path, dtype=torch.float32)
    tok = Tokenizer.from_pretrained(smollm2_path)
    ids = torch.tensor([ref["chat_prompt_ids"]])
    out = []
    with torch.no_grad():
        for _ in range(len(ref["greedy_continuation"])):
            nxt = model(ids)[0, -1].argmax().item()
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    assert out == ref["greedy_continuation"]  # the same tokens transformers' generate() picks
    text = tok.decode(out)
    assert text.startswith("1.") and "2." in text


@needs_minilm
def test_default_encoder_path_has_sentence_transformers_layout():
    path = assets.default_encoder_path()
    for f in ("config.json", "tokenizer.json", "modules.json", "sentence_bert_config.json", "1_Pooling/config.json"):
        assert (path / f).exists(), f

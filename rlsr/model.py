"""One decoder-only transformer for four Hugging Face checkpoint families, chosen by config.json alone.

    Qwen2 / Qwen2.5  q/k/v projections carry a bias, o_proj does not; lm_head tied or not
    Qwen3            no bias; per-head RMSNorm on q and k before RoPE; head_dim is its own field
    Llama (SmolLM2)  no bias (or `attention_bias` on all four projections); usually a tied head
    Gemma 3 (text)   RMSNorm scales by (1 + w) in fp32; embeddings scaled by sqrt(hidden); GeGLU (tanh GELU);
                     four norms per block (before and after attention and MLP); q/k RMSNorm; attention scale
                     query_pre_attn_scalar^-0.5; sliding-window ("local") layers with their own RoPE base between
                     global ones, as `layer_types` says; tied head; optional tanh soft-capping of the logits
                     (config.json's attn_logit_softcapping is ignored, as transformers' Gemma3ForCausalLM ignores it:
                     Gemma 3 replaced Gemma 2's score capping by the q/k norms)

All share: pre-norm blocks, RMSNorm, rotate-half RoPE, grouped-query attention through
F.scaled_dot_product_attention, a gated MLP. The differences are switches in ModelConfig, not separate classes.
Parameter names are Hugging Face's own (`model.layers.0.self_attn.q_proj.weight`, ...), so checkpoints load and
save without a renaming table.

Conventions
- Tensors are [B, T, ...] at the block boundary and [B, H, T, D] inside attention (SDPA's layout, and the KV
  cache's, so a cache slice feeds SDPA without a transpose).
- The caller says where each token is and what it may see: `positions` [B, T] and an SDPA `mask` [B, 1, T, T_k]
  (boolean, True = may attend, or additive). rlsr/packing.py builds them for padded and packed rows; without a
  mask attention is plain causal. We never use `is_causal=True` together with a cache offset, because SDPA
  aligns that mask to the top-left corner.
- Sliding-window layers see a key only if its position is less than `sliding_window` before the query's
  (q_pos - k_pos < W, transformers' convention), on top of the caller's mask. A bidirectional model
  (`use_bidirectional_attention`, EmbeddingGemma) attends both ways: without a mask every token sees every token,
  and its sliding-window layers see |q_pos - k_pos| <= W // 2, as transformers' Gemma3TextModel does (its config
  turns W into W // 2 + 1 and its mask is |q - k| < that). The model derives that from positions,
  not columns, so packed rows (rlsr/packing.py) get the window each sequence would get alone.
- `kv_cache` is any object with `update(layer_idx, k, v) -> (k_all, v_all)` (see rlsr/sampling.py), and, for a
  model with sliding-window layers, `key_positions(positions) -> [B, T_k]`: the positions of every cached key
  after this forward's (the window needs them; a left-padded row's columns are not its positions).
- Logits cover ids [0, output_vocab): the tokenizer's real vocabulary. Qwen pads the embedding (151,665 tokens in
  151,936 rows); the padded ids are never sampled, trained or scored because no logit exists for them.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

ARCHITECTURES = {"Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3", "LlamaForCausalLM": "llama",
                 "Gemma3ForCausalLM": "gemma3"}
MODEL_TYPES = {"qwen2": "qwen2", "qwen3": "qwen3", "llama": "llama", "gemma3_text": "gemma3"}
ACTIVATIONS = {"silu": F.silu, "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}
FULL, SLIDING = "full_attention", "sliding_attention"
OPTIONAL_TENSORS = {"lm_head.weight", "model.rotary_emb.inv_freq"}  # a tied checkpoint may store a head copy


# Bounds on every size a config.json gives (an untrusted file: a million layers would hang building the model). Each
# is far above any released checkpoint of these families (Llama-3.1-405B: 126 layers, hidden 16384, MLP 53248, 128
# heads; Qwen3: 151,936 vocabulary rows; the longest contexts: ~10M positions).
SIZE_BOUNDS = {"vocab_size": 1 << 22, "hidden_size": 1 << 16, "intermediate_size": 1 << 18, "num_hidden_layers": 1024,
               "num_attention_heads": 1024, "num_key_value_heads": 1024, "head_dim": 4096,
               "max_position_embeddings": 1 << 26, "type_vocab_size": 1024}


def check_sizes(hf, source: str):
    """config.json must be an object whose sizes (those of SIZE_BOUNDS it has) are integers in [1, bound]; a
    ValueError names the file and the field."""
    if not isinstance(hf, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(hf).__name__}")
    for key, high in SIZE_BOUNDS.items():
        v = hf.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= high:
            raise ValueError(f"{source}: {key} {v!r} is not an integer in [1, {high}]")


@dataclass
class ModelConfig:
    family: str                      # "qwen2" | "qwen3" | "llama" | "gemma3"
    vocab_size: int                  # rows of the embedding; Qwen pads it past the tokenizer's real vocabulary
    hidden_size: int
    intermediate_size: int           # SwiGLU inner width
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int         # < num_attention_heads means grouped-query attention
    head_dim: int                    # explicit: Qwen3 sets it independently of hidden_size / heads
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None        # None, or Llama-3's {"rope_type": "llama3", ...}
    max_position_embeddings: int
    tie_word_embeddings: bool        # lm_head shares the embedding matrix (transformers' default: False)
    qkv_bias: bool                   # bias on q/k/v projections (Qwen2: yes)
    o_bias: bool                     # bias on the output projection (Llama `attention_bias` only)
    mlp_bias: bool
    qk_norm: bool                    # Qwen3's and Gemma 3's per-head RMSNorm on q and k
    hidden_act: str = "silu"         # the MLP gate's activation (ACTIVATIONS)
    norm_offset: bool = False        # Gemma: RMSNorm scales by (1 + w), in fp32; stored w is 0 for the identity
    sandwich_norm: bool = False      # Gemma: norms after attention and MLP too (four per block)
    embed_scale: float = 1.0         # Gemma: embeddings times sqrt(hidden), rounded to the weights' dtype as in HF
    attn_scale: float | None = None  # softmax scale; None = head_dim^-0.5 (Gemma: query_pre_attn_scalar^-0.5)
    layer_types: tuple = ()          # per layer FULL or SLIDING; empty = all full
    sliding_window: int | None = None  # keys a sliding-window query sees: q_pos - k_pos < sliding_window
    local_rope_theta: float | None = None  # RoPE base of the sliding-window layers (Gemma 3: 10,000)
    final_softcap: float | None = None   # logits -> cap * tanh(logits / cap) (Gemma 3 sets none)
    bidirectional: bool = False          # an encoder (EmbeddingGemma): no causal mask; see the module docstring
    hf: dict = field(default_factory=dict, repr=False)  # the config.json it came from, written back on save

    @classmethod
    def from_hf(cls, hf: dict, source: str = "config.json") -> "ModelConfig":
        check_sizes(hf, source)
        archs = hf.get("architectures") or []
        family = next((ARCHITECTURES[a] for a in archs if a in ARCHITECTURES), None)
        if family is None:
            family = MODEL_TYPES.get(hf.get("model_type"))
        if family is None:
            raise ValueError(f"{source}: architecture {archs or hf.get('model_type')!r} is not supported; "
                             f"supported: {', '.join(ARCHITECTURES)}")
        gemma = family == "gemma3"
        act = hf.get("hidden_activation" if gemma else "hidden_act", "gelu_pytorch_tanh" if gemma else "silu")
        if act not in ACTIVATIONS:
            raise ValueError(f"{source}: activation {act!r} is not supported; supported: {', '.join(ACTIVATIONS)}")
        if hf.get("use_sliding_window") and not gemma:
            raise ValueError(f"{source}: use_sliding_window=true is not supported")
        heads = hf["num_attention_heads"]
        attention_bias = bool(hf.get("attention_bias", False))
        n_layers = hf["num_hidden_layers"]
        # Newer transformers write RoPE settings into `rope_parameters` (Gemma 3: one dict per layer type); older ones
        # use rope_theta + rope_scaling (+ Gemma 3's rope_local_base_freq).
        rope = dict(hf.get("rope_parameters") or {})
        local_rope = None
        if gemma:
            local_rope = dict(rope.get(SLIDING) or {"rope_theta": hf.get("rope_local_base_freq", 10000.0)})
            rope = dict(rope.get(FULL) or {"rope_theta": hf.get("rope_theta", 1e6), **(hf.get("rope_scaling") or {})})
            if local_rope.get("rope_type", "default") != "default":
                raise ValueError(f"{source}: rope type {local_rope['rope_type']!r} on sliding-window layers is not "
                                 "supported (only default)")
        theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
        scaling = (None if gemma else hf.get("rope_scaling")) or (
            rope if rope.get("rope_type", rope.get("type", "default")) != "default" else None)
        if scaling is not None:
            kind = scaling.get("rope_type", scaling.get("type"))
            if kind == "default":
                scaling = None
            elif kind not in ("llama3", "linear"):
                raise ValueError(f"{source}: rope type {kind!r} is not supported (only default, linear and llama3)")
        layer_types = ()
        if gemma:  # transformers' default when config.json lists none: every `sliding_window_pattern`-th layer global
            pattern = hf.get("sliding_window_pattern", 6)
            layer_types = tuple(hf.get("layer_types") or [SLIDING if (i + 1) % pattern else FULL
                                                          for i in range(n_layers)])
            if len(layer_types) != n_layers or not set(layer_types) <= {FULL, SLIDING}:
                raise ValueError(f"{source}: layer_types must list {FULL!r} or {SLIDING!r} for each of the "
                                 f"{n_layers} layers")
        if heads % (hf.get("num_key_value_heads") or heads) or not (hf.get("head_dim") or hf["hidden_size"] // heads):
            raise ValueError(f"{source}: num_attention_heads {heads} is not a multiple of num_key_value_heads, or "
                             "hidden_size is smaller than the head count")
        return cls(
            family=family,
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=n_layers,
            num_attention_heads=heads,
            num_key_value_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            rope_scaling=scaling,
            max_position_embeddings=hf.get("max_position_embeddings", 32768),
            # transformers' default differs: Gemma 3's config ties unless told otherwise, the others untie
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", gemma)),
            qkv_bias=True if family == "qwen2" else attention_bias,
            o_bias=attention_bias if family in ("llama", "gemma3") else False,
            mlp_bias=bool(hf.get("mlp_bias", False)),
            qk_norm=family in ("qwen3", "gemma3"),
            hidden_act=act,
            norm_offset=gemma,
            sandwich_norm=gemma,
            embed_scale=hf["hidden_size"] ** 0.5 if gemma else 1.0,
            attn_scale=hf.get("query_pre_attn_scalar", 256) ** -0.5 if gemma else None,
            layer_types=layer_types,
            sliding_window=hf.get("sliding_window", 4096) if SLIDING in layer_types else None,
            local_rope_theta=float(local_rope.get("rope_theta", 10000.0)) if gemma else None,
            final_softcap=hf.get("final_logit_softcapping") if gemma else None,
            bidirectional=gemma and bool(hf.get("use_bidirectional_attention")),  # transformers reads it for Gemma
            hf=dict(hf),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        try:
            hf = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
        try:
            return cls.from_hf(hf, str(path))
        except KeyError as e:
            raise ValueError(f"{path}: required field {e.args[0]!r} is missing") from None


class RMSNorm(nn.Module):
    """Normalise in fp32. Llama/Qwen then cast back and scale by w; Gemma (offset=True) scales by (1 + w) in fp32 and
    casts last. Each is the order its Hugging Face class uses, which matters in bf16."""

    def __init__(self, dim: int, eps: float, offset: bool = False):
        super().__init__()
        self.eps, self.offset = eps, offset
        self.weight = nn.Parameter(torch.zeros(dim) if offset else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        if self.offset:
            return (y * (1.0 + self.weight.float())).to(x.dtype)
        return self.weight * y.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """Rotate-half RoPE (the Hugging Face/Qwen convention: dims [0, D/2) pair with [D/2, D)).

    The frequencies are a plain fp32 attribute, not a buffer, so model.to(bfloat16) cannot round them and
    building the model on the meta device leaves them real.
    """

    def __init__(self, head_dim: int, theta: float, scaling: dict | None = None):
        super().__init__()
        d, s = head_dim, scaling
        inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32, device="cpu") / d)
        if s is not None and s.get("rope_type", s.get("type")) == "linear":  # positions divided by `factor`
            inv_freq = inv_freq / s["factor"]
        elif s is not None:  # Llama 3.1: stretch low frequencies by `factor`, keep high ones, blend in between
            old_ctx = s["original_max_position_embeddings"]
            wavelen = 2 * math.pi / inv_freq
            smooth = (old_ctx / wavelen - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])
            blended = (1 - smooth) * inv_freq / s["factor"] + smooth * inv_freq
            inv_freq = torch.where(wavelen > old_ctx / s["low_freq_factor"], inv_freq / s["factor"],
                                   torch.where(wavelen < old_ctx / s["high_freq_factor"], inv_freq, blended))
        self.inv_freq = inv_freq                                        # [D/2], fp32

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if self.inv_freq.device != positions.device:
            self.inv_freq = self.inv_freq.to(positions.device)
        angles = positions[..., None].float() * self.inv_freq          # [B, T, D/2], fp32
        angles = torch.cat([angles, angles], dim=-1)[:, None]           # [B, 1, T, D]
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)                                         # [B, H, T, D/2] each
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        if self.n_heads % self.n_kv:
            raise ValueError(f"num_attention_heads {self.n_heads} is not a multiple of num_key_value_heads {self.n_kv}")
        d, hd = cfg.hidden_size, cfg.head_dim
        self.q_proj = nn.Linear(d, self.n_heads * hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(d, self.n_kv * hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(d, self.n_kv * hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * hd, d, bias=cfg.o_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(hd, cfg.rms_norm_eps, cfg.norm_offset)
            self.k_norm = RMSNorm(hd, cfg.rms_norm_eps, cfg.norm_offset)
        self.scale = cfg.attn_scale
        self.causal = not cfg.bidirectional  # what mask=None means

    def forward(self, x, cos, sin, mask, kv_cache):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)     # [B, T, H, D]
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim)        # [B, T, Hkv, D]
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim)
        if hasattr(self, "q_norm"):                                     # Qwen3, Gemma: normalise each head before RoPE
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H(kv), T, D]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)               # [B, Hkv, T_past + T, D]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and self.causal,
                                           scale=self.scale,
                                           enable_gqa=self.n_kv != self.n_heads)  # [B, H, T, D]
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)
        self.act = ACTIVATIONS[cfg.hidden_act]

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """One layer. Pre-norm (Llama, Qwen): x + attn(norm(x)), then x + mlp(norm(x)); the second norm is HF's
    `post_attention_layernorm`. Sandwich (Gemma): each sublayer's output is normalised too before the residual add:
    x + post_attention_layernorm(attn(input_layernorm(x))), x + post_feedforward_layernorm(mlp(
    pre_feedforward_layernorm(x))). The caller chooses what the block sees (mask, RoPE tables), so an encoder can run
    the same block bidirectionally."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        d, eps, off = cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_offset
        self.sliding = bool(cfg.layer_types) and cfg.layer_types[layer_idx] == SLIDING
        self.input_layernorm = RMSNorm(d, eps, off)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(d, eps, off)
        if cfg.sandwich_norm:
            self.pre_feedforward_layernorm = RMSNorm(d, eps, off)
            self.post_feedforward_layernorm = RMSNorm(d, eps, off)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, kv_cache=None):
        h = self.self_attn(self.input_layernorm(x), cos, sin, mask, kv_cache)
        if not hasattr(self, "post_feedforward_layernorm"):
            x = x + h
            return x + self.mlp(self.post_attention_layernorm(x))
        x = x + self.post_attention_layernorm(h)
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


def sliding_window_mask(mask: torch.Tensor | None, q_pos: torch.Tensor, k_pos: torch.Tensor,
                        window: int, bidirectional: bool = False) -> torch.Tensor:
    """The mask of a sliding-window layer: `mask` (None = causal by position, or everything when bidirectional; bool
    or additive [B, 1, T, T_k]) and q_pos - k_pos < window (bidirectional: |q_pos - k_pos| <= window // 2).
    q_pos [B, T], k_pos [B, T_k]."""
    dist = q_pos[:, None, :, None] - k_pos[:, None, None, :]                          # [B, 1, T, T_k]
    near = dist.abs() <= window // 2 if bidirectional else dist < window
    if mask is None:
        return near if bidirectional else near & (dist >= 0)
    if mask.dtype == torch.bool:
        return mask & near
    return mask.masked_fill(~near, float("-inf"))


class Decoder(nn.Module):
    """The trunk; it sits at `Transformer.model` so parameter names match Hugging Face's."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_offset)
        self.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        if SLIDING in cfg.layer_types:  # Gemma 3: the local layers' own base, unscaled
            self.rotary_emb_local = RotaryEmbedding(cfg.head_dim, cfg.local_rope_theta)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Decoder(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.gradient_checkpointing = False  # recompute each block in backward: less memory, ~1/3 more compute
        self.output_vocab = cfg.vocab_size   # set to the tokenizer's size when the embedding is padded past it

    def trunk(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None, mask: torch.Tensor | None = None,
              kv_cache=None) -> torch.Tensor:
        """input_ids [B, T] -> the last block's output [B, T, hidden], before the final norm.

        positions [B, T] (default 0..T-1 in every row; required with a kv_cache), mask [B, 1, T, T_k] (default:
        causal over these T tokens only; a bidirectional model: every token).
        """
        B, T = input_ids.shape
        if positions is None:
            if kv_cache is not None:
                raise ValueError("a kv_cache needs explicit positions")
            positions = torch.arange(T, device=input_ids.device).expand(B, T)
        x = self.model.embed_tokens(input_ids)                                        # [B, T, hidden]
        if self.config.embed_scale != 1.0:  # Gemma: sqrt(hidden) in the weights' dtype (bf16: 25.25 for 640)
            x = x * torch.tensor(self.config.embed_scale, dtype=x.dtype)
        rope = {False: self.model.rotary_emb(positions, x.dtype)}                     # cos, sin [B, 1, T, head_dim]
        masks = {False: mask}
        if hasattr(self.model, "rotary_emb_local"):
            rope[True] = self.model.rotary_emb_local(positions, x.dtype)
            k_pos = positions if kv_cache is None else kv_cache.key_positions(positions)  # [B, T_k]
            masks[True] = sliding_window_mask(mask, positions, k_pos, self.config.sliding_window,
                                              self.config.bidirectional)
        for block in self.model.layers:
            (cos, sin), m = rope[block.sliding], masks[block.sliding]
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, cos, sin, m, kv_cache, use_reentrant=False)
            else:
                x = block(x, cos, sin, m, kv_cache)
        return x

    def hidden(self, input_ids, positions=None, mask=None, kv_cache=None) -> torch.Tensor:
        """Final-norm hidden states [B, T, hidden] (what embedding models pool)."""
        return self.model.norm(self.trunk(input_ids, positions, mask, kv_cache))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                kv_cache=None, logits_at: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, T] -> logits [B, T, output_vocab], or [N, output_vocab] at the flat positions `logits_at`
        [N] (row * T + column; training needs the positions that predict a target only)."""
        x = self.trunk(input_ids, positions, mask, kv_cache)
        if logits_at is not None:
            # index_select, not x[rows, cols]: a position selected twice (a shared prompt's last token predicts every
            # completion's first) gets its gradients summed in a fixed order; advanced indexing's backward adds them
            # with CPU atomics, in an order that changes from run to run.
            x = x.flatten(0, 1).index_select(0, logits_at)                            # [N, hidden]
        logits = self.lm_head(self.model.norm(x))[..., :self.output_vocab]           # [..., output_vocab], a view
        cap = self.config.final_softcap
        return logits if cap is None else cap * torch.tanh(logits / cap)

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def tie_weights(self):
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @classmethod
    def check_pretrained(cls, path: str | Path) -> tuple[ModelConfig, dict[str, torch.Size]]:
        """Check an HF-layout directory without loading its weights: config.json parses and is supported, and the
        stored tensors (read from the safetensors headers) are the ones this config needs, with their shapes. A
        config.json without `tie_word_embeddings` is untied, as in transformers, unless the checkpoint stores no
        lm_head.weight (then the head can only be the embedding). Returns the config and the expected shapes."""
        from rlsr.checkpoint import check_tensors, stored_shapes
        path = Path(path)
        cfg = ModelConfig.from_file(path / "config.json")
        if cfg.bidirectional:
            raise ValueError(f"{path / 'config.json'}: use_bidirectional_attention=true is an encoder (an embedding "
                             "model), not a causal language model")
        stored = stored_shapes(path)
        if "tie_word_embeddings" not in cfg.hf and "lm_head.weight" not in stored:
            cfg = replace(cfg, tie_word_embeddings=True)
        with torch.device("meta"):
            expected = {k: v.shape for k, v in cls(cfg).state_dict().items()}
        if cfg.tie_word_embeddings:
            expected.pop("lm_head.weight")
        check_tensors(path, stored, expected, OPTIONAL_TENSORS)
        return cfg, expected

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None, output_vocab: int | None = None) -> "Transformer":
        """Load an HF-layout directory (config.json + model.safetensors or a sharded index), checked first
        (`check_pretrained`).

        dtype None keeps the dtype the weights are stored in; device None means CPU. output_vocab: the tokenizer's
        vocabulary size (rlsr.tokenizer.Tokenizer.vocab_size) when the embedding has more rows than real tokens.
        """
        from rlsr.checkpoint import load_safetensors_dir
        path = Path(path)
        cfg, expected = cls.check_pretrained(path)
        with torch.device("meta"):
            model = cls(cfg)
        tensors = load_safetensors_dir(path, expected, OPTIONAL_TENSORS, dtype=dtype, device=device)
        tensors.pop("model.rotary_emb.inv_freq", None)
        if cfg.tie_word_embeddings:
            tensors.pop("lm_head.weight", None)  # some tied checkpoints store a copy; HF ignores it too
        model.load_state_dict(tensors, strict=False, assign=True)
        model.tie_weights()  # `assign` replaced the shared Parameter; share it again
        if output_vocab is not None:
            if not 0 < output_vocab <= cfg.vocab_size:
                raise ValueError(f"{path}: output_vocab {output_vocab} is not in [1, vocab_size {cfg.vocab_size}]")
            model.output_vocab = output_vocab
        return model.eval()

    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None, max_shard_bytes: int = 5 << 30,
                        state_dict: dict | None = None):
        """Write config.json + safetensors (sharded above max_shard_bytes) into `path`, as transformers expects.

        A tied lm_head is not stored (transformers re-ties it from tie_word_embeddings). state_dict: the full weights
        when this module holds only a shard of them (FSDP).
        """
        from rlsr.checkpoint import save_safetensors_dir
        sd = state_dict if state_dict is not None else self.state_dict()
        sd = {k: v for k, v in sd.items() if not (k == "lm_head.weight" and self.config.tie_word_embeddings)}
        dtype = dtype or next(iter(sd.values())).dtype
        hf = dict(self.config.hf, tie_word_embeddings=self.config.tie_word_embeddings)  # explicit: the default differs
        for key in {"torch_dtype"} | ({"dtype"} & hf.keys()):  # transformers 5 writes `dtype`, 4.x `torch_dtype`
            hf[key] = str(dtype).removeprefix("torch.")
        save_safetensors_dir(path, sd, hf, dtype=dtype, max_shard_bytes=max_shard_bytes)


def check_model_dir(path: str | Path, chat_template: str | None = None):
    """Everything a script checks in an HF-layout directory before using it, without loading weights: config.json
    (supported, sizes bounded), the safetensors headers against it (names, shapes, file sizes), the tokenizer and its
    chat template or `chat_template` (jinja source) instead (which must render a one-turn conversation, under
    rlsr/tokenizer.py's bounds), and a vocabulary that fits the embedding. Returns (config, tokenizer); a ValueError
    names the file and what is wrong with it."""
    from rlsr.tokenizer import Tokenizer
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory (an HF-layout checkpoint)")
    if not (path / "config.json").exists():
        raise ValueError(f"{path / 'config.json'} is missing")
    try:
        cfg, _ = Transformer.check_pretrained(path)
    except FileNotFoundError as e:
        raise ValueError(str(e)) from None
    try:
        tok = Tokenizer.from_pretrained(path, chat_template=chat_template)
        tok.apply_chat_template([{"role": "user", "content": "Hello"}], add_generation_prompt=True)
    except Exception as e:  # tokenizers and jinja2 raise their own types; any of them means "cannot be used"
        raise ValueError(f"the tokenizer in {path} does not load: {type(e).__name__}: {e}") from None
    if tok.vocab_size > cfg.vocab_size:
        raise ValueError(f"{path}: the tokenizer has {tok.vocab_size} tokens, more than the model's vocab_size "
                         f"{cfg.vocab_size} (config.json)")
    return cfg, tok

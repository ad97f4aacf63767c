"""The frozen sentence encoder behind the RLSR reward: texts -> unit-norm embeddings whose dot product is the cosine.

It reads a sentence-transformers directory (modules.json: Transformer -> Pooling [-> Dense ...] [-> Normalize]) and
reproduces `SentenceTransformer.encode` for four kinds of checkpoint, chosen by config.json's `model_type` and the
pooling:

    bert, mean pooling        all-MiniLM-L6-v2 (the default): HF `BertModel`; the tokenizer's own post-processor
                              adds [CLS] ... [SEP]; mean over the real tokens
    mpnet, mean pooling       all-mpnet-base-v2: HF `MPNetModel`; the post-processor adds <s> ... </s>; mean over
                              the real tokens
    decoder, last token       Qwen3-Embedding style (the paper's Qwen-EM): config.json is a Qwen2/Qwen3/Llama
                              decoder run by rlsr.model.Transformer; <|endoftext|> is appended to every text and its
                              final-norm hidden state is the embedding
    gemma3_text, mean pooling EmbeddingGemma-300M: rlsr.model.Transformer's Gemma 3 blocks run bidirectionally
                              (config.json's use_bidirectional_attention; the local layers see 256 tokens either
                              side); the post-processor adds <bos> ... <eos>; mean over the real tokens, then two
                              Dense modules (768 -> 3072 -> 768, no bias, identity activation)

Conventions
- Truncation is sentence-transformers': at `max_seq_length` of sentence_bert_config.json, counting the special
  tokens, which always survive. tokenizer.json's own truncation and padding (MiniLM's and MPNet's say 128) are
  overridden.
- Prompts: a directory whose config_sentence_transformers.json defines prompts is embedded with one of them,
  prepended to every text (as `SentenceTransformer.encode(prompt=...)`): the "STS" prompt when there is one
  (EmbeddingGemma: "task: sentence similarity | query: ", the model card's prompt for judging how similar two texts
  are, which is what the reward asks; response and reference are embedded alike, so the cosine stays symmetric),
  else the default_prompt_name's, else none. Qwen3-Embedding defines only retrieval prompts ("query"), for the
  query side of a search, and none is the default: its texts get no prompt. The prompt's tokens count towards
  max_seq_length and are pooled (Pooling's include_prompt, the only setting supported).
- Dense modules (sentence-transformers' Dense: a Linear and an activation, identity only here) follow the pooling,
  in modules.json's order, before the normalisation.
- Normalize is applied when modules.json names a Normalize module, whether or not its folder exists:
  all-mpnet-base-v2 names `2_Normalize` and ships no such folder, and sentence-transformers then builds the
  default `Normalize()` (its config loader returns {} for a missing file), an L2 normalisation of the pooled
  embedding, `F.normalize(x, p=2, dim=-1)`. We do the same.
- Batches are right-padded; `mask` [B, T] marks real tokens. A bidirectional decoder lets every query see every real
  key (and itself: a pad query far from the real tokens would otherwise see nothing in a sliding window). Within
  one `encode` call texts are sorted by length before batching, so similar lengths share a batch, and the output
  is put back in input order.
- The encoder never trains: parameters have requires_grad=False and `encode` runs under torch.no_grad (not
  inference_mode, whose tensors cannot later meet autograd, e.g. reward * log-prob).
- `token_states` gives per-token hidden states of the BERT and MPNet encoders for BERTScore, indexed as HF's
  `output_hidden_states`: 0 is the embedding output, k the output of block k.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tokenizers import Tokenizer as HFTokenizer

from rlsr.checkpoint import shard_files, load_safetensors_dir
from rlsr.model import ModelConfig, Transformer, check_sizes
from rlsr.packing import padding_mask, positions_from_mask
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
        check_sizes(hf, source)
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


def _load_weights(model_cls, cfg, path: Path, unused: set[str], dtype, device) -> nn.Module:
    """Build `model_cls(cfg)` on the meta device and assign the checkpoint's tensors, names checked one to one."""
    with torch.device("meta"):
        model = model_cls(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    tensors = load_safetensors_dir(path, expected, optional=unused, dtype=dtype, device=device)
    model.load_state_dict({k: v for k, v in tensors.items() if k not in unused}, assign=True)
    return model.eval()


# Ignored if present: the `embeddings.position_ids` buffer (an arange) and the pooler, which sentence-transformers
# never runs.
UNUSED_TENSORS = {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}


class Bert(nn.Module):
    """HF `BertModel` without its pooler (sentence-transformers pools the token states itself)."""
    pad_id = 0  # [PAD]; pad positions never reach a real token (masked keys) and are dropped by the pooling

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = nn.ModuleDict({"layer": nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))})

    @property
    def max_tokens(self) -> int:
        """Longest input the position table covers, special tokens included."""
        return self.config.max_position_embeddings

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, n_blocks: int | None = None) -> torch.Tensor:
        """ids, mask [B, T] -> hidden states [B, T, d] after the first `n_blocks` blocks (None: all), i.e. HF's
        `hidden_states[n_blocks]`. Pad positions come out as garbage; pool with `mask`."""
        # Every query sees the real keys only. A batch without padding needs no mask (SDPA's faster path).
        attn_mask = None if bool(mask.all()) else mask.bool()[:, None, None, :]     # [B, 1, 1, T]
        x = self.embeddings(ids)                                                    # [B, T, d]
        for layer in self.encoder.layer[:n_blocks]:
            x = layer(x, attn_mask)
        return x

    @classmethod
    def from_pretrained(cls, path: Path, dtype: torch.dtype | None = None, device=None) -> "Bert":
        cfg = BertConfig.from_hf(read_json(path / "config.json"), str(path / "config.json"))
        return _load_weights(cls, cfg, path, UNUSED_TENSORS, dtype, device)


# MPNet. Its two differences from BERT: attention logits get a learned bias per head and per bucket of the
# key - query offset (T5-style buckets, one table shared by all layers), and absolute positions count from the
# padding index, as fairseq's RoBERTa does. There are no token-type embeddings.
MPNET_PAD = 1                 # HF MPNetEmbeddings hard-codes padding_idx = 1 (<pad>), whatever config.json says
MPNET_BUCKETS = 32            # HF MPNetEncoder.compute_position_bias always buckets into 32 (its default argument)
MPNET_MAX_DISTANCE = 128      # offsets of 128 and more share the last bucket of their direction


@dataclass
class MPNetConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int          # rows of the position table; ids start at MPNET_PAD + 1
    relative_attention_num_buckets: int   # rows of the relative-bias table
    layer_norm_eps: float

    @classmethod
    def from_hf(cls, hf: dict, source: str = "config.json") -> "MPNetConfig":
        check_sizes(hf, source)
        if hf.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported (only exact 'gelu')")
        buckets = hf.get("relative_attention_num_buckets", MPNET_BUCKETS)
        if buckets != MPNET_BUCKETS:  # HF would bucket into 32 regardless, and index past a smaller table
            raise ValueError(f"{source}: relative_attention_num_buckets {buckets} is not supported "
                             f"(HF MPNet always uses {MPNET_BUCKETS})")
        try:
            return cls(**{f.name: hf[f.name] for f in fields(cls)
                          if f.name not in ("layer_norm_eps", "relative_attention_num_buckets")},
                       relative_attention_num_buckets=buckets, layer_norm_eps=hf.get("layer_norm_eps", 1e-12))
        except KeyError as e:
            raise ValueError(f"{source}: required field {e.args[0]!r} is missing") from None


def relative_position_bucket(offset: torch.Tensor, num_buckets: int = MPNET_BUCKETS,
                             max_distance: int = MPNET_MAX_DISTANCE) -> torch.Tensor:
    """Bucket of each key - query offset, as HF's `MPNetEncoder.relative_position_bucket`.

    Half the buckets are for keys after the query (offset > 0, buckets num_buckets/2 ...), half for keys at or
    before it. Within a half, distances below num_buckets/4 get a bucket each; larger ones share log-spaced
    buckets up to max_distance, and everything beyond falls in the half's last bucket.
    """
    half = num_buckets // 2
    n = -offset                                                                     # query - key
    bucket = (n < 0).long() * half
    n = n.abs()
    exact = half // 2
    # Written as HF writes it, in float32, so every offset lands in the same bucket (n = 0 takes the exact branch).
    large = exact + (torch.log(n.float() / exact) / math.log(max_distance / exact) * (half - exact)).long()
    large = large.clamp(max=half - 1)
    return bucket + torch.where(n < exact, n, large)


class MPNetEmbeddings(nn.Module):
    def __init__(self, cfg: MPNetConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # HF's create_position_ids_from_input_ids: the i-th non-pad token sits at MPNET_PAD + i (i from 1), a pad
        # id at MPNET_PAD itself. With right padding, the real tokens get MPNET_PAD + 1 ... MPNET_PAD + length.
        real = ids.ne(MPNET_PAD).long()                                             # [B, T]
        positions = real.cumsum(1) * real + MPNET_PAD                               # [B, T]
        return self.LayerNorm(self.word_embeddings(ids) + self.position_embeddings(positions))  # [B, T, d]


class MPNetLayer(nn.Module):
    def __init__(self, cfg: MPNetConfig):
        super().__init__()
        d, eps = cfg.hidden_size, cfg.layer_norm_eps
        self.n_heads = cfg.num_attention_heads
        # ModuleDicts only to reproduce HF's parameter names (attention.attn.q.weight, attention.LayerNorm.weight).
        self.attention = nn.ModuleDict({"attn": nn.ModuleDict({name: nn.Linear(d, d) for name in "qkvo"}),
                                        "LayerNorm": nn.LayerNorm(d, eps=eps)})
        self.intermediate = nn.ModuleDict({"dense": nn.Linear(d, cfg.intermediate_size)})
        self.output = DenseNorm(cfg.intermediate_size, d, eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """bias: additive attention logits [B or 1, H, T, T], the relative position bias plus the padding mask."""
        B, T, d = x.shape
        att = self.attention["attn"]
        q, k, v = (proj(x).view(B, T, self.n_heads, -1).transpose(1, 2)            # [B, H, T, D]
                   for proj in (att.q, att.k, att.v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)                 # [B, H, T, D], scale 1/sqrt(D)
        x = self.attention.LayerNorm(att.o(y.transpose(1, 2).reshape(B, T, d)) + x)  # [B, T, d], post-LN
        return self.output(F.gelu(self.intermediate.dense(x)), x)                   # exact (erf) GELU, as HF "gelu"


class MPNet(nn.Module):
    """HF `MPNetModel` without its pooler, for sentence-transformers' MPNet checkpoints (all-mpnet-base-v2)."""
    pad_id = MPNET_PAD  # padding with <pad> keeps HF's position ids: a pad never advances the count

    def __init__(self, cfg: MPNetConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = MPNetEmbeddings(cfg)
        self.encoder = nn.ModuleDict({
            "layer": nn.ModuleList(MPNetLayer(cfg) for _ in range(cfg.num_hidden_layers)),
            "relative_attention_bias": nn.Embedding(cfg.relative_attention_num_buckets, cfg.num_attention_heads)})

    @property
    def max_tokens(self) -> int:
        """Longest input the position table covers: positions run MPNET_PAD + 1 ... MPNET_PAD + T."""
        return self.config.max_position_embeddings - MPNET_PAD - 1

    def position_bias(self, T: int, device) -> torch.Tensor:
        """[1, H, T, T]: bias[0, h, i, j] for query i and key j, from the offset j - i (not from the position ids)."""
        pos = torch.arange(T, device=device)
        bucket = relative_position_bucket(pos[None, :] - pos[:, None])             # [T, T]
        return self.encoder.relative_attention_bias(bucket).permute(2, 0, 1)[None]  # [1, H, T, T]

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, n_blocks: int | None = None) -> torch.Tensor:
        """ids, mask [B, T] -> hidden states [B, T, d] after the first `n_blocks` blocks (None: all), i.e. HF's
        `hidden_states[n_blocks]`. Pad positions must hold MPNet.pad_id; they come out as garbage."""
        x = self.embeddings(ids)                                                    # [B, T, d]
        bias = self.position_bias(ids.shape[1], ids.device).to(x.dtype)             # [1, H, T, T], once for all layers
        if not bool(mask.all()):  # every query sees the real keys only
            bias = bias.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))  # [B, H, T, T]
        for layer in self.encoder.layer[:n_blocks]:
            x = layer(x, bias)
        return x

    @classmethod
    def from_pretrained(cls, path: Path, dtype: torch.dtype | None = None, device=None) -> "MPNet":
        cfg = MPNetConfig.from_hf(read_json(path / "config.json"), str(path / "config.json"))
        return _load_weights(cls, cfg, path, UNUSED_TENSORS, dtype, device)


# config.json `model_type` -> bidirectional encoder class; any other type is read as a decoder.
BIDIRECTIONAL = {"bert": Bert, "mpnet": MPNet}
BIDIRECTIONAL_TYPES = tuple(BIDIRECTIONAL.values())


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
    if not cfg.get("include_prompt", True):
        raise ValueError(f"{path}: include_prompt false is not supported (the prompt's tokens are pooled)")
    return modes[0]


PROMPT_NAME = "STS"  # the prompt for sentence similarity; see the module docstring
IDENTITY = "torch.nn.modules.linear.Identity"


def _prompt(path: Path) -> str:
    """The prompt every text is embedded with (module docstring): "STS", else the default prompt, else none."""
    cfg = read_json(path)  # {} when the file is missing
    prompts = cfg.get("prompts") or {}
    name = PROMPT_NAME if PROMPT_NAME in prompts else cfg.get("default_prompt_name")
    if name is not None and name not in prompts:
        raise ValueError(f"{path}: default_prompt_name {name!r} is not among the prompts {sorted(prompts)}")
    return prompts[name] if name is not None else ""


def _load_dense(path: Path, dtype, device) -> nn.Linear:
    """sentence-transformers' Dense module at `path` (config.json + model.safetensors, `linear.weight` [out, in])."""
    cfg = read_json(path / "config.json")
    # sentence-transformers' default activation is Tanh; only the identity (EmbeddingGemma's) is supported
    act = cfg.get("activation_function", "torch.nn.modules.activation.Tanh")
    if act != IDENTITY:
        raise ValueError(f"{path / 'config.json'}: activation_function {act!r} is not supported (only {IDENTITY})")
    try:
        d_in, d_out, bias = cfg["in_features"], cfg["out_features"], cfg.get("bias", True)
    except KeyError as e:
        raise ValueError(f"{path / 'config.json'}: required field {e.args[0]!r} is missing") from None
    with torch.device("meta"):
        dense = nn.Linear(d_in, d_out, bias=bias)
    expected = {"linear." + k: v.shape for k, v in dense.state_dict().items()}
    tensors = load_safetensors_dir(path, expected, dtype=dtype, device=device)
    dense.load_state_dict({k.removeprefix("linear."): v for k, v in tensors.items()}, assign=True)
    return dense


class Encoder(nn.Module):
    """`Encoder.from_pretrained(path).encode(texts)`; the reward is the dot product of two rows."""

    def __init__(self, model: nn.Module, tokenizer: HFTokenizer, pooling: str, normalize: bool, max_seq_length: int,
                 end_id: int | None = None, lowercase: bool = False, prompt: str = "",
                 dense: list[nn.Linear] = ()):
        super().__init__()
        self.model = model.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self.pooling = pooling                  # "mean" | "lasttoken"
        self.normalize = normalize              # a Normalize module follows the pooling
        self.max_seq_length = max_seq_length    # tokens per text, special tokens and prompt included
        self.end_id = end_id                    # last-token decoders: the token appended to every text, else None
        self.lowercase = lowercase              # sentence_bert_config.json `do_lower_case`
        self.prompt = prompt                    # prepended to every text
        self.dense = nn.ModuleList(dense).requires_grad_(False)  # after the pooling, in order
        self.dim = dense[-1].out_features if dense else model.config.hidden_size
        # what fills pad positions: BERT's [PAD], MPNet's <pad> (its position ids skip it); a decoder never attends to
        # a pad (causal, or a masked key when bidirectional), so any id does
        self.pad_id = getattr(model, "pad_id", 0)
        self._truncating = {max_seq_length: tokenizer}  # max_length -> tokenizer truncating there (token_states)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32, device=None) -> "Encoder":
        path = Path(path)
        listed = [(m["type"].rsplit(".", 1)[-1], path / m["path"]) for m in read_json(path / "modules.json")]
        kinds = [kind for kind, _ in listed]
        if kinds[:2] != ["Transformer", "Pooling"] or set(kinds[2:]) - {"Dense", "Normalize"} \
                or "Normalize" in kinds[2:-1]:
            raise ValueError(f"{path / 'modules.json'}: modules {kinds} are not supported (Transformer, Pooling, "
                             "optionally Dense modules, optionally Normalize last)")
        root, pooling_dir = listed[0][1], listed[1][1]
        pooling = _pooling_mode(pooling_dir / "config.json")
        st = read_json(root / "sentence_bert_config.json")
        tk = HFTokenizer.from_file(str(root / "tokenizer.json"))
        tk.no_padding()  # we pad each batch ourselves
        model_type = read_json(root / "config.json").get("model_type")
        if model_type in BIDIRECTIONAL:
            model = BIDIRECTIONAL[model_type].from_pretrained(root, dtype, device)
            max_len = min(st.get("max_seq_length") or model.max_tokens, model.max_tokens)
        else:
            model = load_decoder(root, dtype, device)
            max_len = st.get("max_seq_length") or model.config.max_position_embeddings
        end_id = None
        if model_type in BIDIRECTIONAL or pooling == "mean":
            # the post-processor adds the special tokens (BERT's [CLS] ... [SEP], EmbeddingGemma's <bos> ... <eos>);
            # truncation counts them and keeps them
            tk.enable_truncation(max_len)
        else:  # a last-token decoder
            tk.no_truncation()  # we truncate ourselves, to keep the appended end token
            # Qwen3-Embedding's tokenizer appends <|endoftext|> (not its eos, <|im_end|>); fall back to the eos.
            eos = token_str(read_json(root / "tokenizer_config.json").get("eos_token"))
            end_id = next((i for i in map(tk.token_to_id, filter(None, ["<|endoftext|>", eos])) if i is not None), None)
            if end_id is None:
                raise ValueError(f"{root}: the tokenizer has neither <|endoftext|> nor an eos_token to end texts with")
        dense = [_load_dense(d, dtype, device) for kind, d in listed if kind == "Dense"]
        for a, b in zip([model.config.hidden_size] + [d.out_features for d in dense], dense):
            if a != b.in_features:
                raise ValueError(f"{path / 'modules.json'}: a Dense module takes {b.in_features} features, "
                                 f"its input has {a}")
        # Normalize is honoured even when its folder is missing (all-mpnet-base-v2), as sentence-transformers does.
        return cls(model, tk, pooling, "Normalize" in kinds, max_len, end_id, bool(st.get("do_lower_case")),
                   _prompt(path / "config_sentence_transformers.json"), dense)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: list[str]) -> tuple[list[list[int]], list[bool]]:
        """texts -> (token ids as the model sees them, whether each text lost tokens to truncation)."""
        texts = [self.prompt + t for t in texts]
        texts = [t.lower() for t in texts] if self.lowercase else texts
        if self.end_id is None:  # BERT/MPNet: tokenizers' truncation keeps the rest in `overflowing`
            encodings = self.tokenizer.encode_batch(texts)
            return [e.ids for e in encodings], [bool(e.overflowing) for e in encodings]
        room = self.max_seq_length - 1  # for the text; the end token takes the last position
        ids = [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]
        return [x[:room] + [self.end_id] for x in ids], [len(x) > room for x in ids]

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 16, return_truncated: bool = False):
        """texts -> float32 CPU embeddings [N, dim] (unit rows when normalising), and truncation flags [N] if asked."""
        ids, truncated = self.tokenize(texts)
        out = torch.empty(len(ids), self.dim)                                       # [N, dim]
        # Batches of similar lengths (sorted by token count): each pads only to its own longest text, so little
        # compute goes to padding and a batch of short texts keeps small activations.
        for rows in self._batches(ids, batch_size):
            out[rows] = self._embed([ids[i] for i in rows]).cpu()
        truncated = torch.tensor(truncated, dtype=torch.bool)                      # [N]
        return (out, truncated) if return_truncated else out

    @torch.no_grad()
    def token_states(self, texts: list[str], layer: int | None = None, max_length: int | None = None,
                     batch_size: int = 16) -> list[tuple[list[int], torch.Tensor]]:
        """Per text, in input order: (its token ids, special tokens included, after truncation; its fp32 CPU hidden
        states [T_i, d] at `layer`), for BERTScore. BERT and MPNet encoders only.

        layer: HF `hidden_states` indexing, 0 = embedding output, k = output of block k, None = the last block.
        max_length: tokens kept per text, special tokens included (they always survive); None = max_seq_length.
        BERTScore truncates at the tokenizer's model_max_length (512 for both packaged encoders), longer than
        sentence-transformers' limit; it may not exceed what the position table covers. Texts are tokenized by
        tokenizer.json alone, as transformers' tokenizer does: sentence_bert_config's do_lower_case is a
        sentence-transformers step and is not applied. A blank text gives the special tokens alone.
        """
        if not isinstance(self.model, BIDIRECTIONAL_TYPES):
            raise ValueError(f"token_states is not supported for a decoder encoder "
                             f"({type(self.model).__name__}, last-token pooling); only BERT and MPNet encoders")
        n_layers = self.model.config.num_hidden_layers
        layer = n_layers if layer is None else layer
        if not 0 <= layer <= n_layers:
            raise ValueError(f"layer {layer} is out of range: 0 (embeddings) ... {n_layers} (last block)")
        tk = self._tokenizer_at(self.max_seq_length if max_length is None else max_length)
        ids = [e.ids for e in tk.encode_batch(list(texts))]
        out: list[torch.Tensor | None] = [None] * len(ids)
        for rows in self._batches(ids, batch_size):
            batch = [ids[i] for i in rows]
            h = self.model(*self._pad(batch), n_blocks=layer).float().cpu()         # [B, T, d]
            for j, i in enumerate(rows):
                out[i] = h[j, :len(batch[j])].clone()                               # [T_i, d], own storage
        return [(x, h) for x, h in zip(ids, out)]

    def _tokenizer_at(self, max_length: int) -> HFTokenizer:
        """The tokenizer truncating at `max_length` tokens, special tokens included."""
        if max_length not in self._truncating:
            limit, post = self.model.max_tokens, self.tokenizer.post_processor
            n_special = post.num_special_tokens_to_add(False) if post is not None else 0
            if not max(1, n_special) <= max_length <= limit:  # below n_special, tokenizers would not truncate at all
                raise ValueError(f"max_length {max_length} is out of range: the special tokens need {n_special}, "
                                 f"the position table covers {limit} tokens")
            tk = HFTokenizer.from_str(self.tokenizer.to_str())
            tk.enable_truncation(max_length)
            self._truncating[max_length] = tk
        return self._truncating[max_length]

    @staticmethod
    def _batches(ids: list[list[int]], batch_size: int):
        """Index lists of at most batch_size texts, taken in order of token count."""
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]

    def _pad(self, batch: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token id lists -> right-padded ids [B, T] and the mask of real tokens [B, T], on the model's device."""
        dev = self.device
        lengths = torch.tensor([len(x) for x in batch], device=dev)                # [B]
        # at least one column: a tokenizer without special tokens turns "" into no ids (its embedding is then zero)
        width = max(1, max(len(x) for x in batch))
        ids = torch.tensor([x + [self.pad_id] * (width - len(x)) for x in batch], dtype=torch.long, device=dev)
        mask = torch.arange(width, device=dev) < lengths[:, None]                   # [B, T], right padding
        return ids, mask

    def _embed(self, batch: list[list[int]]) -> torch.Tensor:
        ids, mask = self._pad(batch)                                                # [B, T], [B, T]
        if isinstance(self.model, BIDIRECTIONAL_TYPES):
            h = self.model(ids, mask)                                               # [B, T, d]
        else:  # final norm applied
            attn = padding_mask(mask, causal=not self.model.config.bidirectional)   # [B, 1, T, T]
            h = self.model.hidden(ids, positions_from_mask(mask), attn)             # [B, T, d]
        h = h.float()  # pool in fp32, as sentence-transformers does for half-precision models
        if self.pooling == "mean":
            m = mask[..., None].float()                                             # [B, T, 1]
            emb = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)                        # [B, d]
        else:
            last = mask.sum(1) - 1                                                  # [B]
            emb = h[torch.arange(len(batch), device=h.device), last]                # [B, d], last real token
        for dense in self.dense:
            emb = dense(emb.to(dense.weight.dtype)).float()                          # [B, d_out]
        return F.normalize(emb, dim=-1) if self.normalize else emb

"""KV-cached batched sampling: many prompts of different lengths, G samples each, in one call.

How a call runs
1. Prompts are left-padded to a common length Tp so that every row's next token lands in the same cache column;
   per-row positions (counting real tokens only) and a key-padding mask make each row exact, as if it were alone
   (rlsr/packing.py).
2. Prefill: each distinct prompt is run once; its cache rows are then copied into its G sample rows
   (row r belongs to prompt r // G: `repeat_interleave` layout, asserted by the tests).
3. Decode one token per step for all unfinished rows. A row stops after it samples any stop id (the stop token is
   kept as its last completion token, log-prob and mask included, so the loss trains it) or after max_new_tokens.
   Once enough rows have finished they are dropped from the batch (cache rows compacted), so later steps cost
   little more than what is still running. On the CPU, decoding's few-row products use rlsr/cpu_matmul.py.

Randomness is handed in ready-made: `uniforms` [max_new_tokens, N] holds one U[0, 1) draw per step and row, and row
r samples its token at step t by inverse CDF from uniforms[t, r]. A call is then reproducible, compaction cannot
change what a row samples, and data-parallel ranks that draw the uniforms of the global batch and keep their own
rows' columns sample exactly what one process would (`draw_uniforms`).

Log-probs returned are those of the tempered distribution softmax(logits / T), computed by
rlsr.logprobs.scaled_log_softmax exactly as the trainer computes them (so they also serve as the behaviour
policy's log-probs for importance-sampling corrections).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlsr.cpu_matmul import few_row_matmul
from rlsr.logprobs import scaled_log_softmax
from rlsr.packing import left_pad, padding_mask, positions_from_mask


@dataclass
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 1.0     # 0 = greedy
    ignore_stop: bool = False    # sample exactly max_new_tokens (benchmarks)


@dataclass
class Rollout:
    tokens: torch.Tensor          # [N, T] completion ids, pad_id after the end
    logprobs: torch.Tensor        # [N, T] fp32 log-probs of those tokens under softmax(logits / T); 0 after the end
    mask: torch.Tensor            # [N, T] bool, True for generated tokens (the stop token included)
    finish_reason: list[str]      # per row: "stop" (sampled a stop id) or "length" (hit max_new_tokens)
    prompt_index: torch.Tensor    # [N] which prompt each row answers (row // group_size)
    prompt_ids: torch.Tensor = field(repr=False, default=None)   # [N, Tp] left-padded prompt of each row
    prompt_mask: torch.Tensor = field(repr=False, default=None)  # [N, Tp] bool

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(-1)

    def completions(self) -> list[list[int]]:
        return [row[m].tolist() for row, m in zip(self.tokens, self.mask)]

    @staticmethod
    def cat(parts: list["Rollout"], pad_id: int = 0) -> "Rollout":
        """Rows of several rollouts in order (prompts re-padded on the left, completions on the right); prompt_index
        continues across parts."""
        def pad(ts, value, left=False):
            T = max(t.shape[1] for t in ts)
            return torch.cat([torch.nn.functional.pad(t, (T - t.shape[1], 0) if left else (0, T - t.shape[1]),
                                                      value=value) for t in ts])
        offsets, n = [], 0
        for r in parts:
            offsets.append(n)
            n += int(r.prompt_index.max()) + 1 if len(r.prompt_index) else 0
        return Rollout(pad([r.tokens for r in parts], pad_id), pad([r.logprobs for r in parts], 0.0),
                       pad([r.mask for r in parts], False), [f for r in parts for f in r.finish_reason],
                       torch.cat([r.prompt_index + o for r, o in zip(parts, offsets)]),
                       pad([r.prompt_ids for r in parts], pad_id, left=True),
                       pad([r.prompt_mask for r in parts], False, left=True))

    def select(self, rows: torch.Tensor) -> "Rollout":
        """These rows (indices [K]); prompt_index keeps its values."""
        return Rollout(self.tokens[rows], self.logprobs[rows], self.mask[rows],
                       [self.finish_reason[i] for i in rows.tolist()], self.prompt_index[rows],
                       self.prompt_ids[rows], self.prompt_mask[rows])


class KVCache:
    """Preallocated keys/values [layers, B, Hkv, T_max, D], written in place at column `pos`.

    All rows share the write column because prompts are left-padded to a common length; which columns of a row are
    real is the caller's key-padding mask. `update` is called by every attention layer during a forward; the caller
    advances `pos` once the forward is done.

    static=True (for torch.compile / CUDA graphs): writes go to a position held in a tensor and attention always sees
    all T_max columns (the mask hides unwritten ones), so every decode step has the same shapes.

    It also keeps each column's token position [B, T_max] (`key_positions`), which sliding-window layers need: with
    left padding a column is not a position. Every key stays cached, also past a local layer's window (the window is
    a mask); a rolling buffer would save memory on sequences far longer than the window, which RLSR's are not.
    """

    def __init__(self, num_layers, batch, num_kv_heads, max_len, head_dim, dtype, device):
        shape = (num_layers, batch, num_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.positions = torch.zeros(batch, max_len, dtype=torch.long, device=device)
        self.pos = 0
        self.static = False
        self.pos_t = torch.zeros(1, dtype=torch.long, device=device)              # == pos, for static writes

    @classmethod
    def for_model(cls, model, batch: int, max_len: int) -> "KVCache":
        """Sized for `model`, in the dtype its keys/values come out in (the autocast dtype under autocast)."""
        c, device = model.config, model.device
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else model.dtype
        return cls(c.num_hidden_layers, batch, c.num_key_value_heads, max_len, c.head_dim, dtype, device)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T = k.shape[2]                                            # k, v: [B, Hkv, T, D]
        if self.static:
            self.k[layer].index_copy_(2, self.pos_t, k)          # decode only: T == 1
            self.v[layer].index_copy_(2, self.pos_t, v)
            return self.k[layer], self.v[layer]
        self.k[layer, :, :, self.pos:self.pos + T] = k
        self.v[layer, :, :, self.pos:self.pos + T] = v
        return self.k[layer, :, :, :self.pos + T], self.v[layer, :, :, :self.pos + T]

    def key_positions(self, positions: torch.Tensor) -> torch.Tensor:
        """Record the positions [B, T] of the tokens this forward writes; the positions of all cached keys [B, T_k]."""
        T = positions.shape[1]
        if self.static:
            self.positions.index_copy_(1, self.pos_t, positions)
            return self.positions
        self.positions[:, self.pos:self.pos + T] = positions
        return self.positions[:, :self.pos + T]

    def advance(self, n: int):
        self.pos += n
        self.pos_t.fill_(self.pos)

    def select_rows(self, rows: torch.Tensor):
        """Keep (and reorder/repeat) batch rows: rows [B'] of indices into the current batch."""
        self.k = self.k.index_select(1, rows)
        self.v = self.v.index_select(1, rows)
        self.positions = self.positions.index_select(0, rows)


def _decode_step(model, cache: KVCache, tok: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor):
    """One token per row: tok [B], positions [B], mask [B, 1, 1, T_k] additive -> next-token logits [B, V]."""
    return model(tok[:, None], positions[:, None], mask, kv_cache=cache)[:, -1]


_compiled_decode_step = None


def compiled_decode_step():
    """torch.compile'd _decode_step (CUDA graphs on GPU via mode="reduce-overhead"), built on first use."""
    global _compiled_decode_step
    if _compiled_decode_step is None:
        mode = "reduce-overhead" if torch.cuda.is_available() else None
        _compiled_decode_step = torch.compile(_decode_step, mode=mode, fullgraph=True)
    return _compiled_decode_step


CDF_BLOCK = 512  # vocabulary ids per block of the two-level inverse CDF


def inverse_cdf(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """probs [B, V] (unnormalised, >= 0), uniform [B] in [0, 1) -> per row the id whose CDF interval holds
    u * total mass, never an id of probability 0.

    Two levels, so no [B, V] cumulative sum or fp64 copy is built: sums of blocks of CDF_BLOCK ids (fp32, vectorised:
    relative error ~1e-7, that of the fp32 probabilities themselves), their fp64 cumulative sum [B, V / 512] picks
    the block, then an fp64 cumulative sum inside that block alone picks the id. A full fp64 cumsum over Gemma's
    262,144 ids is a sequential scan that cost more than the log-softmax and the exp together; fp64 across blocks
    keeps the CDF from drifting over 150k-260k entries as an fp32 scan would. right=True never lands on a
    zero-probability id (its interval is empty); the target inside the block is kept in [0, the block's mass), so
    rounding between the two levels cannot push it onto one either.
    """
    B, V = probs.shape
    K = CDF_BLOCK
    full = V // K * K
    sums = probs[:, :full].view(B, V // K, K).sum(-1)                               # [B, V // K], fp32
    if full < V:
        sums = torch.cat([sums, probs[:, full:].sum(-1, keepdim=True)], -1)
    block_cdf = sums.double().cumsum(-1)                                             # [B, nb]
    target = uniform.to(torch.float64) * block_cdf[:, -1]                            # [B]
    block = torch.searchsorted(block_cdf, target[:, None], right=True).clamp(max=block_cdf.shape[1] - 1)  # [B, 1]
    before = torch.where(block > 0, block_cdf.gather(1, (block - 1).clamp(min=0)), 0.0)             # [B, 1]
    ids = block * K + torch.arange(K, device=probs.device)                          # [B, K]
    inner = probs.gather(1, ids.clamp(max=V - 1)).double().masked_fill(ids >= V, 0.0).cumsum(-1)   # [B, K]
    within = torch.minimum((target[:, None] - before).clamp(min=0.0),
                           torch.nextafter(inner[:, -1:], torch.zeros_like(inner[:, -1:])))
    return (block * K + torch.searchsorted(inner, within, right=True)).squeeze(-1)


def sample_next(logits: torch.Tensor, params: SamplingParams, uniform: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, V] -> next tokens [B] and their log-probs [B] under softmax(logits / T).

    uniform [B]: one U[0, 1) draw per row (unused when greedy). Sampling is by inverse CDF (`inverse_cdf`).
    (torch.multinomial draws an exponential per vocabulary entry instead: far slower for a 150k vocabulary.)
    """
    logp = scaled_log_softmax(logits, params.temperature)                          # [B, V] fp32
    tokens = logp.argmax(-1) if params.temperature == 0 else inverse_cdf(logp.exp(), uniform)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


def draw_uniforms(generator: torch.Generator | None, max_new_tokens: int, rows: int, device=None) -> torch.Tensor:
    """The random draws of a sampling call: [max_new_tokens, rows] fp64 in [0, 1), one per step and row."""
    return torch.rand(max_new_tokens, rows, generator=generator, dtype=torch.float64, device=device)


@torch.no_grad()
def generate(model, prompts: list[list[int]], params: SamplingParams, stop_ids=(), group_size: int = 1,
             uniforms: torch.Tensor | None = None, pad_id: int = 0, compact_every: float = 0.5,
             compile: bool = False) -> Rollout:
    """Sample `group_size` completions for each prompt (token id lists). Returns a Rollout of P * group_size rows.

    uniforms [max_new_tokens, P * group_size]: the draws (`draw_uniforms`); required unless greedy (temperature 0).
    compact_every: drop finished rows from the batch once more than this fraction of it has finished (0 = at every
    finished row). Only speed depends on it: finished rows left in the batch compute junk that is never stored,
    while each compaction copies the cache.
    compile: decode with a static-shape cache through torch.compile, with CUDA graphs on a GPU (its launch overhead
    dominates decoding there). Rows are then never dropped, and T_max is rounded up to a multiple of 256 so that new
    prompt lengths rarely trigger a recompile. Not worth it on a CPU: compiling takes minutes.
    """
    was_training = model.training
    model.eval()  # no dropout in rollouts (the trainer's log-prob passes use eval mode too)
    device = model.device
    P, G, T_new = len(prompts), group_size, params.max_new_tokens
    N = P * G
    if params.temperature > 0 and (uniforms is None or tuple(uniforms.shape) != (T_new, N)):
        raise ValueError(f"sampling at temperature {params.temperature} needs uniforms of shape [{T_new}, {N}], got "
                         f"{None if uniforms is None else list(uniforms.shape)}")
    prompt_ids, prompt_mask = left_pad(prompts, pad_id, device)                   # [P, Tp]
    Tp = prompt_ids.shape[1]
    T_max = -(-(Tp + T_new) // 256) * 256 if compile else Tp + T_new
    with few_row_matmul(model):
        cache = KVCache.for_model(model, P, T_max)
        last = torch.arange(P, device=device) * Tp + Tp - 1                          # [P] each prompt's last position
        logits = model(prompt_ids, positions_from_mask(prompt_mask), padding_mask(prompt_mask), cache,
                       logits_at=last)                                               # [P, V]
        cache.advance(Tp)

        rows = torch.arange(P, device=device).repeat_interleave(G)                   # [N] prompt of each row
        cache.select_rows(rows)
        logits = logits[rows]                                                         # [N, V]
        # Additive attention bias per row: 0 for real key columns, -inf for left padding and columns not written yet.
        keys = torch.full((N, T_max), float("-inf"), dtype=model.dtype, device=device)
        keys[:, :Tp].masked_fill_(prompt_mask[rows], 0.0)
        positions = prompt_mask[rows].sum(-1)                                         # [N] position of the next token
        stop = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)
        uniforms = None if params.temperature == 0 else uniforms.to(device)
        step = _decode_step
        if compile:
            cache.static, compact_every = True, float("inf")
            step = compiled_decode_step()

        tokens = torch.full((N, T_new), pad_id, dtype=torch.long, device=device)
        logprobs = torch.zeros(N, T_new, dtype=torch.float32, device=device)
        gen_mask = torch.zeros(N, T_new, dtype=torch.bool, device=device)
        stopped = torch.zeros(N, dtype=torch.bool, device=device)
        slot_row = torch.arange(N, device=device)                                    # batch slot -> output row
        alive = torch.ones(N, dtype=torch.bool, device=device)                       # slot still generating
        for t in range(T_new):
            u = None if uniforms is None else uniforms[t, slot_row]                    # [B]
            tok, lp = sample_next(logits, params, u)                                  # [B], [B]
            rows_t = slot_row[alive]
            tokens[rows_t, t], logprobs[rows_t, t], gen_mask[rows_t, t] = tok[alive], lp[alive], True
            if not params.ignore_stop:
                done = alive & torch.isin(tok, stop)
                stopped[slot_row[done]] = True
                alive &= ~done
            if t == T_new - 1 or not alive.any():
                break
            if (~alive).sum() > compact_every * len(alive):  # drop finished rows from the batch
                running = alive.nonzero().squeeze(-1)
                slot_row, alive, tok, positions, keys = (slot_row[running], alive[running], tok[running],
                                                         positions[running], keys[running])
                cache.select_rows(running)
            keys[:, cache.pos] = 0.0
            mask = keys[:, None, None, :] if cache.static else keys[:, None, None, :cache.pos + 1]  # [B, 1, 1, T_k]
            logits = step(model, cache, tok, positions, mask)
            cache.advance(1)
            positions = positions + 1
    model.train(was_training)
    finish = ["stop" if s else "length" for s in stopped.tolist()]
    return Rollout(tokens, logprobs, gen_mask, finish, rows, prompt_ids[rows], prompt_mask[rows])


def complete(model, tokenizer, prompts: list[list[int]], params: SamplingParams, batch_size: int = 32,
             generator: torch.Generator | None = None, progress=None, with_finish: bool = False) -> tuple:
    """One answer per prompt (token ids), batched by similar length so little compute goes to left padding.

    Returns the decoded answers (special tokens dropped) and their lengths in tokens, in the order of `prompts`, and
    with `with_finish` their finish reasons ("stop" or "length", Rollout.finish_reason).
    generator: the draws when sampling (temperature > 0). progress: a tqdm-like bar advanced by each batch's size.
    """
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts, lengths, finish = [""] * len(prompts), [0] * len(prompts), [""] * len(prompts)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        uniforms = None if params.temperature == 0 else draw_uniforms(generator, params.max_new_tokens, len(idx))
        r = generate(model, [prompts[i] for i in idx], params, tokenizer.stop_ids, uniforms=uniforms,
                     pad_id=tokenizer.pad_id)
        for i, text, n, f in zip(idx, tokenizer.batch_decode(r.completions()), r.lengths.tolist(), r.finish_reason):
            texts[i], lengths[i], finish[i] = text, n, f
        if progress is not None:
            progress.update(len(idx))
    return (texts, lengths, finish) if with_finish else (texts, lengths)

"""Log-likelihoods and greedy answers for rlsr/lm_tasks.py, computed as lm-eval-harness's `--model hf` computes them.

Tokenisation (lm_eval/api/model.py `_encode_pair`, HFLM `tok_encode`): trailing whitespace of a context moves to
the front of its continuation; context + continuation is encoded whole and the continuation is what follows the
context's own encoding, so a token that straddles the boundary is scored as the model would read it. Texts are
encoded with the tokenizer's special tokens (its post-processor, e.g. Gemma's <bos>) unless they already start
with its bos token (a chat-templated context). A pair longer than the model's max_position_embeddings + 1 tokens
loses context tokens on the left, as HFLM truncates.

Log-likelihood of a continuation = the sum of its tokens' log-softmax, in fp32 (fp64 for an fp64 model), as HFLM
sums it; `greedy` = every token is the argmax.
The context is computed once per document and shared by its choices: one packed row [context | choice 1 | ... |
choice k] where each choice sees the context and itself (rlsr/packing.py pack_prefixed), and only the positions
that predict a choice token reach the vocabulary projection. Winogrande's contexts differ per option, so each is
its own row.

Greedy answers (generative tasks): KV-cached decoding of left-padded batches (rlsr/sampling.py's cache) until
every row has produced one of the stop strings or a stop token, or max_gen_toks tokens; the answer is the decoded
text (special tokens dropped) cut at the first occurrence of each stop string in turn, as HFLM's generate_until
cuts it. Contexts are left-truncated to max_position_embeddings - max_gen_toks tokens.
"""
from __future__ import annotations

import torch

from rlsr.cpu_matmul import few_row_matmul
from rlsr.packing import left_pad, pack_prefixed, padding_mask, positions_from_mask
from rlsr.sampling import KVCache, _decode_step

MAX_ROW_TOKENS = 16384  # rows x length of one packed batch (bounds the [R, 1, L, L] attention mask)


def encode(tok, text: str) -> list[int]:
    """HFLM tok_encode: the tokenizer's special tokens unless the text already starts with its bos (else eos)."""
    prefix = tok.bos_id if tok.bos_id is not None else tok.eos_id
    starts = prefix is not None and text.startswith(tok.tk.decode([prefix], skip_special_tokens=False))
    return tok.tk.encode(text, add_special_tokens=not starts).ids


def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-eval's _encode_pair splits them for a causal model."""
    if not context:
        raise ValueError("empty context: every lm-eval task here has one")
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole, ctx = encode(tok, context + continuation), encode(tok, context)
    return ctx, whole[len(ctx):]


def _groups(tok, docs: list[list[tuple[str, str]]], max_len: int):
    """Per document, its requests grouped by context ids: [(doc, context ids, [(request index, continuation ids)])].
    A pair too long for the model gets its own, left-truncated, context."""
    groups = []
    for d, requests in enumerate(docs):
        by_context: dict[tuple, list] = {}
        for i, (context, continuation) in enumerate(requests):
            ctx, cont = encode_pair(tok, context, continuation)
            if not cont:
                raise ValueError(f"request {(context, continuation)!r}: the continuation encodes to no token")
            if len(ctx) + len(cont) > max_len + 1:  # HFLM: (ctx + cont)[-(max_len + 1):][:-1] is the input
                groups.append((d, (ctx + cont)[-(max_len + 1):-len(cont)], [(i, cont)]))
            else:
                by_context.setdefault(tuple(ctx), []).append((i, cont))
        groups += [(d, list(ctx), conts) for ctx, conts in by_context.items()]
    return groups


@torch.no_grad()
def loglikelihoods(model, tok, docs: list[list[tuple[str, str]]], batch_size: int = 32,
                   progress=None) -> list[list[tuple[float, bool]]]:
    """docs: per document its (context, continuation) requests -> per document [(log-likelihood, greedy)]."""
    groups = _groups(tok, docs, model.config.max_position_embeddings)
    out = [[None] * len(r) for r in docs]
    order = sorted(range(len(groups)), key=lambda g: -(len(groups[g][1]) + sum(len(c) for _, c in groups[g][2])))
    s = 0
    while s < len(order):
        L = len(groups[order[s]][1]) + sum(len(c) for _, c in groups[order[s]][2])  # the longest row of the batch
        batch = order[s:s + max(1, min(batch_size, MAX_ROW_TOKENS // L))]
        s += len(batch)
        packed = pack_prefixed([(groups[g][1], [c for _, c in groups[g][2]]) for g in batch]).to(model.device)
        logits = model(packed.ids, packed.positions, packed.mask, logits_at=packed.logits_at)  # [N, V]
        logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)  # [N, V] >= fp32
        token_logp = logp.gather(-1, packed.targets[:, None]).squeeze(-1).cpu()               # [N]
        greedy = (logp.argmax(-1) == packed.targets).cpu()                                    # [N]
        n = 0
        for g in batch:
            d, _, conts = groups[g]
            for i, cont in conts:
                out[d][i] = (float(token_logp[n:n + len(cont)].sum()), bool(greedy[n:n + len(cont)].all()))
                n += len(cont)
        if progress is not None:
            progress.update(len({groups[g][0] for g in batch}))
    return out


@torch.no_grad()
def greedy_until(model, tok, contexts: list[str], until: list[str], max_gen_toks: int = 256, batch_size: int = 32,
                 progress=None) -> list[str]:
    """Greedy answers to each context, cut at the first of the stop strings (plus the eos token's text)."""
    eos = tok.tk.decode([tok.eos_id], skip_special_tokens=False) if tok.eos_id is not None else None
    stops = list(until) + ([eos] if eos and eos not in until else [])
    max_ctx = model.config.max_position_embeddings - max_gen_toks
    if max_ctx <= 0:
        raise ValueError(f"max_gen_toks {max_gen_toks} leaves no room for a context in "
                         f"max_position_embeddings {model.config.max_position_embeddings}")
    prompts = [encode(tok, c)[-max_ctx:] for c in contexts]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    stop_ids = torch.tensor(sorted(tok.stop_ids), device=model.device)
    answers = [""] * len(prompts)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        ids, mask = left_pad([prompts[i] for i in idx], tok.pad_id, model.device)            # [B, Tp]
        B, Tp = ids.shape
        with few_row_matmul(model):
            cache = KVCache.for_model(model, B, Tp + max_gen_toks)
            last = torch.arange(B, device=model.device) * Tp + Tp - 1
            logits = model(ids, positions_from_mask(mask), padding_mask(mask), cache, logits_at=last)  # [B, V]
            cache.advance(Tp)
            keys = torch.full((B, Tp + max_gen_toks), float("-inf"), dtype=model.dtype, device=model.device)
            keys[:, :Tp].masked_fill_(mask, 0.0)                  # additive bias: 0 = a real key column
            positions = mask.sum(-1)                              # [B] position of the next token
            generated = [[] for _ in idx]
            alive = [True] * B
            for t in range(max_gen_toks):
                tok_t = logits.float().argmax(-1)                                             # [B]
                is_stop = torch.isin(tok_t, stop_ids).tolist()
                for r, token in enumerate(tok_t.tolist()):
                    if alive[r]:
                        generated[r].append(token)
                        alive[r] = not (is_stop[r] or any(x in tok.decode(generated[r]) for x in stops))
                if not any(alive) or t == max_gen_toks - 1:
                    break
                keys[:, cache.pos] = 0.0
                logits = _decode_step(model, cache, tok_t, positions, keys[:, None, None, :cache.pos + 1])
                cache.advance(1)
                positions = positions + 1
        for r, i in enumerate(idx):
            text = tok.decode(generated[r])
            for x in stops:
                text = text.split(x)[0]
            answers[i] = text
        if progress is not None:
            progress.update(len(idx))
    return answers

"""The sampling engine: cache exactness, batching, group prefill, seeding, stops, and log-prob parity with the trainer."""
import pytest
import torch

import rlsr.sampling as sampling
from conftest import FAMILIES, FIXTURES
from rlsr.logprobs import completion_logprobs, scaled_log_softmax
from rlsr.model import Transformer
from rlsr.packing import padding_mask
from rlsr.sampling import KVCache, Rollout, SamplingParams, draw_uniforms, generate


def load(family, **kw):
    return Transformer.from_pretrained(FIXTURES / "models" / family, dtype=torch.float32, **kw)


def draws(seed, params, rows):
    return draw_uniforms(torch.Generator().manual_seed(seed), params.max_new_tokens, rows)


def prompts_of(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 128, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_token_by_token_equals_full_forward(family):
    model = load(family)
    ids = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache.for_model(model, 2, 12)
        mask = torch.ones(2, 12, dtype=torch.bool)
        pos = torch.arange(12).expand(2, 12)
        steps = [model(ids[:, :5], pos[:, :5], padding_mask(mask[:, :5]), cache)]  # a 5-token prefill, then 1 by 1
        cache.advance(5)
        for t in range(5, 12):
            steps.append(model(ids[:, t:t + 1], pos[:, t:t + 1], padding_mask(mask[:, :t + 1], 1), cache))
            cache.advance(1)
    assert (torch.cat(steps, 1) - full).abs().max() <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_mixed_length_batch_equals_each_prompt_alone(family):
    model = load(family)
    prompts = prompts_of([3, 9, 6])
    params = SamplingParams(max_new_tokens=10, temperature=0)
    batch = generate(model, prompts, params)
    for i, p in enumerate(prompts):
        alone = generate(model, [p], params)
        assert batch.tokens[i].tolist() == alone.tokens[0].tolist()
        assert (batch.logprobs[i] - alone.logprobs[0]).abs().max() <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logprobs_equal_trainer_logprobs(family, temperature):
    """What makes the PPO ratio start at exactly 1: the sampler's log-probs == the trainer's teacher-forced ones."""
    vocab = 120  # the model has 128 embedding rows: 8 padded ids, as in Qwen
    model = load(family, output_vocab=vocab)
    params = SamplingParams(max_new_tokens=12, temperature=temperature)
    r = generate(model, prompts_of([4, 11, 7]), params, stop_ids={5, 17}, group_size=3, uniforms=draws(1, params, 9))
    with torch.no_grad():
        trainer, _ = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.tokens, r.mask, temperature,
                                         group_size=3)
    assert (trainer[r.mask] - r.logprobs[r.mask]).abs().max() <= 1e-4
    assert (r.tokens[r.mask] < vocab).all()


def test_logprobs_are_log_softmax_of_logits_over_temperature():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    lp = scaled_log_softmax(logits, 0.5)
    assert torch.allclose(lp, torch.log_softmax(torch.tensor([[4.0, 2.0, 0.0]]), -1))
    assert torch.equal(scaled_log_softmax(logits, 0), torch.log_softmax(logits, -1))  # greedy is scored at T = 1


@pytest.mark.parametrize("family", FAMILIES)
def test_group_prefill_once_equals_separate_prefills(family):
    model = load(family)
    p = prompts_of([7])[0]
    params = SamplingParams(max_new_tokens=10, temperature=1.0)
    grouped = generate(model, [p], params, group_size=4, uniforms=draws(3, params, 4))
    separate = generate(model, [p] * 4, params, uniforms=draws(3, params, 4))
    assert torch.equal(grouped.tokens, separate.tokens)
    assert (grouped.logprobs - separate.logprobs).abs().max() <= 1e-5
    assert grouped.prompt_index.tolist() == [0, 0, 0, 0]


def test_group_layout_is_repeat_interleave():
    model = load("llama")
    params = SamplingParams(max_new_tokens=3)
    r = generate(model, prompts_of([3, 5]), params, group_size=3, uniforms=draws(0, params, 6))
    assert r.prompt_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert r.prompt_mask.sum(-1).tolist() == [3, 3, 3, 5, 5, 5]


def test_same_seed_same_samples_and_rows_diverge():
    model = load("qwen2")
    params = SamplingParams(max_new_tokens=12, temperature=1.0)
    a = generate(model, prompts_of([5]), params, group_size=8, uniforms=draws(7, params, 8))
    b = generate(model, prompts_of([5]), params, group_size=8, uniforms=draws(7, params, 8))
    c = generate(model, prompts_of([5]), params, group_size=8, uniforms=draws(8, params, 8))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.tokens, c.tokens)
    assert len({tuple(row) for row in a.tokens.tolist()}) == 8  # the G samples of one prompt differ


def test_stop_token_kept_nothing_after_and_finish_reasons():
    model = load("qwen3")
    stop = {7, 40, 90, 100, 111}
    params = SamplingParams(max_new_tokens=20, temperature=1.5)
    r = generate(model, prompts_of([4, 6]), params, stop_ids=stop, group_size=8, uniforms=draws(0, params, 16), pad_id=0)
    assert set(r.finish_reason) == {"stop", "length"}  # this seed gives both kinds
    for toks, mask, reason in zip(r.tokens.tolist(), r.mask.tolist(), r.finish_reason):
        n = sum(mask)
        assert mask == [True] * n + [False] * (20 - n)      # one contiguous run from the start
        assert all(t == 0 for t in toks[n:])               # nothing generated after the end
        assert not any(t in stop for t in toks[:n - 1])     # no earlier stop token
        if reason == "stop":
            assert toks[n - 1] in stop                     # the stop token is the last completion token, masked in
        else:
            assert n == 20 and toks[n - 1] not in stop


def test_compaction_does_not_change_results():
    model = load("llama")
    kw = dict(stop_ids={7, 40, 90}, group_size=6)
    params = SamplingParams(max_new_tokens=16, temperature=1.2)
    a = generate(model, prompts_of([4, 8]), params, uniforms=draws(2, params, 12), compact_every=0, **kw)
    b = generate(model, prompts_of([4, 8]), params, uniforms=draws(2, params, 12), compact_every=float("inf"), **kw)
    assert any(reason == "stop" for reason in a.finish_reason)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask)
    assert (a.logprobs - b.logprobs).abs().max() <= 1e-5


def test_ignore_stop_samples_exactly_max_new_tokens():
    model = load("llama")
    params = SamplingParams(max_new_tokens=9, ignore_stop=True)
    r = generate(model, prompts_of([4]), params, stop_ids=set(range(128)), group_size=2, uniforms=draws(0, params, 2))
    assert r.mask.all() and r.finish_reason == ["length", "length"]


def test_static_cache_path_equals_dynamic(monkeypatch):
    """The shapes-fixed decode that torch.compile / CUDA graphs use, run eagerly."""
    model = load("qwen2")
    monkeypatch.setattr(sampling, "compiled_decode_step", lambda: sampling._decode_step)
    params = SamplingParams(max_new_tokens=10, temperature=1.0)
    kw = dict(stop_ids={7, 40}, group_size=3)
    a = generate(model, prompts_of([3, 6]), params, uniforms=draws(4, params, 6), **kw)
    b = generate(model, prompts_of([3, 6]), params, uniforms=draws(4, params, 6), compile=True, **kw)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask) and a.finish_reason == b.finish_reason
    assert (a.logprobs - b.logprobs).abs().max() <= 1e-4


def test_inverse_cdf_sampling_matches_the_distribution():
    probs = torch.tensor([0.5, 0.0, 0.3, 0.2])
    logits = probs.log().expand(20000, 4)
    u = torch.rand(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tokens, lp = sampling.sample_next(logits, SamplingParams(temperature=1.0), u)
    freq = torch.bincount(tokens, minlength=4).float() / 20000
    assert freq[1] == 0 and (freq - probs).abs().max() < 0.015
    assert torch.allclose(lp, probs.log()[tokens])


def test_greedy_is_argmax_and_scored_at_temperature_one():
    logits = torch.tensor([[1.0, 3.0, 2.0]])
    tok, lp = sampling.sample_next(logits, SamplingParams(temperature=0), None)
    assert tok.item() == 1 and torch.allclose(lp, torch.log_softmax(logits, -1)[:, 1])


@pytest.mark.parametrize("family", ["qwen2", "gemma3"])  # gemma3: key positions in the static cache (window 3)
def test_compiled_decode_matches_eager(family):
    """torch.compile of the static decode step (on CPU here; CUDA graphs are added on a GPU)."""
    model = load(family)
    params = SamplingParams(max_new_tokens=10, temperature=1.0)
    kw = dict(stop_ids={7, 40}, group_size=3)
    a = generate(model, prompts_of([3, 6]), params, uniforms=draws(4, params, 6), **kw)
    b = generate(model, prompts_of([3, 6]), params, uniforms=draws(4, params, 6), compile=True, **kw)
    assert torch.equal(a.tokens, b.tokens) and (a.logprobs - b.logprobs).abs().max() <= 1e-4


def test_rows_of_a_split_batch_sample_what_one_call_would():
    """Data parallelism: each rank generates its share of the global batch with its columns of the global draws."""
    model = load("llama")
    prompts = prompts_of([4, 7, 5, 3])
    params = SamplingParams(max_new_tokens=10, temperature=1.0)
    u = draws(5, params, 8)
    whole = generate(model, prompts, params, stop_ids={7}, group_size=2, uniforms=u)
    halves = [generate(model, prompts[2 * k:2 * k + 2], params, stop_ids={7}, group_size=2, uniforms=u[:, 4 * k:4 * k + 4])
              for k in (0, 1)]
    assert torch.equal(torch.cat([h.tokens for h in halves]), whole.tokens)


def test_sampling_without_draws_is_refused_and_rollouts_concatenate():
    model = load("llama")
    params = SamplingParams(max_new_tokens=6, temperature=1.0)
    with pytest.raises(ValueError, match=r"needs uniforms of shape \[6, 4\]"):
        generate(model, prompts_of([3, 4]), params, group_size=2)
    a = generate(model, prompts_of([3, 4]), params, stop_ids={7}, group_size=2, uniforms=draws(1, params, 4))
    b = generate(model, prompts_of([9], seed=2), SamplingParams(max_new_tokens=4, temperature=1.0), group_size=2,
                 uniforms=draws(2, SamplingParams(max_new_tokens=4), 2))
    both = Rollout.cat([a, b])
    assert both.tokens.shape == (6, 6) and both.prompt_ids.shape == (6, 9)
    assert both.prompt_index.tolist() == [0, 0, 1, 1, 2, 2] and both.finish_reason == a.finish_reason + b.finish_reason
    for i, (r, j) in enumerate([(a, 0), (a, 1), (a, 2), (a, 3), (b, 0), (b, 1)]):  # each row unchanged, re-padded
        n = int(r.mask[j].sum())
        assert both.tokens[i, :n].tolist() == r.tokens[j, :n].tolist() and int(both.mask[i].sum()) == n
        assert both.prompt_ids[i][both.prompt_mask[i]].tolist() == r.prompt_ids[j][r.prompt_mask[j]].tolist()
    picked = both.select(torch.tensor([4, 5]))
    assert torch.equal(picked.tokens, both.tokens[4:]) and picked.prompt_index.tolist() == [2, 2]


@pytest.mark.parametrize("V", [4, 512, 1000, 262144])
def test_two_level_inverse_cdf_equals_one_cumulative_sum(V):
    """The block-wise CDF picks the id one fp64 cumsum over the whole vocabulary picks, and never an id of p = 0."""
    g = torch.Generator().manual_seed(V)
    logits = torch.randn(64, V, generator=g) * 4
    logits[:, ::3] = float("-inf")                                  # many ids of probability exactly 0
    p = torch.softmax(logits, -1)
    u = torch.rand(64, generator=g, dtype=torch.float64)
    u[:4] = torch.tensor([0.0, 1 - 2 ** -53, 0.5, 2 ** -40], dtype=torch.float64)  # the ends of [0, 1)
    cdf = p.double().cumsum(-1)
    want = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(-1)
    got = sampling.inverse_cdf(p, u)  # (fp64 rounding could move a boundary; on these 256 draws it does not)
    assert (p.gather(1, got[:, None]) > 0).all()
    assert torch.equal(got, want)

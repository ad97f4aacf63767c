"""Trainer-side log-probs: a shared prompt run once per group equals running it in every row."""
import pytest
import torch

from conftest import FAMILIES, FIXTURES
from rlsr.logprobs import completion_logprobs
from rlsr.model import Transformer
from rlsr.sampling import SamplingParams, generate


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prompt_equals_per_row_values_and_gradients(family):
    model = Transformer.from_pretrained(FIXTURES / "models" / family, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 128, (n,), generator=g).tolist() for n in (5, 9, 3)]
    r = generate(model, prompts, SamplingParams(max_new_tokens=8, temperature=0.8), stop_ids={4, 50, 90},
                 vocab_size=120, group_size=4, generator=g)
    assert not r.mask.all()  # some rows stopped early: the completions are right-padded
    w = torch.randn(r.tokens.shape)
    out = {}
    for G in (1, 4):
        model.zero_grad()
        logp, ent = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.tokens, r.mask, 0.8, 120,
                                        with_entropy=True, group_size=G)
        (w * logp)[r.mask].sum().backward()
        out[G] = logp[r.mask], ent[r.mask], torch.cat([p.grad.flatten() for p in model.parameters()])
    for a, b in zip(out[1][:2], out[4][:2]):  # log-probs and entropies
        assert (a - b).abs().max() <= 1e-5
    grad_1, grad_4 = out[1][2], out[4][2]     # gradients: fp32 sums in another order, relative to their scale
    assert (grad_1 - grad_4).abs().max() <= 1e-5 * grad_1.abs().max()
    assert (out[4][0] - r.logprobs[r.mask]).abs().max() <= 1e-4  # and both equal the sampler's


def test_shared_prompt_needs_whole_groups():
    model = Transformer.from_pretrained(FIXTURES / "models" / "llama", dtype=torch.float32)
    ids, mask = torch.ones(3, 2, dtype=torch.long), torch.ones(3, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="not whole groups of 2"):
        completion_logprobs(model, ids, mask, ids, mask, group_size=2)

"""Trainer-side log-probs: a shared prompt run once per group equals running every row alone, padded."""
import pytest
import torch

from conftest import FAMILIES, FIXTURES
from rlsr.logprobs import completion_logprobs
from rlsr.model import Transformer
from rlsr.packing import padding_mask, positions_from_mask
from rlsr.sampling import SamplingParams, draw_uniforms, generate


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prompt_equals_per_row_values_and_gradients(family):
    model = Transformer.from_pretrained(FIXTURES / "models" / family, dtype=torch.float32, output_vocab=120)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 128, (n,), generator=g).tolist() for n in (5, 9, 3)]
    params = SamplingParams(max_new_tokens=8, temperature=0.8)
    r = generate(model, prompts, params, stop_ids={4, 50, 90}, group_size=4, uniforms=draw_uniforms(g, 8, 12))
    assert not r.mask.all()  # some rows stopped early: the completions are right-padded
    w = torch.randn(r.tokens.shape)

    def padded_rows():  # the plain computation: every row [prompt | completion], left-padded, full logits
        ids = torch.cat([r.prompt_ids, r.tokens], 1)
        mask = torch.cat([r.prompt_mask, r.mask], 1)
        logits = model(ids, positions_from_mask(mask), padding_mask(mask))[:, r.prompt_ids.shape[1] - 1:-1]
        logp = torch.log_softmax(logits.float() / 0.8, -1)
        p = logp.exp()
        return logp.gather(-1, r.tokens[..., None])[..., 0] * r.mask, -(p * logp).sum(-1).detach() * r.mask

    out = {}
    for G in (0, 1, 4):
        model.zero_grad()
        logp, ent = padded_rows() if G == 0 else completion_logprobs(
            model, r.prompt_ids, r.prompt_mask, r.tokens, r.mask, 0.8, with_entropy=True, group_size=G)
        (w * logp)[r.mask].sum().backward()
        out[G] = logp[r.mask], ent[r.mask], torch.cat([p.grad.flatten() for p in model.parameters()])
    for G in (1, 4):
        for a, b in zip(out[0][:2], out[G][:2]):  # log-probs and entropies
            assert (a - b).abs().max() <= 1e-5
        grad_0, grad_G = out[0][2], out[G][2]     # gradients: fp32 sums in another order, relative to their scale
        assert (grad_0 - grad_G).abs().max() <= 1e-5 * grad_0.abs().max()
    assert (out[4][0] - r.logprobs[r.mask]).abs().max() <= 1e-4  # and all equal the sampler's


def test_shared_prompt_needs_whole_groups():
    model = Transformer.from_pretrained(FIXTURES / "models" / "llama", dtype=torch.float32)
    ids, mask = torch.ones(3, 2, dtype=torch.long), torch.ones(3, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="not whole groups of 2"):
        completion_logprobs(model, ids, mask, ids, mask, group_size=2)

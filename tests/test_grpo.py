"""GRPO math against hand-computed numbers, and the accumulation / on-policy properties the trainer relies on."""
import math

import pytest
import torch

from conftest import FIXTURES
from rlsr.grpo import group_advantages, kl_penalty, policy_loss, token_weights
from rlsr.logprobs import completion_logprobs
from rlsr.model import Transformer
from rlsr.sampling import SamplingParams, generate


def test_group_advantages_worked_example():
    # one prompt, G = 4: mean 0.75, deviations (-0.04, -0.01, 0.05, 0), population std sqrt(0.0042 / 4) = 0.032404
    r = torch.tensor([0.71, 0.74, 0.80, 0.75])
    adv, ties, stats = group_advantages(r, 4, "group", std_floor=0.02)
    assert torch.allclose(adv, torch.tensor([-0.04, -0.01, 0.05, 0.0]) / math.sqrt(0.0042 / 4), atol=1e-5)
    assert not ties.any() and stats["reward"] == pytest.approx(0.75)
    # with a floor above the group's std, the floor divides: (-0.8, -0.2, 1, 0) instead of (-1.23, -0.31, 1.54, 0)
    adv, _, stats = group_advantages(r, 4, "group", std_floor=0.05)
    assert torch.allclose(adv, torch.tensor([-0.8, -0.2, 1.0, 0.0]), atol=1e-5)
    assert stats["frac_std_below_floor"] == 1.0
    adv, _, _ = group_advantages(r, 4, "none")
    assert torch.allclose(adv, torch.tensor([-0.04, -0.01, 0.05, 0.0]), atol=1e-6)


def test_batch_scaling_and_near_ties():
    r = torch.tensor([0.2, 0.4, 0.5, 0.5004])  # two prompts, G = 2; the second group spans 0.0004 < 1e-3
    adv, ties, stats = group_advantages(r, 2, "batch", std_floor=0.0)
    batch_std = r.std(unbiased=False)
    assert torch.allclose(adv, torch.tensor([-0.1, 0.1, -0.0002, 0.0002]) / batch_std, atol=1e-5)
    assert ties.tolist() == [False, False, True, True] and stats["frac_reward_zero_std"] == 0.5
    with pytest.raises(ValueError, match="scale must be one of"):
        group_advantages(r, 2, "median")


def test_token_weights_for_each_aggregation():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    assert torch.allclose(token_weights(mask, "token"), mask.float() / 4)
    assert torch.allclose(token_weights(mask, "sequence"), torch.tensor([[1 / 6, 1 / 6, 1 / 6, 0], [1 / 2, 0, 0, 0]]))
    assert torch.allclose(token_weights(mask, "constant", max_new_tokens=4), mask.float() / 8)
    # dropping row 1 removes it from the loss and from the normaliser
    assert torch.allclose(token_weights(mask, "token", keep=torch.tensor([True, False])),
                          torch.tensor([[1 / 3, 1 / 3, 1 / 3, 0], [0, 0, 0, 0]]))


def _one_token(ratio, adv, eps=0.1):
    old = torch.tensor([[math.log(0.5)]])
    logp = (old + math.log(ratio)).requires_grad_(True)
    loss, stats = policy_loss(logp, old, torch.tensor([adv]), torch.ones(1, 1), eps, eps)
    loss.backward()
    return loss.item(), logp.grad.item(), stats


@pytest.mark.parametrize("ratio, adv, loss, grad, clipped", [
    (1.05, +1.0, -1.05, -1.05, None),     # inside the range: -ratio * A, gradient -A * ratio
    (1.05, -1.0, 1.05, 1.05, None),
    (1.2, +1.0, -1.1, 0.0, "high"),       # above 1 + eps with A > 0: clipped, no gradient
    (1.2, -1.0, 1.2, 1.2, None),          # above 1 + eps with A < 0: the unclipped term is the min, gradient flows
    (0.8, -1.0, 0.9, 0.0, "low"),         # below 1 - eps with A < 0: clipped
    (0.8, +1.0, -0.8, -0.8, None),
])
def test_clipped_surrogate_values_and_gradients(ratio, adv, loss, grad, clipped):
    got_loss, got_grad, stats = _one_token(ratio, adv)
    assert got_loss == pytest.approx(loss, abs=1e-6) and got_grad == pytest.approx(grad, abs=1e-6)
    assert stats["clip_ratio/high_mean"].item() == (clipped == "high")
    assert stats["clip_ratio/low_mean"].item() == (clipped == "low")


def test_kl_estimators_worked_values():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    # d = log(0.25 / 0.5) = -log 2: k3 = 0.5 + log 2 - 1 = 0.193147, k1 = log 2
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 + math.log(2) - 1, abs=1e-6)
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(math.log(2), abs=1e-6)
    assert kl_penalty(logp, logp, "k3").item() == 0.0
    # the clamp keeps a -100 nats outlier finite
    assert math.isfinite(kl_penalty(torch.tensor([0.0]), torch.tensor([100.0]), "k3").item())


def test_kl_term_adds_beta_times_k3():
    logp = torch.tensor([[math.log(0.5)]])
    ref = torch.tensor([[math.log(0.25)]])
    loss, stats = policy_loss(logp, logp, torch.tensor([0.0]), torch.ones(1, 1), ref_logp=ref, beta=0.1)
    assert loss.item() == pytest.approx(0.1 * (0.5 + math.log(2) - 1), abs=1e-6)
    assert stats["kl"].item() == pytest.approx(0.5 + math.log(2) - 1, abs=1e-6)


def _rollout_and_model():
    model = Transformer.from_pretrained(FIXTURES / "models" / "qwen2", dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 128, (n,), generator=g).tolist() for n in (3, 6, 4, 8)]
    r = generate(model, prompts, SamplingParams(max_new_tokens=10, temperature=0.9), stop_ids={5, 9, 60},
                 group_size=2, generator=g)
    return model, r


@pytest.mark.parametrize("aggregation", ["token", "sequence", "constant"])
def test_four_micro_batches_equal_one_batch(aggregation):
    model, r = _rollout_and_model()
    ref = Transformer.from_pretrained(FIXTURES / "models" / "qwen2", dtype=torch.float32)
    with torch.no_grad():  # a reference that differs from the policy, so the KL term has a gradient
        for p in ref.parameters():
            p.add_(0.01 * torch.randn_like(p))
    adv = torch.randn(len(r.tokens))
    w = token_weights(r.mask, aggregation, max_new_tokens=10)
    shift = 0.3 * torch.randn(r.tokens.shape)  # old log-probs away from the new ones: some ratios are clipped

    def grads(groups):
        model.zero_grad()
        for rows in groups:
            rows = torch.tensor(rows)
            args = (r.prompt_ids[rows], r.prompt_mask[rows], r.tokens[rows], r.mask[rows], 0.9)
            logp, _ = completion_logprobs(model, *args)
            with torch.no_grad():
                ref_logp, _ = completion_logprobs(ref, *args)
            loss, _ = policy_loss(logp, logp.detach() + shift[rows], adv[rows], w[rows], ref_logp=ref_logp, beta=0.04)
            loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    full = grads([list(range(8))])
    accumulated = grads([[0, 1], [2, 3], [4, 5], [6, 7]])
    assert (full - accumulated).abs().max() <= 1e-6


def test_ratio_is_one_at_the_first_update_of_a_fresh_rollout():
    model, r = _rollout_and_model()
    logp, _ = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.tokens, r.mask, 0.9)
    ratio = (logp - r.logprobs).exp()[r.mask]
    assert (ratio - 1).abs().max() <= 1e-4           # sampler's log-probs as pi_old: 1 up to fp32 rounding
    _, stats = policy_loss(logp, logp.detach(), torch.ones(8), token_weights(r.mask))
    assert stats["ratio_mean"].item() == pytest.approx(1.0, abs=1e-7)  # the trainer's own: exactly 1
    assert stats["clip_ratio/region_mean"].item() == 0.0

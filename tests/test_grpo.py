"""GRPO math against TRL's own loss (tests/make_grpo_fixtures.py) and hand-computed numbers, and the accumulation /
on-policy properties the trainer relies on."""
import json
import math

import pytest
import torch

from conftest import FIXTURES
from rlsr.grpo import LossConfig, group_advantages, kl_penalty, near_ties, policy_loss, reward_stats, row_weights
from rlsr.logprobs import completion_logprobs
from rlsr.model import Transformer
from rlsr.sampling import SamplingParams, draw_uniforms, generate

TRL = json.loads((FIXTURES / "grpo_trl.json").read_text())
AGGREGATION = {"dapo": "token", "grpo": "sequence", "dr_grpo": "constant"}  # TRL loss_type -> ours


@pytest.mark.parametrize("name", sorted(TRL["cases"]))
def test_policy_loss_equals_trl(name):
    case = TRL["cases"][name]
    c, x = case["config"], {k: torch.tensor(v, dtype=torch.float64) for k, v in case["inputs"].items()}
    mask = x["mask"].bool()
    logp = x["logp"].clone().requires_grad_(True)
    cfg = LossConfig(c["eps_low"], c["eps_high"], c["beta"], "k3", c["importance"], c["tis_cap"])
    weights = row_weights(mask.sum(-1), AGGREGATION[c["loss_type"]], max_new_tokens=mask.shape[1]).double()
    loss, st = policy_loss(logp, x["old"], x["advantages"], weights, mask, cfg, x["ref"], x["sampling"])
    loss.backward()
    assert loss.item() == pytest.approx(case["loss"], rel=1e-6, abs=1e-9)
    assert torch.allclose(logp.grad, torch.tensor(case["grad"], dtype=torch.float64), atol=1e-7)
    logged = case["logged"]
    for key in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"):  # TRL logs fp32
        assert (st[key] / st["clip_count"]).item() == pytest.approx(logged[key], abs=1e-6), key
    if c["beta"]:
        assert (st["kl"] / st["tokens"]).item() == pytest.approx(logged["kl"], rel=1e-6)


def test_fixtures_exercise_clipping_on_both_levels():
    logged = {k: v["logged"] for k, v in TRL["cases"].items()}
    assert logged["token_dapo_k3"]["clip_ratio/high_mean"] > 0 and logged["sequence_dapo"]["clip_ratio/low_mean"] > 0


def test_group_advantages_worked_example():
    # one prompt, G = 4: mean 0.75, deviations (-0.04, -0.01, 0.05, 0), population std sqrt(0.0042 / 4) = 0.032404
    r = torch.tensor([0.71, 0.74, 0.80, 0.75])
    adv = group_advantages(r, 4, "group", std_floor=0.02)
    assert torch.allclose(adv, torch.tensor([-0.04, -0.01, 0.05, 0.0]) / math.sqrt(0.0042 / 4), atol=1e-5)
    # with a floor above the group's std, the floor divides: (-0.8, -0.2, 1, 0) instead of (-1.23, -0.31, 1.54, 0)
    adv = group_advantages(r, 4, "group", std_floor=0.05)
    assert torch.allclose(adv, torch.tensor([-0.8, -0.2, 1.0, 0.0]), atol=1e-5)
    assert reward_stats(r, 4, std_floor=0.05)["frac_std_below_floor"] == 1.0
    assert torch.allclose(group_advantages(r, 4, "none"), torch.tensor([-0.04, -0.01, 0.05, 0.0]), atol=1e-6)


def test_batch_scaling_near_ties_and_trl_reward_stats():
    r = torch.tensor([0.2, 0.4, 0.5, 0.5004])  # two prompts, G = 2; the second group spans 0.0004 < 1e-3
    adv = group_advantages(r, 2, "batch", std_floor=0.0)
    assert torch.allclose(adv, torch.tensor([-0.1, 0.1, -0.0002, 0.0002]) / r.std(unbiased=False), atol=1e-5)
    assert near_ties(r, 2).tolist() == [False, False, True, True]
    st = reward_stats(r, 2)
    assert st["frac_near_tie_groups"] == 0.5 and st["reward"] == pytest.approx(0.4001, abs=1e-6)
    assert st["reward_std"] == pytest.approx(r.std().item())          # TRL: unbiased std over the whole step
    assert st["reward_std_within_group"] == pytest.approx((0.1 + 0.0002) / 2, abs=1e-6)
    assert st["frac_reward_zero_std"] == 0.0                           # TRL: groups with exactly zero std
    assert reward_stats(torch.tensor([0.3, 0.3, 0.1, 0.9]), 2)["frac_reward_zero_std"] == 0.5
    with pytest.raises(ValueError, match="scale must be one of"):
        group_advantages(r, 2, "median")


def test_row_weights_for_each_aggregation():
    lengths = torch.tensor([3, 1])
    assert torch.allclose(row_weights(lengths, "token"), torch.tensor([1 / 4, 1 / 4]))
    assert torch.allclose(row_weights(lengths, "sequence"), torch.tensor([1 / 6, 1 / 2]))
    assert torch.allclose(row_weights(lengths, "constant", max_new_tokens=4), torch.tensor([1 / 8, 1 / 8]))
    # dropping row 1 removes it from the loss and from the normaliser
    assert torch.allclose(row_weights(lengths, "token", trained=torch.tensor([True, False])), torch.tensor([1 / 3, 0]))


def _one_token(ratio, adv, eps=0.1):
    old = torch.tensor([[math.log(0.5)]])
    logp = (old + math.log(ratio)).requires_grad_(True)
    loss, stats = policy_loss(logp, old, torch.tensor([adv]), torch.ones(1), torch.ones(1, 1, dtype=torch.bool),
                              LossConfig(eps, eps))
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


def test_kl_estimators_worked_values_and_gradients():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    # d = log(0.25 / 0.5) = -log 2: k3 = 0.5 + log 2 - 1 = 0.193147, k1 = log 2, k2 = (log 2)^2 / 2
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 + math.log(2) - 1, abs=1e-6)
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(math.log(2), abs=1e-6)
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(math.log(2) ** 2 / 2, abs=1e-6)
    assert kl_penalty(logp, logp, "k3").item() == 0.0
    # the clamp keeps a -100 nats outlier finite
    assert math.isfinite(kl_penalty(torch.tensor([0.0]), torch.tensor([100.0]), "k3").item())
    # d/dlogp: k1 -> 1, k2 -> -d = log 2, k3 -> 1 - exp(d) = 0.5
    for est, want in (("k1", 1.0), ("k2", math.log(2)), ("k3", 0.5)):
        x = logp.clone().requires_grad_(True)
        kl_penalty(x, ref, est).sum().backward()
        assert x.grad.item() == pytest.approx(want, abs=1e-6), est


def test_which_kl_gradient_each_estimator_gives_as_a_loss_term():
    """The expected gradient of a KL estimate used as a loss term, E_pi[grad k(y)] over samples y ~ pi, computed
    exactly on a 3-way softmax (the expectation is a sum): k1 gives 0, k2 the gradient of the reverse KL(pi || pi_ref),
    k3 the gradient of the forward KL(pi_ref || pi)."""
    theta = torch.tensor([0.3, -0.2, 0.5], requires_grad=True)
    ref = torch.log_softmax(torch.tensor([0.1, 0.4, -0.3]), -1)

    def grad(f):
        (g,) = torch.autograd.grad(f(torch.log_softmax(theta, -1)), theta)
        return g
    p = torch.softmax(theta, -1).detach()                        # the sampling distribution: no gradient through it
    loss_term = {est: grad(lambda logp: (p * kl_penalty(logp, ref, est)).sum()) for est in ("k1", "k2", "k3")}
    reverse = grad(lambda logp: (logp.exp() * (logp - ref)).sum())
    forward = grad(lambda logp: (ref.exp() * (ref - logp)).sum())
    assert torch.allclose(loss_term["k1"], torch.zeros(3), atol=1e-7)
    assert torch.allclose(loss_term["k2"], reverse, atol=1e-6)
    assert torch.allclose(loss_term["k3"], forward, atol=1e-6)
    assert not torch.allclose(reverse, forward, atol=1e-3)       # the two KL gradients differ here


def test_kl_term_adds_beta_times_the_estimate():
    logp = torch.tensor([[math.log(0.5)]])
    ref = torch.tensor([[math.log(0.25)]])
    mask = torch.ones(1, 1, dtype=torch.bool)
    loss, stats = policy_loss(logp, logp, torch.tensor([0.0]), torch.ones(1), mask, LossConfig(beta=0.1), ref)
    assert loss.item() == pytest.approx(0.1 * (0.5 + math.log(2) - 1), abs=1e-6)
    assert stats["kl"].item() == pytest.approx(0.5 + math.log(2) - 1, abs=1e-6)


def test_sequence_ratio_and_truncated_importance_sampling_by_hand():
    mask = torch.tensor([[True, True, False]])
    old = torch.zeros(1, 3)
    logp = torch.tensor([[0.1, -0.3, 7.0]], requires_grad=True)   # the masked token is ignored
    loss, st = policy_loss(logp, old, torch.tensor([1.0]), torch.tensor([0.5]), mask,
                           LossConfig(0.5, 0.5, importance="sequence"))
    w = math.exp((0.1 - 0.3) / 2)                                   # one ratio for the sequence
    assert loss.item() == pytest.approx(-2 * 0.5 * w, abs=1e-6) and st["clip_count"].item() == 1
    sampler = torch.tensor([[-1.0, 0.5, 0.0]])                      # pi_old / pi_sample = e, e^-0.5
    loss, _ = policy_loss(old.clone(), old, torch.tensor([1.0]), torch.tensor([1.0]), mask, LossConfig(tis_cap=2.0),
                          sampler_logp=sampler)
    assert loss.item() == pytest.approx(-(2.0 + math.exp(-0.5)), abs=1e-6)  # e is capped at 2
    with pytest.raises(ValueError, match="needs the sampler"):
        policy_loss(old, old, torch.tensor([1.0]), torch.tensor([1.0]), mask, LossConfig(tis_cap=2.0))


def _rollout_and_model():
    model = Transformer.from_pretrained(FIXTURES / "models" / "qwen2", dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 128, (n,), generator=g).tolist() for n in (3, 6, 4, 8)]
    r = generate(model, prompts, SamplingParams(max_new_tokens=10, temperature=0.9), stop_ids={5, 9, 60},
                 group_size=2, uniforms=draw_uniforms(g, 10, 8))
    return model, r


@pytest.mark.parametrize("aggregation", ["token", "sequence", "constant"])
@pytest.mark.parametrize("importance", ["token", "sequence"])
def test_four_micro_batches_equal_one_batch(aggregation, importance):
    model, r = _rollout_and_model()
    ref = Transformer.from_pretrained(FIXTURES / "models" / "qwen2", dtype=torch.float32)
    with torch.no_grad():  # a reference that differs from the policy, so the KL term has a gradient
        for p in ref.parameters():
            p.add_(0.01 * torch.randn_like(p))
    adv = torch.randn(len(r.tokens))
    w = row_weights(r.lengths, aggregation, max_new_tokens=10)
    shift = 0.3 * torch.randn(r.tokens.shape)  # old log-probs away from the new ones: some ratios are clipped
    cfg = LossConfig(beta=0.04, importance=importance)

    def grads(groups):
        model.zero_grad()
        for rows in groups:
            rows = torch.tensor(rows)
            args = (r.prompt_ids[rows], r.prompt_mask[rows], r.tokens[rows], r.mask[rows], 0.9)
            logp, _ = completion_logprobs(model, *args)
            with torch.no_grad():
                ref_logp, _ = completion_logprobs(ref, *args)
            loss, _ = policy_loss(logp, logp.detach() + shift[rows], adv[rows], w[rows], r.mask[rows], cfg, ref_logp)
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
    _, stats = policy_loss(logp, logp.detach(), torch.ones(8), row_weights(r.lengths), r.mask, LossConfig())
    assert (stats["ratio_mean"] / stats["tokens"]).item() == pytest.approx(1.0, abs=1e-7)  # the trainer's own: 1
    assert stats["clip_ratio/region_mean"].item() == 0.0


def test_leave_one_out_baseline_by_hand():
    # G = 4, rewards (0.71, 0.74, 0.80, 0.75): the others' means are (0.763333, 0.753333, 0.733333, 0.75)
    r = torch.tensor([0.71, 0.74, 0.80, 0.75])
    others = torch.tensor([(0.74 + 0.80 + 0.75) / 3, (0.71 + 0.80 + 0.75) / 3, (0.71 + 0.74 + 0.75) / 3,
                           (0.71 + 0.74 + 0.80) / 3])
    loo = group_advantages(r, 4, "none", baseline="loo")
    assert torch.allclose(loo, r - others, atol=1e-6)
    assert torch.allclose(loo, torch.tensor([-0.0533333, -0.0133333, 0.0666667, 0.0]), atol=1e-6)
    # = G / (G - 1) x the group-mean advantage, with or without a std scale
    assert torch.allclose(loo, 4 / 3 * group_advantages(r, 4, "none"), atol=1e-6)
    assert torch.allclose(group_advantages(r, 4, "group", baseline="loo"), 4 / 3 * group_advantages(r, 4, "group"),
                          atol=1e-5)
    # two groups of G = 2: the other reward is the baseline
    assert group_advantages(torch.tensor([1.0, 0.0, 0.25, 0.75]), 2, "none", baseline="loo").tolist() == \
        [1.0, -1.0, -0.5, 0.5]
    with pytest.raises(ValueError, match="baseline must be one of"):
        group_advantages(r, 4, baseline="median")

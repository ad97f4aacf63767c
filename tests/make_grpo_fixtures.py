"""Make tests/fixtures/grpo_trl.json: TRL's own GRPO loss (GRPOTrainer._compute_loss) on fixed log-probs, for
tests/test_grpo.py to compare rlsr.grpo.policy_loss against. Run once, from the repository root, with a Python that
has TRL (not an rlsr dependency), e.g. the environment ../shared/tools/reference-env.sh builds:

    /path/to/refenv/bin/python tests/make_grpo_fixtures.py

_compute_loss is called as an unbound function on a stand-in `self` that carries the settings it reads and hands
back the fixed per-token log-probs in place of a model forward; everything after that (the ratio, clipping, the
KL term, the importance-sampling weight, the aggregation, the logged statistics) is TRL's code. Written per case:
the inputs, TRL's loss, its gradient with respect to the per-token log-probs, and its logged kl / clip ratios.
"""
import json
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch
import trl
from trl.trainer.grpo_trainer import GRPOTrainer

OUT = Path(__file__).resolve().parent / "fixtures" / "grpo_trl.json"
B, T = 4, 6
LENGTHS = [6, 3, 5, 1]


def inputs(seed: int, old_noise: float):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(T)[None] < torch.tensor(LENGTHS)[:, None]).long()
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3                 # log-probs in (-3, 0]
    old = logp + old_noise * torch.randn(B, T, generator=g, dtype=torch.float64)
    ref = logp + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    sampling = old + 0.5 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.tensor([1.3, -0.7, 0.4, -1.1], dtype=torch.float64)
    return mask, logp, old, ref, sampling, adv


def trl_loss(case: dict):
    mask, logp, old, ref, sampling, adv = inputs(case["seed"], case["old_noise"])
    logp = logp.clone().requires_grad_(True)
    metrics = {"train": defaultdict(list)}
    ident = lambda x: x  # noqa: E731  (one process)
    self = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros(B, T, dtype=torch.float64), None),
        aux_loss_enabled=False, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level=case["importance"], beta=case["beta"], loss_type=case["loss_type"],
        epsilon_low=case["eps_low"], epsilon_high=case["eps_high"],
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        use_vllm=case["tis_cap"] is not None, vllm_importance_sampling_correction=case["tis_cap"] is not None,
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1, max_completion_length=T,
        accelerator=SimpleNamespace(num_processes=1, gather=ident, reduce=lambda x, reduction: x,
                                    gather_for_metrics=ident),
        _entropy_bonus_enabled=False, _metrics=metrics)
    batch = {"prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
             "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask, "advantages": adv,
             "old_per_token_logps": old, "ref_per_token_logps": ref, "num_items_in_batch": mask.sum()}
    if case["tis_cap"] is not None:  # TRL's token_truncate weight, as _generate_and_score_completions makes it
        batch["importance_sampling_ratio"] = torch.exp((old - sampling) * mask).clamp(max=case["tis_cap"])
    loss = GRPOTrainer._compute_loss(self, None, batch)
    loss.backward()
    logged = {k: v[-1] for k, v in metrics["train"].items()}
    return {"inputs": {"mask": mask.tolist(), "logp": logp.detach().tolist(), "old": old.tolist(), "ref": ref.tolist(),
                       "sampling": sampling.tolist(), "advantages": adv.tolist()},
            "loss": loss.item(), "grad": logp.grad.tolist(), "logged": logged}


CASES = [
    dict(name="token_dapo_k3", importance="token", loss_type="dapo", beta=0.04, eps_low=0.2, eps_high=0.28,
         tis_cap=None, seed=0, old_noise=0.2),
    dict(name="token_grpo", importance="token", loss_type="grpo", beta=0.04, eps_low=0.2, eps_high=0.2,
         tis_cap=None, seed=1, old_noise=0.2),
    dict(name="token_dr_grpo", importance="token", loss_type="dr_grpo", beta=0.0, eps_low=0.2, eps_high=0.2,
         tis_cap=None, seed=2, old_noise=0.2),
    dict(name="sequence_dapo", importance="sequence", loss_type="dapo", beta=0.0, eps_low=3e-4, eps_high=4e-4,
         tis_cap=None, seed=3, old_noise=0.0004),
    dict(name="sequence_grpo_k3", importance="sequence", loss_type="grpo", beta=0.04, eps_low=0.05, eps_high=0.05,
         tis_cap=None, seed=4, old_noise=0.1),
    dict(name="token_dapo_tis", importance="token", loss_type="dapo", beta=0.04, eps_low=0.2, eps_high=0.2,
         tis_cap=2.0, seed=5, old_noise=0.1),
]


if __name__ == "__main__":
    out = {"trl_version": trl.__version__, "cases": {c["name"]: {"config": c, **trl_loss(c)} for c in CASES}}
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {OUT}: " + ", ".join(f"{k} loss {v['loss']:.6f} {v['logged']}" for k, v in out["cases"].items()))

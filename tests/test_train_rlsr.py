"""train_rlsr.py end to end on tiny random models (run as a command): the run directory it writes, exact resume after
SIGKILL, and which groups DAPO's dynamic sampling keeps (rlsr/rollout.py)."""
import json

import pytest
import torch

from conftest import (kill_and_resume, logged_metrics, make_tiny_bert_dir, make_tiny_data, make_tiny_policy_dir,
                      run_script, script_error)
from rlsr.metrics import StepSamples
from rlsr.model import Transformer
from rlsr.rollout import Rows, keep_groups
from rlsr.sampling import Rollout
from rlsr.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    return make_tiny_policy_dir(d / "policy"), make_tiny_bert_dir(d / "encoder"), make_tiny_data(d / "data.jsonl")


def argv(assets, out, steps, *extra):
    policy, encoder, data = assets
    return ["--init", str(policy), "--encoder", str(encoder), "--data", str(data), "--train-split", "all",
            "--eval-data", str(data), "--eval-split", "all", "--eval-prompts", "4", "--out-dir", str(out),
            "--steps", str(steps), "--prompts-per-step", "2", "--group-size", "4", "--max-new-tokens", "8",
            "--save-every", "2", "--sample-every", "2", "--micro-batch-size", "4", "--lr", "1e-3", *extra]


def test_run_directory_and_trl_metric_names(assets, tmp_path):
    out = run_script("train_rlsr.py", argv(assets, tmp_path / "run", 4)).stdout
    run = tmp_path / "run"
    m = logged_metrics(run)
    assert [r["step"] for r in m] == [1, 2, 3, 4]
    for key in ("reward", "reward_std", "frac_reward_zero_std", "kl", "entropy", "clip_ratio/low_mean",
                "clip_ratio/high_mean", "clip_ratio/region_mean", "completions/mean_length",
                "completions/clipped_ratio", "grad_norm", "monitor/length_reward_corr", "monitor/distinct_2",
                "monitor/copy_fraction_4gram"):
        assert key in m[0], key
    assert m[0]["ratio_mean"] == pytest.approx(1.0) and m[0]["kl"] == pytest.approx(0.0, abs=1e-9)  # on-policy start
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {2, 4} and len(samples) == 16
    assert {"prompt", "reference", "completion", "reward", "advantage"} <= samples[0].keys()
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 4] and len(evals[0]["rewards"]) == 4
    assert (run / "checkpoints" / "LATEST").read_text().strip() == "step-000004"
    final = Transformer.from_pretrained(run / "final")  # HF layout, loadable, and a valid --init
    assert not torch.equal(final.model.norm.weight, Transformer.from_pretrained(assets[0]).model.norm.weight)
    assert Tokenizer.from_pretrained(run / "final").stop_ids == {2}
    assert "held-out reward (greedy, n=4)" in out
    assert f"outputs: {run} (metrics.jsonl, eval.jsonl, samples.jsonl, summary.jsonl" in out and "checkpoints)" in out
    assert "--resume" in script_error("train_rlsr.py", argv(assets, run, 4))  # never overwrites a run


def test_sigkill_then_resume_equals_uninterrupted(assets, tmp_path):
    run_script("train_rlsr.py", argv(assets, tmp_path / "full", 6))
    killed_at = kill_and_resume("train_rlsr.py", argv(assets, tmp_path / "killed", 6), tmp_path / "killed", 3)
    assert killed_at < 6
    assert logged_metrics(tmp_path / "killed") == logged_metrics(tmp_path / "full")
    a = Transformer.from_pretrained(tmp_path / "full" / "final").state_dict()
    b = Transformer.from_pretrained(tmp_path / "killed" / "final").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---- DAPO's dynamic sampling: which groups a step trains on, by hand

def _draw(rewards: list[float], first_prompt: int, group_size: int = 2) -> Rows:
    """A draw whose row i has completion token 100 + first_prompt * G + i, so the kept rows can be read back."""
    n = len(rewards)
    ids = torch.arange(n).view(n, 1) + 100 + first_prompt * group_size
    rollout = Rollout(ids, torch.zeros(n, 1), torch.ones(n, 1, dtype=torch.bool), ["stop"] * n,
                      torch.arange(n) // group_size, torch.ones(n, 2, dtype=torch.long), torch.ones(n, 2, dtype=torch.bool))
    examples = [f"prompt {first_prompt + i // group_size}" for i in range(n)]
    return Rows(rollout, examples, StepSamples(rewards, [1] * n, [True] * n, ["x"] * n, ["y"] * n,
                                                          {"cosine": rewards}, [{}]))


def test_dynamic_sampling_keeps_the_first_informative_groups_in_draw_order():
    # draw 0: groups (ties, signal); draw 1: (signal, ties, signal). P = 2 -> draw 0's group 1 and draw 1's group 0
    draws = [_draw([0.5, 0.5, 0.1, 0.9], 0), _draw([0.2, 0.7, 0.3, 0.3, 0.0, 1.0], 2)]
    assert draws[0].informative(2, 1e-3) == [1] and draws[1].informative(2, 1e-3) == [0, 2]
    kept = keep_groups(draws, 2, 2, 1e-3, pad_id=0)
    assert kept.examples == ["prompt 1", "prompt 1", "prompt 2", "prompt 2"]
    assert kept.rollout.tokens.view(-1).tolist() == [102, 103, 104, 105] and kept.samples.rewards == [0.1, 0.9, 0.2, 0.7]
    assert kept.rollout.prompt_index.tolist() == [1, 1, 2, 2]                 # groups stay whole (indices as drawn)
    # too few informative groups after every draw: topped up with near-ties, in draw order
    short = keep_groups([_draw([0.5, 0.5, 0.1, 0.9], 0)], 2, 2, 1e-3, pad_id=0)
    assert short.examples == ["prompt 0", "prompt 0", "prompt 1", "prompt 1"]


def test_dynamic_sampling_run_logs_its_draws(assets, tmp_path):
    run_script("train_rlsr.py", argv(assets, tmp_path / "run", 2, "--dynamic-sampling", "--max-extra-draws", "2",
                                     "--no-eval"))
    m = logged_metrics(tmp_path / "run")
    assert [r["step"] for r in m] == [1, 2] and all(1 <= r["dynamic_sampling/draws"] <= 3 for r in m)

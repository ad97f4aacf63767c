"""train_rlsr.py end to end on tiny random models: the run directory it writes, and exact resume after SIGKILL."""
import json

import pytest
import torch

import train_rlsr
from conftest import kill_and_resume, logged_metrics, make_tiny_bert_dir, make_tiny_data, make_tiny_policy_dir, run_script
from rlsr.model import Transformer
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


def test_run_directory_and_trl_metric_names(assets, tmp_path, capsys):
    train_rlsr.main(argv(assets, tmp_path / "run", 4))
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
    assert "held-out reward (greedy, n=4)" in capsys.readouterr().out
    with pytest.raises(FileExistsError, match="--resume"):
        train_rlsr.main(argv(assets, run, 4))  # never overwrites a run


def test_sigkill_then_resume_equals_uninterrupted(assets, tmp_path):
    run_script("train_rlsr.py", argv(assets, tmp_path / "full", 6))
    killed_at = kill_and_resume("train_rlsr.py", argv(assets, tmp_path / "killed", 6), tmp_path / "killed", 3)
    assert killed_at < 6
    assert logged_metrics(tmp_path / "killed") == logged_metrics(tmp_path / "full")
    a = Transformer.from_pretrained(tmp_path / "full" / "final").state_dict()
    b = Transformer.from_pretrained(tmp_path / "killed" / "final").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

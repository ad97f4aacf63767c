"""What a new user hits: bad flags and inputs refused before anything is written, non-finite numbers never saved,
resume that refuses changed settings, checkpoints that are verified, recoverable and not pickles (rlsr/training.py,
rlsr/run.py). Tiny random models; each case names the behaviour it pins."""
import argparse
import json
import re
import os
import pickle
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from conftest import ROOT, make_tiny_bert_dir, make_tiny_data, make_tiny_policy_dir, run_script, script_error
from rlsr import training
from rlsr.checkpoint import write_manifest
from rlsr.metrics import StepSamples, step_metrics
from rlsr.training import TrainingError


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    return make_tiny_policy_dir(d / "policy"), make_tiny_bert_dir(d / "encoder"), make_tiny_data(d / "data.jsonl", 16)


def rlsr_argv(assets, out, *extra, steps=2):
    policy, encoder, data = assets
    return ["--init", str(policy), "--encoder", str(encoder), "--data", str(data), "--eval-prompts", "2",
            "--out-dir", str(out), "--steps", str(steps), "--prompts-per-step", "2", "--group-size", "2",
            "--max-new-tokens", "4", "--save-every", "1", "--sample-every", "0", "--micro-batch-size", "4",
            "--lr", "1e-3", *extra]


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---- flags checked up front; a failed start leaves nothing behind

@pytest.mark.parametrize("flag, value, message", [
    ("--temperature", "0", "--temperature 0.0 must be > 0"),
    ("--beta", "nan", "--beta nan is not a finite number"),
    ("--lr", "1e6", "--lr 1000000.0 must be <= 1"),
    ("--lr", "1e30", "--lr 1e+30 must be <= 1"),
    ("--save-every", "-1", "--save-every -1 must be >= 0"),
    ("--group-size", "1", "--group-size 1 must be >= 2"),
])
def test_mistaken_flags_are_refused_before_anything_is_written(assets, tmp_path, flag, value, message):
    assert script_error("train_rlsr.py", rlsr_argv(assets, tmp_path / "run", flag, value)) == f"error: {message}\n"
    assert not (tmp_path / "run").exists()


def test_cli_prints_one_error_line_and_exits_2(assets, tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "train_rlsr.py"), *rlsr_argv(assets, tmp_path / "r", "--beta", "nan")],
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 2 and out.stderr.strip() == "error: --beta nan is not a finite number"
    out = subprocess.run([sys.executable, str(ROOT / "train_rlsr.py"), "--step", "3"], capture_output=True, text=True)
    assert out.returncode == 2 and "unrecognized arguments: --step" in out.stderr  # no abbreviations


def test_bad_data_leaves_no_run_directory_and_the_next_try_works(assets, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"prompt": "hi", "response": "caf\xe9"}\n')
    assert "bad.jsonl:1: not UTF-8" in script_error("train_rlsr.py", rlsr_argv(assets, tmp_path / "run", "--data", str(bad)))
    assert not (tmp_path / "run").exists()
    (tmp_path / "empty.jsonl").write_text("")
    assert "empty.jsonl" in script_error("train_sft.py", ["--init", str(assets[0]), "--data", str(tmp_path / "empty.jsonl"),
                                                          "--out-dir", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()
    run_script("train_rlsr.py", rlsr_argv(assets, tmp_path / "run", steps=1))  # same --out-dir: nothing blocks it
    assert len(metrics(tmp_path / "run")) == 1


def test_a_file_alone_is_split_for_held_out_and_an_empty_held_out_set_is_an_error(assets, tmp_path):
    out = run_script("train_rlsr.py", rlsr_argv(assets, tmp_path / "run", steps=1)).stdout
    assert "training on its 'train' split and evaluating on its 'test' split" in out
    evals = [json.loads(line) for line in (tmp_path / "run" / "eval.jsonl").read_text().splitlines()]
    train_prompts = {json.loads(line)["prompt"] for line in assets[2].read_text().splitlines()}
    assert evals and len(evals[0]["ids"]) == 2
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"prompt": "Hello there?", "response": "Hi."}) + "\n")
    assert "one.jsonl" in script_error("train_sft.py", ["--init", str(assets[0]), "--data", str(assets[2]),
                                                         "--eval-data", str(one), "--eval-split", "test",
                                                         "--out-dir", str(tmp_path / "sft")])
    # training and held-out data that overlap are said to overlap
    out = run_script("train_rlsr.py", rlsr_argv(assets, tmp_path / "same", "--train-split", "all", "--eval-data",
                                                str(assets[2]), "--eval-split", "all", steps=1)).stdout
    assert "also occur in the training data" in out
    assert train_prompts


def test_save_every_zero_writes_only_final(assets, tmp_path):
    out = run_script("train_rlsr.py", rlsr_argv(assets, tmp_path / "run", "--save-every", "0", "--no-eval")).stdout
    assert not (tmp_path / "run" / "checkpoints").exists() and (tmp_path / "run" / "final" / "manifest.json").exists()
    line = out.strip().splitlines()[-1]   # names only what the run wrote
    assert line.startswith(f"outputs: {tmp_path / 'run'} (metrics.jsonl") and "checkpoints" not in line
    assert "eval.jsonl" not in line and line.endswith(f"final weights {tmp_path / 'run' / 'final'}")


# ---- non-finite numbers: skipped, counted, stopped, never saved; logs stay strict JSON

POISONED_LOSS = """
import rlsr.grpo
real, calls = rlsr.grpo.policy_loss, []
def poisoned(*a, **k):  # the first step is fine, then NaN
    loss, st = real(*a, **k)
    calls.append(1)
    return (loss * float("nan") if len(calls) > 1 else loss), st
rlsr.grpo.policy_loss = poisoned
"""


def test_nonfinite_loss_steps_are_skipped_then_the_run_stops_and_nothing_nonfinite_is_written(assets, tmp_path):
    err = script_error("train_rlsr.py", rlsr_argv(assets, tmp_path / "run", "--max-nonfinite-steps", "2", "--no-eval",
                                                  steps=5), code=1, before=POISONED_LOSS)
    assert "2 steps in a row had a non-finite loss" in err
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # strict JSON: json.loads would accept NaN, so check the text too
    assert not any("NaN" in line or "Infinity" in line for line in lines)
    assert [r["step"] for r in rows] == [1, 2] and rows[1]["loss"] is None and rows[1]["nonfinite_steps"] == 1
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*"))
    assert ckpts == ["step-000001", "step-000002"]  # step 2 was skipped, so its weights are step 1's: finite
    from rlsr.model import Transformer
    w = Transformer.from_pretrained(tmp_path / "run" / "checkpoints" / "step-000002").state_dict()
    assert all(torch.isfinite(v).all() for v in w.values())
    assert not (tmp_path / "run" / "final").exists()
    state = torch.load(tmp_path / "run" / "checkpoints" / "step-000002" / "trainer_state.pt", weights_only=True)
    assert state["nonfinite_in_row"] == 1  # saved, so a resumed run still counts the steps in a row


def test_nonfinite_weights_are_never_written(assets, tmp_path):
    policy, tok = training.Transformer.from_pretrained(assets[0]), training.Tokenizer.from_pretrained(assets[0])
    with torch.no_grad():
        policy.model.norm.weight[0] = float("inf")
    ap = argparse.ArgumentParser()
    training.common_args(ap, steps=2, lr=1e-3, warmup=0, micro_batch=4, out_dir=str(tmp_path / "r"))
    args = ap.parse_args(["--save-every", "1"])
    from rlsr.data import PromptSampler, load_jsonl
    t = training.Trainer(args, training.distributed.init("cpu"), tok, policy, PromptSampler(load_jsonl(assets[2]), 2),
                         assets[0])
    with pytest.raises(TrainingError, match="non-finite weights; refusing to write them"):
        t.maybe_checkpoint(1)
    assert not (tmp_path / "r" / "checkpoints").exists()


# ---- resume: the run's own settings, verified checkpoints, no pickles, clean temporaries

def test_resume_refuses_a_changed_flag_and_allows_the_listed_ones(assets, tmp_path):
    run = str(tmp_path / "run")
    run_script("train_rlsr.py", rlsr_argv(assets, tmp_path / "run", "--no-eval"))
    assert "--lr 0.123 differs from the run's 0.001" in script_error("train_rlsr.py", ["--resume", run, "--lr", "0.123"])
    assert "--group-size 5 differs from the run's 2" in script_error("train_rlsr.py", ["--resume", run, "--group-size", "5"])
    err = script_error("train_rlsr.py", ["--resume", run, "--beta", "0.5"])
    assert "only --steps, " in err and "--sample-every" in err and "--kl-model-offload may change" in err
    run_script("train_rlsr.py", ["--resume", run, "--steps", "3", "--save-every", "3", "--micro-batch-size", "2"])
    assert [m["step"] for m in metrics(tmp_path / "run")] == [1, 2, 3]
    err = script_error("train_sft.py", ["--resume", run, "--lr", "0.5"])   # each script lists only the flags it has
    assert "--micro-batch-size" in err and "--sample-every" not in err and "--kl-model-offload" not in err
    (tmp_path / "run" / "settings.json").write_text("{not json")
    assert "settings.json:1: invalid JSON" in script_error("train_rlsr.py", ["--resume", run])


def test_resume_falls_back_to_the_newest_intact_checkpoint_and_cleans_temporaries(assets, tmp_path):
    run = tmp_path / "run"
    run_script("train_rlsr.py", rlsr_argv(assets, run, "--no-eval", steps=3))  # keeps step-000002 and step-000003
    newest = run / "checkpoints" / "step-000003" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])                        # truncated, as by a full disk
    stale = run / "checkpoints" / ".step-000004.tmp-abc"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"x" * 100)
    out = run_script("train_rlsr.py", ["--resume", str(run), "--steps", "4"]).stdout
    assert "checkpoint step-000003 is damaged" in out and "resumed" in out and "from step-000002" in out
    assert not stale.exists() and f"removed {stale}" in out
    assert [m["step"] for m in metrics(run)] == [1, 2, 3, 4]


def test_trainer_state_is_not_unpickled(assets, tmp_path):
    run = tmp_path / "run"
    run_script("train_rlsr.py", rlsr_argv(assets, run, "--no-eval", steps=1))
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    ckpt = run / "checkpoints" / "step-000001"
    (ckpt / "trainer_state.pt").write_bytes(pickle.dumps({"step": 1, "x": Payload()}))
    write_manifest(ckpt)  # a consistent manifest: only the loader stands between the file and the code
    err = script_error("train_rlsr.py", ["--resume", str(run), "--steps", "2"], code=1)
    assert "holds more than tensors and plain values; refusing to load it" in err
    assert not marker.exists()


def test_full_disk_is_named_before_and_during_a_checkpoint(assets, tmp_path):
    small_disk = "import collections, shutil\nshutil.disk_usage = lambda p: collections.namedtuple('U', 'free')(10_000)"
    err = script_error("train_rlsr.py", rlsr_argv(assets, tmp_path / "a", "--no-eval", steps=1), 2, small_disk)
    assert re.search(r"no space left on .* for final/ and its checkpoints: it needs about 0\.\d+ GB", err)
    assert not (tmp_path / "a").exists()  # found before training, not after it
    full_disk = ("import errno, torch\n"
                 "def full(*a, **k): raise OSError(errno.ENOSPC, 'No space left on device')\ntorch.save = full")
    err = script_error("train_rlsr.py", rlsr_argv(assets, tmp_path / "b", "--no-eval", steps=1), 1, full_disk)
    assert "no space left on" in err
    assert not list((tmp_path / "b" / "checkpoints").glob(".*"))  # the temporary directory is gone too


def test_outputs_follow_the_umask(assets, tmp_path):
    old = os.umask(0o022)
    try:
        run_script("train_rlsr.py", rlsr_argv(assets, tmp_path / "run", "--no-eval", steps=1))
    finally:
        os.umask(old)
    for p in (tmp_path / "run" / "final", tmp_path / "run" / "checkpoints" / "step-000001"):
        assert p.stat().st_mode & 0o777 == 0o755
        assert (p / "model.safetensors").stat().st_mode & 0o777 == 0o644


# ---- logged statistics over several PPO epochs are the mean over epochs

def test_step_metrics_average_over_iterations_and_use_trl_meanings():
    samples = StepSamples([0.1, 0.3, 0.5, 0.5], [2, 4, 1, 1], [True, False, True, True], ["a b c", "a a a a", "x", "y"],
                          ["a b c", "q", "x", "z"], {"cosine": [0.1, 0.3, 0.5, 0.5]},
                          [{"reward/truncated_responses": 0.0, "reward/cosine": 0.35}])
    # two iterations, 8 tokens each: summed diagnostics
    sums = {"tokens": 16.0, "clip_count": 16.0, "clip_ratio/low_mean": 2.0, "clip_ratio/high_mean": 4.0,
            "clip_ratio/region_mean": 6.0, "ratio_mean": 16.4, "kl": 0.8, "loss": -0.6, "entropy": 32.0}
    m = step_metrics(samples, sums, group_size=2, num_iterations=2)
    assert m["loss"] == pytest.approx(-0.3) and m["kl"] == pytest.approx(0.05) and m["entropy"] == pytest.approx(2.0)
    assert m["clip_ratio/region_mean"] == pytest.approx(6 / 16) and m["ratio_mean"] == pytest.approx(16.4 / 16)
    assert m["reward_std"] == pytest.approx(torch.tensor([0.1, 0.3, 0.5, 0.5]).std().item())
    assert m["frac_reward_zero_std"] == 0.5 and m["completions/clipped_ratio"] == 0.25
    assert m["completions/mean_terminated_length"] == pytest.approx(4 / 3)
    assert m["monitor/copy_fraction_4gram"] == 0.0 and "reward/cosine" not in m  # one component: it is the reward
    assert m["reward/truncated_responses"] == 0.0


def test_reward_components_are_means_over_the_kept_rows():
    """Dynamic sampling keeps some rows of a draw: a component's mean is over those rows, not the draw's statistic."""
    full = StepSamples([0.2, 0.4, 0.6, 0.8], [1] * 4, [True] * 4, ["a"] * 4, ["b"] * 4,
                       {"cosine": [0.2, 0.4, 0.6, 0.8], "rouge_l": [0.0, 0.0, 1.0, 1.0]},
                       [{"reward/cosine": 0.5, "reward/rouge_l": 0.5, "reward/truncated_responses": 0.25}])
    sums = {"tokens": 2.0, "clip_count": 2.0, "clip_ratio/low_mean": 0.0, "clip_ratio/high_mean": 0.0,
            "clip_ratio/region_mean": 0.0, "ratio_mean": 2.0, "kl": 0.0, "loss": 0.0, "entropy": 2.0}
    m = step_metrics(full.select([2, 3]), sums, group_size=2)
    assert m["reward/cosine"] == pytest.approx(0.7) and m["reward/rouge_l"] == 1.0
    assert m["reward/truncated_responses"] == 0.25  # an encoder statistic of the draw, kept as it is


def test_kl_model_is_bf16_under_amp_and_the_readme_memory_figures_hold():
    """The frozen KL model is loaded in bf16 under --amp; the README's 7B figures from the Qwen2.5-7B shapes."""
    assert training.frozen_dtype(SimpleNamespace(amp=True, dtype="float32")) == torch.bfloat16
    assert training.frozen_dtype(SimpleNamespace(amp=False, dtype="float32")) == torch.float32
    from rlsr.model import ModelConfig, Transformer
    qwen7b = dict(architectures=["Qwen2ForCausalLM"], vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                  num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, rms_norm_eps=1e-6,
                  rope_theta=1e6, max_position_embeddings=32768, tie_word_embeddings=False)
    with torch.device("meta"):
        n = sum(p.numel() for p in Transformer(ModelConfig.from_hf(qwen7b)).parameters())
    assert 7.6e9 < n < 7.7e9
    assert round(2 * n / 1e9) == 15        # the bf16 KL model: "the bf16 KL model adds 15 GB"
    assert round(4 * n / 1e9, 1) == 30.5   # fp32 weights gathered for sampling: "30.5 GB"
    assert round(16 * n / 8 / 1e9) == 15   # fp32 weights + grads + AdamW (16 B/param) over 8 GPUs: "15 GB per GPU"


def test_a_policy_collapsed_to_noise_is_warned_about_once(capsys):
    """Entropy at >= 90% of ln V (a learning rate that turned the model into noise) is said loudly, once per run."""
    trainer = SimpleNamespace(policy=SimpleNamespace(output_vocab=49152), warned=set(), args=SimpleNamespace(lr=1e-2))
    training.Trainer.warn_collapse(trainer, 3, {"entropy": 2.1})          # a healthy policy: silent
    assert capsys.readouterr().out == ""
    training.Trainer.warn_collapse(trainer, 4, {"entropy": 10.80})        # ln 49152 = 10.80
    out = capsys.readouterr().out
    assert "WARNING: step 4: entropy 10.80 nats" in out and "collapsed" in out and "0.01" in out
    training.Trainer.warn_collapse(trainer, 5, {"entropy": 10.81})
    assert capsys.readouterr().out == ""


def test_resume_on_changed_data_names_the_change(assets, tmp_path):
    data = make_tiny_data(tmp_path / "data.jsonl", 16)
    policy, encoder, _ = assets
    run_script("train_rlsr.py", rlsr_argv((policy, encoder, data), tmp_path / "run", "--no-eval"))
    make_tiny_data(data, 12)                                  # the same file, fewer examples
    err = script_error("train_rlsr.py", ["--resume", str(tmp_path / "run"), "--steps", "3"])
    assert "the data changed since the run started" in err


def test_chat_template_flag_overrides_the_checkpoints_and_travels_with_its_checkpoints(assets, tmp_path):
    template = tmp_path / "turns.jinja"
    template.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}"
                        "{% if m['role'] == 'assistant' %}<|im_end|>{% endif %}\n{% endfor %}"
                        "{% if add_generation_prompt %}[assistant] {% endif %}")
    run_script("train_rlsr.py", rlsr_argv(assets, tmp_path / "run", "--chat-template", str(template), steps=1))
    saved = json.loads((tmp_path / "run" / "final" / "tokenizer_config.json").read_text())
    assert saved["chat_template"] == template.read_text()
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}\n{{ m['content'] }\n")
    err = script_error("train_sft.py", ["--init", str(assets[0]), "--data", str(assets[2]), "--out-dir",
                                        str(tmp_path / "sft"), "--chat-template", str(broken)])
    assert re.search(r"--chat-template .*broken\.jinja: line 2", err)
    assert not (tmp_path / "sft").exists()


def test_init_names_the_packaged_policies_when_it_is_neither():
    with pytest.raises(FileNotFoundError, match="not one of the packaged policies smollm2-135m-instruct, gemma3-270m"):
        training.init_path(SimpleNamespace(init="gemma-9000"))

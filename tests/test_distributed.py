"""torchrun with 2 CPU processes (gloo): the same update as one process on the same global batch, DDP and FSDP2."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, logged_metrics, make_tiny_bert_dir, make_tiny_data, make_tiny_policy_dir
from rlsr.model import Transformer

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist")
    return make_tiny_policy_dir(d / "policy"), make_tiny_bert_dir(d / "encoder"), make_tiny_data(d / "data.jsonl")


def launch(script: str, args: list[str], ranks: int):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(ROOT / script)] if ranks == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", str(ROOT / script)]
    out = subprocess.run(cmd + args, env=env, capture_output=True, text=True, timeout=600)  # a hang fails, not stalls
    assert out.returncode == 0, out.stderr[-3000:]


def weights(run) -> dict:
    return Transformer.from_pretrained(run / "final").state_dict()  # saved at world size 2, loaded in one process


def assert_close(a: dict, b: dict, tol: float = 1e-5):
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= tol, worst


def rlsr_args(assets, out, *extra):
    policy, encoder, data = assets
    return ["--init", str(policy), "--encoder", str(encoder), "--data", str(data), "--train-split", "all", "--no-eval",
            "--out-dir", str(out), "--steps", "2", "--prompts-per-step", "4", "--group-size", "2",
            "--max-new-tokens", "6", "--micro-batch-size", "2", "--lr", "1e-3", "--save-every", "1", *extra]


def test_rlsr_two_ranks_equal_one_process(assets, tmp_path):
    launch("train_rlsr.py", rlsr_args(assets, tmp_path / "one"), 1)
    launch("train_rlsr.py", rlsr_args(assets, tmp_path / "ddp"), 2)
    assert_close(weights(tmp_path / "one"), weights(tmp_path / "ddp"))
    for a, b in zip(logged_metrics(tmp_path / "one"), logged_metrics(tmp_path / "ddp")):
        for key in ("reward", "kl", "loss", "entropy", "grad_norm", "completions/mean_length"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


def test_rlsr_fsdp2_equals_ddp(assets, tmp_path):
    launch("train_rlsr.py", rlsr_args(assets, tmp_path / "ddp", "--steps", "1"), 2)
    launch("train_rlsr.py", rlsr_args(assets, tmp_path / "fsdp", "--steps", "1", "--fsdp"), 2)
    assert_close(weights(tmp_path / "ddp"), weights(tmp_path / "fsdp"))


def test_lora_two_ranks_ddp_and_fsdp2_equal_one_process(assets, tmp_path):
    """Adapters only train; the KL model is the policy with its adapters off (under FSDP2 too)."""
    lora = ("--lora-rank", "4", "--beta", "0.1", "--save-every", "2")
    launch("train_rlsr.py", rlsr_args(assets, tmp_path / "one", *lora), 1)
    launch("train_rlsr.py", rlsr_args(assets, tmp_path / "ddp", *lora), 2)
    launch("train_rlsr.py", rlsr_args(assets, tmp_path / "fsdp", *lora, "--fsdp"), 2)
    one = weights(tmp_path / "one")
    assert_close(one, weights(tmp_path / "ddp"))
    assert_close(one, weights(tmp_path / "fsdp"))
    for run in ("ddp", "fsdp"):
        for a, b in zip(logged_metrics(tmp_path / "one"), logged_metrics(tmp_path / run)):
            for key in ("reward", "kl", "loss", "grad_norm"):
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (run, key)
    assert logged_metrics(tmp_path / "one")[1]["kl"] > 0


def sft_args(assets, out, *extra):
    policy, _, data = assets
    return ["--init", str(policy), "--data", str(data), "--train-split", "all", "--eval-data", str(data),
            "--eval-split", "all", "--eval-examples", "4", "--out-dir", str(out), "--steps", "2",
            "--examples-per-step", "4", "--micro-batch-size", "1", "--lr", "1e-3", "--max-seq-len", "48", *extra]


def test_sft_two_ranks_equal_one_process_and_fsdp2(assets, tmp_path):
    launch("train_sft.py", sft_args(assets, tmp_path / "one"), 1)
    launch("train_sft.py", sft_args(assets, tmp_path / "ddp"), 2)
    launch("train_sft.py", sft_args(assets, tmp_path / "fsdp", "--fsdp"), 2)
    one = weights(tmp_path / "one")
    assert_close(one, weights(tmp_path / "ddp"))
    assert_close(one, weights(tmp_path / "fsdp"))
    assert [m["loss"] for m in logged_metrics(tmp_path / "one")] == pytest.approx(
        [m["loss"] for m in logged_metrics(tmp_path / "ddp")], rel=1e-5)


def test_sft_fsdp_with_packing_and_uneven_rows_per_rank(tmp_path):
    """Packing gives the two ranks different numbers of rows and micro-batches; FSDP2 all-gathers in every forward,
    so without padding the shorter rank's list the ranks would issue different collectives and hang."""
    import json
    policy = make_tiny_policy_dir(tmp_path / "policy")
    words = ["Hello there", "colour", "joke chicken road", "terse kind", "help name tell why"]
    rows = [{"prompt": f"{words[i % 5]}?", "response": " ".join([words[(i * 3) % 5]] * (1 + 12 * (i % 4 == 0)))}
            for i in range(16)]
    data = tmp_path / "uneven.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["--init", str(policy), "--data", str(data), "--train-split", "all", "--eval-data", str(data),
            "--eval-split", "all", "--eval-examples", "6", "--steps", "2", "--examples-per-step", "4",
            "--micro-batch-size", "1", "--lr", "1e-3", "--max-seq-len", "128", "--pack"]  # step 2: 2 rows vs 1
    launch("train_sft.py", args + ["--out-dir", str(tmp_path / "one")], 1)
    launch("train_sft.py", args + ["--out-dir", str(tmp_path / "fsdp"), "--fsdp"], 2)
    assert_close(weights(tmp_path / "one"), weights(tmp_path / "fsdp"))


def test_resume_at_world_size_two(assets, tmp_path):
    launch("train_rlsr.py", rlsr_args(assets, tmp_path / "full", "--steps", "3"), 2)
    launch("train_rlsr.py", rlsr_args(assets, tmp_path / "part", "--steps", "2"), 2)
    launch("train_rlsr.py", ["--resume", str(tmp_path / "part"), "--steps", "3"], 2)
    assert logged_metrics(tmp_path / "part") == logged_metrics(tmp_path / "full")
    assert_close(weights(tmp_path / "full"), weights(tmp_path / "part"), tol=0.0)

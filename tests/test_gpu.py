"""CUDA checks (skipped without a GPU; CI has none): device parity, bf16 log-prob agreement, the compiled decode,
and a training step under autocast. Run with tests/gpu_check.sh on a CUDA machine."""
import pytest
import torch

from conftest import (FAMILIES, FIXTURES, logged_metrics, make_tiny_bert_dir, make_tiny_data, make_tiny_policy_dir,
                      run_script)
from rlsr.logprobs import completion_logprobs
from rlsr.model import Transformer
from rlsr.packing import padding_mask, positions_from_mask
from rlsr.sampling import SamplingParams, draw_uniforms, generate

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def prompts_of(lengths):
    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, 128, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("family", FAMILIES)
def test_cuda_fp32_matches_cpu(family):
    cpu = Transformer.from_pretrained(FIXTURES / "models" / family, dtype=torch.float32)
    gpu = Transformer.from_pretrained(FIXTURES / "models" / family, dtype=torch.float32, device="cuda")
    ids = torch.randint(0, 128, (3, 17))
    mask = torch.ones(3, 17, dtype=torch.bool)
    mask[1, :5] = False
    with torch.no_grad():
        a = cpu(ids, positions_from_mask(mask), padding_mask(mask))
        b = gpu(ids.cuda(), positions_from_mask(mask).cuda(), padding_mask(mask).cuda()).cpu()
    assert (a - b)[mask].abs().max() <= 1e-3  # TF32 may be on for matmuls


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_sampler_and_trainer_logprobs_agree(family):
    model = Transformer.from_pretrained(FIXTURES / "models" / family, dtype=torch.bfloat16, device="cuda")
    u = draw_uniforms(torch.Generator().manual_seed(0), 12, 12)
    r = generate(model, prompts_of([5, 9, 3]), SamplingParams(max_new_tokens=12, temperature=1.0), stop_ids={7},
                 group_size=4, uniforms=u)
    with torch.no_grad():
        logp, _ = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.tokens, r.mask, 1.0, group_size=4)
    diff = (logp - r.logprobs)[r.mask].abs()
    # bf16 activations summed in other orders (decode vs packed training): close, not equal. The fp32 CPU test holds
    # this to 1e-4; here the figure is reported so that drift shows.
    print(f"{family}: bf16 |sampler - trainer| log-prob: mean {diff.mean():.4f}, max {diff.max():.4f}")
    assert diff.mean() <= 0.05


def test_compiled_cuda_graph_decode_matches_eager():
    model = Transformer.from_pretrained(FIXTURES / "models" / "qwen2", dtype=torch.float32, device="cuda")
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    a = generate(model, prompts_of([4, 7]), params, group_size=2)
    b = generate(model, prompts_of([4, 7]), params, group_size=2, compile=True)
    assert torch.equal(a.tokens, b.tokens)


def test_rlsr_step_on_cuda_with_autocast(tmp_path):
    policy, enc, data = (make_tiny_policy_dir(tmp_path / "p"), make_tiny_bert_dir(tmp_path / "e"),
                         make_tiny_data(tmp_path / "d.jsonl"))
    run_script("train_rlsr.py", ["--init", str(policy), "--encoder", str(enc), "--data", str(data),
                                 "--train-split", "all", "--no-eval", "--out-dir", str(tmp_path / "r"), "--steps", "2",
                                 "--prompts-per-step", "2", "--group-size", "4", "--max-new-tokens", "8",
                                 "--device", "cuda", "--amp", "--kl-model-offload"])
    m = logged_metrics(tmp_path / "r")
    assert len(m) == 2 and m[0]["ratio_mean"] == pytest.approx(1.0, abs=1e-3)

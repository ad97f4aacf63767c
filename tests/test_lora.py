"""LoRA (rlsr/lora.py): the adapted policy equals the base at initialisation, only adapters train, the merged final/
equals the adapter model (and opens in transformers), PEFT loads the saved adapters with the same logits, the KL
model with the adapters off equals a separate copy of the base, and a killed LoRA run resumes exactly."""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import (FAMILIES, FIXTURES, kill_and_resume, logged_metrics, make_tiny_bert_dir, make_tiny_data,
                      make_tiny_policy_dir, run_script, script_error)
from rlsr import lora
from rlsr.cpu_matmul import few_row_matmul
from rlsr.model import Transformer


def adapted_model(family: str, rank: int = 4, targets: str = lora.ALL_LINEAR, trained: bool = True, **kw):
    """A fixture model of `family` with adapters; trained=True gives B random values, as after some training."""
    model = Transformer.from_pretrained(FIXTURES / "models" / family, dtype=torch.float32)
    cfg = lora.LoRAConfig(rank, targets=targets, **kw)
    lora.apply(model, cfg, seed=0)
    if trained:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for m in lora.adapted(model):
                m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.05)
    return model.eval(), cfg


@pytest.mark.parametrize("family", FAMILIES)
def test_at_initialisation_the_policy_is_the_base_model_and_only_adapters_train(family):
    base = Transformer.from_pretrained(FIXTURES / "models" / family, dtype=torch.float32)
    model, cfg = adapted_model(family, trained=False)
    ids = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids), base(ids))                                  # B = 0: bit for bit
    n_linear = 7 * base.config.num_hidden_layers
    assert len(lora.adapted(model)) == n_linear
    trainable = [k for k, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(lora.is_adapter(k) for k in trainable) and len(trainable) == 2 * n_linear
    assert model.state_dict().keys() - base.state_dict().keys() == set(trainable)  # the base's names, plus adapters
    first = lora.adapted(model)[0]
    assert first.lora_A.weight.shape == (4, first.in_features) and first.lora_B.weight.shape == (first.out_features, 4)
    assert cfg.scaling == 8.0
    again, _ = adapted_model(family, trained=False)                                # A from the seed alone
    assert torch.equal(lora.adapted(again)[0].lora_A.weight, first.lora_A.weight)


@pytest.mark.parametrize("family", FAMILIES)
def test_adapters_off_is_the_base_and_the_merged_weights_are_the_adapter_model(family):
    base = Transformer.from_pretrained(FIXTURES / "models" / family, dtype=torch.float32)
    model, cfg = adapted_model(family)
    ids = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        out = model(ids)
        assert (out - base(ids)).abs().max() > 1e-3                                # the adapters matter
        assert torch.equal(lora.AdaptersOff(model)(ids), base(ids))                # off: the base, bit for bit
        assert torch.equal(model(ids), out)                                        # and back on after
        plain = Transformer(base.config)
        plain.load_state_dict(lora.merged(model.state_dict(), cfg.scaling))
        assert (plain(ids) - out).abs().max() <= 3e-5                            # fp32 rounding, logits ~3
        with few_row_matmul(model):                                                # the decoding speed path
            assert (model(ids[:1, :3]) - out[:1, :3]).abs().max() <= 1e-5


def test_a_bf16_base_gets_fp32_adapters():
    base = Transformer.from_pretrained(FIXTURES / "models" / "qwen3", dtype=torch.bfloat16)
    model = Transformer.from_pretrained(FIXTURES / "models" / "qwen3", dtype=torch.bfloat16)
    lora.apply(model, lora.LoRAConfig(4))
    assert {p.dtype for k, p in model.named_parameters() if lora.is_adapter(k)} == {torch.float32}
    ids = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids), base(ids))                                  # still the base at init
        lora.adapted(model)[0].lora_B.weight.fill_(0.1)
        assert model(ids).dtype == torch.bfloat16 and not torch.equal(model(ids), base(ids))


def test_the_readme_lora_figures_hold():
    """README's LoRA memory figures for Qwen2.5-7B, from its shapes: rank 16 on every projection."""
    qwen7b = dict(architectures=["Qwen2ForCausalLM"], vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                  num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, rms_norm_eps=1e-6,
                  rope_theta=1e6, max_position_embeddings=32768, tie_word_embeddings=False)
    from rlsr.model import ModelConfig
    with torch.device("meta"):
        model = Transformer(ModelConfig.from_hf(qwen7b))
        n = sum(p.numel() for p in model.parameters())
        lora.apply(model, lora.LoRAConfig(16))
        a = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert round(a / 1e6, 1) == 40.4 and round(100 * a / n, 2) == 0.53   # "40.4 M parameters (0.53%)"
    assert round(16 * a / 1e9, 2) == 0.65                                  # fp32 weights + grads + AdamW: "0.65 GB"
    assert round(2 * n / 1e9, 1) == 15.2                                   # the bf16 frozen base: "15.2 GB"


def test_targets_by_name_and_a_wrong_name_is_refused():
    model, _ = adapted_model("qwen3", targets="q_proj,v_proj")
    assert sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, lora.LoRALinear)}) == \
        ["q_proj", "v_proj"]
    with pytest.raises(ValueError, match="qproj is not a Linear module.*down_proj, gate_proj"):
        adapted_model("qwen3", targets="qproj")


def test_dropout_only_in_training_forwards_with_gradients():
    model, _ = adapted_model("llama", dropout=0.5)
    ids = torch.randint(0, 128, (1, 6))
    with torch.no_grad():
        ref = model(ids)
        model.train()
        assert torch.equal(model(ids), ref)          # no gradient: sampling and log-prob passes see no dropout
    assert not torch.equal(model(ids), ref)          # the update's forward does


def write_adapters_and_merged(model, cfg, tmp_path):
    lora.PeftAdapters(model, cfg, "base").save_pretrained(tmp_path / "adapters", model.state_dict())
    model.save_pretrained(tmp_path / "merged", state_dict=lora.merged(model.state_dict(), cfg.scaling))


@pytest.mark.parametrize("family", FAMILIES)
def test_peft_loads_the_adapters_and_transformers_the_merged_weights_with_the_same_logits(family, tmp_path):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    model, cfg = adapted_model(family, targets="q_proj,k_proj,up_proj,down_proj" if family == "qwen2" else "all-linear")
    (tmp_path / "adapters").mkdir()
    write_adapters_and_merged(model, cfg, tmp_path)
    keys = load_file(tmp_path / "adapters" / "adapter_model.safetensors").keys()
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    ids = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        ours = model(ids)
        hf = transformers.AutoModelForCausalLM.from_pretrained(FIXTURES / "models" / family, dtype=torch.float32)
        with_peft = peft.PeftModel.from_pretrained(hf, tmp_path / "adapters").eval()
        assert (with_peft(input_ids=ids).logits - ours).abs().max() <= 1e-5
        merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
        assert (merged(ids).logits - ours).abs().max() <= 3e-5
    # loading them back into rlsr: the same adapters
    again, _ = adapted_model(family, targets=cfg.targets, trained=False)
    lora.load_adapters(again, tmp_path / "adapters", cfg)
    with torch.no_grad():
        assert torch.equal(again(ids), ours)
    with pytest.raises(ValueError, match="r 4 but the run's is 8"):
        lora.load_adapters(adapted_model(family, rank=8, trained=False)[0], tmp_path / "adapters",
                           lora.LoRAConfig(8, targets=cfg.targets))


# ---- train_rlsr.py runs (tiny random models, run as commands)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    return make_tiny_policy_dir(d / "policy"), make_tiny_bert_dir(d / "encoder"), make_tiny_data(d / "data.jsonl")


def argv(assets, out, steps, *extra):
    policy, encoder, data = assets
    return ["--init", str(policy), "--encoder", str(encoder), "--data", str(data), "--train-split", "all", "--no-eval",
            "--out-dir", str(out), "--steps", str(steps), "--prompts-per-step", "2", "--group-size", "4",
            "--max-new-tokens", "8", "--save-every", "1", "--micro-batch-size", "4", "--lr", "1e-2",
            "--lora-rank", "4", "--beta", "0.1", *extra]


def test_a_lora_run_trains_only_adapters_and_final_holds_the_merged_weights(assets, tmp_path):
    run = tmp_path / "run"
    run_script("train_rlsr.py", argv(assets, run, 2, "--save-adapters"))
    base = Transformer.from_pretrained(assets[0]).state_dict()
    ckpt = run / "checkpoints" / "step-000002"
    assert {"adapter_config.json", "adapter_model.safetensors", "trainer_state.pt"} <= {p.name for p in ckpt.iterdir()}
    assert not (ckpt / "model.safetensors").exists()                        # megabytes: no copy of the base weights
    adapters = {k.removeprefix(lora.PEFT_PREFIX): v for k, v in load_file(ckpt / "adapter_model.safetensors").items()}
    state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
    assert len(state["optimizer"]["state"]) == len(adapters) == 2 * 7 * 2     # AdamW state for the adapters alone
    final = Transformer.from_pretrained(run / "final").state_dict()            # plain HF layout
    assert final.keys() == base.keys()
    cfg = json.loads((ckpt / "adapter_config.json").read_text())
    want = lora.merged({**base, **adapters}, cfg["lora_alpha"] / cfg["r"])
    changed = [k for k in base if not torch.equal(final[k], base[k])]
    assert changed and all(k.endswith("_proj.weight") for k in changed)      # norms, embeddings, head: untouched
    assert all(torch.equal(final[k], want[k]) for k in base)                 # = the base + the checkpoint's adapters
    assert torch.equal(load_file(run / "adapters" / "adapter_model.safetensors")[
        lora.PEFT_PREFIX + "model.layers.0.mlp.up_proj.lora_B.weight"], adapters["model.layers.0.mlp.up_proj.lora_B.weight"])
    m = logged_metrics(run)
    assert m[0]["kl"] == 0.0 and m[1]["kl"] > 0                            # adapters off = the policy at step 1


def test_the_kl_with_adapters_off_equals_the_kl_to_a_separate_base_copy(assets, tmp_path):
    run_script("train_rlsr.py", argv(assets, tmp_path / "off", 3, "--save-every", "0"))
    run_script("train_rlsr.py", argv(assets, tmp_path / "copy", 3, "--save-every", "0", "--kl-model", str(assets[0])))
    off, copy = logged_metrics(tmp_path / "off"), logged_metrics(tmp_path / "copy")
    assert [m["kl"] for m in off] == [m["kl"] for m in copy] and off[-1]["kl"] > 0
    assert off == copy
    a, b = (Transformer.from_pretrained(tmp_path / r / "final").state_dict() for r in ("off", "copy"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_killed_lora_run_resumes_exactly(assets, tmp_path):
    run_script("train_rlsr.py", argv(assets, tmp_path / "full", 5))
    killed_at = kill_and_resume("train_rlsr.py", argv(assets, tmp_path / "killed", 5), tmp_path / "killed", 2)
    assert killed_at < 5
    assert logged_metrics(tmp_path / "killed") == logged_metrics(tmp_path / "full")
    a, b = (Transformer.from_pretrained(tmp_path / r / "final").state_dict() for r in ("full", "killed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lora_flags_are_checked_before_anything_is_written(assets, tmp_path):
    out = tmp_path / "run"
    assert "--lora-alpha given without --lora-rank" in script_error(
        "train_rlsr.py", argv(assets, out, 1, "--lora-rank", "0", "--lora-alpha", "8"))
    assert "--lora-dropout 1.0 must be in [0, 1)" in script_error("train_rlsr.py", argv(assets, out, 1, "--lora-dropout", "1"))
    assert "nothing to offload" in script_error("train_rlsr.py", argv(assets, out, 1, "--kl-model-offload"))
    assert "qproj is not a Linear module" in script_error("train_rlsr.py", argv(assets, out, 1, "--lora-targets", "qproj"))
    assert not out.exists()


def test_sft_with_lora(assets, tmp_path):
    policy, _, data = assets
    run_script("train_sft.py", ["--init", str(policy), "--data", str(data), "--train-split", "all", "--eval-data",
                                str(data), "--eval-split", "all", "--eval-examples", "2", "--out-dir", str(tmp_path / "sft"),
                                "--steps", "2", "--examples-per-step", "2", "--lr", "1e-2", "--lora-rank", "2",
                                "--lora-targets", "q_proj,v_proj"])
    base, final = (Transformer.from_pretrained(p).state_dict() for p in (policy, tmp_path / "sft" / "final"))
    changed = {k.split(".")[-2] for k in base if not torch.equal(final[k], base[k])}
    assert changed == {"q_proj", "v_proj"}

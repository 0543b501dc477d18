"""Conformal intervals of the accuracy estimators (issue 18): the split-conformal rank, τ², the window
variance inside the scores, and the held-out rows of the selection table, each against a hand
computation. Each test names the mutation of the interval code it catches (all four were run)."""

import math

import numpy as np
import pandas as pd
import pytest

from relmon.analysis.estimators import ATC, DoC, conformal_quantile, conformal_rank
from relmon.analysis.selection import _held_out_rows

Z90 = 1.6448536269514722  # scipy.stats.norm.ppf(0.95), written out: the tests do not reuse the code's _z


def agresti_coull_variance(p, n, z=Z90):
    """The window sampling variance, written out independently of relmon.analysis.sampling_variance."""
    p = np.asarray(p, dtype=float)
    n = np.asarray(n, dtype=float)
    centre = (n * p + z * z / 2) / (n + z * z)
    return centre * (1 - centre) / (n + z * z)


@pytest.mark.parametrize(("m", "expected"), [(8, math.inf), (9, 9), (10, 10), (19, 18), (24, 23), (50, 46),
                                             (99, 90)])
def test_split_conformal_quantile_of_scores_1_to_m(m, expected):
    """Scores 1..m (in any order) at level 0.9 → the ⌈(m+1)·0.9⌉-th smallest, +inf beyond m.

    Mutation caught: the old rank (np.quantile(scores, ⌈(m+1)·0.9⌉ / m, method="higher")) returns 24
    (the maximum) for m = 24 and 10 for m = 9·…; also dropping the +1 (⌈m·0.9⌉ → 22 for m = 24)."""
    scores = np.random.default_rng(m).permutation(np.arange(1, m + 1, dtype=float))
    assert conformal_quantile(scores, 0.9) == expected
    assert conformal_rank(m, 0.9) == math.ceil(round((m + 1) * 0.9, 9))
    assert conformal_quantile(scores, 0.5) == math.ceil((m + 1) * 0.5)


def _loso(residuals, accuracy, n, types=None):
    residuals = np.asarray(residuals, dtype=float)
    accuracy = np.asarray(accuracy, dtype=float)
    types = types if types is not None else [f"s{i % 4}" for i in range(len(residuals))]
    return pd.DataFrame({"window_id": [f"{t}/{i}" for i, t in enumerate(types)], "shift_type": types,
                         "estimate": accuracy - residuals, "accuracy": accuracy, "n": np.asarray(n, dtype=float)})


def test_set_residuals_rank_on_scores_proportional_to_1_to_m():
    """Residuals c·1..24 in windows so large that the sampling variance vanishes: the scores are
    k / sqrt(mean r²) and q is the 23rd of 24 (⌈25·0.9⌉), not the maximum.

    Mutation caught: the old rank in set_residuals (q = 24c/τ, the maximum)."""
    m, c = 24, 0.01
    r = c * np.arange(1, m + 1)
    loso = _loso(r, np.full(m, 0.5) + 0.0 * r, n=np.full(m, 1e12))
    loso["estimate"] = 0.5  # accuracy − estimate = r below
    loso["accuracy"] = 0.5 + r
    est = DoC().set_residuals(loso)
    tau = math.sqrt(np.mean(r ** 2))
    assert est.tau_ == pytest.approx(tau, rel=1e-6)
    assert est.q_ == pytest.approx(23 * c / tau, rel=1e-6)
    assert est.n_residuals_ == m and est.interval_kind_ == "conformal-loso"


def test_tau_and_q_against_a_hand_computation_with_sampling_variance():
    """Small windows (n = 40-60), so the sampling variance v is of the order of r²: τ² = mean r² − mean v
    and q = the ⌈(m+1)·0.9⌉-th smallest |r| / sqrt(v + τ²), computed here by hand.

    Mutations caught: τ² without subtracting mean v (τ too large); v dropped from the scores and τ²
    (scores |r| / sqrt(mean r²)); both change τ or q by more than the tolerance."""
    rng = np.random.default_rng(0)
    m = 19
    est_values = rng.uniform(0.55, 0.85, size=m)
    r = rng.normal(0.0, 0.12, size=m)
    n = rng.integers(40, 60, size=m).astype(float)
    loso = pd.DataFrame({"window_id": [f"s{i % 5}/{i}" for i in range(m)], "shift_type": [f"s{i % 5}" for i in range(m)],
                         "estimate": est_values, "accuracy": est_values + r, "n": n})
    fitted = DoC().set_residuals(loso)
    v = agresti_coull_variance(est_values, n)
    tau2 = max(0.0, float(np.mean(r ** 2) - np.mean(v)))
    assert tau2 > 0.0 and np.mean(v) > 0.2 * np.mean(r ** 2)  # v matters in this case
    scores = np.sort(np.abs(r) / np.sqrt(v + tau2))
    assert fitted.tau_ == pytest.approx(math.sqrt(tau2), rel=1e-9)
    assert fitted.q_ == pytest.approx(scores[18 - 1], rel=1e-9)  # ⌈20·0.9⌉ = 18


def test_predicted_interval_holds_the_window_variance():
    """A window's half-width is q·sqrt(v_w + τ²) with its own Agresti–Coull v_w: two windows with the
    same estimate and different sizes get different widths, each as computed by hand.

    Mutation caught: predict without v_w (half = q·τ: the same width for 10 and 1000 images)."""
    from tests.test_analysis import shifted_windows, synth_records

    train = synth_records(shifted_windows(["clean", "a", "b", "c"], 2, seed=1), seed=1)
    est = ATC(conformal=False).fit(train)
    est.tau_, est.q_ = 0.05, 1.7
    small = synth_records([{"window_id": "w/0", "n": 10, "accuracy": 0.5, "conf": 0.99}], seed=2)
    big = synth_records([{"window_id": "w/1", "n": 1000, "accuracy": 0.5, "conf": 0.99}], seed=3)
    for recs, n in ((small, 10), (big, 1000)):
        row = est.predict(recs).iloc[0]
        e = row["estimate"]
        half = 1.7 * math.sqrt(agresti_coull_variance(e, n) + 0.05 ** 2)
        assert row["upper"] == pytest.approx(min(1.0, e + half), abs=1e-12)
        assert row["lower"] == pytest.approx(max(0.0, e - half), abs=1e-12)


def test_held_out_row_of_a_type_ignores_that_types_residuals():
    """The selection table's interval for held-out type g is calibrated on the other types' residuals
    only: changing g's residuals leaves g's width unchanged (and changes the other types' widths); g's
    width equals a hand computation from the other types' residuals.

    Mutation caught: _held_out_rows calibrating on all residuals (g included)."""
    rng = np.random.default_rng(5)
    types = [f"s{i % 4}" for i in range(24)]
    est_values = rng.uniform(0.6, 0.9, size=24)
    r = rng.normal(0.0, 0.08, size=24)
    n = np.full(24, 50.0)
    loso = pd.DataFrame({"window_id": [f"{t}/{i}" for i, t in enumerate(types)], "shift_type": types,
                         "estimate": est_values, "accuracy": est_values + r, "n": n})
    est = ATC()
    est.loso_ = loso
    before = pd.DataFrame(_held_out_rows("atc", est, 0.9)).set_index("held_out")
    changed = loso.copy()
    is_g = changed["shift_type"] == "s0"
    changed.loc[is_g, "accuracy"] = np.clip(changed.loc[is_g, "estimate"] - 0.3, 0, 1)  # g's residuals −0.3
    est.loso_ = changed
    after = pd.DataFrame(_held_out_rows("atc", est, 0.9)).set_index("held_out")
    assert after.loc["s0", "mean_width"] == pytest.approx(before.loc["s0", "mean_width"], rel=1e-12)
    assert after.loc["s0", "mae"] > before.loc["s0", "mae"] + 0.1
    assert all(abs(after.loc[g, "mean_width"] - before.loc[g, "mean_width"]) > 1e-3 for g in ("s1", "s2", "s3"))
    # hand computation of g's width from the 18 residuals of the other types
    other = ~is_g.to_numpy()
    v = agresti_coull_variance(est_values[other], n[other])
    tau2 = max(0.0, float(np.mean(r[other] ** 2) - np.mean(v)))
    q = np.sort(np.abs(r[other]) / np.sqrt(v + tau2))[math.ceil(19 * 0.9) - 1]  # 18th of 18
    e = est_values[~other]
    half = q * np.sqrt(agresti_coull_variance(e, n[~other]) + tau2)
    width = np.clip(e + half, 0, 1) - np.clip(e - half, 0, 1)
    assert before.loc["s0", "mean_width"] == pytest.approx(width.mean(), rel=1e-9)


def test_unbounded_quantile_saves_as_null_and_predicts_0_to_1(tmp_path):
    """With 8 residuals the 90 % rank is 9 > 8: q = +inf, saved as JSON null, loaded back as +inf, and
    the interval is [0, 1] (not the largest residual's, which would under-cover)."""
    import json

    from relmon.analysis import load_estimator
    from tests.test_analysis import shifted_windows, synth_records

    train = synth_records(shifted_windows(["clean", "a", "b"], 2, seed=1), seed=1)
    est = ATC(conformal=False).fit(train)
    est.set_residuals(_loso(np.linspace(-0.1, 0.1, 8), np.full(8, 0.7), n=np.full(8, 100)))
    assert est.q_ == math.inf and est.n_residuals_ == 8
    path = est.save(tmp_path / "e.json")
    assert json.loads(path.read_text())["interval"]["q"] is None
    loaded = load_estimator(path)
    assert loaded.q_ == math.inf
    row = loaded.predict(train).iloc[0]
    assert (row["lower"], row["upper"]) == (0.0, 1.0)

"""Conformal intervals of the accuracy estimators: the split-conformal rank, τ², the window
variance inside the scores, and the held-out rows of the selection table, each against a hand
computation. Each test names the mutation of the interval code it catches (all four were run)."""

import math

import numpy as np
import pandas as pd
import pytest

from relmon.analysis.estimators import ATC, AverageConfidence, DoC, conformal_quantile, conformal_rank
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


# ---------------------------------------------------------------------------------------------------
# shift-conditioned intervals


def test_shift_score_is_the_two_sample_ks_statistic():
    """KS statistic of a window's confidences against the reference, by hand: a window entirely above
    the reference → 1; the reference itself → 0; {0.15, 0.35} against {0.1, 0.2, 0.3, 0.4} → 0.25."""
    from relmon.analysis.intervals import shift_reference, shift_scores

    ref = shift_reference(np.array([0.4, 0.1, 0.3, 0.2]))
    assert ref == [0.1, 0.2, 0.3, 0.4]
    samples = pd.DataFrame({"window_id": ["a", "a", "b", "b", "b", "b", "c", "c"],
                            "confidence": [0.9, 0.95, 0.1, 0.2, 0.3, 0.4, 0.15, 0.35]})
    d = shift_scores(samples, ref)
    assert d.to_dict() == pytest.approx({"a": 1.0, "b": 0.0, "c": 0.25})
    # evenly spaced order statistics of a long reference keep its ends
    long = shift_reference(np.linspace(0, 1, 10001), size=5)
    assert long == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


def test_scale_line_through_absolute_residuals():
    """|r| = 0.02 + 0.5·d exactly → (a, b) = (0.02, 0.5); residuals that shrink with d → the flat line at
    mean |r| (a wider interval near the calibration would be unfounded)."""
    from relmon.analysis.intervals import fit_scale, scale_of

    d = np.linspace(0.0, 0.6, 13)
    assert fit_scale(0.02 + 0.5 * d, d) == pytest.approx((0.02, 0.5))
    falling = 0.3 - 0.4 * d
    assert fit_scale(falling, d) == pytest.approx((float(falling.mean()), 0.0))
    assert scale_of([0.0, 0.2, np.nan], 0.02, 0.5) == pytest.approx([0.02, 0.12, 0.52])  # NaN → d = 1


def _shift_windows(types, per_type, seed, n=200):
    """Windows whose confidence drops with a per-type shift and whose accuracy error grows with it:
    accuracy = confidence − bias, |bias| ≈ 0.6 × the confidence drop (unknown to the estimators)."""
    rng = np.random.default_rng(seed)
    out = []
    for t in types:
        drop = 0.0 if t == "clean" else rng.uniform(0.0, 0.35)
        bias = 0.0 if t == "clean" else rng.choice([-1, 1]) * 0.6 * drop
        for j in range(per_type):
            conf = 0.9 - drop + rng.normal(0, 0.01)
            out.append({"window_id": f"{t}/{j}", "n": n, "conf": conf, "conf_sd": 0.05,
                        "accuracy": float(np.clip(conf - bias, 0.02, 0.99))})
    return out


def test_conditioned_interval_is_narrow_near_the_calibration_and_wide_far_from_it():
    """On windows whose estimator error grows with the confidence shift, the shift-conditioned interval
    of an unshifted window is much narrower than of a strongly shifted one, narrower than the
    unconditioned interval there, and still covers new shift types about as often as it claims.

    Mutation caught: ignoring the scale (interval_scale_ None → one width for all shifts): the clean
    window's width equals the unconditioned one and the ratio test fails."""
    from tests.test_analysis import synth_records

    calib = synth_records(_shift_windows(["clean", *[f"c{i}" for i in range(12)]], 3, seed=11), seed=11)
    new = synth_records(_shift_windows(["clean", *[f"u{i}" for i in range(30)]], 2, seed=12), seed=12)
    est = AverageConfidence(calibrate=True).fit(calib)
    assert est.interval_kind_ == "conformal-loso-shift" and est.interval_scale_[1] > 0
    pred = est.predict(new).set_index("window_id")
    width = pred["upper"] - pred["lower"]
    d = est.shift_score(new).reindex(width.index)
    assert d.notna().all()
    near, far = width[d < 0.4].mean(), width[d > 0.9].mean()  # (the KS statistic saturates at 1)
    assert far > 2.0 * near, (near, far)
    flat = AverageConfidence(calibrate=True).fit(calib).set_residuals(est.loso_, conditioned=False)
    flat_width = (lambda p: p["upper"] - p["lower"])(flat.predict(new).set_index("window_id"))
    assert near < 0.7 * flat_width[d < 0.4].mean()
    acc = new.drop_duplicates("sample_id").groupby("window_id")["correct"].mean().astype(float)
    covered = ((pred["lower"] <= acc) & (acc <= pred["upper"])).mean()
    assert covered >= 0.8, covered


def test_uncovered_shift_type_is_named():
    """A shift type whose estimator error is far outside every other type's (bias 0.4 at a small
    confidence shift) is not covered by an interval calibrated on the others: the estimator names it.

    Mutation caught: computing the held-out coverage with the type's own residuals in the calibration
    (coverage then 1.0 and nothing is named)."""
    from tests.test_analysis import synth_records

    windows = _shift_windows(["clean", *[f"c{i}" for i in range(8)]], 3, seed=13)
    windows += [{"window_id": f"odd/{j}", "n": 200, "conf": 0.88, "conf_sd": 0.05, "accuracy": 0.45}
                for j in range(3)]
    est = AverageConfidence(calibrate=True).fit(synth_records(windows, seed=13))
    assert est.held_out_coverage_["odd"]["coverage"] < 0.5
    assert "odd" in est.uncovered_shift_types_
    assert all(est.held_out_coverage_[g]["coverage"] >= 0.5 for g in est.held_out_coverage_
               if g not in est.uncovered_shift_types_)


def test_format_2_file_loads_with_the_unconditioned_interval(tmp_path):
    """An estimator file written before issue 18 (format 2: no scale, no shift reference) still loads
    and predicts with ``q·sqrt(v + τ²)``, computed here by hand."""
    import json

    from relmon.analysis import load_estimator
    from tests.test_analysis import shifted_windows, synth_records

    train = synth_records(shifted_windows(["clean", "a", "b", "c"], 2, seed=1), seed=1)
    data = ATC().fit(train).to_dict()
    data["format_version"] = 2
    data["interval"] = {"tau": 0.04, "q": 1.5, "n_residuals": 6, "kind": "conformal-loso"}
    (tmp_path / "v2.json").write_text(json.dumps(data))
    old = load_estimator(tmp_path / "v2.json")
    assert old.interval_scale_ is None and old.shift_reference_ is None and old.uncovered_shift_types_ == []
    row = old.predict(train[train["window_id"] == "a/0"]).iloc[0]
    half = 1.5 * math.sqrt(agresti_coull_variance(row["estimate"], 150) + 0.04 ** 2)
    assert row["upper"] - row["lower"] == pytest.approx(min(1, row["estimate"] + half) - max(0, row["estimate"] - half))

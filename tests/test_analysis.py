"""Analysis layer: features, estimators, serialisation, correlation, drift, evaluation script."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import binom

from relmon.analysis import (
    ATC,
    DEFAULT_ESTIMATOR,
    ESTIMATORS,
    AverageConfidence,
    DoC,
    EstimatorMismatchError,
    RelevanceEstimator,
    adjust_p_values,
    correlation_table,
    false_alarm_rate,
    grouped_bootstrap_correlation,
    ks_drift,
    load_estimator,
    make_estimator,
    window_features,
)
from relmon.analysis.estimators import LOCATION_ESTIMATORS
from relmon.records import make_records

LRP = "lrp:epsilon_plus_flat"
ROOT = Path(__file__).resolve().parents[1]


def synth_records(windows, model="synth", seed=0):
    """Records from ``windows``: list of dicts (window_id, n, accuracy, aopc, conf, random_aopc).

    Exactly ``round(accuracy * n)`` samples are correct, so a window's accuracy is known exactly.
    """
    rng = np.random.default_rng(seed)
    cols = {k: [] for k in ("sample_id", "window_id", "confidence", "correct", "aopc", "aopc_r", "entropy")}
    for w in windows:
        n = w["n"]
        k = round(w["accuracy"] * n)
        correct = np.zeros(n, dtype=bool)
        correct[rng.permutation(n)[:k]] = True
        conf = np.clip(w.get("conf", 0.8) + w.get("conf_sd", 0.0) * rng.standard_normal(n), 0.01, 1.0)
        cols["sample_id"] += [f"{w['window_id']}/{i}" for i in range(n)]
        cols["window_id"] += [w["window_id"]] * n
        cols["confidence"].append(conf)
        cols["correct"].append(correct)
        cols["aopc"].append(w.get("aopc", 2.0) + w.get("aopc_sd", 0.5) * rng.standard_normal(n))
        cols["aopc_r"].append(w.get("random_aopc", 1.0) + 0.3 * rng.standard_normal(n))
        cols["entropy"].append(8.0 + 0.2 * rng.standard_normal(n))
    conf = np.concatenate(cols["confidence"])
    correct = np.concatenate(cols["correct"])
    n = len(conf)
    common = dict(sample_id=cols["sample_id"], window_id=cols["window_id"], model=model, model_version="v1",
                  pred=np.zeros(n, dtype=np.int64), confidence=conf, softmax_entropy=-np.log(conf),
                  margin=conf / 2, label=np.where(correct, 0, 1), score0=np.full(n, 5.0))
    aopc = np.concatenate(cols["aopc"])
    heat = make_records(**common, method=LRP, aopc=aopc, aopc_rel=aopc / 5.0,
                        entropy_bits=np.concatenate(cols["entropy"]), png_bytes=np.full(n, 600),
                        jpeg_bytes=np.full(n, 650), gini=np.full(n, 0.5))
    r = np.concatenate(cols["aopc_r"])
    rnd = make_records(**common, method="random", aopc=r, aopc_rel=r / 5.0)
    return pd.concat([heat, rnd], ignore_index=True)


def linear_windows(n_windows, seed, n=200, prefix="w"):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_windows):
        a = rng.uniform(1.0, 5.0)
        kind = "clean" if i % 4 == 0 else f"{prefix}{i % 4}"  # four shift types, one of them clean
        out.append({"window_id": f"{kind}/{i:03d}", "n": n, "aopc": a, "accuracy": 0.2 + 0.15 * a,
                    "conf": rng.uniform(0.5, 0.95)})  # confidence unrelated to accuracy here
    return out


# ---------------------------------------------------------------------------------------------------
# window features


def test_window_features_columns_and_values():
    recs = synth_records([{"window_id": "a", "n": 10, "accuracy": 0.7, "aopc": 3.0},
                          {"window_id": "b", "n": 20, "accuracy": 0.25, "aopc": 1.0}])
    f = window_features(recs)
    assert list(f["window_id"]) == ["a", "b"]
    assert list(f["n"]) == [10, 20]
    np.testing.assert_allclose(f["accuracy"], [0.7, 0.25])
    heat = recs[recs.method == LRP].set_index("sample_id")["aopc"]
    rnd = recs[recs.method == "random"].set_index("sample_id")["aopc"]
    diff = (heat - rnd).groupby(lambda s: s.split("/")[0]).mean()
    np.testing.assert_allclose(f[f"aopc_minus_random_mean@{LRP}"], diff.loc[["a", "b"]])
    for stat in ("mean", "q10", "q50", "q90"):
        for feat in ("aopc", "aopc_rel", "aopc_minus_random", "entropy_bits", "png_bytes"):
            assert f"{feat}_{stat}@{LRP}" in f.columns
        for feat in ("confidence", "softmax_entropy", "margin"):
            assert f"{feat}_{stat}" in f.columns
    a = recs[(recs.window_id == "a") & (recs.method == LRP)]["aopc"]
    assert f.loc[0, f"aopc_q90@{LRP}"] == pytest.approx(a.quantile(0.9))
    unlabelled = recs.assign(label=pd.NA, correct=pd.NA)
    assert window_features(unlabelled)["accuracy"].isna().all()


# ---------------------------------------------------------------------------------------------------
# estimators on synthetic records


def test_relevance_estimator_recovers_linear_relation():
    train = synth_records(linear_windows(40, seed=1), seed=1)
    test = synth_records(linear_windows(15, seed=2, prefix="t"), seed=2)
    est = RelevanceEstimator(feature_set="relevance", alpha=0.01).fit(train)
    pred = est.predict(test)
    assert list(pred.columns) == ["window_id", "estimate", "lower", "upper"]
    assert (pred["lower"] <= pred["estimate"]).all() and (pred["estimate"] <= pred["upper"]).all()
    assert est.score(test) > -0.02
    # confidence is unrelated to accuracy in these windows: the confidence-only regression cannot see it
    conf_only = RelevanceEstimator(feature_set="confidence").fit(train)
    assert conf_only.score(test) < est.score(test) - 0.03


def test_average_confidence_exact_on_calibrated_windows():
    windows = [{"window_id": f"w{i}", "n": 100, "accuracy": c, "conf": c} for i, c in enumerate([0.6, 0.7, 0.9])]
    recs = synth_records(windows)
    pred = AverageConfidence().fit(recs).predict(recs)
    np.testing.assert_allclose(pred["estimate"], [0.6, 0.7, 0.9])
    assert AverageConfidence().fit(recs).score(recs) == pytest.approx(0.0, abs=1e-12)


def test_isotonic_calibration_corrects_overconfidence():
    source = synth_records([{"window_id": "s", "n": 200, "accuracy": 0.6, "conf": 0.9}])
    target = synth_records([{"window_id": "t", "n": 50, "accuracy": 0.6, "conf": 0.9}])
    assert AverageConfidence().fit(source).predict(target)["estimate"].iloc[0] == pytest.approx(0.9)
    assert AverageConfidence(calibrate=True).fit(source).predict(target)["estimate"].iloc[0] == pytest.approx(0.6)


def test_atc_exact_on_constructed_case():
    conf = np.arange(1, 11) / 10.0  # 0.1 .. 1.0, the top 7 correct: accuracy 0.7
    src = make_records(sample_id=[str(i) for i in range(10)], window_id="src", model="synth", model_version="v1",
                       pred=np.zeros(10, dtype=np.int64), confidence=conf, softmax_entropy=-np.log(conf),
                       margin=conf, label=np.where(conf > 0.35, 0, 1), method="random", score0=1.0, aopc=0.0)
    atc = ATC().fit(src)
    assert atc.threshold_ == pytest.approx(0.3)
    tconf = np.array([0.2, 0.35, 0.5, 0.9])
    tgt = make_records(sample_id=list("abcd"), window_id="tgt", model="synth", model_version="v1",
                       pred=np.zeros(4, dtype=np.int64), confidence=tconf, softmax_entropy=-np.log(tconf),
                       margin=tconf, method="random", score0=1.0, aopc=0.0)
    assert atc.predict(tgt)["estimate"].iloc[0] == pytest.approx(0.75)
    assert atc.predict(src)["estimate"].iloc[0] == pytest.approx(0.7)  # exact on its source


def test_doc_shifts_source_accuracy_by_confidence_change():
    source = synth_records([{"window_id": "s", "n": 100, "accuracy": 0.8, "conf": 0.85}])
    target = synth_records([{"window_id": "t", "n": 100, "accuracy": 0.5, "conf": 0.75}])
    assert DoC().fit(source).predict(target)["estimate"].iloc[0] == pytest.approx(0.7)


def test_fit_needs_labels_and_one_model():
    recs = synth_records(linear_windows(5, seed=0))
    with pytest.raises(ValueError, match="labelled"):
        DoC().fit(recs.assign(label=pd.NA, correct=pd.NA))
    mixed = pd.concat([recs, synth_records(linear_windows(2, seed=3, prefix="o"), model="other")])
    with pytest.raises(ValueError, match="one model"):
        DoC().fit(mixed)
    with pytest.raises(RuntimeError, match="not fitted"):
        DoC().predict(recs)


# ---------------------------------------------------------------------------------------------------
# serialisation


# the location estimators need location features and shortcut windows: tests/test_shortcut_estimator.py
GENERIC = [n for n in ESTIMATORS if n not in LOCATION_ESTIMATORS]


@pytest.mark.parametrize("name", [*GENERIC, "median:atc+cot+correctness_relevance"])
def test_serialisation_round_trip(tmp_path, name):
    train = synth_records(linear_windows(20, seed=4), seed=4)
    test = synth_records(linear_windows(6, seed=5, prefix="t"), seed=5)
    est = make_estimator(name).fit(train)
    path = est.save(tmp_path / f"{name}.json")
    data = json.loads(path.read_text())
    assert data["format_version"] == 3 and data["model"] == "synth" and data["features"]
    loaded = load_estimator(path, model="synth")
    assert type(loaded) is type(est) and loaded.get_params() == est.get_params()
    assert (loaded.tau_, loaded.q_, loaded.interval_kind_) == (est.tau_, est.q_, "conformal-loso-shift")
    assert (loaded.interval_scale_, loaded.shift_reference_) == (est.interval_scale_, est.shift_reference_)
    pd.testing.assert_frame_equal(loaded.predict(test), est.predict(test))


def test_loading_for_another_model_or_feature_set_fails_clearly(tmp_path):
    train = synth_records(linear_windows(20, seed=6), seed=6)
    path = RelevanceEstimator(feature_set="relevance").fit(train).save(tmp_path / "rel.json")
    with pytest.raises(EstimatorMismatchError, match=r"'synth'.*'fmnist_cnn'"):
        load_estimator(path, model="fmnist_cnn")
    with pytest.raises(EstimatorMismatchError, match=r"'relevance'.*'relevance\+confidence'"):
        RelevanceEstimator.load(path, feature_set="relevance+confidence")
    with pytest.raises(EstimatorMismatchError, match="ATC"):
        ATC.load(path)
    est = load_estimator(path)
    other = synth_records(linear_windows(3, seed=7), model="fmnist_cnn")
    with pytest.raises(EstimatorMismatchError, match=r"'synth'.*'fmnist_cnn'"):
        est.predict(other)
    bad = json.loads(path.read_text())
    bad["format_version"] = 99
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="format_version"):
        load_estimator(tmp_path / "bad.json")


def test_default_estimator_is_a_named_configuration():
    assert DEFAULT_ESTIMATOR in ESTIMATORS
    from sklearn.base import clone

    est = clone(make_estimator())
    assert est.get_params() == make_estimator().get_params()


# ---------------------------------------------------------------------------------------------------
# correlation


def test_correlation_table_and_grouped_bootstrap():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=50)
    feats = pd.DataFrame({"f": x, "g": rng.uniform(size=50), "accuracy": 0.5 + 0.4 * x})
    t = correlation_table(feats, ["f", "g"], n_boot=200, seed=1).set_index("feature")
    assert t.loc["f", "spearman"] == pytest.approx(1.0) and t.loc["f", "spearman_lo"] == pytest.approx(1.0)
    assert t.loc["g", "spearman_lo"] < 0 < t.loc["g", "spearman_hi"]
    recs = synth_records([{"window_id": f"c{i}", "n": 60, "accuracy": acc, "aopc": 1 + 3 * acc, "aopc_sd": 0.3}
                          for i, acc in enumerate([0.2, 0.4, 0.6, 0.8])])
    g = grouped_bootstrap_correlation(recs, None, ["aopc"], n_boot=200, seed=0)
    assert g.loc[0, "spearman"] == pytest.approx(1.0) and g.loc[0, "spearman_lo"] > 0


@pytest.mark.integration
@pytest.mark.slow
def test_checkpoint_series_aopc_accuracy_spearman():
    """The paper's experiment on a subset: AOPC of LRP rises with accuracy across training checkpoints."""
    from relmon.data import load_sample, to_tensor
    from relmon.lightning.monitor import RelevanceMonitor
    from relmon.models import checkpoint_series

    series = checkpoint_series("fmnist_cnn")
    chosen = [series[i] for i in (0, 2, 5, 8, 11)]  # accuracy 0.14 .. 0.87
    images, labels = load_sample()
    x = to_tensor(images[:64])
    frames, acc = [], {}
    for ckpt in chosen:
        mon = RelevanceMonitor(ckpt.load(), methods=("lrp",), region=7, steps=8, seed=0)
        wid = f"step{ckpt.step:05d}"
        frames.append(mon.score_batch(x, [str(i) for i in range(64)], [wid] * 64, torch.from_numpy(labels[:64])))
        acc[wid] = ckpt.test_accuracy
    table = grouped_bootstrap_correlation(pd.concat(frames, ignore_index=True), acc, ["aopc"], n_boot=500, seed=0)
    row = table.iloc[0]
    means = {w: float(f[f.method == LRP]["aopc"].mean()) for w, f in zip(acc, frames, strict=True)}
    assert row["spearman_lo"] > 0, (
        f"AOPC-accuracy Spearman across checkpoints {row['spearman']:+.3f} with 95 % bootstrap CI "
        f"[{row['spearman_lo']:+.3f}, {row['spearman_hi']:+.3f}] includes zero; accuracy {acc}, mean AOPC {means}")


# ---------------------------------------------------------------------------------------------------
# drift


def test_holm_and_bonferroni():
    p = [0.01, 0.04, 0.03, 0.5]
    np.testing.assert_allclose(adjust_p_values(p, "bonferroni"), [0.04, 0.16, 0.12, 1.0])
    np.testing.assert_allclose(adjust_p_values(p, "holm"), [0.04, 0.09, 0.09, 0.5])


def test_drift_false_alarm_rate_within_level_and_detects_shift():
    rng = np.random.default_rng(11)
    pool = synth_records([{"window_id": "pool", "n": 3000, "accuracy": 0.85, "conf": 0.8, "conf_sd": 0.1,
                           "aopc": 3.0, "aopc_sd": 1.0}], seed=11)
    ids = pool[pool.method == LRP]["sample_id"].to_numpy()
    by_sample = pool.set_index("sample_id")

    def draw(k, name):
        chosen = rng.choice(ids, size=k, replace=False)
        return by_sample.loc[chosen].reset_index().assign(window_id=name)

    reference = draw(512, "ref")
    n_windows, alpha = 100, 0.01
    clean = pd.concat([draw(256, f"c{i:03d}") for i in range(n_windows)], ignore_index=True)
    rate = false_alarm_rate(reference, clean, alpha=alpha)
    limit = binom.ppf(0.999, n_windows, alpha) / n_windows
    assert rate <= limit, f"false-alarm rate {rate:.3f} above level {alpha} (+ binomial slack: {limit:.3f})"
    shifted = synth_records([{"window_id": "s", "n": 256, "accuracy": 0.6, "conf": 0.7, "conf_sd": 0.1,
                              "aopc": 2.5, "aopc_sd": 1.0}], seed=12)
    result = ks_drift(reference, shifted, alpha=alpha)
    assert result.alarm and result.adjusted_p_values["confidence"] < alpha
    assert set(result.p_values) == set(result.features)


# ---------------------------------------------------------------------------------------------------
# the evaluation script at tiny settings


@pytest.mark.integration
def test_evaluate_estimators_tiny(tmp_path):
    spec = importlib.util.spec_from_file_location("evaluate_estimators", ROOT / "scripts" / "evaluate_estimators.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["evaluate_estimators"] = module
    spec.loader.exec_module(module)
    summary = module.main(["--tiny", "--cache", str(tmp_path / "cache"), "--docs", str(tmp_path / "docs")])
    table = (tmp_path / "docs" / "estimators.md").read_text()
    for name in GENERIC:
        assert name in table and name in summary["overall_mae"]
    assert "## Issue 18 targets" in table and "## Issue 10 targets" in table and "Verdict on relevance" in table
    assert "fit pool images 2000-5999" in table and "### Coverage and width per shift type" in table
    assert summary["chosen"]["fmnist_cnn"] in summary["overall_mae"]
    preds = pd.read_csv(tmp_path / "cache" / "predictions_tiny.csv")
    # the held-out protocol never scores a window of a shift type the refitted estimator saw
    held = preds[preds["protocol"] == "held_out_type"]
    assert set(held["group"]) >= {"gaussian_noise", "blur+gaussian_noise"}
    # the selection is nested — on a held-out group, `selected` is the estimate of the estimator
    # chosen WITHOUT that group, i.e. that estimator's own held-out row (refitted without the group)
    sel = held[held["estimator"] == "selected"]
    assert len(sel) and set(sel["group"]) == set(held["group"])
    matched = 0
    for r in sel.itertuples():
        own = held[(held["estimator"] == r.chosen) & (held["window_id"] == r.window_id)]
        if len(own):  # (a median chosen by the nested selection may not be a report row)
            assert own["estimate"].iloc[0] == pytest.approx(r.estimate)
            matched += 1
    assert matched > 0
    assert summary["nested"]["fmnist_cnn"] and set(summary["nested"]["fmnist_cnn"]) == set(sel["group"])
    # scored and selected with what 'relmon calibrate' ships
    from relmon.config import MonitorConfig

    shipped = module._shipped(MonitorConfig())  # methods: auto is lrp:epsilon_0_01 on the embedded models
    assert shipped.methods == ("lrp:epsilon_0_01",)
    records = pd.concat([pd.read_parquet(f) for f in (tmp_path / "cache").rglob("*.parquet")])
    assert set(records["method"]) == set(shipped.methods) | {"random"}
    assert f"region {shipped.region} px, L = {shipped.steps} steps" in table
    # the selection ranks the shipped candidates only; the other estimators are report-only rows
    assert set(summary["validation_mae"]) == set(shipped.estimators)
    chosen = summary["chosen"]["fmnist_cnn"]
    members = chosen.removeprefix("median:").split("+")
    assert set(members) <= set(shipped.estimators)
    assert "| cot_source |" in table and "report-only" in table


# ---------------------------------------------------------------------------------------------------
# methodology tests (each names the mutation it catches)


def shifted_windows(types, per_type, seed, n=150, bias_sd=0.08, prefix=""):
    """Windows of ``types`` whose accuracy = confidence − a per-type bias (unknown to any estimator)."""
    rng = np.random.default_rng(seed)
    out = []
    for t in types:
        bias = rng.normal(0.0, bias_sd)
        for j in range(per_type):
            conf = rng.uniform(0.6, 0.9)
            out.append({"window_id": f"{prefix}{t}/{j}", "n": n, "conf": conf, "conf_sd": 0.05,
                        "accuracy": float(np.clip(conf - bias, 0.05, 0.99)), "aopc": rng.uniform(1, 4)})
    return out


class _Memoriser(RelevanceEstimator):
    """Looks a window up by its exact mean AOPC: perfect on windows it was fitted on, useless elsewhere."""

    def _fit(self, records):
        super()._fit(records)
        w = records.windows
        self.seen_ = dict(zip(w[f"aopc_mean@{LRP}"].round(9), w["accuracy"], strict=True))
        self.mean_acc_ = float(w["accuracy"].mean())

    def _point(self, records):
        w = records.windows
        return pd.Series([self.seen_.get(round(a, 9), self.mean_acc_) for a in w[f"aopc_mean@{LRP}"]],
                         index=w["window_id"].to_numpy())


def test_loso_split_does_not_leak_the_held_out_shift_type():
    """Mutation caught: fitting the LOSO copies on all windows (held-out type included) → MAE 0."""
    from relmon.analysis.selection import _held_out_rows

    recs = synth_records([{**w, "accuracy": a} for w, a in zip(
        shifted_windows([f"s{i}" for i in range(6)], 3, seed=1),
        np.random.default_rng(2).uniform(0.3, 0.95, size=18), strict=True)], seed=1)
    est = _Memoriser(feature_set="relevance").fit(recs)
    assert est.predict(recs)["estimate"].round(6).tolist() == window_features(recs)["accuracy"].round(6).tolist()
    loso = est.loso_predictions(recs)
    assert set(loso["shift_type"]) == {f"s{i}" for i in range(6)}
    assert (loso["estimate"] - loso["accuracy"]).abs().mean() > 0.05, "held-out predictions saw their own windows"
    rows = pd.DataFrame(_held_out_rows("memo", est, 0.9))
    assert (rows["mae"] > 0.0).all()


def test_interval_coverage_on_held_out_shift_types():
    """90 % intervals cover about 90 % of windows of NEW shift types (none seen in calibration).

    Mutation caught: calibrating the interval on in-sample residuals (fit on all windows, residuals on
    the same windows) instead of the LOSO residuals → coverage well below 0.75 here."""
    types = [f"t{i}" for i in range(10)]
    calib = synth_records(shifted_windows(types, 3, seed=3, prefix="c"), seed=3)
    new = synth_records(shifted_windows([f"u{i}" for i in range(20)], 2, seed=4, prefix="n"), seed=4)
    est = RelevanceEstimator(feature_set="relevance+confidence", alpha=1e-3).fit(calib)
    assert est.interval_kind_ == "conformal-loso-shift" and est.n_residuals_ == 30
    pred = est.predict(new).set_index("window_id")
    acc = window_features(new).set_index("window_id")["accuracy"]
    covered = ((pred["lower"] <= acc) & (acc <= pred["upper"])).mean()
    width = (pred["upper"] - pred["lower"]).mean()
    assert covered >= 0.75, f"coverage {covered:.2f} on held-out shift types (width {width:.3f})"
    assert width < 0.6


def test_tiny_window_interval_is_never_degenerate():
    """A window of 2 images that ATC calls 1.0 gets a real interval, not [1.0, 1.0] (Wald at p = 1)."""
    train = synth_records(shifted_windows(["a", "b", "c"], 2, seed=5), seed=5)
    est = ATC(conformal=False).fit(train)
    two = synth_records([{"window_id": "w/0", "n": 2, "accuracy": 1.0, "conf": 0.999}], seed=6)
    row = est.predict(two).iloc[0]
    assert row["estimate"] == pytest.approx(1.0)
    assert row["upper"] == pytest.approx(1.0) and row["lower"] < 0.8


@pytest.mark.parametrize("name", [*GENERIC, "median:atc+doc+cot"])
def test_score_and_cross_val_score_give_numbers(name):
    from sklearn.model_selection import cross_val_score

    recs = synth_records(shifted_windows(["clean", "a", "b", "c"], 3, seed=7), seed=7)
    est = make_estimator(name)
    assert est.fit(recs).score(recs) <= 0.0
    kind = recs["window_id"].map(lambda w: w.split("/")[0]).to_numpy()
    splits = [(np.flatnonzero(kind != k), np.flatnonzero(kind == k)) for k in ("a", "b", "c")]
    scores = cross_val_score(make_estimator(name), recs, cv=splits, error_score="raise")
    assert np.isfinite(scores).all() and (scores <= 0).all(), scores


def test_estimator_file_with_nan_or_missing_keys_is_refused(tmp_path):
    recs = synth_records(shifted_windows(["a", "b", "c"], 2, seed=8), seed=8)
    path = make_estimator("correctness_confidence").fit(recs).save(tmp_path / "e.json")
    data = json.loads(path.read_text())
    data["state"]["coef"][0] = float("nan")
    (tmp_path / "nan.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"state\.coef\[0\] is nan.*finite"):
        load_estimator(tmp_path / "nan.json")
    data = json.loads(path.read_text())
    del data["state"]["x_thresholds"]
    (tmp_path / "missing.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"lacks \['state.x_thresholds'\]"):
        load_estimator(tmp_path / "missing.json")


def test_cot_transports_pseudo_label_shift():
    """COT on a constructed case: every prediction is class 0 with confidence 1 while the source labels
    are half 0, half 1: half the mass moves at cost 1, so the estimate is 0.5 (mean confidence says 1.0)."""
    from relmon.analysis import COT

    def recs(window, labels, preds, conf):
        n = len(preds)
        return make_records(sample_id=[f"{window}{i}" for i in range(n)], window_id=window, model="synth",
                            model_version="v1", pred=np.asarray(preds), confidence=np.full(n, conf),
                            softmax_entropy=np.zeros(n), margin=np.full(n, conf), label=np.asarray(labels),
                            method="random", score0=1.0, aopc=0.0)

    src = recs("clean/0", [0, 1] * 10, [0, 1] * 10, 1.0)
    cot = COT(conformal=False).fit(src)
    assert cot.label_distribution_ == pytest.approx([0.5, 0.5])
    tgt = recs("t/0", [-1] * 10, [0] * 10, 1.0)
    assert cot.predict(tgt)["estimate"].iloc[0] == pytest.approx(0.5)
    assert cot.predict(src)["estimate"].iloc[0] == pytest.approx(1.0)
    assert AverageConfidence(conformal=False).fit(src).predict(tgt)["estimate"].iloc[0] == pytest.approx(1.0)


def test_select_estimator_contract():
    from relmon.analysis import select_estimator

    recs = synth_records(shifted_windows(["clean", "a", "b", "c", "d"], 3, seed=9), seed=9)
    res = select_estimator(recs, candidates=["atc", "doc", "cbpe_isotonic", "correctness_confidence"])
    assert set(res.table.columns) >= {"estimator", "held_out", "mae", "coverage", "mean_width"}
    assert set(res.table["held_out"]) == {"a", "b", "c", "d"}  # clean is never held out
    assert res.chosen in res.fitted and res.chosen == res.summary.index[0]
    assert any(n.startswith("median:") for n in res.fitted)
    pred = res.fitted[res.chosen].predict(recs)
    assert pred["estimate"].between(0, 1).all()
    with pytest.raises(ValueError, match="at least 2 shift types"):
        select_estimator(synth_records(shifted_windows(["clean", "a"], 2, seed=1), seed=1))


def test_per_sample_features_are_scale_free():
    """Multiplying every logit-unit quantity (score0, AOPCs) by 3 leaves the scale-free features unchanged."""
    from relmon.analysis import sample_features

    recs = synth_records(shifted_windows(["a"], 1, seed=10), seed=10)
    recs["aopc_early"] = recs["aopc"] * 0.5
    scaled = recs.copy()
    for c in ("score0", "aopc", "aopc_early"):
        scaled[c] = scaled[c] * 3.0
    a, b = sample_features(recs), sample_features(scaled)
    for f in ("gap_rel", "early_rel", "early_gap_rel"):
        np.testing.assert_allclose(a[f"{f}@{LRP}"], b[f"{f}@{LRP}"])
    assert not np.allclose(a[f"aopc@{LRP}"], b[f"aopc@{LRP}"])


def _checkpoint_gap_rel(ckpt, x, heatmap_method: str) -> np.ndarray:
    """Per image: (MoRF AOPC − random-order AOPC) / score0 — the scale-free heatmap-quality signal."""
    from relmon.explain import explain, to_heatmap
    from relmon.perturbation import region_perturbation

    model = ckpt.load()
    heat = to_heatmap(explain(model, x, heatmap_method), heatmap_method)
    opts = dict(region=4, steps=49, seed=0, sample_ids=[str(i) for i in range(len(x))])
    morf = region_perturbation(model, x, heat, order="morf", **opts)
    rnd = region_perturbation(model, x, heat, order="random", **opts)
    return ((morf.aopc - rnd.aopc) / morf.score0).double().numpy()


@pytest.mark.integration
@pytest.mark.slow
def test_checkpoint_series_scale_free_relevance_signal():
    """Across training, LRP's most-relevant-first order beats the random order by a margin measured
    relative to the starting score (not in logits, whose scale grows with training). With the whole image
    perturbed (49 regions of 4 px, the shipped setting) the trained checkpoint's mean gap is > 0 with a
    95 % bootstrap interval above a noise heatmap's gap (paired over images), and larger than the
    untrained checkpoint's. Measured: LRP +0.199 (s.e. 0.031) vs noise +0.056 (0.027) at step 938;
    LRP +0.062 at step 0. (At ≈16 % of the image,
    8 of 49 regions, the gap is weaker: +0.056, 95 % CI [-0.008, +0.117] on these 128 images.)

    Mutation caught: replacing LRP by a random heatmap (``heatmap_method = "random"``) → the difference
    to the noise control spans 0. (The second assertion alone would NOT catch it: the noise heatmap's
    gap also grows with training, −0.033 → +0.056.) The raw-AOPC Spearman of the test above still passes under that mutation."""
    from scipy.stats import bootstrap

    from relmon.data import load_sample, to_tensor
    from relmon.models import checkpoint_series

    heatmap_method = "lrp"
    series = checkpoint_series("fmnist_cnn")
    images, _ = load_sample()
    x = to_tensor(images[:128])
    first, last = series[0], series[-1]
    gap_last = _checkpoint_gap_rel(last, x, heatmap_method)
    gap_first = _checkpoint_gap_rel(first, x, heatmap_method)
    control = _checkpoint_gap_rel(last, x, "random")  # a noise heatmap on the same images and model

    def paired_ci(a, b, seed):
        return bootstrap((a, b), lambda u, v: np.mean(u) - np.mean(v), paired=True, vectorized=False,
                         n_resamples=1000, method="percentile", random_state=np.random.default_rng(seed)
                         ).confidence_interval

    vs_noise = paired_ci(gap_last, control, 0)
    assert vs_noise.low > 0, (f"trained checkpoint: {heatmap_method} gap {gap_last.mean():+.3f} vs noise heatmap "
                              f"{control.mean():+.3f}, 95 % CI of the difference [{vs_noise.low:+.3f}, {vs_noise.high:+.3f}]")
    vs_untrained = paired_ci(gap_last, gap_first, 1)
    assert vs_untrained.low > 0, f"gap trained − untrained CI [{vs_untrained.low:+.3f}, {vs_untrained.high:+.3f}]"


def test_monitor_records_early_aopc_of_the_first_16_percent():
    """``aopc_early`` = AOPC over the steps that perturb ≈16 % of the image (8 of 49 regions of 4 px),
    for the MoRF row and the random row, equal to an independent computation from the full curves."""
    from relmon.explain import explain, to_heatmap
    from relmon.lightning.monitor import RelevanceMonitor, early_steps
    from relmon.models import load_embedded
    from relmon.perturbation import region_perturbation

    model = load_embedded("fmnist_cnn")
    x = torch.rand(3, 1, 28, 28) * 2 - 0.5
    ids = ["a", "b", "c"]
    recs = RelevanceMonitor(model, methods=("lrp",), region=4, steps=20, seed=3).score_batch(x, ids, ["w"] * 3)
    assert early_steps((28, 28), 4, 20) == 8 and early_steps((28, 28), 4, 5) == 5
    heat = to_heatmap(explain(model, x, "lrp"), "lrp")
    for order, method in (("morf", LRP), ("random", "random")):
        res = region_perturbation(model, x, heat, order=order, region=4, steps=20, seed=3, sample_ids=ids)
        expected = (res.score0[:, None] - res.curves[:, :9]).mean(dim=1).double().numpy()
        got = recs[recs["method"] == method]["aopc_early"].to_numpy(dtype=float)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_format_1_files_still_load(tmp_path):
    """Calibrations of format 1 ( ATC's ``score`` parameter) keep working."""
    recs = synth_records(shifted_windows(["a", "b"], 2, seed=12), seed=12)
    data = ATC(conformal=False).fit(recs).to_dict()
    data["format_version"] = 1
    data["params"]["score"] = data["params"].pop("signal")
    del data["interval"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = load_estimator(tmp_path / "old.json")
    assert old.signal == "confidence" and old.interval_kind_ == "sampling"
    pd.testing.assert_frame_equal(old.predict(recs), ATC(conformal=False).fit(recs).predict(recs))


# ---------------------------------------------------------------------------------------------------
# COT and NuclearNorm: one rule for classes unseen in calibration, clear errors for missing columns


def _class_records(window, labels, preds, conf):
    n = len(preds)
    return make_records(sample_id=[f"{window}/{i}" for i in range(n)], window_id=window, model="synth",
                        model_version="v1", pred=np.asarray(preds), confidence=np.asarray(conf, dtype=float),
                        softmax_entropy=np.zeros(n), margin=np.full(n, 0.5), label=np.asarray(labels),
                        method="random", score0=1.0, aopc=0.0)


def _three_class_calibration():
    """Windows over classes 0..2 (K = 3) with accuracies 1.0, 2/3 and 1/3."""
    preds = [0, 1, 2] * 4
    return pd.concat([_class_records(w, [p if i % 3 < k else (p + 1) % 3 for i, p in enumerate(preds)], preds,
                                     np.linspace(0.5, 0.95, 12))
                      for w, k in (("clean/0", 3), ("a/0", 2), ("b/0", 1))], ignore_index=True)


@pytest.mark.parametrize("kind", ["COT", "NuclearNorm"])
def test_class_unseen_in_calibration_is_refused_by_cot_and_nuclear_norm(kind):
    """Both estimators fit a K-class space (K = 3 here) and refuse a prediction of class 3 the same way.

    Mutation caught: NuclearNorm folding the unseen class into class K − 1 (``np.minimum(pred, K − 1)``,
    its former behaviour) returns a number instead of the error."""
    from relmon.analysis import COT, NuclearNorm

    est = {"COT": COT, "NuclearNorm": NuclearNorm}[kind](conformal=False).fit(_three_class_calibration())
    seen = _class_records("t/0", [-1] * 6, [0, 1, 2, 2, 1, 0], np.full(6, 0.9))
    assert est.predict(seen)["estimate"].between(0, 1).all()
    unseen = _class_records("t/1", [-1] * 6, [0, 1, 2, 3, 1, 0], np.full(6, 0.9))
    with pytest.raises(ValueError, match=rf"{kind} was calibrated on 3 classes \(0\.\.2.*predict class 3.*"
                                         r"Fix: calibrate on labelled data that includes class 3"):
        est.predict(unseen)
    with pytest.raises(ValueError, match="class indices must be 0 or more"):
        est.predict(seen.assign(pred=-1))


@pytest.mark.parametrize("kind", ["COT", "NuclearNorm"])
def test_cot_and_nuclear_norm_name_a_missing_pred_or_label_column(kind):
    """No raw KeyError: the missing column and the fix are named (fit and predict)."""
    from relmon.analysis import COT, NuclearNorm

    cls = {"COT": COT, "NuclearNorm": NuclearNorm}[kind]
    cal = _three_class_calibration()
    with pytest.raises(ValueError, match=rf"{kind} needs the records' 'pred' column .*fix: score the records"):
        cls(conformal=False).fit(cal.drop(columns="pred"))
    est = cls(conformal=False).fit(cal)
    with pytest.raises(ValueError, match=rf"{kind} needs the records' 'pred' column"):
        est.predict(cal.drop(columns="pred"))
    if kind == "COT":  # the label distribution needs labels; the nuclear norm does not
        with pytest.raises(ValueError, match=r"COT needs the records' 'label' column .*fix: calibrate on labelled"):
            COT(conformal=False).fit(cal.drop(columns="label"))
    else:
        assert NuclearNorm(conformal=False).fit(cal.drop(columns="label")).n_classes_ == 3


# ---------------------------------------------------------------------------------------------------
# correlation_table: vectorized bootstrap equals the one-resample-at-a-time scipy reference


def _reference_correlation_table(features, columns, n_boot, seed, level):
    """scipy.stats.bootstrap with vectorized=False over scipy's pearsonr / spearmanr (the former code)."""
    from scipy.stats import bootstrap, pearsonr, spearmanr

    rng = np.random.default_rng(seed)
    rows = []
    for col in columns:
        d = features[[col, "accuracy"]].astype(float).dropna()
        x, y = d[col].to_numpy(), d["accuracy"].to_numpy()
        row = {"feature": col, "n": len(d)}
        for name, fn in (("pearson", pearsonr), ("spearman", spearmanr)):
            def stat(a, b, fn=fn):
                return np.nan if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0 else fn(a, b)[0]

            row[name] = float(stat(x, y))
            row[f"{name}_lo"] = row[f"{name}_hi"] = float("nan")
            if len(d) >= 3 and np.isfinite(row[name]):
                ci = bootstrap((x, y), stat, paired=True, vectorized=False, n_resamples=n_boot, confidence_level=level,
                               method="percentile", random_state=rng).confidence_interval
                row[f"{name}_lo"], row[f"{name}_hi"] = float(ci.low), float(ci.high)
        rows.append(row)
    return pd.DataFrame(rows)


@pytest.mark.filterwarnings("ignore::scipy.stats.DegenerateDataWarning")  # the 3-row column, as intended
def test_correlation_table_intervals_equal_the_non_vectorized_scipy_reference():
    """Same seed → same resamples → the same percentile intervals, up to rounding, for every kind of
    column: linear, noisy, tied values (ranks), a constant, an all-NaN and a short one (NaN rows; with 3 rows
    some resamples are constant and give NaN).

    Mutations caught: correlating along the resample axis instead of the sample axis; the Pearson
    statistic used for the Spearman interval; a resample's constancy judged by the centred sum of
    squares (rounding makes some constant resamples finite)."""
    rng = np.random.default_rng(3)
    n = 40
    acc = rng.uniform(0.3, 0.9, size=n)
    # 3 rows: 1 resample in 9 repeats one row; these values' mean over 3 equal copies is not the value
    # itself in floating point, so only the ptp test sees such a resample as constant
    acc[:3] = [0.09, 0.36, 0.19]
    short = np.full(n, np.nan)
    short[:3] = [0.05, 0.35, 0.18]
    feats = pd.DataFrame({"accuracy": acc, "linear": 2 * acc + 0.1 * rng.standard_normal(n),
                          "noise": rng.standard_normal(n), "ties": np.round(acc * 4) / 4 + 0.1,
                          "constant": np.full(n, 0.1), "short": short, "empty": np.full(n, np.nan)})
    cols = ["linear", "noise", "ties", "constant", "short", "empty"]
    got = correlation_table(feats, cols, n_boot=300, seed=5, level=0.9)
    ref = _reference_correlation_table(feats, cols, n_boot=300, seed=5, level=0.9)
    pd.testing.assert_frame_equal(got, ref, check_exact=False, rtol=0, atol=1e-12)
    assert got.set_index("feature").loc["constant"].drop("n").isna().all()
    assert got.set_index("feature").loc["empty", "n"] == 0  # an all-NaN column gives a NaN row, no error
    assert np.isfinite(got.set_index("feature").loc["linear"].to_numpy(dtype=float)).all()


@pytest.mark.parametrize("kind", ["COT", "NuclearNorm"])
def test_held_out_shift_type_uses_the_calibrations_class_space(kind):
    """Class 3 occurs only in shift type ``c``: the leave-one-type-out copy fitted without ``c`` still
    works in the calibration's 4 classes, so ``c`` gets its held-out residual (no refusal, no folding).

    Mutation caught: each copy taking K from its own training windows (K = 3) → the held-out type
    predicts an 'unseen' class 3 and fit raises."""
    from relmon.analysis import COT, NuclearNorm

    preds = [0, 1, 2] * 4
    parts = [_class_records(w, [p if i % 3 < k else (p + 1) % 3 for i, p in enumerate(preds)], preds,
                            np.linspace(0.5, 0.95, 12)) for w, k in (("clean/0", 3), ("a/0", 2), ("b/0", 1))]
    four = [0, 1, 2, 3] * 3
    parts.append(_class_records("c/0", [p if i % 2 else 0 for i, p in enumerate(four)], four,
                                np.linspace(0.4, 0.9, 12)))
    cal = pd.concat(parts, ignore_index=True)
    est = {"COT": COT, "NuclearNorm": NuclearNorm}[kind]().fit(cal)
    assert set(est.loso_["shift_type"]) == {"a", "b", "c"}
    assert (len(est.label_distribution_) if kind == "COT" else est.n_classes_) == 4

"""Correlation of window features with accuracy: Pearson and Spearman with bootstrap CIs, and plots.

Two experiments:

- across windows (e.g. shifted windows): :func:`correlation_table` resamples windows;
- across a few groups with a known accuracy each (the checkpoint series, the paper's experiment):
  :func:`grouped_bootstrap_correlation` resamples the **samples within each group**, so the interval
  reflects the finite number of images per checkpoint (with only ~12 checkpoints, resampling the
  checkpoints themselves would mostly measure the rank statistic's granularity).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import bootstrap, pearsonr, rankdata, spearmanr

from relmon.analysis.features import CONFIDENCE_FEATURES, heatmap_methods, sample_features


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (``(B, n)`` each); NaN for a
    row where either side is constant (judged on the values: the mean of equal floats need not equal
    them, so the centred sums of squares can be a rounding error instead of 0)."""
    constant = (np.ptp(a, axis=-1) == 0) | (np.ptp(b, axis=-1) == 0)
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    ok = ~constant & (den > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, (a * b).sum(axis=-1) / np.where(ok, den, 1.0), np.nan)


def _rowwise_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _rowwise_pearson(rankdata(a, axis=-1), rankdata(b, axis=-1))


def _boot_pearson(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Pearson correlation along ``axis`` of every resample (scipy.stats.bootstrap, vectorized)."""
    return _rowwise_pearson(np.moveaxis(a, axis, -1), np.moveaxis(b, axis, -1))


def _boot_spearman(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman correlation (Pearson of average ranks, as scipy.stats.spearmanr) along ``axis``."""
    return _rowwise_spearman(np.moveaxis(a, axis, -1), np.moveaxis(b, axis, -1))


_BOOT_STATISTICS = {"pearson": _boot_pearson, "spearman": _boot_spearman}


def _ci(values: np.ndarray, level: float) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(v, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _row(name: str, n: int, x: np.ndarray, y: np.ndarray, bx: np.ndarray, by: np.ndarray, level: float) -> dict:
    p = float(_rowwise_pearson(x[None], y[None])[0])
    s = float(_rowwise_spearman(x[None], y[None])[0])
    p_lo, p_hi = _ci(_rowwise_pearson(bx, by), level)
    s_lo, s_hi = _ci(_rowwise_spearman(bx, by), level)
    return {"feature": name, "n": n, "pearson": p, "pearson_lo": p_lo, "pearson_hi": p_hi,
            "spearman": s, "spearman_lo": s_lo, "spearman_hi": s_hi}


def correlation_table(
    features: pd.DataFrame,
    columns: Sequence[str],
    target: str = "accuracy",
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Pearson/Spearman of every column of ``features`` with ``target`` across rows (windows).

    Returns one row per feature: ``feature, n, pearson, pearson_lo, pearson_hi, spearman, spearman_lo,
    spearman_hi`` (``scipy.stats.pearsonr`` / ``spearmanr``; ``scipy.stats.bootstrap`` percentile interval,
    paired resampling of rows, ``n_boot`` resamples, seeded, the statistic vectorized over resamples;
    NaN where a column or the target is constant or has fewer than 2 values).
    """
    missing = [c for c in (*columns, target) if c not in features.columns]
    if missing:
        raise ValueError(f"features lack column(s) {missing}")
    rng = np.random.default_rng(seed)
    rows = []
    for col in columns:
        d = features[[col, target]].astype(float).dropna()
        x, y = d[col].to_numpy(), d[target].to_numpy()
        row = {"feature": col, "n": len(d)}
        for name, fn in (("pearson", pearsonr), ("spearman", spearmanr)):
            defined = len(d) >= 2 and np.ptp(x) > 0 and np.ptp(y) > 0  # (an all-NaN column leaves no rows)
            row[name] = float(fn(x, y)[0]) if defined else float("nan")
            if len(d) >= 3 and np.isfinite(row[name]):
                # vectorized: the statistic gets every resample at once, (n_boot, n) arrays; the
                # resamples (scipy draws them from `rng` either way) and so the interval are those of
                # the one-resample-at-a-time call, up to floating-point rounding
                ci = bootstrap((x, y), _BOOT_STATISTICS[name], paired=True, vectorized=True, n_resamples=n_boot,
                               confidence_level=level, method="percentile", random_state=rng).confidence_interval
                row[f"{name}_lo"], row[f"{name}_hi"] = float(ci.low), float(ci.high)
            else:
                row[f"{name}_lo"] = row[f"{name}_hi"] = float("nan")
        rows.append(row)
    cols = ["feature", "n", "pearson", "pearson_lo", "pearson_hi", "spearman", "spearman_lo", "spearman_hi"]
    return pd.DataFrame(rows, columns=cols)


def _sample_column(feature: str, method: str) -> str:
    if "@" in feature or feature in (*CONFIDENCE_FEATURES, "correct"):
        return feature
    return f"{feature}@{method}"


def grouped_bootstrap_correlation(
    records: pd.DataFrame,
    accuracy: Mapping[str, float] | None,
    features: Sequence[str] = ("aopc", "aopc_minus_random", "aopc_rel", "entropy_bits", "confidence"),
    method: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Correlation across windows (e.g. checkpoints) of the window mean of per-sample ``features`` with
    accuracy, the CI from resampling samples within every window.

    ``accuracy`` maps window_id to its accuracy (e.g. a checkpoint's test accuracy); ``None`` uses each
    window's sample accuracy (``correct``), resampled together with the features. ``features`` are
    per-sample names (``aopc``, ``aopc_rel``, ``aopc_minus_random``, ``entropy_bits``, ``png_bytes``
    of ``method``; ``confidence``, ``softmax_entropy``, ``margin``; or a full per-sample column such
    as ``aopc@random``). Same columns as
    :func:`correlation_table`.
    """
    samples = sample_features(records)
    method = method or heatmap_methods(records)[0]
    cols = [_sample_column(f, method) for f in features]
    missing = [c for c in cols if c not in samples.columns]
    if missing:
        raise ValueError(f"records lack per-sample feature(s) {missing}")
    rng = np.random.default_rng(seed)
    groups = list(samples.groupby("window_id", sort=True))
    if len(groups) < 3:
        raise ValueError(f"a correlation across windows needs at least 3 windows, got {len(groups)}")
    point = {c: [] for c in cols}
    boot = {c: [] for c in cols}
    acc_point, acc_boot = [], []
    for wid, g in groups:
        idx = rng.integers(0, len(g), size=(n_boot, len(g)))
        for c in cols:
            v = g[c].to_numpy(dtype=float)
            point[c].append(np.nanmean(v))
            boot[c].append(np.nanmean(v[idx], axis=1))
        if accuracy is None:
            v = g["correct"].to_numpy(dtype=float)
            acc_point.append(np.nanmean(v))
            acc_boot.append(np.nanmean(v[idx], axis=1))
        else:
            if wid not in accuracy:
                raise ValueError(f"no accuracy given for window {wid!r}")
            acc_point.append(float(accuracy[wid]))
            acc_boot.append(np.full(n_boot, float(accuracy[wid])))
    y, by = np.asarray(acc_point), np.stack(acc_boot, axis=1)
    rows = [_row(f, len(groups), np.asarray(point[c]), y, np.stack(boot[c], axis=1), by, level)
            for f, c in zip(features, cols, strict=True)]
    return pd.DataFrame(rows)


def plot_correlation(
    features: pd.DataFrame,
    columns: Sequence[str],
    path: str | os.PathLike,
    title: str = "",
    target: str = "accuracy",
    hue: Sequence | np.ndarray | None = None,
) -> Path:
    """Save a PNG with one scatter panel per feature (x) against ``target`` (y), Spearman in each title."""
    from relmon.extras import require

    matplotlib = require("matplotlib", "correlation plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = min(3, len(columns))
    nrows = int(np.ceil(len(columns) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    labels = None if hue is None else np.asarray(hue).astype(str)
    for ax, col in zip(axes.ravel(), columns, strict=False):
        x = features[col].to_numpy(dtype=float)
        y = features[target].to_numpy(dtype=float)
        if labels is None:
            ax.scatter(x, y, s=14)
        else:
            for lab in sorted(set(labels)):
                m = labels == lab
                ax.scatter(x[m], y[m], s=10, label=lab, alpha=0.7)
        ok = np.isfinite(x) & np.isfinite(y)
        rho = float(_rowwise_spearman(x[ok][None], y[ok][None])[0]) if ok.sum() > 2 else float("nan")
        ax.set_title(f"{col}\nSpearman {rho:+.2f}", fontsize=8)
        ax.set_xlabel(col, fontsize=7)
        ax.set_ylabel(target, fontsize=7)
    for ax in axes.ravel()[len(columns):]:
        ax.axis("off")
    if labels is not None:
        axes.ravel()[0].legend(fontsize=6, markerscale=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["correlation_table", "grouped_bootstrap_correlation", "plot_correlation"]

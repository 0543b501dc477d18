"""Window features: group-bys of the per-sample records, one row per ``window_id``.

Column names:

- ``n`` — samples in the window; ``accuracy`` — mean of ``correct`` over labelled samples (NaN
  without labels); ``n_labelled``.
- confidence features: ``confidence_<stat>``, ``softmax_entropy_<stat>``, ``margin_<stat>``.
- per heatmap method ``m``: ``aopc_<stat>@m``, ``aopc_rel_<stat>@m``, ``aopc_minus_random_<stat>@m``
  (the sample's AOPC minus its random-order AOPC), ``entropy_bits_<stat>@m``, ``png_bytes_<stat>@m``;
  for the random order: ``aopc_<stat>@random``, ``aopc_rel_<stat>@random``.

Per-sample features (:func:`sample_features`, one row per sample) that do not carry the logit scale,
beside the confidence signals (``confidence``, ``margin``, ``softmax_entropy`` and ``energy`` =
``log(confidence) - score0`` = minus the logsumexp of the logits, valid for the default logit score):

- ``aopc_rel@m`` = AOPC / score0; ``gap_rel@m`` = (AOPC − random-order AOPC) / score0;
- ``early_rel@m`` = AOPC of the early MoRF curve (``aopc_early``: about 16 % of the image perturbed)
  / score0 and ``early_gap_rel@m`` = (early AOPC − early random AOPC) / score0;
- ``lerf_contrast@m`` = ABPC / score0 (LeRF/MoRF contrast; NaN unless LeRF was run);
- ``entropy_bits@m``, ``gini@m`` (heatmap entropy and sparsity).

Location features (``suspect_share``, ``rest_relevance``, ``occlusion_flip``, ``occlusion_drop``:
:data:`relmon.records.LOCATION_COLUMNS`) are carried per sample like ``confidence`` when the records
have them (scored with ``suspect_regions``), and absent otherwise; the window features then get
``suspect_share_mean``, ``occlusion_flip_mean`` (the window's flip rate) etc.

Every ratio is NaN where ``score0 <= 0`` and wherever an input is missing (e.g. no ``random`` row for
a sample when only a fraction of samples get the random order): estimators must tolerate NaN.

``<stat>`` is ``mean``, ``q10``, ``q50`` or ``q90``. Units: AOPC in score units (logits by default),
``aopc_rel`` unitless, entropy in bits, sizes in bytes, confidences as probabilities.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from relmon.records import LOCATION_COLUMNS, RANDOM_METHOD

HEATMAP_FEATURES: tuple[str, ...] = ("aopc", "aopc_rel", "aopc_minus_random", "entropy_bits", "png_bytes")
#: Per-sample features of a heatmap method ``m`` (``<name>@m``) that are free of the logit scale.
SCALE_FREE_FEATURES: tuple[str, ...] = ("aopc_rel", "gap_rel", "early_rel", "early_gap_rel", "lerf_contrast",
                                        "entropy_bits", "gini")
#: Per-sample confidence signals (``energy`` is in logit units, the others are probabilities / nats).
SAMPLE_CONFIDENCE_FEATURES: tuple[str, ...] = ("confidence", "margin", "softmax_entropy", "energy")
RANDOM_FEATURES: tuple[str, ...] = ("aopc", "aopc_rel")
CONFIDENCE_FEATURES: tuple[str, ...] = ("confidence", "softmax_entropy", "margin")
STATS: tuple[str, ...] = ("mean", "q10", "q50", "q90")
_QUANTILES = {"q10": 0.1, "q50": 0.5, "q90": 0.9}
_KEYS = ["window_id", "sample_id"]
#: the class-probability columns (relmon.records): carried per sample, never aggregated as features
PROBS_COLUMNS: tuple[str, ...] = ("probs", "probs_classes")


def _require(records: pd.DataFrame, columns) -> None:
    if not isinstance(records, pd.DataFrame):
        raise TypeError(f"records must be a pandas DataFrame, got {type(records).__name__}")
    missing = [c for c in columns if c not in records.columns]
    if missing:
        raise ValueError(f"records lack column(s) {missing}; expected the relmon record schema "
                         "(relmon.records.RECORD_COLUMNS)")


def heatmap_methods(records: pd.DataFrame) -> list[str]:
    """The heatmap methods present in ``records`` (every method but ``random``), sorted."""
    return sorted(m for m in records["method"].dropna().unique() if m != RANDOM_METHOD)


def sample_features(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (window_id, sample_id): confidence signals, ``correct`` (float, NaN unlabelled) and
    per method the per-sample features ``<feature>@<method>`` (see the module docstring)."""
    _require(records, [*_KEYS, "method", "aopc", "aopc_rel", "entropy_bits", "png_bytes", "correct",
                       *CONFIDENCE_FEATURES])
    optional = [c for c in ("aopc_early", "abpc", "gini") if c in records.columns]
    base_cols = [*_KEYS, *CONFIDENCE_FEATURES, "correct"] + [c for c in ("score0", "pred", "label", *PROBS_COLUMNS)
                                                             if c in records.columns]
    base = records.drop_duplicates(_KEYS)[base_cols].copy()
    location = [c for c in LOCATION_COLUMNS if c in records.columns]
    if location:  # per sample, repeated on the sample's rows: the first non-null value of each
        per_sample = records[[*_KEYS, *location]].copy()
        for c in location:
            per_sample[c] = per_sample[c].astype("Float64").astype("float64")
        base = base.merge(per_sample.groupby(_KEYS, sort=False).first().reset_index(), on=_KEYS, how="left")
    base["correct"] = base["correct"].astype("Float64").astype("float64")
    for c in CONFIDENCE_FEATURES:
        base[c] = base[c].astype("float64")
    if "label" in base.columns:
        base["label"] = base["label"].astype("Float64").astype("float64")
    if "score0" in base.columns:
        with np.errstate(divide="ignore"):
            base["energy"] = np.log(base["confidence"].to_numpy(dtype=float)) - base["score0"].astype("float64")
        base = base.drop(columns="score0")
    value_cols = ["aopc", "aopc_rel", "entropy_bits", "png_bytes", *optional]
    if "score0" in records.columns:
        value_cols.append("score0")
    values = records[[*_KEYS, "method", *value_cols]].copy()
    for c in value_cols:
        values[c] = values[c].astype("Float64").astype("float64")
    if values.duplicated([*_KEYS, "method"]).any():
        raise ValueError("records hold more than one row per (window_id, sample_id, method)")
    wide = values.set_index([*_KEYS, "method"]).unstack("method")
    methods = heatmap_methods(records)
    cols = {}
    has_random = RANDOM_METHOD in wide.columns.get_level_values("method")
    nan = pd.Series(np.nan, index=wide.index)

    def get(f, m):
        return wide[(f, m)] if (f, m) in wide.columns else nan

    for m in methods:
        for f in ("aopc", "aopc_rel", "entropy_bits", "png_bytes"):
            cols[f"{f}@{m}"] = wide[(f, m)]
        if has_random:
            cols[f"aopc_minus_random@{m}"] = wide[("aopc", m)] - wide[("aopc", RANDOM_METHOD)]
        if "score0" in value_cols:
            s0 = get("score0", m)
            s0 = s0.where(s0 > 0)  # ratios undefined where the explained score is not positive
            cols[f"gap_rel@{m}"] = (get("aopc", m) - get("aopc", RANDOM_METHOD)) / s0
            cols[f"early_rel@{m}"] = get("aopc_early", m) / s0
            cols[f"early_gap_rel@{m}"] = (get("aopc_early", m) - get("aopc_early", RANDOM_METHOD)) / s0
            cols[f"lerf_contrast@{m}"] = get("abpc", m) / s0
        if "gini" in value_cols:
            cols[f"gini@{m}"] = get("gini", m)
    if has_random:
        for f in RANDOM_FEATURES:
            cols[f"{f}@{RANDOM_METHOD}"] = wide[(f, RANDOM_METHOD)]
    per_method = pd.DataFrame(cols, index=wide.index).reset_index()
    return base.merge(per_method, on=_KEYS, how="left")


def window_features(records: pd.DataFrame) -> pd.DataFrame:
    """One row per ``window_id`` with ``n``, ``n_labelled``, ``accuracy`` and the feature statistics.

    ``records`` is a records frame (:mod:`relmon.records`), any number of windows and methods. Rows are
    sorted by ``window_id``.
    """
    return window_features_from_samples(sample_features(records))


def window_features_from_samples(samples: pd.DataFrame) -> pd.DataFrame:
    """:func:`window_features` from a :func:`sample_features` frame (saves recomputing it)."""
    value_cols = [c for c in samples.columns if c not in (*_KEYS, "correct", "pred", "label", *PROBS_COLUMNS)]
    g = samples.groupby("window_id", sort=True)
    parts = [
        g.size().rename("n"),
        g["correct"].count().rename("n_labelled"),
        g["correct"].mean().rename("accuracy"),
    ]
    stats = {"mean": g[value_cols].mean()}
    for name, q in _QUANTILES.items():
        stats[name] = g[value_cols].quantile(q)
    for stat, frame in stats.items():
        parts.append(frame.rename(columns=lambda c, stat=stat: _stat_name(c, stat)))
    out = pd.concat(parts, axis=1).reset_index()
    return out


def _stat_name(column: str, stat: str) -> str:
    feature, _, method = column.partition("@")
    return f"{feature}_{stat}@{method}" if method else f"{feature}_{stat}"


def feature_columns(feature_set: str, method: str) -> list[str]:
    """Window-feature columns of a named feature set for heatmap ``method``.

    ``relevance``: AOPC (raw, relative, minus random), heatmap entropy and PNG size statistics of
    ``method`` (no confidence); ``confidence``: max-softmax, softmax entropy and margin statistics;
    ``relevance+confidence``: both.
    """
    rel = [f"{f}_{s}@{method}" for f in HEATMAP_FEATURES for s in STATS]
    conf = [f"{f}_{s}" for f in CONFIDENCE_FEATURES for s in STATS]
    sets = {"relevance": rel, "confidence": conf, "relevance+confidence": rel + conf}
    if feature_set not in sets:
        raise ValueError(f"unknown feature_set {feature_set!r}; choose one of {list(sets)}")
    return sets[feature_set]


def sample_feature_columns(feature_set: str, method: str) -> list[str]:
    """Per-sample feature columns (of :func:`sample_features`) of a named per-sample feature set.

    ``confidence``: confidence, margin, softmax entropy, energy; ``relevance``: the scale-free heatmap
    features of ``method`` (:data:`SCALE_FREE_FEATURES`); ``confidence+relevance``: both.
    """
    conf = list(SAMPLE_CONFIDENCE_FEATURES)
    rel = [f"{f}@{method}" for f in SCALE_FREE_FEATURES]
    sets = {"confidence": conf, "relevance": rel, "confidence+relevance": conf + rel}
    if feature_set not in sets:
        raise ValueError(f"unknown per-sample feature_set {feature_set!r}; choose one of {list(sets)}")
    return sets[feature_set]


__all__ = [
    "CONFIDENCE_FEATURES",
    "HEATMAP_FEATURES",
    "SAMPLE_CONFIDENCE_FEATURES",
    "SCALE_FREE_FEATURES",
    "sample_feature_columns",
    "window_features_from_samples",
    "RANDOM_FEATURES",
    "STATS",
    "feature_columns",
    "heatmap_methods",
    "sample_features",
    "window_features",
]

"""Window summaries of the relevance-location columns (``suspect_regions`` set): what the monitor
reports, exports and ``relmon report`` shows.

:func:`location_summary` gives the window means of :data:`relmon.records.LOCATION_COLUMNS` (one value
per sample, NaN left out): ``suspect_share`` (mean share of positive relevance in the suspect regions),
``rest_relevance``, ``occlusion_flip`` (the flip rate: the share of samples whose prediction changes
when the regions are blanked) and ``occlusion_drop`` (mean confidence drop), each with ``n`` (the
samples with a finite value) and a 95 % t-interval (``<col>_ci_low``/``_ci_high``), plus ``method``
(the heatmap method the shares come from: the records' first heatmap method in scoring order, which
is the config's first ``methods`` entry). :func:`per_class_location` groups the same means by
predicted class.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from relmon.records import LOCATION_COLUMNS, RANDOM_METHOD, has_location
from relmon.sums import mean_ci


def _per_sample(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (window_id, sample_id) with ``pred`` and the location columns as float (NaN = null)."""
    one = records.drop_duplicates(["window_id", "sample_id"])
    out = one[["window_id", "sample_id", "pred"]].copy()
    for c in LOCATION_COLUMNS:
        out[c] = one[c].astype("Float64").astype("float64")
    return out


def location_method(records: pd.DataFrame) -> str | None:
    """The heatmap method whose relevance the shares come from (the first heatmap method of the records)."""
    methods = [m for m in records["method"].drop_duplicates() if m != RANDOM_METHOD]
    return str(methods[0]) if methods else None


def location_summary(records: pd.DataFrame) -> dict | None:
    """Window means of the location columns (module doc), or None when the records have none."""
    if not len(records) or not has_location(records):
        return None
    samples = _per_sample(records)
    out: dict = {"method": location_method(records)}
    for c in LOCATION_COLUMNS:
        values = samples[c].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        if values.size == 0:
            out.update({c: math.nan, f"{c}_ci_low": math.nan, f"{c}_ci_high": math.nan, f"{c}_n": 0})
            continue
        stats = mean_ci(float(values.sum()), float((values ** 2).sum()), int(values.size))
        out.update({c: float(values.mean()), f"{c}_ci_low": stats["ci_low"], f"{c}_ci_high": stats["ci_high"],
                    f"{c}_n": int(values.size)})
    return out


def per_class_location(records: pd.DataFrame) -> pd.DataFrame:
    """Per predicted class: ``n`` and the mean of each location column (empty without them)."""
    if not len(records) or not has_location(records):
        return pd.DataFrame(columns=["pred", "n", *LOCATION_COLUMNS])
    samples = _per_sample(records)
    g = samples.groupby("pred", sort=True)
    return pd.concat([g.size().rename("n"), g[list(LOCATION_COLUMNS)].mean()], axis=1).reset_index()


__all__ = ["location_method", "location_summary", "per_class_location"]

"""Per-sample views of a records frame for the report: the worst-scoring inputs and a per-class table.

- :func:`worst_samples` — the inputs with the lowest AOPC gap to the random order (their heatmap
  explains their prediction worst) and those with the lowest confidence, with their window, file,
  predicted class and scores;
- :func:`per_class_table` — per predicted class: inputs, share, confidence, AOPC / score0, AOPC −
  random and, where labels exist, the realised accuracy.

Both read only the records (no model, no images); the report draws heatmaps for the worst inputs when
it is given the model and the inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from relmon.records import RANDOM_METHOD

_KEYS = ("_window", "sample_id")


def _key_columns(records: pd.DataFrame) -> list[str]:
    keys = [c for c in _KEYS if c in records.columns]
    if "run_id" in records.columns and records["run_id"].notna().any():
        keys.append("run_id")
    return keys


def sample_scores(records: pd.DataFrame, method: str) -> pd.DataFrame:
    """One row per scored input of ``method``: its window, ``sample_id``, ``pred``, ``label``,
    ``confidence``, ``aopc``, ``aopc_rel``, ``aopc_random`` and ``gap`` = aopc − aopc_random (NaN
    where the input has no random-order row)."""
    if "_window" not in records.columns:
        records = records.assign(_window=records["window_id"].astype(str))
    keys = _key_columns(records)
    mine = records[records["method"] == method]
    cols = keys + [c for c in ("pred", "label", "confidence", "aopc", "aopc_rel", "score0") if c in records.columns]
    out = mine[cols].copy()
    rand = records[records["method"] == RANDOM_METHOD][keys + ["aopc"]].rename(columns={"aopc": "aopc_random"})
    rand = rand.drop_duplicates(keys)
    out = out.merge(rand, on=keys, how="left")
    out["gap"] = out["aopc"].astype(float) - out["aopc_random"].astype(float)
    return out.reset_index(drop=True)


def worst_samples(records: pd.DataFrame, method: str, k: int = 4) -> dict[str, pd.DataFrame]:
    """The ``k`` inputs with the lowest AOPC gap (``"lowest AOPC gap"``) and the ``k`` with the lowest
    confidence (``"lowest confidence"``), each sorted worst first (ties by window and sample id)."""
    scores = sample_scores(records, method)
    order = ["_window", "sample_id"]
    by_gap = scores[np.isfinite(scores["gap"].astype(float))].sort_values(["gap", *order], kind="stable")
    by_conf = scores.sort_values(["confidence", *order], kind="stable")
    return {"lowest AOPC gap": by_gap.head(k).reset_index(drop=True),
            "lowest confidence": by_conf.head(k).reset_index(drop=True)}


def as_float(values) -> np.ndarray:
    """A column (numpy, pandas nullable or object) as float64 with NaN for missing values."""
    return pd.Series(values).astype("Float64").to_numpy(dtype=float, na_value=np.nan)


def class_name(index, classes: Sequence[str] | None) -> str:
    """``classes[index]`` with the index, or the index alone when no names are known (``–`` when missing
    or negative, relmon's "no label")."""
    if index is None or index is pd.NA or (isinstance(index, float) and np.isnan(index)) or index < 0:
        return "–"
    i = int(index)
    return f"{i} {classes[i]}" if classes is not None and 0 <= i < len(classes) else str(i)


def per_class_table(records: pd.DataFrame, method: str, classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Per predicted class (all windows together): ``inputs``, ``share``, mean ``confidence``, mean
    ``AOPC / score0``, mean ``AOPC − random`` and ``accuracy`` (realised, over the labelled inputs of
    that predicted class — the precision of the class; ``–`` without labels)."""
    scores = sample_scores(records, method)
    if "label" in scores:
        label, pred = as_float(scores["label"]), as_float(scores["pred"])
        scores = scores.assign(_correct=np.where(label >= 0, (pred == label).astype(float), np.nan))
    else:
        scores = scores.assign(_correct=np.nan)
    g = scores.groupby("pred", sort=True)
    table = pd.DataFrame({
        "inputs": g.size(),
        "share": g.size() / len(scores),
        "confidence": g["confidence"].mean(),
        "AOPC / score0": g["aopc_rel"].mean(),
        "AOPC − random": g["gap"].mean(),
        "accuracy (labelled)": g["_correct"].mean(),
    })
    table.insert(0, "predicted class", [class_name(i, classes) for i in table.index])
    return table.reset_index(drop=True)


__all__ = ["class_name", "per_class_table", "sample_scores", "worst_samples"]

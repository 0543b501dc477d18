"""Choose the accuracy estimator per calibration, by leave-one-shift-type-out validation.

:func:`select_estimator` evaluates every candidate on the user's own labelled calibration records:
for each shift type (the part of ``window_id`` before ``/``; ``clean`` windows always stay in the
training side), the candidate is fitted on the other windows and predicts the held-out type's windows.
The table holds per (estimator, held-out type) the mean absolute error, and the coverage and mean
width of the 90 % interval — the interval of a held-out type is calibrated on the residuals of the
*other* types only, so coverage is measured on data the interval never saw. The final test windows of
an evaluation are never used here.

**Criterion** (issue 18). Synthetic shift types do not show everything a real shift does: an estimator
with the lowest *mean* held-out error can still break on one type (and on a real shift; seen with
``regression_relevance`` on a third-party model: −0.30 where the confidence baselines stayed within
0.025). The default criterion is therefore ``"worst"``: the lowest *worst* per-type MAE (ties broken
by the mean); ``"mean"`` is the former rule. The median of the best three by the same criterion
(``median:a+b+c``) is a candidate too, and its members are reported (:attr:`SelectionResult.members`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from relmon.analysis.estimators import (
    ESTIMATORS,
    MEDIAN_PREFIX,
    _Data,
    _WindowEstimator,
    held_out_intervals,
    make_estimator,
)


@dataclass
class SelectionResult:
    """Outcome of :func:`select_estimator`.

    Attributes
    ----------
    table:
        One row per (estimator, held-out shift type): ``mae``, ``max_abs_error``, ``coverage``,
        ``mean_width``, ``n_windows``.
    summary:
        One row per estimator (index): ``mae`` (mean over held-out types), ``worst_mae`` (largest
        per-type MAE), ``coverage``, ``mean_width`` (over held-out windows); sorted by ``mae``.
    chosen:
        Name of the chosen estimator (a key of ``ESTIMATORS`` or ``median:a+b+c``).
    fitted:
        Name → estimator fitted on ALL calibration windows, interval calibrated on its LOSO residuals.
    errors:
        Candidates that could not be fitted on these records → the error message.
    criterion:
        ``"worst"`` or ``"mean"`` (module docstring); ``summary`` is sorted by it.
    """

    table: pd.DataFrame
    summary: pd.DataFrame
    chosen: str
    fitted: dict[str, _WindowEstimator]
    errors: dict[str, str] = field(default_factory=dict)
    criterion: str = "worst"

    @property
    def members(self) -> list[str]:
        """The chosen estimator's members: the names of a median's estimators, else ``[chosen]``."""
        return median_members(self.chosen)


def median_members(name: str) -> list[str]:
    """``median:a+b+c`` → ``[a, b, c]``; any other name → ``[name]``."""
    return name[len(MEDIAN_PREFIX):].split("+") if name.startswith(MEDIAN_PREFIX) else [name]


def _held_out_rows(name: str, est: _WindowEstimator, level: float) -> list[dict]:
    loso = getattr(est, "loso_", None)
    if loso is None or loso.empty:
        return []
    rows = []
    for g, part in held_out_intervals(est, loso).groupby("shift_type"):
        e = np.clip(part["estimate"].to_numpy(dtype=float), 0.0, 1.0)
        err = np.abs(e - part["accuracy"].to_numpy(dtype=float))
        rows.append({"estimator": name, "held_out": g, "mae": float(err.mean()), "max_abs_error": float(err.max()),
                     "coverage": float(part["covered"].mean()), "mean_width": float(part["width"].mean()),
                     "n_windows": len(part)})
    return rows


CRITERIA = ("worst", "mean")


def _summary(table: pd.DataFrame, criterion: str = "worst") -> pd.DataFrame:
    g = table.groupby("estimator")
    w = table.assign(cov_n=table["coverage"] * table["n_windows"], wid_n=table["mean_width"] * table["n_windows"])
    gw = w.groupby("estimator")
    out = pd.DataFrame({
        "mae": g["mae"].mean(),
        "worst_mae": g["mae"].max(),
        "coverage": gw["cov_n"].sum() / gw["n_windows"].sum(),
        "mean_width": gw["wid_n"].sum() / gw["n_windows"].sum(),
        "n_held_out": g.size(),
    })
    order = ["worst_mae", "mae"] if criterion == "worst" else ["mae", "worst_mae"]
    return out.sort_values(order, kind="stable")


def select_estimator(records: pd.DataFrame, candidates: Sequence[str] | None = None,
                     group_col: str = "shift_type", level: float = 0.9, combine: int = 3,
                     criterion: str = "worst") -> SelectionResult:
    """Leave-one-shift-type-out evaluation of ``candidates`` (default: every name in ``ESTIMATORS``)
    on labelled calibration ``records``; returns the table, the chosen name and the fitted estimators.

    ``group_col``: ``"shift_type"`` (derived from ``window_id``) or a column of ``records`` holding
    each window's group. ``combine``: size of the median combination of the best candidates (0: none).
    ``criterion``: ``"worst"`` (lowest worst per-type MAE, the default) or ``"mean"`` (lowest mean MAE).
    Needs at least two shift types besides ``clean``.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {list(CRITERIA)}, got {criterion!r}")
    if not isinstance(records, pd.DataFrame):
        raise TypeError(f"records must be a pandas DataFrame, got {type(records).__name__}")
    if group_col != "shift_type":
        if group_col not in records.columns:
            raise ValueError(f"records lack the group column {group_col!r}; pass group_col='shift_type' to "
                             "derive groups from window_id")
        records = records.assign(window_id=records[group_col].astype(str) + "/" + records["window_id"].astype(str))
    groups = set(records["window_id"].map(lambda w: str(w).split("/", 1)[0])) - {"clean"}
    if len(groups) < 2:
        raise ValueError(f"select_estimator needs windows of at least 2 shift types besides 'clean' (window ids "
                         f"'<shift>/...'); got {sorted(groups)}. Fix: calibrate with calibration_shifts")
    names = list(candidates) if candidates is not None else list(ESTIMATORS)
    # The per-sample and window features, the leave-one-shift-type-out subsets, per-window values and
    # point fits shared by several candidates (a median's members) are computed once for all of them.
    data = _Data.of(records)
    fitted, errors, rows = {}, {}, []
    for name in names:
        try:
            est = make_estimator(name).set_params(interval=level).fit(data)
        except (ValueError, KeyError) as err:
            errors[name] = str(err)
            continue
        fitted[name] = est
        rows += _held_out_rows(name, est, level)
    if not rows:
        raise ValueError(f"no candidate could be evaluated on these records: {errors}")
    table = pd.DataFrame(rows)
    summary = _summary(table, criterion)
    if combine and len(summary) >= combine:
        best = [n for n in summary.index if not n.startswith(MEDIAN_PREFIX)][:combine]
        name = MEDIAN_PREFIX + "+".join(best)
        try:
            est = make_estimator(name).set_params(interval=level).fit(data)
            fitted[name] = est
            table = pd.concat([table, pd.DataFrame(_held_out_rows(name, est, level))], ignore_index=True)
            summary = _summary(table, criterion)
        except (ValueError, KeyError) as err:
            errors[name] = str(err)
    chosen = str(summary.index[0])
    return SelectionResult(table=table, summary=summary, chosen=chosen, fitted=fitted, errors=errors,
                           criterion=criterion)


__all__ = ["CRITERIA", "SelectionResult", "median_members", "select_estimator"]

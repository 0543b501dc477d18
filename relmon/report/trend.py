"""The windows of a records folder as one table and one figure (``relmon trend``).

:func:`load_records` reads every record file under a folder (recursively) and remembers each row's
file time; :func:`trend_table` makes one row per window — its time, ``n`` scored inputs, mean AOPC,
``aopc_rel``, AOPC minus the random order's, heatmap entropy, mean confidence and, where labels
exist, the realised accuracy — and :func:`trend_figure` draws it. Window means come with a 90 %
normal interval (``*_lower``/``*_upper``, ±1.645 standard errors over the window's samples).
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

_Z90 = 1.6448536269514722
PREFERRED_METHOD = "lrp:epsilon_plus_flat"
RANDOM_METHOD = "random"

#: Columns of :func:`trend_table` (``accuracy`` is NaN for unlabelled windows).
TREND_COLUMNS = (
    "window", "window_id", "time", "method", "n", "n_labelled", "accuracy", "confidence",
    "aopc", "aopc_lower", "aopc_upper", "aopc_rel", "aopc_rel_lower", "aopc_rel_upper",
    "aopc_minus_random", "entropy_bits",
)


class RecordsFolderError(ValueError):
    """A records path holds no readable record files."""


def load_records(path: str | os.PathLike, on_skip=None) -> pd.DataFrame:
    """Every Parquet record file under ``path`` (a folder, searched recursively, or one file).

    The frame has the record columns plus ``_file`` and ``_file_time`` (the file's modification time,
    seconds since the epoch), which :func:`trend_table` uses when the records carry no ``run_time``.
    Parquet files that do not hold records (another schema) are skipped and passed to ``on_skip(path,
    reason)`` (default: a warning); a folder with no record file at all is an error naming the fix.
    """
    from relmon.records import read_record_files

    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
    else:
        raise FileNotFoundError(
            f"records path {str(path)!r} does not exist; fix: pass the folder given to "
            "'relmon monitor --records' (or RecordWriter's output_dir)"
        )
    frames, skipped = [], []
    for f in files:
        try:
            frame = read_record_files([f])
        except Exception as err:  # another schema, a torn file: say so, keep the rest
            skipped.append(f)
            msg = f"{f}: not a records file ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
            if on_skip is None:
                warnings.warn(msg, stacklevel=2)
            else:
                on_skip(f, msg)
            continue
        frame["_file"] = str(f)
        frame["_file_time"] = f.stat().st_mtime
        frames.append(frame)
    if not frames:
        raise RecordsFolderError(
            f"no record files under {str(path)!r} ({len(files)} Parquet file(s), {len(skipped)} skipped); "
            "fix: pass the folder given to 'relmon monitor --records' (or RecordWriter's output_dir)"
        )
    out = pd.concat(frames, ignore_index=True)
    keys = [c for c in ("run_id", "window_id", "sample_id", "method") if c in out.columns]
    return out.drop_duplicates(subset=keys, keep="first").reset_index(drop=True)


def choose_method(records: pd.DataFrame, method: str | None = None) -> str:
    """The heatmap method a trend or report summarises: ``method`` if given (it must be present),
    else ``lrp:epsilon_plus_flat`` when present, else the first heatmap method in sorted order."""
    methods = sorted(m for m in records["method"].dropna().unique() if m != RANDOM_METHOD)
    if method is not None:
        try:
            from relmon.explain import canonical_method

            method = canonical_method(method)
        except Exception:  # noqa: BLE001 - unknown ids are reported below with the choices
            pass
        if method not in methods:
            raise ValueError(f"method {method!r} is not in the records; they hold {methods}")
        return method
    if not methods:
        raise ValueError("the records hold no heatmap method (only 'random' rows)")
    return PREFERRED_METHOD if PREFERRED_METHOD in methods else methods[0]


def _window_key(records: pd.DataFrame) -> pd.Series:
    """``window_id``, or ``window_id @ run_id`` where one window id was scored by several runs."""
    wid = records["window_id"].astype(str)
    if "run_id" not in records.columns:
        return wid
    run = records["run_id"].astype(str)
    runs_per_window = run.groupby(wid).transform("nunique")
    return wid.where(runs_per_window <= 1, wid + " @ " + run)


def _window_time(records: pd.DataFrame, key: pd.Series) -> pd.Series:
    """A window's time: its records' ``run_time`` where a job wrote them, else the file's modification
    time (records written outside a job have a null ``run_time``)."""
    t = pd.Series(pd.NaT, index=records.index, dtype="datetime64[ns, UTC]")
    if "run_time" in records.columns:
        run = records["run_time"]
        if pd.api.types.is_numeric_dtype(run):
            run = pd.to_datetime(run.astype(float), unit="s", utc=True)
        else:
            run = pd.to_datetime(run, utc=True)
        t = run.astype("datetime64[ns, UTC]")
    if "_file_time" in records.columns:
        t = t.fillna(pd.to_datetime(records["_file_time"].astype(float), unit="s", utc=True))
    return t.groupby(key).min()


def _mean_interval(values: pd.Series) -> tuple[float, float, float]:
    v = values.to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(v.mean())
    half = _Z90 * float(v.std(ddof=1)) / math.sqrt(v.size) if v.size > 1 else math.nan
    return mean, mean - half, mean + half


def trend_table(records: pd.DataFrame, method: str | None = None) -> pd.DataFrame:
    """One row per window (sorted by time, then window id): :data:`TREND_COLUMNS`.

    ``n`` counts distinct inputs; ``confidence`` and ``accuracy`` are means over them (``accuracy``
    over the labelled ones, NaN if none); ``aopc``, ``aopc_rel``, ``entropy_bits`` are means over the
    ``method`` rows (``aopc_rel`` over finite values: it is NaN where ``score0 <= 0``);
    ``aopc_minus_random`` is the mean per-input gap to the ``random`` row (NaN without random rows).
    Records that carry an ``aopc_early`` column (AOPC over the first ≈16 % of the image) add its mean.
    """
    if not len(records):
        raise ValueError("no records to summarise")
    method = choose_method(records, method)
    records = records.assign(_window=_window_key(records))
    times = _window_time(records, records["_window"])
    samples = records.drop_duplicates(["_window", "sample_id"])
    heat = records[records["method"] == method]
    rand = records[records["method"] == RANDOM_METHOD]
    gap = None
    if len(rand):
        a = heat.set_index(["_window", "sample_id"])["aopc"].astype(float)
        r = rand.set_index(["_window", "sample_id"])["aopc"].astype(float)
        gap = (a - r.reindex(a.index)).rename("gap").reset_index()
    rows = []
    for window, s in samples.groupby("_window", sort=False):
        h = heat[heat["_window"] == window]
        correct = s["correct"].dropna().astype(float)
        aopc = _mean_interval(h["aopc"])
        rel = _mean_interval(h["aopc_rel"].astype(float))
        rows.append({
            "window": window,
            "window_id": str(s["window_id"].iloc[0]),
            "time": times.get(window, pd.NaT),
            "method": method,
            "n": int(len(s)),
            "n_labelled": int(len(correct)),
            "accuracy": float(correct.mean()) if len(correct) else math.nan,
            "confidence": float(s["confidence"].astype(float).mean()),
            "aopc": aopc[0], "aopc_lower": aopc[1], "aopc_upper": aopc[2],
            "aopc_rel": rel[0], "aopc_rel_lower": rel[1], "aopc_rel_upper": rel[2],
            "aopc_minus_random": (
                _mean_interval(gap.loc[gap["_window"] == window, "gap"])[0] if gap is not None else math.nan
            ),
            "entropy_bits": float(h["entropy_bits"].astype("Float64").astype(float).mean()),
        })
    table = pd.DataFrame(rows, columns=list(TREND_COLUMNS))
    if "aopc_early" in heat.columns:  # early AOPC (~16 % of the image), where the records carry it
        early = heat.assign(_v=heat["aopc_early"].astype("Float64").astype(float)).groupby("_window")["_v"].mean()
        table["aopc_early"] = table["window"].map(early)
    return table.sort_values(["time", "window"], na_position="last", kind="stable", ignore_index=True)


def format_trend(table: pd.DataFrame) -> str:
    """The trend table as aligned plain text (for the terminal)."""
    cols = ["time", "window", "n", "aopc", "aopc_rel", "aopc_minus_random", "entropy_bits", "confidence",
            "accuracy"]
    shown = table[cols].copy()
    shown["time"] = shown["time"].map(lambda t: "" if pd.isna(t) else t.strftime("%Y-%m-%d %H:%M:%S"))
    return shown.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-")


def trend_figure(
    table: pd.DataFrame,
    path: str | os.PathLike | None = None,
    estimates: pd.DataFrame | None = None,
    drift: pd.DataFrame | None = None,
    dpi: int = 100,
):
    """Draw the trend: AOPC (relative) with its interval, heatmap entropy, confidence and accuracy
    (realised where labelled; estimated with its interval when ``estimates`` — columns ``window``,
    ``estimate``, ``lower``, ``upper`` — is given) and, with ``drift`` (``window``, ``min_p_value``,
    ``alarm``), the drift p-values. Windows are placed in table order (time order), labelled by their
    time. Saves a PNG to ``path`` (returns it) or returns the (pyplot-free) ``Figure`` when ``path`` is None."""
    from relmon.extras import require

    Figure = require("matplotlib.figure", "relmon trend (figures)").Figure  # no pyplot: headless, user's backend untouched
    x = np.arange(len(table))
    panels = 4 if drift is not None and len(drift) else 3
    fig = Figure(figsize=(7.5, 2.0 * panels + 0.6))
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False)
    axes = axes[:, 0]
    method = table["method"].iloc[0] if len(table) else ""

    ax = axes[0]
    ax.plot(x, table["aopc_rel"], "o-", color="C0", label=f"AOPC / score0 ({method})")
    ax.fill_between(x, table["aopc_rel_lower"], table["aopc_rel_upper"], color="C0", alpha=0.2,
                    label="90 % interval")
    if table["aopc_minus_random"].notna().any():
        ax2 = ax.twinx()
        ax2.plot(x, table["aopc_minus_random"], "s--", color="C3", label="AOPC − random")
        ax2.set_ylabel("AOPC − random", color="C3", fontsize=8)
    ax.set_ylabel("AOPC relative", fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("relmon windows", fontsize=10)

    ax = axes[1]
    ax.plot(x, table["entropy_bits"], "o-", color="C2")
    ax.set_ylabel("heatmap entropy (bits)", fontsize=8)

    ax = axes[2]
    ax.plot(x, table["confidence"], "o-", color="C1", label="mean confidence")
    if table["accuracy"].notna().any():
        ax.plot(x, table["accuracy"], "D", color="k", label="realised accuracy (labels)")
    if estimates is not None and len(estimates):
        est = table[["window"]].merge(estimates, on="window", how="left")
        name = estimates["estimator"].iloc[0] if "estimator" in estimates else "estimate"
        ax.plot(x, est["estimate"], "o-", color="C4", label=f"estimated accuracy ({name})")
        ax.fill_between(x, est["lower"], est["upper"], color="C4", alpha=0.2, label="estimate interval")
    ax.set_ylabel("ratio", fontsize=8)
    ax.legend(fontsize=7, loc="lower left")

    if panels == 4:
        ax = axes[3]
        d = table[["window"]].merge(drift, on="window", how="left")
        p = d["min_p_value"].astype(float).clip(lower=1e-300)
        colors = ["C3" if a else "C0" for a in d["alarm"].fillna(False).astype(bool)]
        ax.scatter(x, p, c=colors)
        ax.set_yscale("log")
        ax.set_ylabel("smallest drift p-value\n(red: alarm)", fontsize=8)
    labels = [
        (f"{w}\n{t.strftime('%m-%d %H:%M:%S')}" if not pd.isna(t) else str(w))
        for t, w in zip(table["time"], table["window"], strict=True)
    ]
    axes[-1].set_xticks(x)
    axes[-1].set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
    axes[-1].set_xlabel("window (time order)", fontsize=8)
    for a in axes:
        a.grid(alpha=0.3)
        a.tick_params(labelsize=7)
    fig.tight_layout()
    if path is None:
        return fig
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return os.fspath(path)


__all__ = [
    "TREND_COLUMNS",
    "RecordsFolderError",
    "choose_method",
    "format_trend",
    "load_records",
    "trend_figure",
    "trend_table",
]

"""``relmon report``: one self-contained static HTML file for one window or a series of windows.

The page opens with a table of contents; then, each in a ``<section id=...>`` (:data:`SECTIONS`):

- ``summary`` — model, versions, windows, inputs, methods, and notes on what the page could not show;
- ``trend`` — per window: AOPC (relative, with a 90 % interval), AOPC − random, heatmap entropy,
  confidence, realised accuracy where labels exist; the calibration's accuracy estimates with their
  intervals as one row per estimator (the default marked);
- ``drift`` — per window, KS p-values of each feature against the calibration's reference window and
  the (Holm-corrected) alarm;
- ``location`` — "Where the model looks" (records scored with ``suspect_regions``): per window the
  suspect-region relevance share, occlusion flip rate and confidence drop, and per predicted class
  (:mod:`relmon.report.location`); a note naming the setting otherwise;
- ``heatmaps`` — the worst-scoring inputs (lowest AOPC gap to the random order, lowest confidence)
  with their window, file, predicted class and scores, and, given the model and the inputs, their
  heatmaps, one column per method (``images=False`` leaves images out: inputs can be private data,
  and LRP heatmaps show the input's outline);
- ``classes`` — per predicted class: inputs, confidence, AOPC, AOPC − random, realised accuracy;
- ``curves`` — mean MoRF and random-order curves over the share of the image perturbed, relative to
  the clean score ``f(x^(0))``: the records keep AOPC numbers, not curves, so the curves are
  recomputed for the example inputs when a model is given (the page says so); the AOPC distribution
  of every window's records is always shown;
- ``validation`` — the calibration: how its default estimator was chosen, the leave-one-shift-type-out
  validation as tables, and the calibration windows' accuracies (:func:`calibration_section`).
- ``method_table`` — the calibration's comparison of heatmap methods on this model (paired AOPC gap to
  the random order, the method used, warnings; :mod:`relmon.report.methods`).

Every figure is a matplotlib PNG embedded as base64 (``data:image/png``); the page loads nothing from
anywhere (no scripts, stylesheets, fonts or images by URL).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from relmon.report.samples import as_float, class_name, per_class_table, worst_samples
from relmon.report.trend import RANDOM_METHOD, choose_method, trend_figure, trend_table

SECTIONS = ("summary", "trend", "drift", "location", "heatmaps", "classes", "curves", "validation",
            "method_table")
SECTION_TITLES = {
    "summary": "Summary",
    "trend": "Windows over time",
    "drift": "Drift",
    "location": "Where the model looks",
    "heatmaps": "Worst-scoring inputs",
    "classes": "Per predicted class",
    "curves": "Perturbation curves and AOPC",
    "validation": "Calibration and its validation",
    "method_table": "Heatmap methods on this model",  # relmon.report.methods (issue 21 item 6)
}

_CSS = """
body { font-family: sans-serif; margin: 1.5em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 1.6em; }
table.data { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
table.data th, table.data td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; }
table.data th { background: #f3f3f3; }
.note { color: #555; font-size: 0.9em; } .alarm { color: #b00; font-weight: bold; }
img.fig { max-width: 100%; border: 1px solid #eee; }
div.wide { max-width: 100%; overflow-x: auto; }
nav.toc ol { columns: 2; font-size: 0.9em; } tr.default td, tr.default th { font-weight: bold; }
"""


@dataclass
class Examples:
    """Example inputs for the page: ``images`` ``(B, C, H, W)`` in ``[0, 1]``, ``heatmaps`` per method
    ``(B, H, W)``, and optionally perturbation ``curves`` per method (MoRF) and for ``"random"`` —
    ``(B, L+1)`` scores ``f(x^(k))`` — with ``source`` saying where they come from."""

    images: Any
    heatmaps: Mapping[str, Any]
    curves: Mapping[str, Any] = field(default_factory=dict)
    titles: Sequence[str] | None = None
    source: str = ""
    #: side of the perturbed regions: puts the curves on the share of the image perturbed
    region: int | None = None


def compute_examples(model, images, methods: Sequence[str], region: int = 4, steps: int = 49,
                     seed: int = 0, source: str = "", titles: Sequence[str] | None = None) -> Examples:
    """Heatmaps and MoRF/random curves of ``methods`` for ``images`` (``(B, C, H, W)`` in ``[0, 1]``),
    normalised by the model's attached preprocessing — the same engine the monitor uses."""
    import torch

    from relmon.explain import canonical_method, explain, to_heatmap
    from relmon.models import get_preprocessing
    from relmon.perturbation import evaluate_heatmaps

    prep = get_preprocessing(model, "the report's example heatmaps")
    x = prep.normalize(images.float())
    heatmaps, curves = {}, {}
    with torch.no_grad():
        logits = model.eval()(x)
    pred = logits.argmax(1)
    for m in methods:
        m = canonical_method(m)
        if m == RANDOM_METHOD:
            continue
        h = to_heatmap(explain(model, x, m, target=pred), m)
        ev = evaluate_heatmaps(model, x, h, orders=("morf", "random"), target=pred, region=region,
                               steps=steps, seed=seed)
        heatmaps[m] = h.detach().cpu()
        curves[m] = ev.results["morf"].curves.detach().cpu()
        curves.setdefault(RANDOM_METHOD, ev.results["random"].curves.detach().cpu())
    return Examples(images=images.detach().cpu(), heatmaps=heatmaps, curves=curves, source=source,
                    titles=titles, region=region)


# --------------------------------------------------------------------------------------------------
# pieces


def _figure(**kw):
    from relmon.extras import require

    Figure = require("matplotlib.figure", "relmon report (figures)").Figure  # no pyplot: headless, user's backend untouched
    fig = Figure(**kw)
    return fig, fig.subplots()


def _png(fig, dpi: int = 90) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(b64: str, alt: str) -> str:
    return f'<img class="fig" alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _table(frame: pd.DataFrame, index: bool = False, header: bool = True) -> str:
    return frame.to_html(index=index, header=header, border=0, classes="data", na_rep="–", escape=True,
                         float_format=lambda v: f"{v:.3f}")


def _interval(mean: float, lower: float, upper: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.3f}" if math.isnan(lower) else f"{mean:.3f} [{lower:.3f}, {upper:.3f}]"


def _p(text: str, cls: str = "note") -> str:
    return f'<p class="{cls}">{html.escape(text)}</p>'


def _grid_png(ex: Examples, max_images: int = 8) -> str:
    import tempfile

    from relmon.report.grid import heatmap_grid

    n = min(max_images, int(ex.images.shape[0]))
    with tempfile.TemporaryDirectory() as tmp:
        path = heatmap_grid(ex.images[:n], {m: h[:n] for m, h in ex.heatmaps.items()},
                            os.path.join(tmp, "grid.png"), titles=list(ex.titles)[:n] if ex.titles else None,
                            dpi=80)
        return base64.b64encode(Path(path).read_bytes()).decode("ascii")


#: the share of the image the paper perturbed (9x9 regions, L = 100 on 227x227 images)
PAPER_FRACTION = 0.16


def perturbed_share(steps: int, height: int, width: int, region: int | None) -> np.ndarray:
    """Share of the image's pixels perturbed after k = 0..steps regions (``region`` x ``region`` on a
    regular grid, the last row and column smaller), in the order of their area (an upper bound when
    edge regions come early); without ``region``, k / steps."""
    k = np.arange(steps + 1, dtype=float)
    if not region:
        return k / max(steps, 1)
    sides_h = [min(region, height - y) for y in range(0, height, region)]
    sides_w = [min(region, width - x) for x in range(0, width, region)]
    areas = np.sort(np.outer(sides_h, sides_w).ravel())[::-1]
    covered = np.concatenate([[0.0], np.cumsum(areas)])[np.minimum(k.astype(int), len(areas))]
    return covered / float(height * width)


def _curves_png(ex: Examples) -> str:
    fig, ax = _figure(figsize=(6.5, 3.6))
    height, width = (int(s) for s in np.asarray(ex.images).shape[-2:])
    xmax = 0.0
    for i, (m, c) in enumerate(ex.curves.items()):
        c = np.asarray(c, dtype=float)
        rel = c / c[:, :1]  # f(x^(k)) / f(x^(0)): scale-free, comparable across inputs
        frac = perturbed_share(c.shape[1] - 1, height, width, ex.region)
        xmax = max(xmax, float(frac[-1]))
        style = dict(color="k", ls="--") if m == RANDOM_METHOD else dict(color=f"C{i}")
        ax.plot(frac, np.nanmean(rel, axis=0), label=f"{m} ({'random order' if m == RANDOM_METHOD else 'MoRF'})",
                **style)
    if ex.region and xmax >= PAPER_FRACTION * 0.9:  # only where the axis is the image's share and reaches it
        ax.axvline(PAPER_FRACTION, color="grey", lw=0.8, ls=":")
        right = PAPER_FRACTION > 0.8 * xmax
        ax.text(PAPER_FRACTION, 0.97, "16 % of the image (the paper's protocol) " if right else
                " 16 % of the image (the paper's protocol)", fontsize=7, va="top", ha="right" if right else "left",
                color="grey", transform=ax.get_xaxis_transform())
    ax.set_xlabel("share of the image perturbed" if ex.region else "share of the L steps done (k / L)", fontsize=8)
    ax.set_ylabel("mean f(x^(k)) / f(x^(0))", fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _aopc_hist_png(records: pd.DataFrame) -> str:
    fig, ax = _figure(figsize=(6.5, 3.2))
    vals = records["aopc_rel"].astype(float)
    finite = vals[np.isfinite(vals)]
    lo, hi = (np.nanpercentile(finite, [1, 99]) if len(finite) else (0.0, 1.0))
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 40)
    for i, (m, g) in enumerate(records.groupby("method", sort=True)):
        v = g["aopc_rel"].astype(float)
        v = v[np.isfinite(v)]
        style = dict(color="k", histtype="step", ls="--") if m == RANDOM_METHOD else dict(color=f"C{i}",
                                                                                           alpha=0.45)
        ax.hist(v.clip(bins[0], bins[-1]), bins=bins, label=f"{m} (n={len(v)})", **style)
    ax.set_xlabel("per-input AOPC / f(x^(0))  (all windows; clipped to the 1–99 % range)", fontsize=8)
    ax.set_ylabel("inputs", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _estimates(records: pd.DataFrame, calibration, notes: list[str]) -> tuple[pd.DataFrame, str | None]:
    """Long frame ``window, estimator, estimate, lower, upper`` from the calibration's estimators."""
    if calibration is None:
        return pd.DataFrame(columns=["window", "estimator", "estimate", "lower", "upper"]), None
    from relmon.records import has_location, record_columns

    recs = records[[c for c in record_columns(has_location(records)) if c in records.columns]].copy()
    recs["window_id"] = records["_window"].astype(str)
    rows = []
    for name, est in calibration.estimators.items():
        try:
            pred = est.predict(recs)
        except Exception as err:  # one estimator failing must not hide the others
            notes.append(f"estimator {name} could not run on these records: {err}")
            continue
        rows.append(pred.rename(columns={"window_id": "window"}).assign(estimator=name))
    default = calibration.meta.get("default_estimator")
    if default not in calibration.estimators:
        from relmon.analysis import DEFAULT_ESTIMATOR

        default = DEFAULT_ESTIMATOR if DEFAULT_ESTIMATOR in calibration.estimators else next(
            iter(calibration.estimators), None)
    out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
        columns=["window", "estimator", "estimate", "lower", "upper"])
    return out, default


def _drift(records: pd.DataFrame, calibration, method: str, alpha: float, notes: list[str]) -> pd.DataFrame:
    from relmon.analysis import ks_drift

    rows = []
    for window, g in records.groupby("_window", sort=False):
        try:
            res = ks_drift(calibration.reference, g, method=method, alpha=alpha)
        except Exception as err:
            notes.append(f"drift test failed on window {window}: {err}")
            continue
        row = {"window": window, "n": res.n_window, "alarm": bool(res.alarm),
               "min_p_value": float(min(res.adjusted_p_values.values()))}
        row.update({f"p({k})": v for k, v in res.p_values.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _records_table(value) -> pd.DataFrame | None:
    """A table stored in the calibration's JSON (a list of records, or pandas' ``orient="split"``)."""
    if isinstance(value, list) and value and all(isinstance(r, Mapping) for r in value):
        return pd.DataFrame(value)
    if isinstance(value, Mapping) and "columns" in value and "data" in value:
        return pd.DataFrame(value["data"], columns=value["columns"])
    return None


_SUMMARY_COLUMNS = {
    "estimator": "estimator",
    "mae": "MAE",
    "worst_mae": "worst MAE (one held-out type)",
    "coverage": "coverage of the interval",
    "mean_width": "mean interval width",
    "n_held_out": "held-out shift types",
}


def calibration_section(calibration, default: str | None) -> str:
    """The ``validation`` section: how the calibration chose its default estimator, its
    leave-one-shift-type-out validation as tables (not raw JSON), and the calibration windows.

    Everything the report shows about the calibration is rendered here, in this one function."""
    v = [f'<section id="validation"><h2>{SECTION_TITLES["validation"]}</h2>']
    if calibration is None:
        v.append(_p("No calibration given (pass --calibration FOLDER)."))
        v.append("</section>")
        return "\n".join(v)
    meta = calibration.meta
    validation = meta.get("validation")
    if default is not None:
        v.append(_p(f"Default estimator (the headline number): {default}."))
    if not isinstance(validation, Mapping):
        v.append(_p("This calibration carries no validation table (made by an older relmon)."))
    else:
        if validation.get("chosen_by"):
            chosen = validation.get("chosen")
            v.append(_p(f"Chosen by: {validation['chosen_by']}" + (f"; chosen: {chosen}." if chosen else ".")))
        summary = _records_table(validation.get("summary"))
        if summary is not None:
            summary = summary[[c for c in _SUMMARY_COLUMNS if c in summary.columns]]
            v.append(_p("Each estimator fitted without one shift type and judged on that type's windows "
                        "(mean absolute error of the accuracy estimate, how often its 90 % interval held the "
                        "true accuracy, and the interval's width), best first:"))
            rows = summary.rename(columns=_SUMMARY_COLUMNS)
            v.append(_marked_table(rows, "estimator", {default, validation.get("chosen")}))
        per_type = _records_table(validation.get("per_shift_type"))
        if per_type is not None and {"estimator", "held_out", "mae"} <= set(per_type.columns):
            wide = per_type.pivot_table(index="estimator", columns="held_out", values="mae", sort=False)
            wide.columns.name = None
            if summary is not None:
                wide = wide.reindex([e for e in summary["estimator"] if e in wide.index])
            v.append(_p("Mean absolute error per held-out shift type:"))
            v.append(_wide(_table(wide.reset_index())))
            chosen = validation.get("chosen")
            mine = per_type[per_type["estimator"] == chosen] if chosen else per_type.iloc[:0]
            if len(mine) and {"coverage", "mean_width"} <= set(mine.columns):
                # issue 18: the default's interval per held-out shift type; uncovered types named, not averaged
                uncovered = set(validation.get("unreliable_under") or [])
                cov = mine[["held_out", "mae", "coverage", "mean_width", "n_windows"]].rename(
                    columns={"held_out": f"held-out shift type ({chosen})"})
                cov["estimates"] = ["unreliable (uncovered)" if g in uncovered else "" for g in mine["held_out"]]
                v.append(_p(f"Coverage and width of {chosen}'s 90 % interval per held-out shift type "
                            "(calibrated without that type):"))
                v.append(_table(cov))
        if validation.get("unreliable_under"):
            v.append(_p("Estimates unreliable under: " + ", ".join(validation["unreliable_under"])
                        + " (the interval covered under half of those held-out windows)."))
        errors = validation.get("errors") or {}
        if errors:
            v.append(_p("Estimators that could not be validated: "
                        + "; ".join(f"{k}: {e}" for k, e in errors.items())))
        other = {k: x for k, x in validation.items()
                 if k not in ("chosen_by", "chosen", "summary", "per_shift_type", "errors", "unreliable_under")}
        if other:
            v.append(_table(pd.DataFrame({"field": list(other), "value": [str(x) for x in other.values()]})))
    acc = meta.get("window_accuracy")
    if acc:
        v.append(_p(f"Calibration windows and their accuracy ({meta.get('n_per_window', '?')} labelled "
                    "inputs each):"))
        v.append(_wide(_table(pd.DataFrame({"window": list(acc), "accuracy": list(acc.values())}).T.reset_index(
            drop=True).rename(index={0: "window", 1: "accuracy"}), index=True, header=False)))
    v.append("</section>")
    return "\n".join(v)


def _wide(table_html: str) -> str:
    """A table that may be wider than the page scrolls inside its own box, not the page."""
    return f'<div class="wide">{table_html}</div>'


def _marked_table(frame: pd.DataFrame, column: str, marked: set) -> str:
    """``frame`` as a table whose rows with ``column`` in ``marked`` are bold (class ``default``)."""
    page = _table(frame)
    head, _, rest = page.partition("<tbody>")
    body, _, tail = rest.partition("</tbody>")
    rows = body.split("<tr>")
    out = [rows[0]]
    for row, value in zip(rows[1:], frame[column].astype(str), strict=True):
        out.append(('<tr class="default">' if value in marked else "<tr>") + row)
    return head + "<tbody>" + "".join(out) + "</tbody>" + tail


# --------------------------------------------------------------------------------------------------
# the page


def render_report(
    records: pd.DataFrame,
    *,
    calibration=None,
    examples: Examples | None = None,
    images: bool = True,
    method: str | None = None,
    title: str | None = None,
    notes: Sequence[str] = (),
    drift_alpha: float = 0.01,
    classes: Sequence[str] | None = None,
    worst: int = 4,
) -> str:
    """The report page as one HTML string (see the module docstring for its sections).

    ``records`` is a records frame (e.g. :func:`relmon.report.trend.load_records`), one or many
    windows; ``calibration`` a :class:`relmon.jobs.Calibration` (estimates, drift, validation table);
    ``examples`` the inputs, heatmaps and curves to show (:func:`compute_examples`; the CLI gives the
    worst-scoring inputs); ``images=False`` leaves out the heatmap grid; ``classes`` names the classes
    (default: the calibration's); ``worst`` inputs are listed per criterion.
    """
    if not len(records):
        raise ValueError("no records to report on")
    notes = list(notes)
    method = choose_method(records, method)
    if classes is None and calibration is not None:
        classes = calibration.meta.get("classes")
    if classes is None:
        classes = _embedded_classes(records)
    from relmon.report.trend import _window_key

    records = records.assign(_window=_window_key(records))
    trend = trend_table(records.drop(columns=["_window"]), method)
    estimates, default = _estimates(records, calibration, notes)
    drift = _drift(records, calibration, method, drift_alpha, notes) if calibration is not None else None

    models = sorted({f"{m} (version {v})" for m, v in zip(records["model"], records["model_version"],
                                                             strict=True)})
    methods = sorted(records["method"].unique())
    n_inputs = int(records.drop_duplicates(["_window", "sample_id"]).shape[0])
    times = trend["time"].dropna()
    span = (f"{times.min():%Y-%m-%d %H:%M:%S} – {times.max():%Y-%m-%d %H:%M:%S} UTC" if len(times) else "unknown")
    title = title or f"relmon report — {', '.join(models)}"
    body = [f"<h1>{html.escape(title)}</h1>"]

    # summary
    s = [f'<section id="summary"><h2>{SECTION_TITLES["summary"]}</h2>', '<table class="data">']
    facts = [
        ("model", ", ".join(models)),
        ("windows", f"{len(trend)} ({span})"),
        ("inputs scored", str(n_inputs)),
        ("methods in the records", ", ".join(methods)),
        ("summarised method", method),
        ("calibration", str(getattr(calibration, "path", "")) if calibration is not None else "none given"),
        ("generated", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")),
    ]
    last = trend.iloc[-1]
    facts.append(("latest window", f"{last['window']}: AOPC/score0 {last['aopc_rel']:.3f}, "
                                   f"confidence {last['confidence']:.3f}"
                                   + (f", realised accuracy {last['accuracy']:.3f}"
                                      if not math.isnan(last["accuracy"]) else "")))
    if default is not None and len(estimates):
        e = estimates[(estimates["estimator"] == default) & (estimates["window"] == last["window"])]
        if len(e):
            e = e.iloc[0]
            facts.append(("estimated accuracy (latest)",
                          f"{e['estimate']:.3f} [{e['lower']:.3f}, {e['upper']:.3f}] by {default}"))
    if drift is not None and len(drift):
        alarms = drift.loc[drift["alarm"], "window"].tolist()
        facts.append(("drift alarms", ", ".join(map(str, alarms)) if alarms else "none"))
    for k, v in facts:
        s.append(f"<tr><th>{html.escape(k)}</th><td style='text-align:left'>{html.escape(v)}</td></tr>")
    s.append("</table>")
    s_notes = s  # notes are appended at the end, once every section has had its say

    # trend
    t = [f'<section id="trend"><h2>{SECTION_TITLES["trend"]}</h2>']
    est_default = estimates[estimates["estimator"] == default] if default is not None else None
    drift_fig = drift if drift is not None and len(drift) else None
    fig = trend_figure(trend, None, estimates=est_default, drift=drift_fig)
    t.append(_img(_png(fig), "trend of the windows"))
    shown = pd.DataFrame({
        "window": trend["window"],
        "time (UTC)": trend["time"].map(lambda v: "" if pd.isna(v) else f"{v:%Y-%m-%d %H:%M:%S}"),
        "n": trend["n"],
        "accuracy": trend["accuracy"],
        "confidence": trend["confidence"],
        "AOPC": trend["aopc"],
        "AOPC / score0 [90 %]": [_interval(m, lo, hi) for m, lo, hi in
                                 zip(trend["aopc_rel"], trend["aopc_rel_lower"], trend["aopc_rel_upper"],
                                     strict=True)],
        "AOPC − random": trend["aopc_minus_random"],
        "entropy (bits)": trend["entropy_bits"],
    })
    t.append(_p(f"One row per window; method {method}; intervals are 90 % (±1.645 standard errors over "
                "the window's inputs). accuracy: realised, where labels exist."))
    t.append(_wide(_table(shown)))
    if len(estimates):
        t.append(_p(f"Estimated accuracy [90 % interval]: one row per estimator, one column per window "
                    f"(bold: the default, {default}); the last row is the realised accuracy where labels exist."))
        t.append(_wide(_estimates_table(estimates, trend, default)))
    elif calibration is None:
        t.append(_p("No calibration given: no accuracy estimates (pass --calibration FOLDER)."))
    t.append("</section>")

    # drift
    d = [f'<section id="drift"><h2>{SECTION_TITLES["drift"]}</h2>']
    if drift is None:
        d.append(_p("No calibration given: drift is tested against the calibration's reference window "
                    "(pass --calibration FOLDER)."))
    elif not len(drift):
        d.append(_p("The drift test could not run (see the notes in the summary)."))
    else:
        d.append(_p(f"Two-sample KS p-values per feature, each window against the calibration's clean "
                    f"window; alarm when a Holm-corrected p-value is below {drift_alpha}."))
        shown = drift.copy()
        shown["alarm"] = shown["alarm"].map(lambda a: "ALARM" if a else "no")
        d.append(_wide(_table(shown)))
    d.append("</section>")

    # worst-scoring inputs
    classes = list(classes) if classes is not None else None
    h = [f'<section id="heatmaps"><h2>{SECTION_TITLES["heatmaps"]}</h2>']
    h.append(_p(f"The inputs whose {method} heatmap explains their prediction worst (lowest AOPC − random: "
                "destroying the regions it calls most relevant hurts the score no more than random regions) "
                "and the least confident ones, over all windows."))
    for label, frame in worst_samples(records, method, k=worst).items():
        if not len(frame):
            continue
        h.append(f"<h3>{html.escape(label)}</h3>")
        h.append(_wide(_table(pd.DataFrame({
            "window": frame["_window"],
            "input": frame["sample_id"],
            "predicted": [class_name(p, classes) for p in frame["pred"]],
            "label": [class_name(v, classes) for v in
                      (as_float(frame["label"]) if "label" in frame else [np.nan] * len(frame))],
            "confidence": frame["confidence"],
            "AOPC − random": frame["gap"],
            "AOPC / score0": frame["aopc_rel"],
        }))))
    if not images:
        h.append(_p("Images left out on request (--no-images): the inputs may be private, and heatmaps show them."))
    elif examples is None or not len(examples.heatmaps):
        h.append(_p("No heatmaps: the records keep numbers, not images. Pass the model and the inputs "
                    "(relmon report --config ... or --model ... --input ...) to draw these inputs' heatmaps."))
    else:
        h.append(_p(f"These inputs beside their heatmaps, one column per method ({examples.source}); each "
                    "heatmap is scaled to its own largest absolute value, red positive, blue negative relevance."))
        h.append(_img(_grid_png(examples, max_images=2 * worst), "inputs and heatmaps"))
    h.append("</section>")

    # per class
    k = [f'<section id="classes"><h2>{SECTION_TITLES["classes"]}</h2>']
    k.append(_p(f"Per predicted class, all windows together (method {method}); accuracy: the share of the "
                "labelled inputs predicted as this class that are of this class."))
    k.append(_wide(_table(per_class_table(records, method, classes))))
    k.append("</section>")

    # curves
    c = [f'<section id="curves"><h2>{SECTION_TITLES["curves"]}</h2>']
    if examples is not None and len(examples.curves):
        n = int(np.asarray(next(iter(examples.curves.values()))).shape[0])
        c.append(_p(f"Mean MoRF curves and the random order, recomputed for {n} example inputs "
                    f"({examples.source}); the records hold AOPC numbers, not curves. A good heatmap "
                    "makes its curve fall well below the random order's; these are the worst-scoring inputs, "
                    "chosen for a MoRF curve no better than random."
                    if "worst" in examples.source else
                    f"Mean MoRF curves and the random order, recomputed for {n} example inputs "
                    f"({examples.source}); the records hold AOPC numbers, not curves. A good heatmap "
                    "makes its curve fall well below the random order's."))
        c.append(_img(_curves_png(examples), "mean MoRF and random curves"))
    else:
        c.append(_p("Curves are not kept in the records and no model was given to recompute them: "
                    "the AOPC distributions below stand in for them."))
    c.append(_p("Per-input AOPC relative to the clean score, every window's records, by method "
                "(dashed: the random order)."))
    c.append(_img(_aopc_hist_png(records), "AOPC distributions"))
    c.append("</section>")

    from relmon.report.location import location_section

    loc = [location_section(records, list(trend["window"]), classes, SECTION_TITLES["location"])]
    parts = {"trend": t, "drift": d, "location": loc, "heatmaps": h, "classes": k, "curves": c}
    if notes:
        s_notes.append("<h3>Notes</h3><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    s_notes.append("</section>")
    toc = '<nav class="toc"><h2>Contents</h2><ol>' + "".join(
        f'<li><a href="#{sid}">{html.escape(SECTION_TITLES[sid])}</a></li>' for sid in SECTIONS) + "</ol></nav>"
    body = [body[0], toc, "\n".join(s_notes)]
    for sid in SECTIONS[1:]:
        if sid == "method_table":
            from relmon.report.methods import method_table_section

            body.append(method_table_section(calibration))
            continue
        body.append(calibration_section(calibration, default) if sid == "validation" else "\n".join(parts[sid]))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title>"
        '<link rel="icon" href="data:,">'
        f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _embedded_classes(records: pd.DataFrame) -> list[str] | None:
    """Fashion-MNIST's class names when every record comes from one of relmon's embedded models."""
    from relmon.models import list_embedded

    if set(records["model"].astype(str)) <= set(list_embedded()):
        from relmon.data import FASHION_MNIST_CLASSES

        return list(FASHION_MNIST_CLASSES)
    return None


def _estimates_table(estimates: pd.DataFrame, trend: pd.DataFrame, default: str | None) -> str:
    """Estimators as rows, windows as columns (a page stays narrow with many estimators; many windows
    scroll inside the table's box), the default first and bold, the realised accuracy last."""
    value = [_interval(e, lo, hi) for e, lo, hi in
             zip(estimates["estimate"], estimates["lower"], estimates["upper"], strict=True)]
    wide = estimates.assign(value=value).pivot(index="estimator", columns="window", values="value")
    wide = wide.reindex(columns=[w for w in trend["window"] if w in wide.columns])
    order = sorted(wide.index, key=lambda e: (e != default, list(estimates["estimator"]).index(e)))
    wide = wide.reindex(order)
    realised = trend.set_index("window")["accuracy"].reindex(wide.columns)
    if realised.notna().any():
        wide.loc["realised accuracy"] = ["–" if math.isnan(v) else f"{v:.3f}" for v in realised]
    wide.columns.name = None
    return _marked_table(wide.reset_index(names="estimator"), "estimator", {default})


def write_report(path: str | os.PathLike, records: pd.DataFrame, **options) -> Path:
    """:func:`render_report` written to ``path`` (parent folders created, replaced atomically)."""
    page = render_report(records, **options)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path


__all__ = ["SECTIONS", "Examples", "calibration_section", "compute_examples", "perturbed_share", "render_report",
           "write_report"]

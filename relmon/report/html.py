"""``relmon report``: one self-contained static HTML file for one window or a series of windows.

The page holds, each in a ``<section id=...>``:

- ``summary`` — model, versions, windows, inputs, methods, and notes on what the page could not show;
- ``heatmaps`` — inputs beside their heatmaps, one column per method (``images=False`` leaves the
  whole grid out: inputs can be private data, and LRP heatmaps show the input's outline);
- ``curves`` — mean MoRF and random-order curves, relative to the clean score ``f(x^(0))``: the
  records keep AOPC numbers, not curves, so the curves are recomputed for the example inputs when a
  model is given (the page says so); the AOPC distribution of every window's records is always shown;
- ``trend`` — per window: AOPC (relative, with a 90 % interval), AOPC − random, heatmap entropy,
  confidence, realised accuracy where labels exist, and the calibration's accuracy estimates with
  their intervals;
- ``drift`` — per window, KS p-values of each feature against the calibration's reference window and
  the (Holm-corrected) alarm;
- ``validation`` — the calibration's validation table (``meta["validation"]``), default estimator
  and per-window accuracies, where the calibration has them.

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

from relmon.report.trend import RANDOM_METHOD, choose_method, trend_figure, trend_table

SECTIONS = ("summary", "heatmaps", "curves", "trend", "drift", "validation")

_CSS = """
body { font-family: sans-serif; margin: 1.5em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 1.6em; }
table.data { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
table.data th, table.data td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; }
table.data th { background: #f3f3f3; }
.note { color: #555; font-size: 0.9em; } .alarm { color: #b00; font-weight: bold; }
img.fig { max-width: 100%; border: 1px solid #eee; }
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


def compute_examples(model, images, methods: Sequence[str], region: int = 4, steps: int = 49,
                     seed: int = 0, source: str = "") -> Examples:
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
    return Examples(images=images.detach().cpu(), heatmaps=heatmaps, curves=curves, source=source)


# --------------------------------------------------------------------------------------------------
# pieces


def _figure(**kw):
    from matplotlib.figure import Figure  # no pyplot: works headless and leaves the user's backend alone

    fig = Figure(**kw)
    return fig, fig.subplots()


def _png(fig, dpi: int = 90) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(b64: str, alt: str) -> str:
    return f'<img class="fig" alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _table(frame: pd.DataFrame, index: bool = False) -> str:
    return frame.to_html(index=index, border=0, classes="data", na_rep="–", escape=True,
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


def _curves_png(ex: Examples) -> str:
    fig, ax = _figure(figsize=(6.5, 3.6))
    for i, (m, c) in enumerate(ex.curves.items()):
        c = np.asarray(c, dtype=float)
        rel = c / c[:, :1]  # f(x^(k)) / f(x^(0)): scale-free, comparable across inputs
        frac = np.arange(c.shape[1]) / (c.shape[1] - 1)
        style = dict(color="k", ls="--") if m == RANDOM_METHOD else dict(color=f"C{i}")
        ax.plot(frac, np.nanmean(rel, axis=0), label=f"{m} ({'random order' if m == RANDOM_METHOD else 'MoRF'})",
                **style)
    ax.axvline(0.16, color="grey", lw=0.8, ls=":")
    ax.text(0.165, ax.get_ylim()[1], "≈16 % (paper)", fontsize=7, va="top", color="grey")
    ax.set_xlabel("share of regions perturbed (steps / L)", fontsize=8)
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
    from relmon.records import RECORD_COLUMNS

    recs = records[[c for c in RECORD_COLUMNS if c in records.columns]].copy()
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


def _validation_table(value) -> pd.DataFrame | None:
    if value is None:
        return None
    try:
        if isinstance(value, pd.DataFrame):
            return value
        if isinstance(value, list):
            return pd.DataFrame(value)
        if isinstance(value, dict):
            if isinstance(value.get("per_shift_type"), list) and value.get("chosen"):
                # issue 18: the default estimator's coverage and width per held-out shift type, and the types
                # its interval cannot cover named as such (not hidden in an average)
                rows = pd.DataFrame(value["per_shift_type"])
                rows = rows[rows["estimator"] == value["chosen"]].drop(columns="estimator")
                uncovered = set(value.get("unreliable_under") or [])
                rows["estimates"] = ["unreliable (uncovered)" if g in uncovered else "" for g in rows["held_out"]]
                return rows.set_index("held_out").rename_axis(f"held-out shift type ({value['chosen']})")
            if "columns" in value and "data" in value:  # pandas' orient="split"
                return pd.DataFrame(value["data"], columns=value["columns"])
            if all(isinstance(v, dict) for v in value.values()):
                return pd.DataFrame.from_dict(value, orient="index")
            return pd.DataFrame([value])
    except Exception:  # noqa: BLE001 - an unexpected shape is shown as text instead
        return None
    return None


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
) -> str:
    """The report page as one HTML string (see the module docstring for its sections).

    ``records`` is a records frame (e.g. :func:`relmon.report.trend.load_records`), one or many
    windows; ``calibration`` a :class:`relmon.jobs.Calibration` (estimates, drift, validation table);
    ``examples`` the inputs, heatmaps and curves to show (:func:`compute_examples`); ``images=False``
    leaves out the heatmap grid.
    """
    if not len(records):
        raise ValueError("no records to report on")
    notes = list(notes)
    method = choose_method(records, method)
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
    s = ['<section id="summary"><h2>Summary</h2>', '<table class="data">']
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
    body.append("")  # placeholder for the summary

    # heatmaps
    h = ['<section id="heatmaps"><h2>Inputs and heatmaps</h2>']
    if not images:
        h.append(_p("Left out on request (--no-images): the inputs may be private, and heatmaps show them."))
    elif examples is None or not len(examples.heatmaps):
        h.append(_p("No example inputs: the records keep numbers, not images. Pass a model and inputs "
                    "(relmon report --model ... --input ...) to draw heatmaps for a few inputs."))
    else:
        h.append(_p(f"Inputs beside their heatmaps, one column per method ({examples.source}). Each heatmap "
                    "is scaled to its own largest absolute value; red positive, blue negative relevance."))
        h.append(_img(_grid_png(examples), "inputs and heatmaps"))
    h.append("</section>")
    body.append("\n".join(h))

    # curves
    c = ['<section id="curves"><h2>Perturbation curves and AOPC</h2>']
    if examples is not None and len(examples.curves):
        n = int(np.asarray(next(iter(examples.curves.values()))).shape[0])
        c.append(_p(f"Mean MoRF curves and the random order, recomputed for {n} example inputs "
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
    body.append("\n".join(c))

    # trend
    t = ['<section id="trend"><h2>Windows over time</h2>']
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
    t.append(_table(shown))
    if len(estimates):
        wide = estimates.assign(value=[_interval(e, lo, hi) for e, lo, hi in
                                       zip(estimates["estimate"], estimates["lower"], estimates["upper"],
                                           strict=True)])
        wide = wide.pivot(index="window", columns="estimator", values="value").reindex(trend["window"])
        wide.columns.name = None
        wide.insert(0, "realised accuracy", trend.set_index("window")["accuracy"].map(
            lambda v: "–" if math.isnan(v) else f"{v:.3f}"))
        t.append(_p(f"Estimated accuracy [interval] per estimator (default: {default})."))
        t.append(_table(wide.reset_index(), index=False))
    elif calibration is None:
        t.append(_p("No calibration given: no accuracy estimates (pass --calibration FOLDER)."))
    t.append("</section>")
    body.append("\n".join(t))

    # drift
    d = ['<section id="drift"><h2>Drift</h2>']
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
        d.append(_table(shown))
    d.append("</section>")
    body.append("\n".join(d))

    # validation
    v = ['<section id="validation"><h2>Calibration and its validation</h2>']
    if calibration is None:
        v.append(_p("No calibration given."))
    else:
        meta = calibration.meta
        table = _validation_table(meta.get("validation"))
        if table is not None:
            v.append(_p("The calibration's own validation (held-out shift types) of each estimator."))
            v.append(_table(table, index=not isinstance(meta.get("validation"), list)))
        elif meta.get("validation") is not None:
            v.append(f"<pre>{html.escape(str(meta['validation']))}</pre>")
        else:
            v.append(_p("This calibration carries no validation table (made by an older relmon)."))
        if default is not None:
            v.append(_p(f"Default estimator: {default}."))
        acc = meta.get("window_accuracy")
        if acc:
            v.append(_p(f"Calibration windows and their accuracy ({meta.get('n_per_window', '?')} labelled "
                        "inputs each):"))
            v.append(_table(pd.DataFrame({"window": list(acc), "accuracy": list(acc.values())})))
    v.append("</section>")
    body.append("\n".join(v))

    if notes:
        s_notes.append("<h3>Notes</h3><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    s_notes.append("</section>")
    body[1] = "\n".join(s_notes)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title>"
        '<link rel="icon" href="data:,">'
        f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_report(path: str | os.PathLike, records: pd.DataFrame, **options) -> Path:
    """:func:`render_report` written to ``path`` (parent folders created, replaced atomically)."""
    page = render_report(records, **options)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path


__all__ = ["SECTIONS", "Examples", "compute_examples", "render_report", "write_report"]

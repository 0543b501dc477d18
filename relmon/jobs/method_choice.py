"""The heatmap method chosen per model (issue 21 item 6): ``relmon calibrate``'s method table and
``methods: auto``.

Which explanation method gives faithful heatmaps depends on the model: ``lrp:epsilon_0_01`` was chosen on
the two embedded models and is the weakest LRP variant on a third-party network. So the calibration
measures, on clean images of the calibration data, every candidate method's AOPC gap to the random order
**paired per sample** (the same images, the same noise and the same random order for every method: the
random-order AOPC is one value per sample, shared by all methods) and

- writes the table (``calibration.json`` → ``method_selection``), printed by ``relmon calibrate`` and shown
  by ``relmon report``;
- warns when a configured method is not significantly better than the random order (its 95 % interval of
  the mean gap does not lie above 0), naming the methods that are significantly better than it;
- with ``methods: auto``, picks the method with the highest mean gap (exact ties: the earlier candidate in
  :data:`DEFAULT_CANDIDATES`, cheapest first). The embedded models keep ``lrp:epsilon_0_01``, chosen for
  them at the paper's protocol on 256 test images, with no separate validation split (README "The paper's comparison").

Unit: the scale-free gap ``gap_rel = (AOPC − AOPC_random) / f(x⁽⁰⁾)`` per sample (the share of the clean
logit that the method's order removes beyond the random order's, as :mod:`relmon.analysis.features`
computes it), so that models with different logit scales compare; samples with ``f(x⁽⁰⁾) <= 0`` have no
ratio and are left out of every method's mean alike (their count is recorded). ``gap`` (logit units)
is in the table too.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from relmon.config import MonitorConfig
from relmon.jobs.method_auto import (  # noqa: F401 (re-exported)
    EMBEDDED_METHOD,
    FALLBACK_METHOD,
    GRADIENT_FALLBACK,
    fallback_method,
    is_auto,
    is_embedded_model,
    resolve_auto,
)
from relmon.records import RANDOM_METHOD

log = logging.getLogger("relmon.jobs")

#: The candidates of the method table, cheapest first (the order breaks exact ties): the two gradient
#: baselines, the paper's LRP-ε (the embedded models' method) and the two modern zennit composites that won
#: on the third-party network of issue 21. LRP candidates that relmon's LRP refuses for the model are left out.
DEFAULT_CANDIDATES: tuple[str, ...] = (
    "sensitivity", "gradient_x_input", "lrp:epsilon_0_01", "lrp:epsilon_plus_flat", "lrp:epsilon_gamma_box",
)
#: Two-sided confidence level of the table's intervals.
LEVEL = 0.95
RULE = ("highest mean gap_rel (AOPC - random-order AOPC, over the clean score), paired over the same images; "
        "exact ties: the earlier candidate (cheapest first)")


def _lrp_verdict(model, example: torch.Tensor, method: str) -> tuple[str, str]:
    """``(verdict, reason)`` of ``relmon methods --check`` (:func:`relmon.explain.support.lrp_support`)."""
    from relmon.explain.support import lrp_support

    try:
        report = lrp_support(model, example[:2], method)
    except (ValueError, RuntimeError, TypeError) as err:  # e.g. epsilon_gamma_box without input bounds
        return "refused", str(err)
    return report.verdict, report.reason


def candidates_for(model, example: torch.Tensor, candidates, configured=()) -> tuple[list[str], dict, dict]:
    """``(methods, lrp verdicts, excluded → reason)``: ``candidates`` plus the ``configured`` methods, less
    the LRP ones that relmon's LRP refuses for ``model``."""
    from relmon.explain import canonical_method

    methods, verdicts, excluded = [], {}, {}
    for m in [*candidates, *configured]:
        m = canonical_method(m)
        if m in methods or m in excluded or m == RANDOM_METHOD:
            continue
        if m.startswith("lrp:"):
            verdict, reason = _lrp_verdict(model, example, m)
            verdicts[m] = verdict
            if verdict == "refused":
                excluded[m] = reason
                continue
        methods.append(m)
    return methods, verdicts, excluded


def paired_table(records: pd.DataFrame, methods, reference: str | None = None) -> tuple[pd.DataFrame, dict]:
    """The method table from scoring records (one row per sample and method, with the ``random`` rows):
    per method the mean ``gap_rel`` with its standard error and 95 % interval, the mean ``gap`` in score
    units, and the paired difference of ``gap_rel`` to ``reference`` (default: the best method).

    Returns ``(table, counts)``; ``counts``: samples scored, used (complete and ``score0 > 0``), dropped."""
    frame = records[records["method"].isin([*methods, RANDOM_METHOD])]
    aopc = frame.pivot_table(index="sample_id", columns="method", values="aopc", aggfunc="first")
    score0 = frame.groupby("sample_id")["score0"].first().reindex(aopc.index).astype(float)
    gap = aopc[list(methods)].sub(aopc[RANDOM_METHOD], axis=0).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = gap.div(score0.where(score0 > 0), axis=0)
    rel = rel.replace([np.inf, -np.inf], np.nan).dropna()  # paired: the same samples for every method
    n = len(rel)
    counts = {"scored": int(len(aopc)), "used": int(n), "dropped_score0_not_positive": int((score0 <= 0).sum())}
    t = _t_quantile(n)
    rows = []
    for m in methods:
        v = rel[m].to_numpy(float)
        mean, se = _mean_se(v)
        rows.append({"method": m, "n": n, "gap_rel": mean, "gap_rel_se": se, "gap_rel_lower": mean - t * se,
                     "gap_rel_upper": mean + t * se, "gap": float(gap.loc[rel.index, m].mean()) if n else math.nan})
    table = pd.DataFrame(rows)
    table["above_random"] = table["gap_rel_lower"] > 0
    best = choose(table)
    reference = reference if reference in set(methods) else best
    for i, m in enumerate(methods):
        d = (rel[m] - rel[reference]).to_numpy(float)
        mean, se = _mean_se(d)
        table.loc[i, ["diff", "diff_se", "diff_lower", "diff_upper"]] = [mean, se, mean - t * se, mean + t * se]
    table["compared_with"] = reference
    return table, counts


def choose(table: pd.DataFrame) -> str:
    """The ``methods: auto`` rule (:data:`RULE`): the row with the highest mean ``gap_rel``; exact ties go
    to the earlier row (the table keeps the candidates' order, cheapest first)."""
    finite = table[np.isfinite(table["gap_rel"].to_numpy(float))]
    if not len(finite):
        raise ValueError("no candidate method has a finite gap (no calibration image has a positive clean score)")
    order = np.argsort(-finite["gap_rel"].to_numpy(float), kind="stable")
    return str(finite["method"].iloc[order[0]])


def _mean_se(v: np.ndarray) -> tuple[float, float]:
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan


def _t_quantile(n: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + LEVEL / 2, n - 1)) if n > 1 else math.nan


def warning_for(table: pd.DataFrame, method: str, n_images: int, auto: bool) -> str | None:
    """The warning when ``method``'s gap is not significantly above 0 (its interval's lower end is not above
    0), naming the methods significantly better than it (paired: ``table`` compares every row with
    ``method``) and the fix; None when ``method`` is clearly better than random."""
    rows = table.set_index("method")
    if str(table["compared_with"].iloc[0]) != method:
        raise ValueError(f"the table compares with {table['compared_with'].iloc[0]!r}, not with {method!r}")
    r = rows.loc[method]
    if bool(r["above_random"]):
        return None
    head = (f"heatmap method {method} is no better than the random order on this model: its AOPC gap to the "
            f"random order is {r['gap_rel']:+.4f} of the clean score (95 % interval {r['gap_rel_lower']:+.4f} "
            f"to {r['gap_rel_upper']:+.4f}, {int(r['n'])} of {n_images} clean calibration images)")
    better = [b for b in rows.index if b != method and bool(rows.loc[b, "diff_lower"] > 0)]
    best = choose(table)
    if better:
        named = ", ".join(f"{b} ({rows.loc[b, 'gap_rel']:+.4f})" for b in better)
        fix = (f"fix: set methods: [{best}]" if auto else
               f"fix: set methods: auto (the calibration picks the best) or methods: [{best}]")
        return f"{head}; significantly better here: {named}; {fix}"
    return (f"{head}; no candidate method is significantly better (best: {best}, {rows.loc[best, 'gap_rel']:+.4f}): "
            "the AOPC features carry little faithfulness signal for this model (the confidence-based estimators "
            "are unaffected); fix: check the model and the region/fraction settings, or try other methods "
            "(method_candidates)")


def select_methods(cfg: MonitorConfig, model, images: torch.Tensor, prep, progress: bool = False) -> dict[str, Any]:
    """Score ``images`` (clean, ``(N, C, H, W)`` in ``[0, 1]``) with every candidate method and choose.

    Returns the JSON-ready ``method_selection`` of ``calibration.json``: ``table`` (one row per candidate),
    ``chosen`` (the method to score with), ``best`` (the table's argmax), ``configured``, ``rule``,
    ``warnings``, ``excluded`` (refused LRP candidates and why), ``lrp_support``, ``n_images`` and
    ``seconds`` (the table's scoring time)."""
    from relmon.data.streams import TensorStream
    from relmon.jobs.scoring import score_stream

    t0 = time.perf_counter()
    auto = is_auto(cfg.methods)
    configured = () if auto else tuple(cfg.methods)
    example = prep.normalize(images[:2])
    methods, verdicts, excluded = candidates_for(model, example, cfg.method_candidates, configured)
    stream = TensorStream(images, None, ids=[f"method_table/{i}" for i in range(len(images))], preprocessing=prep,
                          stream="method_table")
    scoring = replace(cfg, methods=tuple(methods), runner="plain", sample_rate=1.0, max_samples=None,
                      random_fraction=1.0, devices=1, num_nodes=1, shard=None,
                      suspect_regions=None)  # the location columns are not part of the comparison
    records, _, _ = score_stream(scoring, model, stream, progress=progress)
    from relmon.explain import canonical_method

    reference = canonical_method(configured[0]) if configured else None
    table, counts = paired_table(records, methods, reference)
    best = choose(table)
    if auto:
        chosen = EMBEDDED_METHOD if is_embedded_model(model) else best
        if chosen != best:  # compare with the method actually used
            table, counts = paired_table(records, methods, chosen)
        rule = (f"embedded model: {EMBEDDED_METHOD}, chosen on 256 test images, no separate validation split (README \"The paper's comparison\")"
                if chosen == EMBEDDED_METHOD and is_embedded_model(model) else RULE)
    else:
        chosen, rule = reference, "configured (methods)"
    checked = [chosen] if auto else [canonical_method(m) for m in configured]
    found = []
    for m in checked:  # each checked method against the others, paired
        text = warning_for(paired_table(records, methods, m)[0], m, len(images), auto)
        found += [text] if text else []
    for text in found:
        log.warning("%s", text)
    table["chosen"] = table["method"] == chosen
    table["lrp_support"] = [verdicts.get(m, "n/a (gradient)") for m in table["method"]]
    return {
        "table": _records(table),
        "chosen": chosen,
        "best": best,
        "configured": "auto" if auto else list(configured),
        "rule": rule,
        "unit": "gap_rel = (AOPC - random-order AOPC) / clean score, per sample, paired; gap in score units",
        "level": LEVEL,
        "warnings": found,
        "excluded": excluded,
        "lrp_support": verdicts,
        "n_images": int(len(images)),
        **counts,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for row in table.to_dict(orient="records"):
        out.append({k: (None if isinstance(v, float) and not math.isfinite(v) else
                        (bool(v) if isinstance(v, (bool, np.bool_)) else (float(v) if isinstance(v, np.floating) else
                                                                          (int(v) if isinstance(v, np.integer) else v))))
                    for k, v in row.items()})
    return out


def table_frame(selection: dict[str, Any] | None) -> pd.DataFrame | None:
    """The method table of a calibration's ``method_selection`` as a DataFrame (None if absent)."""
    if not isinstance(selection, dict) or not isinstance(selection.get("table"), list) or not selection["table"]:
        return None
    return pd.DataFrame(selection["table"])


def format_table(selection: dict[str, Any]) -> str:
    """The method table as fixed-width text (``relmon calibrate``'s summary)."""
    frame = table_frame(selection)
    if frame is None:
        return ""
    lines = [f"{'method':<24} {'gap_rel':>9} {'± se':>8} {'95% interval':>21} {'vs ' + str(frame['compared_with'][0]):>26}"]
    for r in frame.itertuples():
        mark = " *" if r.chosen else ""
        lines.append(f"{r.method:<24} {_f(r.gap_rel):>9} {_f(r.gap_rel_se, '.4f'):>8} "
                     f"{_f(r.gap_rel_lower) + ' .. ' + _f(r.gap_rel_upper):>21} "
                     f"{_f(r.diff) + ' ± ' + _f(r.diff_se, '.4f'):>26}{mark}")
    return "\n".join(lines)


def _f(v, spec: str = "+.4f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


__all__ = ["DEFAULT_CANDIDATES", "EMBEDDED_METHOD", "FALLBACK_METHOD", "RULE", "choose", "fallback_method",
           "format_table", "is_auto", "paired_table", "resolve_auto", "select_methods", "table_frame",
           "warning_for"]


def calibration_methods(cfg: MonitorConfig, model, images: torch.Tensor, prep,
                        progress: bool = False) -> tuple[MonitorConfig, dict[str, Any] | None]:
    """The calibration's step: ``(cfg with the methods to score with, method_selection or None)``.

    ``images``: clean calibration images (``(N, C, H, W)`` in ``[0, 1]``), the first
    ``method_table_n`` of the calibration's seeded shuffle. ``method_table_n: 0`` measures nothing:
    ``methods: auto`` then takes :func:`fallback_method`."""
    n = min(int(cfg.method_table_n), len(images))
    if n < 2:
        if cfg.method_table_n:
            log.warning("method_table_n is %d but only %d calibration images were given: no method table",
                        cfg.method_table_n, len(images))
        return resolve_auto(cfg, model, None, prep.normalize(images[:1])), None
    selection = select_methods(cfg, model, images[:n], prep, progress=progress)
    if is_auto(cfg.methods):
        cfg = replace(cfg, methods=(selection["chosen"],))
    return cfg, selection

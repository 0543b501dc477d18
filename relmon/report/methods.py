"""The report's ``method_table`` section: the calibration's comparison of heatmap methods on this model
(issue 21 item 6; written by :mod:`relmon.jobs.method_choice` into ``calibration.json`` →
``method_selection``)."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping

import pandas as pd

TITLE = "Heatmap methods on this model"

_COLUMNS = {
    "method": "method",
    "lrp_support": "LRP support",
    "n": "images",
    "gap_rel": "gap to random (share of the clean score)",
    "interval": "95 % interval",
    "gap": "gap (score units)",
    "vs": "paired difference",
    "chosen": "used",
}


def _num(v, spec: str = "+.4f") -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def method_table_frame(selection: Mapping) -> pd.DataFrame | None:
    """The method table of ``method_selection`` as the page shows it (None if absent or malformed)."""
    rows = selection.get("table") if isinstance(selection, Mapping) else None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, Mapping) for r in rows):
        return None
    t = pd.DataFrame(rows)
    if not {"method", "gap_rel", "gap_rel_lower", "gap_rel_upper"} <= set(t.columns):
        return None
    get = lambda c: t[c] if c in t.columns else pd.Series([None] * len(t))  # noqa: E731
    out = pd.DataFrame({
        "method": t["method"].astype(str),
        "lrp_support": get("lrp_support"),
        "n": get("n"),
        "gap_rel": [f"{_num(m)} ± {_num(s, '.4f')}" for m, s in zip(t["gap_rel"], get("gap_rel_se"), strict=True)],
        "interval": [f"{_num(lo)} to {_num(hi)}" for lo, hi in zip(t["gap_rel_lower"], t["gap_rel_upper"], strict=True)],
        "gap": [_num(v, "+.3f") for v in get("gap")],
        "vs": [f"{_num(d)} ± {_num(s, '.4f')}" for d, s in zip(get("diff"), get("diff_se"), strict=True)],
        "chosen": ["yes" if c else "" for c in get("chosen")],
    })
    ref = get("compared_with").iloc[0]
    return out.rename(columns={**_COLUMNS, "vs": f"paired difference vs {ref}"})


def method_table_section(calibration, section_id: str = "method_table") -> str:
    """The section's HTML (every value escaped): the table, the rule, the warnings."""
    parts = [f'<section id="{section_id}"><h2>{html.escape(TITLE)}</h2>']
    sel = (calibration.meta.get("method_selection") if calibration is not None else None) or None
    frame = method_table_frame(sel) if sel else None
    if frame is None:
        why = ("No calibration given (pass --calibration FOLDER)." if calibration is None else
               "This calibration carries no method table (method_table_n: 0, or made by an older relmon).")
        parts.append(f'<p class="note">{html.escape(why)}</p></section>')
        return "\n".join(parts)
    methods = ", ".join(str(m) for m in calibration.meta.get("methods") or [])
    parts.append('<p class="note">' + html.escape(
        f"Each method's AOPC minus the random order's AOPC, divided by the clean score f(x0), per image and "
        f"paired (the same {sel.get('used', '?')} clean calibration images, noise and random orders for every "
        f"method); mean ± standard error. Scored with: {methods} (configured: "
        f"{sel.get('configured')}; rule: {sel.get('rule')}).") + "</p>")
    parts.append('<div class="wide">' + frame.to_html(index=False, border=0, classes="data", na_rep="–",
                                                      escape=True) + "</div>")
    for text in sel.get("warnings") or []:
        parts.append(f'<p class="note"><strong>Warning:</strong> {html.escape(str(text))}</p>')
    excluded = sel.get("excluded") or {}
    if isinstance(excluded, Mapping) and excluded:
        parts.append('<p class="note">' + html.escape(
            "Left out (relmon's LRP refuses the model): " + "; ".join(f"{k}: {v}" for k, v in excluded.items()))
            + "</p>")
    parts.append("</section>")
    return "\n".join(parts)


__all__ = ["TITLE", "method_table_frame", "method_table_section"]

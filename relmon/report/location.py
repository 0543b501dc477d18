"""The report's "Where the model looks" section (records scored with ``suspect_regions``): per window
the means of the location features (share of positive relevance in the suspect regions, the occlusion
flip rate and confidence drop) over time, and per predicted class the same means over all windows."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence

import pandas as pd

from relmon.analysis.location import location_method, per_class_location
from relmon.records import LOCATION_COLUMNS, has_location

#: what each column is called on the page
LABELS = {"suspect_share": "relevance share in suspect regions", "rest_relevance": "signed relevance outside",
          "occlusion_flip": "occlusion flip rate", "occlusion_drop": "confidence drop when blanked"}


def location_trend(records: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    """One row per window (``_window`` key, in ``order``): ``n`` and the mean of each location column."""
    one = records.drop_duplicates(["_window", "sample_id"])
    values = one[["_window", *LOCATION_COLUMNS]].copy()
    for c in LOCATION_COLUMNS:
        values[c] = values[c].astype("Float64").astype("float64")
    g = values.groupby("_window", sort=False)
    out = pd.concat([g.size().rename("n"), g[list(LOCATION_COLUMNS)].mean()], axis=1)
    return out.reindex([w for w in order if w in out.index]).rename_axis("window").reset_index()


def _figure_png(table: pd.DataFrame) -> str:
    from relmon.extras import require

    Figure = require("matplotlib.figure", "relmon report (figures)").Figure
    fig = Figure(figsize=(8, 3.2))
    ax = fig.subplots()
    x = range(len(table))
    for c, style in (("suspect_share", "o-"), ("occlusion_flip", "s-"), ("occlusion_drop", "^-")):
        ax.plot(x, table[c], style, label=LABELS[c])
    ax.set_xticks(list(x))
    ax.set_xticklabels([str(w)[-19:] for w in table["window"]], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("window mean")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def location_section(records: pd.DataFrame, order: Sequence[str], classes: Sequence[str] | None,
                     title: str) -> str:
    """The section's HTML (``records`` carry the report's ``_window`` key; ``order``: the windows in time
    order); a note naming the setting when the records have no location columns."""
    from relmon.report.samples import class_name

    out = [f'<section id="location"><h2>{html.escape(title)}</h2>']
    note = '<p class="note">{}</p>'
    if not has_location(records):
        out.append(note.format("These records carry no location features: set suspect_regions in the config "
                               "(from relmon audit --json) to monitor where the model looks."))
        return "\n".join(out + ["</section>"])

    def table(frame):
        return ('<div class="wide">' + frame.to_html(index=False, border=0, classes="data", na_rep="–",
                                                       float_format=lambda v: f"{v:.3f}") + "</div>")

    trend = location_trend(records, order)
    out.append(note.format(
        f"Per window, from the {location_method(records)} heatmaps and one occlusion forward per input: the "
        "share of each input's positive relevance inside the configured suspect regions, the share of inputs "
        "whose prediction changes when the regions are blanked, and the mean drop of the predicted class's "
        "probability. A rising flip rate or a share unlike the calibration's means the model's evidence in "
        "the suspect regions no longer agrees with the rest of the image."))
    out.append(f'<img class="fig" alt="location features over time" src="data:image/png;base64,'
               f'{_figure_png(trend)}">')
    out.append(table(trend.rename(columns=LABELS)))
    per_class = per_class_location(records)
    per_class.insert(0, "predicted", [class_name(p, classes) for p in per_class.pop("pred")])
    out.append(note.format("Per predicted class, all windows together."))
    out.append(table(per_class.rename(columns=LABELS)))
    return "\n".join(out + ["</section>"])


__all__ = ["LABELS", "location_section", "location_trend"]

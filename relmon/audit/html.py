"""``relmon audit --out audit.html``: one self-contained page (matplotlib PNGs embedded as base64).

Sections: the verdict and the suspect regions to copy into the config; per-class mean heatmaps with
suspect regions outlined; per class, the SpRAy prototypes with cluster sizes (flagged clusters in
red) and the eigenvalues; a table of per-class region shares.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path

import numpy as np

from relmon.audit.core import AuditResult

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:2em} .flag{color:#b00;font-weight:bold}
.ok{color:#070;font-weight:bold} table.data{border-collapse:collapse;font-size:.85em}
table.data td,table.data th{border-bottom:1px solid #ddd;padding:2px 8px;text-align:right}
code,pre{background:#f4f4f4;padding:2px 4px} img.fig{max-width:100%}
"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _outline(ax, rects, color):
    from matplotlib.patches import Rectangle

    for t, left, h, w in rects:
        ax.add_patch(Rectangle((left - 0.5, t - 0.5), w, h, fill=False, edgecolor=color, linewidth=1.5))


def _maps_figure(maps: list[np.ndarray], titles: list[str], outlines: list[list], colors: list[str], cols: int = 5):
    from matplotlib.figure import Figure

    rows = max(1, -(-len(maps) // cols))
    fig = Figure(figsize=(2.2 * cols, 2.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, m, title, rects, color in zip(axes.flat, maps, titles, outlines, colors, strict=False):
        ax.imshow(m, cmap="hot", interpolation="nearest")
        _outline(ax, rects, color)
        ax.set_title(title, fontsize=8, color=color if rects else "black")
    return fig


def render_audit(result: AuditResult, title: str = "relmon audit") -> str:
    """The audit page as an HTML string."""
    s = result.settings
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    verdict = ('<span class="flag">FLAGGED: relevance concentrates in suspect regions</span>' if result.flagged
               else '<span class="ok">nothing flagged</span>')
    parts.append(f"<p>{verdict} — {s['n_images']} images, method <code>{html.escape(s['method'])}</code>, "
                 f"grouped by {html.escape(s['grouped_by'])}"
                 + (f", accuracy {s['accuracy']:.3f}" if "accuracy" in s else "") + ".</p>")
    parts.append(
        f"<p>Rule: a region is suspect for a class when its share of the class's positive relevance is at least "
        f"{s['min_excess']:.2f} above its pixel share and at least {s['min_lift']:g}× it (regions: "
        f"{s['region']}×{s['region']} grid cells, the border rings of width 1 to {s['border']} pixels and the "
        f"{s.get('corner', 0)}×{s.get('corner', 0)} corner blocks).</p>")
    if result.suspect_regions:
        snippet = "suspect_regions: " + json.dumps(result.suspect_regions)
        parts.append("<p>Copy into the monitoring config (rectangles [top, left, height, width]):</p>"
                     f"<pre>{html.escape(snippet)}</pre>")
    extra = [r for r in result.cluster_suspect_regions if r not in result.suspect_regions]
    if extra:
        parts.append("<p>Suspect in a cluster only (a strategy of part of a class; inspect the prototypes "
                     "below, the model is not flagged for these): "
                     f"<code>{html.escape(json.dumps(extra))}</code></p>")

    names = list(result.mean_maps)
    if names:
        outlines = [[r for sus in result.per_class[c]["suspect"] for r in sus["rects"]] for c in names]
        titles = [f"{c} (n={result.per_class[c]['n']})" for c in names]
        colors = ["#00c0ff" if o else "black" for o in outlines]
        fig = _maps_figure([result.mean_maps[c] for c in names], titles, outlines, colors)
        parts.append("<h2>Mean relevance per predicted class</h2><p>Positive relevance, each heatmap scaled to "
                     "sum 1; suspect regions outlined.</p>"
                     f"<img class='fig' alt='mean heatmaps' src='data:image/png;base64,{_png(fig)}'>")

    parts.append("<h2>SpRAy clusters per class</h2><p>Spectral clustering of the downsized heatmaps; the "
                  "cluster count is the eigengap's. Prototypes are the clusters' mean heatmaps; flagged "
                  "clusters are outlined in red.</p>")
    for c, protos in result.prototypes.items():
        cl = result.clusters.get(c, [])
        titles = [f"#{d['cluster']} n={d['size']} ({d['share_of_class']:.0%})" for d in cl]
        outlines = [[r for sus in d["suspect"] for r in sus["rects"]] for d in cl]
        colors = ["red" if d["flagged"] else "black" for d in cl]
        fig = _maps_figure(protos, titles, outlines, colors, cols=max(4, len(protos)))
        ev = ", ".join(f"{v:.3f}" for v in result.per_class[c].get("eigenvalues", []))
        parts.append(f"<h3>{html.escape(c)}</h3><p>eigenvalues: {ev}</p>"
                     f"<img class='fig' alt='prototypes {html.escape(c)}' src='data:image/png;base64,{_png(fig)}'>")

    rows = ["<tr><th>class</th><th>n</th><th>accuracy</th><th>top region</th><th>share</th><th>pixel share</th>"
            "<th>clusters</th><th>suspect regions</th></tr>"]
    for c, info in result.per_class.items():
        top = info.get("top_region") or {}
        acc = f"{info['accuracy']:.3f}" if "accuracy" in info else "–"
        rows.append(
            f"<tr><td>{html.escape(c)}</td><td>{info['n']}</td><td>{acc}</td>"
            f"<td>{html.escape(str(top.get('name', '–')))}</td><td>{top.get('share', float('nan')):.3f}</td>"
            f"<td>{top.get('pixel_share', float('nan')):.3f}</td><td>{info.get('n_clusters', '–')}</td>"
            f"<td>{html.escape(', '.join(x['name'] for x in info['suspect']) or '–')}</td></tr>")
    parts.append("<h2>Per class</h2><table class='data'>" + "".join(rows) + "</table></body></html>")
    return "".join(parts)


def write_audit_html(path: str | os.PathLike, result: AuditResult, title: str = "relmon audit") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_audit(result, title), encoding="utf-8")
    os.replace(tmp, path)
    return path


__all__ = ["render_audit", "write_audit_html"]
